"""Who may talk to the agent: the CheckUser decision.

A pure function of (channel, stored subject state, request, clock), so every
rule is testable without a database. Order matters and is the documented
precedence: unknown channel, blocklist, then the DM or group rules (in DMs:
disabled, allowlisted or paired, the channel's own approvers, open, pairing); every ALLOW
is then routed by the most specific binding.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from . import mention
from .model import (
    Binding,
    Channel,
    ChannelPolicy,
    ChatKind,
    Decision,
    DmPolicy,
    GroupPolicy,
    RateLimit,
    Subject,
    SubjectSource,
    SubjectStatus,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Inbound:
    user_id: str
    chat_kind: ChatKind
    group_id: str = ""
    mentioned: bool = False
    text: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    reason: str
    text: str = ""
    agent_id: str = ""
    permissions: tuple[str, ...] = ()
    tools_allowed: tuple[str, ...] = ()
    tools_denied: tuple[str, ...] = ()
    retry_after_seconds: int = 0


@dataclass(frozen=True, slots=True)
class EffectiveGroup:
    """The rules in force for one group after inheritance.

    Each field comes from the group's own rule, else the ``"*"`` rule, else the
    channel (an empty list counts as unset).
    """

    policy: GroupPolicy
    require_mention: bool
    mention_patterns: tuple[str, ...]
    allowed_commands: tuple[str, ...]
    denied_commands: tuple[str, ...]
    rate_limit: RateLimit | None


def effective_group(policy: ChannelPolicy, group_id: str) -> EffectiveGroup:
    rules = [r for r in (policy.groups.get(group_id), policy.groups.get("*")) if r is not None]

    def first(values: list[T | None], fallback: T) -> T:
        return next((v for v in values if v is not None), fallback)

    def first_list(values: list[tuple[str, ...]], fallback: tuple[str, ...] = ()) -> tuple[str, ...]:
        return next((v for v in values if v), fallback)

    return EffectiveGroup(
        policy=first([r.policy for r in rules], policy.group_policy),
        require_mention=first([r.require_mention for r in rules], policy.require_mention),
        mention_patterns=first_list([r.mention_patterns for r in rules], policy.mention_patterns),
        allowed_commands=first_list([r.allowed_commands for r in rules]),
        denied_commands=first_list([r.denied_commands for r in rules]),
        rate_limit=first([r.rate_limit for r in rules], None),
    )


def binding_for(policy: ChannelPolicy, user_id: str, group_id: str) -> Binding | None:
    """The most specific binding for (user, group), if any.

    Specificity: user and group, then user and ``"*"``, then ``"*"`` and group,
    then ``"*"`` and ``"*"``. A direct message has no group (``group_id`` empty):
    only bindings for every group (``"*"``) apply to it. Validation keeps the
    (user, group) pairs unique, so there is never a tie.
    """
    best: Binding | None = None
    best_rank = 0
    for b in policy.bindings:
        if b.group_id == "*":
            group_rank = 1
        elif group_id and b.group_id == group_id:
            group_rank = 2
        else:
            continue
        if b.user_id == "*":
            rank = group_rank
        elif b.user_id == user_id:
            rank = group_rank + 2
        else:
            continue
        if rank > best_rank:
            best, best_rank = b, rank
            if rank == 4:
                break
    return best


def is_channel_approver(policy: ChannelPolicy, user_id: str) -> bool:
    """The channel's owner or one of its approvers (not the tenant's approvers:
    they are trusted to decide, not to talk to every channel's agent)."""
    return bool(user_id) and (user_id == policy.owner_id or user_id in policy.approvers)


def _deny(reason: str) -> Verdict:
    # Denials are silent: a stranger learns nothing about the bot's rules.
    return Verdict(Decision.DENY, reason)


