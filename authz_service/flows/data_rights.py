"""Data rights for one user on one channel: export, purge, anonymise.

* Export: every row held about the user (their subject row, group sender
  entries, approvals, audit events, and the notification copies they received
  as an approver), never key material (code seeds, code
  hashes, request keys).
* Purge: the rows are deleted; the audit events stay, so the trail is intact,
  but name the user by a pseudonym (``Keyring.pseudonym``) and lose their
  personal details (display name, first message, tool arguments, reason text).
  Every other field of the channel's rows that holds their id (a resolver, a
  voter, a grant's maker, a session id) names the pseudonym instead.
* Purge and anonymise both delete the notification copies the user received
  as an approver (message references; no text is stored).
* Anonymise: the access state stays (the subject row keeps the user allowed or
  blocked, and needs their platform id for that); display names, resolvers'
  reasons and the arguments of decided tool calls are blanked, and the audit
  details scrubbed as for a purge, actor and subject kept.

Each runs in one tenant transaction and audits itself in it. Rewriting audit
events needs the transaction-local ``authz.anonymize`` setting, which only
these two flows set; the database trigger allows nothing but pseudonyms and
removals then (migration 0003).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..domain import ids
from ..store import audit, db, notices, users
from ..store.audit import AuditEvent, UserScope
from ..store.db import Connection
from . import Context

if TYPE_CHECKING:
    from _typeshed import DataclassInstance
from .approvals import load_channel


@dataclass(frozen=True)
class PurgeResult:
    subjects: int
    group_senders: int
    approvals: int
    audit_events: int
    pseudonym: str


@dataclass(frozen=True)
class AnonymizeResult:
    subjects: int
    approvals: int
    audit_events: int


def _value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_value(v) for v in value]
    return value


def _row(row: DataclassInstance) -> dict[str, Any]:
    return {f.name: _value(getattr(row, f.name)) for f in fields(row)}


def _event(event: AuditEvent) -> dict[str, Any]:
    out = _row(event)
    del out["details_json"]
    out["details"] = json.loads(event.details_json)
    return out


async def _audit(ctx: Context, conn: Connection, event: str, **kw: Any) -> None:
    await audit.record(conn, ctx.tenant_id, event, actor=ctx.principal.actor, trace_id=ctx.trace_id, **kw)


async def export_user(ctx: Context, channel_id: str, user_id: str) -> dict[str, Any]:
    """The user's data as a JSON-ready mapping. An export that found anything is
    audited ("user.exported"): who read whose data is worth knowing. One that
    found nothing is not, so exporting a purged user does not write their id
    back into the trail."""
    t = ctx.tenant_id
    async with ctx.db.tenant(t) as conn:
        channel = await load_channel(conn, t, channel_id, for_update=False)
        ids.user_id(channel.platform, user_id)
        actor = f"{channel.platform.value}:{user_id}"
        subject = await users.subject(conn, t, channel_id, user_id)
        senders = await users.group_senders(conn, t, channel_id, user_id)
        approvals = await users.approvals(conn, t, channel_id, user_id)
        user = UserScope(t, channel_id, user_id, actor, tuple(a.approval_id for a in approvals))
        events = await audit.user_events(conn, user)
        copies = await notices.of_approver(conn, t, channel_id, user_id)
        exported_at = await db.now(conn)
        if subject is not None or senders or approvals or events or copies:
            await _audit(ctx, conn, "user.exported", channel_id=channel_id, subject=user_id,
                         details={"audit_events": len(events), "approvals": len(approvals)})  # fmt: skip
    return {
        "channel_id": channel_id,
        "platform": channel.platform.value,
        "user_id": user_id,
        "exported_at": exported_at.isoformat(),
        "subject": None if subject is None else _row(subject),
        "group_senders": [_row(r) for r in senders],
        "approvals": [_row(r) for r in approvals],
        "audit_events": [_event(r) for r in events],
        # The approval notifications they received as an approver (no text is kept).
        "notification_copies": [_row(r) for r in copies],
    }


async def purge_user(ctx: Context, channel_id: str, user_id: str) -> PurgeResult:
    """Delete the user from every table and pseudonymise their audit events.
    Purging again finds nothing and changes nothing (the same pseudonym)."""
    t = ctx.tenant_id
    async with ctx.db.tenant(t) as conn:
        # Locking the channel row serialises with RequestPairing (which locks it
        # too), so no pairing request slips in between the delete and the rewrite.
        channel = await load_channel(conn, t, channel_id, for_update=True)
        ids.user_id(channel.platform, user_id)
        actor = f"{channel.platform.value}:{user_id}"
        pseudonym = ctx.keyring.pseudonym(t, channel.platform.value, user_id)
        subjects, senders, approval_ids = await users.delete_rows(conn, t, channel_id, user_id)
        # The copies of their own requests went with the approvals; these are the
        # notifications they received as an approver.
        await notices.delete_of_approver(conn, t, channel_id, user_id)
        # Where they were not the subject: a resolver, voter or grant maker, a session.
        sessions = ids.token_pattern(user_id)
        scope = users.PseudonymScope(t, channel_id, actor, pseudonym, sessions)
        await users.pseudonymize_rows(conn, scope)
        await users.forget_send_denials(conn, scope)
        await audit.enable_anonymization(conn)
        user = UserScope(t, channel_id, user_id, actor, tuple(approval_ids))
        events = await audit.pseudonymize(conn, user, pseudonym, sessions)
        result = PurgeResult(subjects, senders, len(approval_ids), events, pseudonym)
        counts = {k: v for k, v in asdict(result).items() if k != "pseudonym"}
        # Never the raw id: the event that records the erasure must not undo it.
        await _audit(ctx, conn, "user.purged", channel_id=channel_id, subject=pseudonym, details=counts)
    return result


async def anonymize_user(ctx: Context, channel_id: str, user_id: str) -> AnonymizeResult:
    """Remove the user's personal data but keep their access state."""
    t = ctx.tenant_id
    async with ctx.db.tenant(t) as conn:
        channel = await load_channel(conn, t, channel_id, for_update=False)
        ids.user_id(channel.platform, user_id)
        actor = f"{channel.platform.value}:{user_id}"
        subjects, approvals = await users.scrub_rows(conn, t, channel_id, user_id)
        # Delivery bookkeeping of the notifications they received as an approver
        # (message references): not access state, so it goes.
        await notices.delete_of_approver(conn, t, channel_id, user_id)
        approval_ids = tuple(a.approval_id for a in await users.approvals(conn, t, channel_id, user_id))
        await audit.enable_anonymization(conn)
        events = await audit.scrub_details(conn, UserScope(t, channel_id, user_id, actor, approval_ids))
        result = AnonymizeResult(subjects, approvals, events)
        await _audit(
            ctx, conn, "user.anonymized", channel_id=channel_id, subject=user_id, details=asdict(result)
        )
    return result
