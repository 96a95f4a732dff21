"""Protobuf <-> domain. Unknown enum values are INVALID_ARGUMENT naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from ..domain import ids
from ..domain.errors import InvalidArgument
from ..domain.invites import Invite
from ..domain.model import (
    DEFAULT_AGENT,
    DEFAULT_MAX_PENDING,
    DEFAULT_PAIRING_CODE_TTL,
    Approval,
    ApprovalAction,
    ApprovalStatus,
    AutoApprove,
    Binding,
    ChannelPolicy,
    ChatKind,
    Decision,
    DmPolicy,
    Grant,
    GroupPolicy,
    GroupRule,
    Platform,
    RateLimit,
    Risk,
    Role,
    SendDefault,
    SendPolicy,
    Subject,
    SubjectSource,
    SubjectStatus,
    TimeRestriction,
    TimeWindow,
    ToolCall,
)
from ..domain.policy import minute_of
from ..flows.approvals import OwnerNotification
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import authz_pb2 as az
from ..gen.authz.v1 import common_pb2 as cm

E = TypeVar("E")

PLATFORM = {
    cm.PLATFORM_TELEGRAM: Platform.TELEGRAM,
    cm.PLATFORM_SLACK: Platform.SLACK,
    cm.PLATFORM_DISCORD: Platform.DISCORD,
    cm.PLATFORM_WHATSAPP: Platform.WHATSAPP,
}
CHAT_KIND = {cm.CHAT_KIND_DIRECT: ChatKind.DIRECT, cm.CHAT_KIND_GROUP: ChatKind.GROUP}
DM_POLICY = {
    cm.DM_POLICY_UNSPECIFIED: DmPolicy.PAIRING,  # never open by omission
    cm.DM_POLICY_PAIRING: DmPolicy.PAIRING,
    cm.DM_POLICY_ALLOWLIST: DmPolicy.ALLOWLIST,
    cm.DM_POLICY_OPEN: DmPolicy.OPEN,
    cm.DM_POLICY_DISABLED: DmPolicy.DISABLED,
}
GROUP_POLICY = {
    cm.GROUP_POLICY_UNSPECIFIED: GroupPolicy.ALLOWLIST,
    cm.GROUP_POLICY_OPEN: GroupPolicy.OPEN,
    cm.GROUP_POLICY_ALLOWLIST: GroupPolicy.ALLOWLIST,
    cm.GROUP_POLICY_DISABLED: GroupPolicy.DISABLED,
}
SEND_DEFAULT = {
    cm.SEND_DEFAULT_UNSPECIFIED: SendDefault.DENY,
    cm.SEND_DEFAULT_DENY: SendDefault.DENY,
    cm.SEND_DEFAULT_ALLOW: SendDefault.ALLOW,
}
ACTION = {
    cm.APPROVAL_ACTION_APPROVE: ApprovalAction.APPROVE,
    cm.APPROVAL_ACTION_DENY: ApprovalAction.DENY,
    cm.APPROVAL_ACTION_BLOCK: ApprovalAction.BLOCK,
    cm.APPROVAL_ACTION_ALWAYS_ALLOW: ApprovalAction.ALWAYS_ALLOW,
}
RISK = {
    cm.RISK_UNSPECIFIED: Risk.MEDIUM,
    cm.RISK_LOW: Risk.LOW,
    cm.RISK_MEDIUM: Risk.MEDIUM,
    cm.RISK_HIGH: Risk.HIGH,
    cm.RISK_CRITICAL: Risk.CRITICAL,
}
KIND = {cm.APPROVAL_KIND_UNSPECIFIED: "", cm.APPROVAL_KIND_PAIRING: "pairing", cm.APPROVAL_KIND_TOOL: "tool"}
APPROVAL_STATUS = {
    cm.APPROVAL_STATUS_PENDING: ApprovalStatus.PENDING,
    cm.APPROVAL_STATUS_APPROVED: ApprovalStatus.APPROVED,
    cm.APPROVAL_STATUS_DENIED: ApprovalStatus.DENIED,
    cm.APPROVAL_STATUS_BLOCKED: ApprovalStatus.BLOCKED,
    cm.APPROVAL_STATUS_EXPIRED: ApprovalStatus.EXPIRED,
}
ROLE = {
    adm.ROLE_CONNECTOR: Role.CONNECTOR,
    adm.ROLE_APPROVER: Role.APPROVER,
    adm.ROLE_ADMIN: Role.ADMIN,
    adm.ROLE_AGENT: Role.AGENT,
}
DECISION = {
    Decision.ALLOW: az.DECISION_ALLOW,
    Decision.DENY: az.DECISION_DENY,
    Decision.PAIRING_REQUIRED: az.DECISION_PAIRING_REQUIRED,
    Decision.BLOCKED: az.DECISION_BLOCKED,
    Decision.RATE_LIMITED: az.DECISION_RATE_LIMITED,
}


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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ts(value: datetime | None) -> Timestamp | None:
    """A naive datetime is UTC (as ``Timestamp.FromDatetime`` has it), in a
    quarter of its time: answers carry several timestamps."""
    if value is None:
        return None
    since = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - _EPOCH
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000)


def from_ts(value: Timestamp, present: bool) -> datetime | None:
    return value.ToDatetime().replace(tzinfo=UTC) if present else None


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


def _binding_out(b: Binding) -> cm.Binding:
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
    )


def policy_out(p: ChannelPolicy) -> cm.ChannelPolicy:
    msg = cm.ChannelPolicy(
        dm_policy=enum_out(DM_POLICY, p.dm_policy),
        group_policy=enum_out(GROUP_POLICY, p.group_policy),
        require_mention=p.require_mention,
        owner_id=p.owner_id,
        approvers=list(p.approvers),
        pairing_code_ttl_seconds=p.pairing_code_ttl_seconds,
        max_pending=p.max_pending,
        pairing_ttl_seconds=p.pairing_ttl_seconds,
        agent_id=p.agent_id,
        aliases=p.aliases,
        mention_patterns=list(p.mention_patterns),
        groups={g: _group_out(r) for g, r in p.groups.items()},
        bindings=[_binding_out(b) for b in p.bindings],
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


def tool_out(t: ToolCall) -> cm.ToolCall:
    return cm.ToolCall(
        tool_name=t.tool_name,
        arguments_json=t.arguments,
        arguments_digest=t.digest.hex(),
        agent_id=t.agent_id,
        session_id=t.session_id,
        risk=enum_out(RISK, t.risk),
    )


def approval_out(a: Approval) -> cm.Approval:
    msg = cm.Approval(
        approval_id=a.approval_id,
        kind=enum_out(KIND, a.kind),
        status=enum_out(APPROVAL_STATUS, a.status),
        channel_id=a.channel_id,
        user_id=a.user_id,
        display_name=a.display_name,
        created_at=ts(a.created_at),
        expires_at=ts(a.expires_at),
        resolved_at=ts(a.resolved_at),
        resolved_by=a.resolved_by,
        reason=a.reason,
        redeemed_at=ts(a.redeemed_at),
        grant_id=a.grant_id,
        required_approvals=a.required_approvals,
        approved_by=list(a.approved_by),
    )
    if a.tool is not None:
        msg.tool.CopyFrom(tool_out(a.tool))
    return msg


def notification_out(n: OwnerNotification) -> az.OwnerNotification:
    return az.OwnerNotification(
        owner_id=n.owner_id,
        text=n.text,
        buttons=[
            az.Button(action=enum_out(ACTION, b.action), label=b.label, callback_payload=b.callback_payload)
            for b in n.buttons
        ],
    )


def grant_out(g: Grant) -> adm.Grant:
    return adm.Grant(
        grant_id=g.grant_id,
        agent_id=g.agent_id,
        tool=tool_out(g.tool),
        approval_id=g.approval_id,
        created_by=g.created_by,
        created_at=ts(g.created_at),
        revoked_at=ts(g.revoked_at),
        revoked_by=g.revoked_by,
    )


def invite_out(i: Invite) -> adm.Invite:
    return adm.Invite(
        invite_id=i.invite_id,
        channel_id=i.channel_id,
        max_uses=i.max_uses,
        uses=i.uses,
        created_at=ts(i.created_at),
        expires_at=ts(i.expires_at),
        revoked_at=ts(i.revoked_at),
        created_by=i.created_by,
        permissions=list(i.permissions),
        note=i.note,
    )


def subject_out(s: Subject) -> adm.Subject:
    return adm.Subject(
        channel_id=s.channel_id,
        user_id=s.user_id,
        display_name=s.display_name,
        status=adm.SUBJECT_STATUS_ALLOWED
        if s.status is SubjectStatus.ALLOWED
        else adm.SUBJECT_STATUS_BLOCKED,
        source=adm.SUBJECT_SOURCE_PAIRING if s.source is SubjectSource.PAIRING else adm.SUBJECT_SOURCE_ADMIN,
        permissions=list(s.permissions),
        updated_at=ts(s.updated_at),
        expires_at=ts(s.expires_at),
    )


def text(value: str, field: str, max_len: int) -> str:
    return ids.bounded_text(value, field, max_len)