def _group_verdict(policy: ChannelPolicy, in_group_allowlist: bool, message: Inbound) -> str | Verdict:
    """A group message: the ALLOW reason, or the denial."""
    rule = effective_group(policy, message.group_id)
    if rule.policy is GroupPolicy.DISABLED:
        return _deny("group_disabled")
    # Mention gating comes before commands: in a group that needs a mention, a
    # command that does not address the bot is someone else's business.
    if rule.require_mention and not (
        message.mentioned or mention.mentions(rule.mention_patterns, message.text)
    ):
        return _deny("mention_required")
    if rule.allowed_commands or rule.denied_commands:
        command = mention.command_of(message.text)
        if command is not None:
            # A malformed command ("") might be any command, a denied one too.
            if not command:
                return _deny("command_malformed")
            if command in rule.denied_commands:
                return _deny("command_denied")
            if rule.allowed_commands and command not in rule.allowed_commands:
                return _deny("command_not_allowed")
    if rule.policy is GroupPolicy.OPEN:
        return "group_open"
    # The group sender allowlist only: DM pairings never admit a group sender.
    return "group_sender_allowed" if in_group_allowlist else _deny("group_sender_not_allowed")


def check_user(
    channel: Channel | None,
    subject: Subject | None,
    in_group_allowlist: bool,
    message: Inbound,
    now: datetime | None,
) -> Verdict:
    """Decide one inbound message.

    ``subject`` is the user's DM-scope row on this channel (allowlisted, paired
    or blocked), ``in_group_allowlist`` whether the group sender allowlist
    admits the user for ``message.group_id``. DM pairings never admit a group
    sender: that was OpenClaw's leak.

    Every ALLOW is routed by :func:`binding_for`: its agent (else the
    channel's), the user's own permissions followed by the binding's, and the
    binding's tool lists. Other verdicts carry none of these.
    """
    if channel is None:
        return _deny("channel_not_configured")
    policy = channel.policy
    if subject is not None and subject.status is SubjectStatus.BLOCKED:
        return Verdict(Decision.BLOCKED, "user_blocked")

    # Without the database clock an expiring entry counts as lapsed (fail closed).
    admitted = subject is not None and subject.admitted(now)

    def allow(reason: str) -> Verdict:
        own = subject.permissions if subject is not None and admitted else ()
        binding = binding_for(policy, message.user_id, message.group_id)
        if binding is None:
            return Verdict(Decision.ALLOW, reason, agent_id=policy.agent_id, permissions=own)
        return Verdict(
            Decision.ALLOW,
            reason,
            agent_id=binding.agent_id or policy.agent_id,
            permissions=tuple(dict.fromkeys(own + binding.permissions)),
            tools_allowed=binding.tools_allowed,
            tools_denied=binding.tools_denied,
        )

    if message.chat_kind is ChatKind.GROUP:
        outcome = _group_verdict(policy, in_group_allowlist, message)
        return allow(outcome) if isinstance(outcome, str) else outcome

    if policy.dm_policy is DmPolicy.DISABLED:
        return _deny("dm_disabled")
    if admitted:
        assert subject is not None
        return allow("paired" if subject.source is SubjectSource.PAIRING else "allowlisted")
    if policy.approvers_trusted and is_channel_approver(policy, message.user_id):
        # The people who decide who gets in do not ask themselves for it.
        return allow("approver")
    if policy.dm_policy is DmPolicy.OPEN:
        return allow("dm_open")
    if policy.dm_policy is DmPolicy.ALLOWLIST:
        return _deny("not_allowlisted")
    # Pairing: the connector now calls RequestPairing and sends *its* text. A
    # lapsed time-limited pairing asks for a renewal rather than a first pairing.
    renewal = (
        subject is not None
        and subject.status is SubjectStatus.ALLOWED
        and subject.source is SubjectSource.PAIRING
        and subject.lapsed(now)
    )
    return Verdict(Decision.PAIRING_REQUIRED, "renewal_required" if renewal else "pairing_required")
