"""The audit trail's event names, and what an operator's ``--event`` filter means.

Every name the service writes is listed here (tests/test_audit_events.py checks
the code and docs/cli.md against it), so a filter can be checked before it is
sent: a typo is an error naming the known events, never a silent "(none)".
"""

from __future__ import annotations

AUDIT_EVENTS: frozenset[str] = frozenset(
    {
        "approval.unauthorized",
        "audit.pruned",
        "channel.deleted",
        "channel.updated",
        "grant.created",
        "grant.revoked",
        "group_sender.added",
        "group_sender.removed",
        "invite.attempts_exceeded",
        "invite.created",
        "invite.redeemed",
        "invite.revoked",
        "key.created",
        "key.revoked",
        "notification.reachable",
        "notification.undeliverable",
        "pairing.approved",
        "pairing.auto_approved",
        "pairing.blocked",
        "pairing.code_attempts_exceeded",
        "pairing.denied",
        "pairing.expired",
        "pairing.requested",
        "pairing.vote",
        "send.denied",
        "send.denied_summary",
        "tenant.approvers_updated",
        "tenant.created",
        "tenant.timezone_updated",
        "tool.approved",
        "tool.auto_approved",
        "tool.denied",
        "tool.expired",
        "tool.redeem_refused",
        "tool.redeemed",
        "tool.requested",
        "user.allowed",
        "user.anonymized",
        "user.blocked",
        "user.exported",
        "user.purged",
        "user.removed",
        "user.unblocked",
        "user.unpaired",
    }
)
FAMILIES: frozenset[str] = frozenset(e.split(".", 1)[0] for e in AUDIT_EVENTS)


def event_filter(text: str) -> str | None:
    """The QueryAudit ``event`` for what an operator typed: an event name as
    is, a family (``pairing`` or ``pairing.``) as its prefix ``pairing.``;
    None for anything else."""
    name = text.strip().lower()
    if name in AUDIT_EVENTS:
        return name
    family = name.removesuffix(".")
    return f"{family}." if family in FAMILIES else None
