"""A channel policy and its proto message (``authz.v1.ChannelPolicy``), both ways.

Shared by the service (``api``), which reads what callers send, and the CLI,
which reads what the service returns (``authz doctor``, ``authz apply``):
so it needs nothing of the server. Reading fills in the defaults an unset
field means; it checks only what the proto cannot say (an unknown enum value
is INVALID_ARGUMENT naming the field). ``domain.policy.validate`` does the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from . import names
from .domain.errors import InvalidArgument
from .domain.model import (
    DEFAULT_AGENT,
    DEFAULT_MAX_PENDING,
    DEFAULT_PAIRING_CODE_TTL,
    AutoApprove,
    Binding,
    ChannelPolicy,
    DmPolicy,
    GroupPolicy,
    GroupRule,
    RateLimit,
    SendDefault,
    SendPolicy,
    TimeRestriction,
    TimeWindow,
)
from .domain.policy import minute_of
from .gen.authz.v1 import common_pb2 as cm

E = TypeVar("E")

# UNSPECIFIED means what the contract documents for it (never open by omission).
DM_POLICY = {cm.DM_POLICY_UNSPECIFIED: DmPolicy.PAIRING, **names.DM_POLICY.domain_map()}
GROUP_POLICY = {cm.GROUP_POLICY_UNSPECIFIED: GroupPolicy.ALLOWLIST, **names.GROUP_POLICY.domain_map()}
SEND_DEFAULT = {cm.SEND_DEFAULT_UNSPECIFIED: SendDefault.DENY, **names.SEND_DEFAULT.domain_map()}


def enum_in(mapping: Mapping[Any, E], value: int, field: str) -> E:
    try:
        return mapping[value]
    except KeyError:
        raise InvalidArgument(field, f"unknown or unspecified value {value}") from None


def enum_out(mapping: Mapping[Any, E], value: E) -> Any:
    for k, v in mapping.items():
        if v == value and k != 0:
            return k
    raise ValueError(value)


def _window_in(msg: cm.TimeWindow, field: str) -> TimeWindow:
    return TimeWindow(
        days=tuple(d.strip().lower() for d in msg.days),
        start_minute=minute_of(msg.start, f"{field}.start"),
        end_minute=minute_of(msg.end, f"{field}.end"),
    )


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def send_policy_in(msg: cm.SendPolicy, field: str) -> SendPolicy:
    return SendPolicy(
        default=enum_in(SEND_DEFAULT, msg.default, f"{field}.default"),
        allow=tuple(msg.allow),
        deny=tuple(msg.deny),
        time_restrictions=tuple(
            TimeRestriction(
                targets=tuple(r.targets),
                windows=tuple(
                    _window_in(w, f"{field}.time_restrictions[{i}].windows[{j}]")
                    for j, w in enumerate(r.windows)
                ),
            )
            for i, r in enumerate(msg.time_restrictions)
        ),
    )


def send_policy_out(p: SendPolicy) -> cm.SendPolicy:
    return cm.SendPolicy(
        default=enum_out(SEND_DEFAULT, p.default),
        allow=list(p.allow),
        deny=list(p.deny),
        time_restrictions=[
            cm.TimeRestriction(
                targets=list(r.targets),
                windows=[
                    cm.TimeWindow(days=list(w.days), start=_hhmm(w.start_minute), end=_hhmm(w.end_minute))
                    for w in r.windows
                ],
            )
            for r in p.time_restrictions
        ],
    )


def _rate_in(msg: cm.RateLimit) -> RateLimit | None:
    # Zero means "no limit"; validation fills in the default burst.
    return RateLimit(msg.max_messages_per_hour, msg.burst) if msg.max_messages_per_hour else None


def _rate_out(r: RateLimit | None) -> cm.RateLimit | None:
    return None if r is None else cm.RateLimit(max_messages_per_hour=r.max_messages_per_hour, burst=r.burst)


def _group_in(msg: cm.GroupRule, field: str) -> GroupRule:
    return GroupRule(
        policy=None
        if msg.policy == cm.GROUP_POLICY_UNSPECIFIED
        else enum_in(GROUP_POLICY, msg.policy, f"{field}.policy"),
        require_mention=msg.require_mention if msg.HasField("require_mention") else None,
        mention_patterns=tuple(msg.mention_patterns),
        allowed_commands=tuple(msg.allowed_commands),
        denied_commands=tuple(msg.denied_commands),
        rate_limit=_rate_in(msg.rate_limit),
    )


def _group_out(g: GroupRule) -> cm.GroupRule:
    msg = cm.GroupRule(
        policy=cm.GROUP_POLICY_UNSPECIFIED if g.policy is None else enum_out(GROUP_POLICY, g.policy),
        mention_patterns=list(g.mention_patterns),
        allowed_commands=list(g.allowed_commands),
        denied_commands=list(g.denied_commands),
        rate_limit=_rate_out(g.rate_limit),
    )
    if g.require_mention is not None:
        msg.require_mention = g.require_mention
    return msg


def _binding_in(msg: cm.Binding) -> Binding:
    return Binding(
        user_id=msg.user_id,
        group_id=msg.group_id,
        agent_id=msg.agent_id,
        permissions=tuple(msg.permissions),
        tools_allowed=tuple(msg.tools.allowed),
        tools_denied=tuple(msg.tools.denied),
    )


def binding_out(b: Binding) -> cm.Binding:
    return cm.Binding(
        user_id=b.user_id,
        group_id=b.group_id,
        agent_id=b.agent_id,
        permissions=list(b.permissions),
        tools=cm.ToolList(allowed=list(b.tools_allowed), denied=list(b.tools_denied)),
    )


def policy_in(msg: cm.ChannelPolicy) -> ChannelPolicy:
    return ChannelPolicy(
        dm_policy=enum_in(DM_POLICY, msg.dm_policy, "policy.dm_policy"),
        group_policy=enum_in(GROUP_POLICY, msg.group_policy, "policy.group_policy"),
        require_mention=msg.require_mention if msg.HasField("require_mention") else True,
        owner_id=msg.owner_id,
        approvers=tuple(msg.approvers),
        pairing_code_ttl_seconds=msg.pairing_code_ttl_seconds or DEFAULT_PAIRING_CODE_TTL,
        max_pending=msg.max_pending or DEFAULT_MAX_PENDING,
        pairing_ttl_seconds=msg.pairing_ttl_seconds,
        agent_id=msg.agent_id or DEFAULT_AGENT,
        send_policy=send_policy_in(msg.send_policy, "policy.send_policy")
        if msg.HasField("send_policy")
        else None,
        agent_send_policies={
            a: send_policy_in(p, f"policy.agent_send_policies[{a}]")
            for a, p in msg.agent_send_policies.items()
        },
        aliases=dict(msg.aliases),
        mention_patterns=tuple(msg.mention_patterns),
        groups={g: _group_in(r, f"policy.groups[{g}]") for g, r in msg.groups.items()},
        bindings=tuple(_binding_in(b) for b in msg.bindings),
        required_approvals=msg.required_approvals or 1,
        auto_approve=AutoApprove(
            phone_patterns=tuple(msg.auto_approve.phone_patterns),
            email_domains=tuple(msg.auto_approve.email_domains),
        ),
        rate_limit=_rate_in(msg.rate_limit),
        approvers_trusted=msg.approvers_trusted if msg.HasField("approvers_trusted") else True,
    )


def policy_out(p: ChannelPolicy) -> cm.ChannelPolicy:
    msg = cm.ChannelPolicy(
        dm_policy=enum_out(DM_POLICY, p.dm_policy),
        group_policy=enum_out(GROUP_POLICY, p.group_policy),
        require_mention=p.require_mention,
        approvers_trusted=p.approvers_trusted,
        owner_id=p.owner_id,
        approvers=list(p.approvers),
        pairing_code_ttl_seconds=p.pairing_code_ttl_seconds,
        max_pending=p.max_pending,
        pairing_ttl_seconds=p.pairing_ttl_seconds,
        agent_id=p.agent_id,
        aliases=p.aliases,
        mention_patterns=list(p.mention_patterns),
        groups={g: _group_out(r) for g, r in p.groups.items()},
        bindings=[binding_out(b) for b in p.bindings],
        required_approvals=p.required_approvals,
        auto_approve=cm.AutoApprove(
            phone_patterns=list(p.auto_approve.phone_patterns),
            email_domains=list(p.auto_approve.email_domains),
        ),
        rate_limit=_rate_out(p.rate_limit),
    )
    if p.send_policy is not None:
        msg.send_policy.CopyFrom(send_policy_out(p.send_policy))
    for agent, sp in p.agent_send_policies.items():
        msg.agent_send_policies[agent].CopyFrom(send_policy_out(sp))
    return msg
