"""Who may talk to the agent: the CheckUser decision.

A pure function of (channel, stored subject state, request, clock), so every
rule is testable without a database. Order matters and is the documented
precedence: unknown channel, blocklist, then the DM or group rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from .model import (
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


def _deny(reason: str) -> Verdict:
    # Denials are silent: a stranger learns nothing about the bot's rules.
    return Verdict(Decision.DENY, reason)


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
    """
    if channel is None:
        return _deny("channel_not_configured")
    policy = channel.policy
    if subject is not None and subject.status is SubjectStatus.BLOCKED:
        return Verdict(Decision.BLOCKED, "user_blocked")

    allowed = subject is not None and subject.status is SubjectStatus.ALLOWED
    # Without the database clock an expiring pairing counts as expired (fail closed).
    expires_at = subject.expires_at if subject is not None else None
    expired = allowed and expires_at is not None and (now is None or expires_at <= now)

    def allow(reason: str) -> Verdict:
        perms = subject.permissions if subject is not None and allowed and not expired else ()
        return Verdict(Decision.ALLOW, reason, agent_id=policy.agent_id, permissions=perms)

    if message.chat_kind is ChatKind.GROUP:
        if policy.group_policy is GroupPolicy.DISABLED:
            return _deny("group_disabled")
        if policy.require_mention and not message.mentioned:
            return _deny("mention_required")
        if policy.group_policy is GroupPolicy.OPEN:
            return allow("group_open")
        if in_group_allowlist:
            return allow("group_sender_allowed")
        return _deny("group_sender_not_allowed")

    if policy.dm_policy is DmPolicy.DISABLED:
        return _deny("dm_disabled")
    if allowed and not expired:
        assert subject is not None
        return allow("paired" if subject.source is SubjectSource.PAIRING else "allowlisted")
    if policy.dm_policy is DmPolicy.OPEN:
        return allow("dm_open")
    if policy.dm_policy is DmPolicy.ALLOWLIST:
        return _deny("not_allowlisted")
    # Pairing: the connector now calls RequestPairing and sends *its* text.
    return Verdict(Decision.PAIRING_REQUIRED, "pairing_expired" if expired else "pairing_required")
