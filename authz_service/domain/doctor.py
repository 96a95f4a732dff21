"""`authz doctor`: a security audit of one tenant, as a pure function.

:func:`findings` takes a :class:`Snapshot` of the tenant (settings, channels,
their users and group senders, pending pairing requests, the clock) and
returns what an operator should look at, most severe first. Where a check is
also a risk that `authz apply` wants acknowledged, it comes from
:mod:`domain.risks`, so both agree on what "open DMs with tools" means.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from . import risks, targets
from .model import (
    Approval,
    ApprovalStatus,
    Channel,
    DmPolicy,
    Platform,
    Role,
    SendDefault,
    SendPolicy,
    Subject,
    SubjectSource,
    SubjectStatus,
)
from .pairing import chat_approvers

STALE_PAIRING_AGE = timedelta(days=90)


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"

    @property
    def rank(self) -> int:
        """Higher is worse: info 0 ... critical 4."""
        return _RANK[self]


_RANK = {Severity.INFO: 0, Severity.LOW: 1, Severity.MEDIUM: 2, Severity.HIGH: 3, Severity.CRITICAL: 4}

# Finding codes (stable: scripts may match on them).
OPEN_DMS = risks.OPEN_DMS
OPEN_DMS_NO_TOOLS = "open_dms_no_tools"
OPEN_GROUPS = risks.OPEN_GROUPS
OPEN_GROUPS_MENTION = "open_groups_mention"
WILDCARD_GROUP_SENDER = risks.WILDCARD_GROUP_SENDER
SEND_DEFAULT_ALLOW = risks.SEND_DEFAULT_ALLOW
NO_SEND_POLICY = "no_send_policy"
PAIRING_NO_APPROVER = "pairing_no_approver"
PAIRING_SETTINGS_UNUSED = "pairing_settings_unused"
QUORUM_UNREACHABLE = "quorum_unreachable"
AUTO_APPROVE = risks.AUTO_APPROVE
NO_RATE_LIMIT = "no_rate_limit"
STALE_PAIRINGS = "stale_pairings"
EXPIRED_PENDING = "expired_pending"
NAME_ONLY_DENY = "name_only_deny"
UNBOUND_CONNECTOR_KEY = "unbound_connector_key"
UNBOUND_AGENT_KEY = "unbound_agent_key"
QUORUM_ONE_HOLDER = "quorum_one_holder"
APPROVER_UNREACHABLE = "approver_unreachable"
UNREACHABLE_WINDOW = timedelta(days=90)  # the audit events the check reads


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    code: str
    channel_id: str  # empty for tenant-wide findings
    message: str
    fix: str


@dataclass(frozen=True, slots=True)
class TenantView:
    approvers: tuple[str, ...] = ()
    agent_approvers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class KeyView:
    """A live API key: its binding (empty: tenant-wide, made before binding)."""

    key_id: str
    role: Role
    channels: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    tenant: TenantView
    channels: tuple[Channel, ...]
    # Per channel id: its users (allowlisted, paired, blocked) and group senders (group_id, user_id).
    subjects: Mapping[str, tuple[Subject, ...]]
    group_senders: Mapping[str, tuple[tuple[str, str], ...]]
    # Pending pairing requests of the tenant (their expiry may have passed).
    pending: tuple[Approval, ...]
    now: datetime
    # The tenant's unrevoked API keys.
    keys: tuple[KeyView, ...] = ()
    # Approvers the platform could not reach with their last notification (``unreachable_approvers``).
    unreachable: tuple[UnreachableView, ...] = ()


@dataclass(frozen=True, slots=True)
class UnreachableView:
    channel_id: str
    approver_id: str  # platform user id on the channel
    reason: str  # the platform's reason class, e.g. "chat_not_found"


def unreachable_approvers(events: Iterable[tuple[str, str, str, str]]) -> tuple[UnreachableView, ...]:
    """From ``notification.undeliverable`` / ``notification.reachable`` audit
    events, oldest first, as (event, channel id, approver id, reason): the
    approvers whose latest word is "undeliverable"."""
    latest: dict[tuple[str, str], str | None] = {}
    for event, channel_id, approver_id, reason in events:
        if event == "notification.undeliverable":
            latest[(channel_id, approver_id)] = reason
        elif event == "notification.reachable":
            latest[(channel_id, approver_id)] = None
    return tuple(UnreachableView(c, a, r) for (c, a), r in sorted(latest.items()) if r is not None)


_RISK_SEVERITY = {
    risks.OPEN_DMS: Severity.CRITICAL,
    risks.OPEN_GROUPS: Severity.HIGH,
    risks.WILDCARD_GROUP_SENDER: Severity.MEDIUM,
    risks.SEND_DEFAULT_ALLOW: Severity.HIGH,
    risks.AUTO_APPROVE: Severity.MEDIUM,
}
_RISK_FIX = {
    risks.OPEN_DMS: "set dm_policy to pairing or allowlist, or deny every tool in the catch-all binding "
    "(user_id '*', group_id '*', tools.denied ['*'])",
    risks.OPEN_GROUPS: "set require_mention: true for the group (or '*'), or use group_policy allowlist",
    risks.WILDCARD_GROUP_SENDER: "allow the user in the groups they need: "
    "`authz group remove CHANNEL '*' USER` then `authz group allow CHANNEL GROUP USER`",
    risks.SEND_DEFAULT_ALLOW: "use default: deny with an allow list (origin and the targets agents need)",
    risks.AUTO_APPROVE: "keep the patterns as narrow as possible; every auto-approval is audited "
    "(`authz audit --event pairing.`)",
}


def _is_name(key: str) -> bool:
    """A canonical target naming a conversation by name (``slack:#exec``,
    ``telegram:@board``), not by id: the service cannot tell which id it is."""
    return key.partition(":")[2].startswith(("#", "@"))


def name_only_denies(policy: SendPolicy, aliases: Mapping[str, str], platform: Platform) -> list[str]:
    """The deny entries of a ``default: allow`` policy that name a conversation
    only by name: the same conversation by its id (bare, prefixed, or as a
    copied mention) is another target, so it is allowed. An alias joining an
    id to the name (either way) covers it."""
    if policy.default is not SendDefault.ALLOW:
        return []
    try:
        keys = targets.normalise_aliases(aliases, platform)
    except ValueError:  # two aliases that are one name, or "origin": every send fails closed
        return []

    def end(target: str) -> str:  # "" where evaluating fails closed (a loop, a foreign digit)
        try:
            return targets.resolve(target, keys, platform)
        except ValueError:
            return ""

    joined = {end(a) for a in keys if not _is_name(a)}
    return [entry for entry in policy.deny if _is_name(key := end(entry)) and key not in joined]


def _channel_findings(snapshot: Snapshot, channel: Channel) -> list[Finding]:
    cid, p = channel.channel_id, channel.policy
    out: list[Finding] = []

    def add(severity: Severity, code: str, message: str, fix: str) -> None:
        out.append(Finding(severity, code, cid, message, fix))

    for r in risks.channel_risks(p, snapshot.group_senders.get(cid, ())):
        add(_RISK_SEVERITY[r.code], r.code, r.message, _RISK_FIX[r.code])

    if p.dm_policy is DmPolicy.OPEN and not risks.tools_possible(p):
        add(Severity.LOW, OPEN_DMS_NO_TOOLS,
            "anyone can DM the bot; the catch-all binding denies every tool",
            "fine for a public bot: keep a rate_limit and a narrow send policy")  # fmt: skip
    for scope in risks.open_group_scopes(p):
        if scope.rule.require_mention:
            add(Severity.MEDIUM, OPEN_GROUPS_MENTION,
                f"{scope.label}: anyone who mentions the bot reaches the agent",
                "use group_policy allowlist with group senders if only some members should reach it")  # fmt: skip

    if p.dm_policy is DmPolicy.OPEN and p.rate_limit is None:
        add(Severity.MEDIUM, NO_RATE_LIMIT, "DMs are open but there is no per-user rate limit",
            "set rate_limit: {max_messages_per_hour: N}")  # fmt: skip
    for scope in risks.open_group_scopes(p):
        if scope.rule.rate_limit is None and p.rate_limit is None:
            add(Severity.MEDIUM, NO_RATE_LIMIT,
                f"{scope.label} are open but have no rate limit (per group or per user)"
                if scope.group_id == risks.OTHER_GROUPS
                else f"{scope.label} is open but has no rate limit (per group or per user)",
                "set rate_limit on the channel (per user) or on the group rule (per group)")  # fmt: skip

    policies = [("send_policy", p.send_policy)] + [
        (f"agent_send_policies[{a}]", p.agent_send_policies[a]) for a in sorted(p.agent_send_policies)
    ]
    for where, policy in policies:
        names = name_only_denies(policy, p.aliases, channel.platform) if policy is not None else []
        if names:
            listed = ", ".join(repr(n) for n in names)
            add(Severity.MEDIUM, NAME_ONLY_DENY,
                f"{where}: default allow, and deny {listed} by name only: the same conversation by its id "
                "(bare, prefixed or a copied mention) is another target, so agents can still send there",
                'join each name to its id with an alias (aliases: {"slack:#exec": "slack:C0EXEC1"}), or use '
                "default: deny with an allow list")  # fmt: skip

    if p.send_policy is None:
        add(Severity.INFO, NO_SEND_POLICY,
            "no send policy: agents without their own may only reply to the conversation they were asked in",
            "set send_policy if agents should reach other targets")  # fmt: skip

    if p.dm_policy is DmPolicy.PAIRING:
        voters = chat_approvers(channel, snapshot.tenant.approvers)
        if not voters:
            add(Severity.MEDIUM, PAIRING_NO_APPROVER,
                "pairing channel with no owner, no channel approvers and no tenant approvers for "
                f"{channel.platform.value}: requests can only be approved with the CLI or the admin API",
                "set owner_id (gets Approve/Deny buttons) or approvers")  # fmt: skip
        if p.required_approvals > 1:
            # Each approver or admin key votes as itself ("key:<id>"), and a
            # connector key names whoever pressed: one holder can meet the quorum.
            carriers = sorted(
                k.key_id
                for k in snapshot.keys
                if k.role is Role.CONNECTOR and (not k.channels or cid in k.channels)
            )
            via = (
                f"; connector key{'s' if len(carriers) != 1 else ''} {', '.join(carriers)} can each "
                "cast every chat vote"
                if carriers
                else ""
            )
            add(Severity.MEDIUM, QUORUM_ONE_HOLDER,
                f"required_approvals is {p.required_approvals}, but one admin can meet it alone by minting "
                f"approver keys (each key votes as a separate approver){via}",
                "keep admin keys few and audited; check `authz audit --event pairing.vote` for key: voters "
                "and the key column; bind connector keys to their channels")  # fmt: skip
        if p.required_approvals > 1 and p.required_approvals > len(voters):
            add(Severity.HIGH, QUORUM_UNREACHABLE,
                f"required_approvals is {p.required_approvals} but only {len(voters)} "
                f"{'person' if len(voters) == 1 else 'people'} can approve pairing requests from chat "
                "(owner, channel approvers, tenant approvers): pairing cannot complete from chat",
                "add approvers or lower required_approvals")  # fmt: skip
    else:
        unused = [
            name
            for name, on in (
                ("auto_approve", p.auto_approve.enabled),
                ("required_approvals", p.required_approvals > 1),
            )
            if on
        ]
        if unused:
            add(Severity.INFO, PAIRING_SETTINGS_UNUSED,
                f"{' and '.join(unused)} {'have' if len(unused) > 1 else 'has'} no effect: "
                f"dm_policy is {p.dm_policy.value}, and they apply to pairing requests only",
                "remove them, or set dm_policy: pairing")  # fmt: skip

    if p.pairing_ttl_seconds == 0:
        cutoff = snapshot.now - STALE_PAIRING_AGE
        stale = [
            s
            for s in snapshot.subjects.get(cid, ())
            if s.source is SubjectSource.PAIRING
            and s.status is SubjectStatus.ALLOWED
            and s.expires_at is None
            and s.updated_at is not None
            and s.updated_at < cutoff
        ]
        if stale:
            add(Severity.LOW, STALE_PAIRINGS,
                f"{len(stale)} paired user{'s' if len(stale) != 1 else ''} paired more than "
                f"{STALE_PAIRING_AGE.days} days ago, and pairings on this channel never expire",
                "set pairing_ttl_seconds, and review with `authz users list CHANNEL --paired`")  # fmt: skip

    expired = [
        a
        for a in snapshot.pending
        if a.channel_id == cid and a.status is ApprovalStatus.PENDING and a.expires_at <= snapshot.now
    ]
    if expired:
        add(Severity.INFO, EXPIRED_PENDING,
            f"{len(expired)} pairing request{'s' if len(expired) != 1 else ''} past expiry still pending",
            "nothing to do: they can no longer be approved, do not count against max_pending, "
            "and the expiry sweep marks them expired within AUTHZ_EXPIRY_SWEEP_SECONDS")  # fmt: skip
    return out


def findings(snapshot: Snapshot) -> list[Finding]:
    """Every finding, most severe first, then by channel and code."""
    out = [f for ch in snapshot.channels for f in _channel_findings(snapshot, ch)]
    out += _key_findings(snapshot.keys)
    out += _unreachable_findings(snapshot)
    return sorted(out, key=lambda f: (-f.severity.rank, f.channel_id, f.code, f.message))


def _key_findings(keys: Iterable[KeyView]) -> list[Finding]:
    """Keys made before binding (migration 0012) act tenant-wide."""
    out = []
    for k in keys:
        if k.role is Role.CONNECTOR and not k.channels:
            out.append(Finding(Severity.HIGH, UNBOUND_CONNECTOR_KEY, "",
                f"connector key {k.key_id} acts on every channel of the tenant: if it leaks, its holder can "
                "pair anyone and press approval buttons as anyone on every channel",
                f"`authz key create connector --channel ID ...`, switch the connector to the new key, then "
                f"`authz key revoke {k.key_id}`"))  # fmt: skip
        elif k.role is Role.AGENT and not k.agents:
            out.append(Finding(Severity.HIGH, UNBOUND_AGENT_KEY, "",
                f"agent key {k.key_id} may speak for any agent id: it can use other agents' grants and "
                "approvals and their send policies",
                f"`authz key create agent --agent ID ...`, switch the runtime to the new key, then "
                f"`authz key revoke {k.key_id}`"))  # fmt: skip
    return out


def _unreachable_findings(snapshot: Snapshot) -> list[Finding]:
    """Approvers who get no notifications: their copies are audited as
    undeliverable, so a quorum may never complete from chat."""
    platforms = {ch.channel_id: ch.platform.value for ch in snapshot.channels}
    out = []
    for u in snapshot.unreachable:
        if u.channel_id not in platforms:
            continue  # the channel is gone
        who = f"{platforms[u.channel_id]}:{u.approver_id}"
        if u.reason == "chat_not_found":
            said = f"approver {who} on channel {u.channel_id} has never messaged the bot"
            fix = (
                "ask them to open a DM with the bot (send it any message); the next notification reaches them"
            )
        elif u.reason.startswith("outside_24h_window"):
            said = (
                f"approver {who} on channel {u.channel_id} has not written to the bot in the last 24 hours "
                f"({u.reason})"
            )
            fix = (
                "ask them to message the bot (WhatsApp lets a bot write only within 24 hours of the "
                "person's last message), or set whatsapp.notify_template to reach them outside that window "
                "with pairing requests (never with tool calls)"
            )
        else:
            said = f"approver {who} on channel {u.channel_id} cannot be reached by the bot ({u.reason})"
            fix = (
                "ask them to open a DM with the bot and allow its messages, or remove them from the approvers"
            )
        out.append(Finding(Severity.MEDIUM, APPROVER_UNREACHABLE, u.channel_id,
                           f"{said}: they get no approval notifications", fix))  # fmt: skip
    return out


def summary(found: Iterable[Finding]) -> dict[str, int]:
    counts = {s.value: 0 for s in Severity}
    for f in found:
        counts[f.severity.value] += 1
    return counts


def fails(found: Iterable[Finding], threshold: Severity | None) -> bool:
    """Whether any finding is at or above ``threshold`` (None: never)."""
    return threshold is not None and any(f.severity.rank >= threshold.rank for f in found)
