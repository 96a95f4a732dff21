"""Risky settings of a channel, with stable codes.

A pure function of the channel's policy and its group senders. `authz apply`
refuses a policy file whose channel has a risk without the risk's code in the
channel's ``acknowledge:`` list, and `authz doctor` reports the same risks:
this module is the one definition of each.

Codes (stable: they are written into policy files):

``open_dms``
    ``dm_policy: open`` while the agent may have tools, i.e. unless the
    catch-all binding (user ``"*"``, group ``"*"``) denies every tool (``"*"``
    in ``tools.denied``).
``open_groups``
    A group where the effective rule (own rule, then ``"*"``, then the channel;
    see :func:`access.effective_group`) is ``open`` without ``require_mention``.
``wildcard_group_sender``
    A group sender allowed in every group (``group_id: "*"``).
``send_default_allow``
    The channel's send policy, or an agent's, with ``default: allow``.
``auto_approve``
    Pairing requests approved without a person (``auto_approve`` lists set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .access import EffectiveGroup, effective_group
from .model import ChannelPolicy, DmPolicy, GroupPolicy, SendDefault

OPEN_DMS = "open_dms"
OPEN_GROUPS = "open_groups"
WILDCARD_GROUP_SENDER = "wildcard_group_sender"
SEND_DEFAULT_ALLOW = "send_default_allow"
AUTO_APPROVE = "auto_approve"

RISK_CODES: tuple[str, ...] = (OPEN_DMS, OPEN_GROUPS, WILDCARD_GROUP_SENDER, SEND_DEFAULT_ALLOW, AUTO_APPROVE)

# The scope of every group without its own rule: not a valid group id, so
# effective_group() falls through to the "*" rule and then the channel.
OTHER_GROUPS = ""


@dataclass(frozen=True, slots=True)
class ChannelRisk:
    """One risky setting. ``field`` is where it is set, as a policy-file path
    relative to the channel (``policy.dm_policy``, ``group_senders[2]``)."""

    code: str
    field: str
    message: str


@dataclass(frozen=True, slots=True)
class GroupScope:
    """The effective rules of one group, or of every group without its own rule."""

    group_id: str  # OTHER_GROUPS for "every group without its own rule"
    rule: EffectiveGroup
    policy_field: str  # where the effective group policy comes from

    @property
    def label(self) -> str:
        return "groups without their own rule" if self.group_id == OTHER_GROUPS else f"group {self.group_id}"


def tools_possible(policy: ChannelPolicy) -> bool:
    """Whether a stranger in a direct message may get an agent with tools: yes
    unless the catch-all binding (user and group ``"*"``) denies ``"*"``."""
    for b in policy.bindings:
        if b.user_id == "*" and b.group_id == "*":
            return "*" not in b.tools_denied
    return True


def dms_open_with_tools(policy: ChannelPolicy) -> bool:
    return policy.dm_policy is DmPolicy.OPEN and tools_possible(policy)


def _policy_field(policy: ChannelPolicy, group_id: str) -> str:
    for key in (group_id, "*"):
        rule = policy.groups.get(key)
        if key and rule is not None and rule.policy is not None:
            return f"policy.groups[{key}].policy"
    return "policy.group_policy"


def group_scopes(policy: ChannelPolicy) -> list[GroupScope]:
    """Every distinct group scope: groups without their own rule, then each
    group with a rule (sorted)."""
    ids = [OTHER_GROUPS, *sorted(g for g in policy.groups if g != "*")]
    return [GroupScope(g, effective_group(policy, g), _policy_field(policy, g)) for g in ids]


def open_group_scopes(policy: ChannelPolicy) -> list[GroupScope]:
    return [s for s in group_scopes(policy) if s.rule.policy is GroupPolicy.OPEN]


def channel_risks(policy: ChannelPolicy, group_senders: Sequence[tuple[str, str]] = ()) -> list[ChannelRisk]:
    """The risky settings of a (validated) policy and its group senders
    ``(group_id, user_id)``, in a stable order."""
    out: list[ChannelRisk] = []
    if dms_open_with_tools(policy):
        out.append(
            ChannelRisk(
                OPEN_DMS,
                "policy.dm_policy",
                "anyone can DM the bot and the agent may run tools (the catch-all binding does not deny '*')",
            )
        )
    for scope in open_group_scopes(policy):
        if not scope.rule.require_mention:
            out.append(
                ChannelRisk(
                    OPEN_GROUPS,
                    scope.policy_field,
                    f"{scope.label}: anyone in the group reaches the agent, without mentioning the bot",
                )
            )
    for i, (group_id, user_id) in enumerate(group_senders):
        if group_id == "*":
            out.append(
                ChannelRisk(
                    WILDCARD_GROUP_SENDER,
                    f"group_senders[{i}]",
                    f"user {user_id} may speak to the bot in every group, including groups added later",
                )
            )
    if policy.send_policy is not None and policy.send_policy.default is SendDefault.ALLOW:
        out.append(
            ChannelRisk(
                SEND_DEFAULT_ALLOW,
                "policy.send_policy.default",
                "agents may send anywhere not denied (send_policy default allow)",
            )
        )
    for agent in sorted(policy.agent_send_policies):
        if policy.agent_send_policies[agent].default is SendDefault.ALLOW:
            out.append(
                ChannelRisk(
                    SEND_DEFAULT_ALLOW,
                    f"policy.agent_send_policies[{agent}].default",
                    f"agent {agent} may send anywhere not denied (send policy default allow)",
                )
            )
    auto = policy.auto_approve
    if auto.enabled:
        rules = [*auto.phone_patterns, *(f"@{d}" for d in auto.email_domains)]
        out.append(
            ChannelRisk(
                AUTO_APPROVE,
                "policy.auto_approve",
                f"pairing requests matching {', '.join(rules)} are approved without a person",
            )
        )
    return out
