"""Notification copies: the outbox of approval notifications, one copy per
approver of the channel (migration 0016). A copy holds no message text: the
approver's platform id, the version of the approval it shows, the platform's
opaque message reference, and a short reason class when it could not be
delivered. Every query is scoped by tenant."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ..domain.model import Approval
from .approvals import approval_from_row
from .db import Connection, row_count

POSTED = "posted"
UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class NoticeSubject:
    """An approval whose copies may be behind: its current ``version`` (what a
    copy must show) and, for a pending pairing request, its code seed."""

    approval: Approval
    version: int
    code_seed: bytes | None


@dataclass(frozen=True, slots=True)
class Copy:
    approval_id: str
    channel_id: str
    approver_id: str
    state: str  # "new" (handed out, never acknowledged) | "posted" | "unreachable"
    shown_version: int
    message_ref: str
    reason: str
    lease_version: int
    created_at: datetime
    updated_at: datetime


def _copy(row: asyncpg.Record) -> Copy:
    return Copy(
        row["approval_id"], row["channel_id"], row["approver_id"], row["state"], row["shown_version"],
        row["message_ref"], row["reason"], row["lease_version"], row["created_at"], row["updated_at"],
    )  # fmt: skip


def _subject(row: asyncpg.Record) -> NoticeSubject:
    seed = row["code_seed"]
    return NoticeSubject(approval_from_row(row), row["notice_version"], None if seed is None else bytes(seed))


async def backlog(conn: Connection, tenant_id: str, channel_id: str, limit: int) -> list[NoticeSubject]:
    """The channel's approvals whose copies may be behind: the live pending ones,
    and decided or expired ones with a posted copy that shows an older version
    (its buttons are still live). Oldest first."""
    rows = await conn.fetch(
        """SELECT a.* FROM approvals a
           WHERE a.tenant_id = $1 AND a.channel_id = $2
             AND ((a.status = 'pending' AND a.expires_at > now())
                  OR EXISTS (SELECT 1 FROM notification_copies c
                             WHERE c.tenant_id = a.tenant_id AND c.approval_id = a.approval_id
                               AND c.state = 'posted' AND c.shown_version < a.notice_version))
           ORDER BY a.created_at, a.approval_id LIMIT $3""",
        tenant_id, channel_id, limit,
    )  # fmt: skip
    return [_subject(r) for r in rows]


async def subject(conn: Connection, tenant_id: str, approval_id: str) -> NoticeSubject | None:
    row = await conn.fetchrow(
        "SELECT * FROM approvals WHERE tenant_id = $1 AND approval_id = $2", tenant_id, approval_id
    )
    return None if row is None else _subject(row)


async def copies_of(conn: Connection, tenant_id: str, approval_ids: list[str]) -> list[Copy]:
    rows = await conn.fetch(
        "SELECT * FROM notification_copies WHERE tenant_id = $1 AND approval_id = ANY($2::text[])",
        tenant_id, approval_ids,
    )  # fmt: skip
    return [_copy(r) for r in rows]


async def get(conn: Connection, tenant_id: str, approval_id: str, approver_id: str) -> Copy | None:
    row = await conn.fetchrow(
        """SELECT * FROM notification_copies
           WHERE tenant_id = $1 AND approval_id = $2 AND approver_id = $3 FOR UPDATE""",
        tenant_id, approval_id, approver_id,
    )  # fmt: skip
    return None if row is None else _copy(row)


@dataclass(frozen=True, slots=True)
class ClaimInput:
    tenant_id: str
    approval_id: str
    channel_id: str
    approver_id: str
    version: int
    lease_seconds: float
    create: bool  # make the copy if there is none (a pending approval's new copy)


async def claim(conn: Connection, c: ClaimInput) -> Copy | None:
    """Lease a copy that is behind ``version`` for ``lease_seconds``, so one
    stream hands it out at a time; None if it is leased (or unreachable, or
    already shows that version)."""
    if c.create:
        row = await conn.fetchrow(
            """INSERT INTO notification_copies AS n
                   (tenant_id, approval_id, channel_id, approver_id, lease_until, lease_version)
               VALUES ($1, $2, $3, $4, now() + make_interval(secs => $6), $5)
               ON CONFLICT (tenant_id, approval_id, approver_id) DO UPDATE
                   SET lease_until = EXCLUDED.lease_until, lease_version = EXCLUDED.lease_version
                   WHERE n.state <> 'unreachable' AND n.shown_version < $5
                     AND (n.lease_until IS NULL OR n.lease_until <= now())
               RETURNING *""",
            c.tenant_id, c.approval_id, c.channel_id, c.approver_id, c.version, c.lease_seconds,
        )  # fmt: skip
    else:
        row = await conn.fetchrow(
            """UPDATE notification_copies
               SET lease_until = now() + make_interval(secs => $5), lease_version = $4
               WHERE tenant_id = $1 AND approval_id = $2 AND approver_id = $3
                 AND state = 'posted' AND shown_version < $4
                 AND (lease_until IS NULL OR lease_until <= now())
               RETURNING *""",
            c.tenant_id, c.approval_id, c.approver_id, c.version, c.lease_seconds,
        )  # fmt: skip
    return None if row is None else _copy(row)


@dataclass(frozen=True, slots=True)
class AckInput:
    tenant_id: str
    approval_id: str
    approver_id: str
    version: int
    message_ref: str = ""  # delivered: the platform's reference
    reason: str = ""  # not delivered: the reason class


async def ack(conn: Connection, a: AckInput) -> Copy | None:
    """Record what a connector did with a copy. An acknowledgement older than
    what the copy shows changes nothing (idempotent, and a late one cannot undo
    a newer one). The lease ends when the leased version is acknowledged."""
    row = await conn.fetchrow(
        """UPDATE notification_copies SET
               state = CASE WHEN $6 <> '' THEN 'unreachable' ELSE 'posted' END,
               message_ref = CASE WHEN $6 <> '' THEN message_ref ELSE $5 END,
               reason = $6,
               shown_version = GREATEST(shown_version, $4),
               lease_until = CASE WHEN lease_version <= $4 THEN NULL ELSE lease_until END,
               updated_at = now()
           WHERE tenant_id = $1 AND approval_id = $2 AND approver_id = $3 AND shown_version <= $4
           RETURNING *""",
        a.tenant_id, a.approval_id, a.approver_id, a.version, a.message_ref, a.reason,
    )  # fmt: skip
    return None if row is None else _copy(row)


async def was_unreachable(conn: Connection, a: AckInput, channel_id: str) -> bool:
    """Whether the approver's latest other copy on the channel could not be delivered."""
    state = await conn.fetchval(
        """SELECT state FROM notification_copies
           WHERE tenant_id = $1 AND channel_id = $2 AND approver_id = $3 AND approval_id <> $4 AND state <> 'new'
           ORDER BY updated_at DESC LIMIT 1""",
        a.tenant_id, channel_id, a.approver_id, a.approval_id,
    )  # fmt: skip
    return bool(state == UNREACHABLE)


# --- data rights: the copies an approver received -------------------------------


async def of_approver(conn: Connection, tenant_id: str, channel_id: str, approver_id: str) -> list[Copy]:
    rows = await conn.fetch(
        """SELECT * FROM notification_copies WHERE tenant_id = $1 AND channel_id = $2 AND approver_id = $3
           ORDER BY created_at, approval_id""",
        tenant_id, channel_id, approver_id,
    )  # fmt: skip
    return [_copy(r) for r in rows]


async def delete_of_approver(conn: Connection, tenant_id: str, channel_id: str, approver_id: str) -> int:
    done = await conn.execute(
        "DELETE FROM notification_copies WHERE tenant_id = $1 AND channel_id = $2 AND approver_id = $3",
        tenant_id, channel_id, approver_id,
    )  # fmt: skip
    return row_count(done)
