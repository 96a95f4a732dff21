"""One user's rows on one channel, for their data rights (flows.data_rights):
export, purge, anonymise. Their audit events are in ``store.audit``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from .db import Connection, row_count
from .notify import APPROVALS as NOTIFY_CHANNEL
from .subjects import GroupSender, group_sender_from_row


@dataclass(frozen=True, slots=True)
class SubjectExport:
    """The user's subject row, every column but the tenant (field order: the export's)."""

    channel_id: str
    user_id: str
    status: str
    source: str
    display_name: str
    permissions: tuple[str, ...]
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ApprovalExport:
    """An approval row as exported: everything but key material (code seed and
    keyed hash) and the agent's idempotency key (field order: the export's)."""

    approval_id: str
    kind: str
    channel_id: str | None
    user_id: str
    display_name: str
    status: str
    created_at: datetime
    expires_at: datetime
    resolved_at: datetime | None
    resolved_by: str
    reason: str
    tool_name: str | None
    arguments: str | None
    arguments_digest: bytes | None
    agent_id: str | None
    session_id: str | None
    risk: str | None
    summary: str | None
    redeemed_at: datetime | None
    grant_id: str | None
    required_approvals: int
    approved_by: tuple[str, ...]
    first_message: str
    handle: str
    platform: str


def _export(row: asyncpg.Record) -> ApprovalExport:
    values = dict(row.items())
    values["approved_by"] = tuple(values["approved_by"] or ())
    return ApprovalExport(**values)


_APPROVAL_EXPORT_COLUMNS = """approval_id, kind, channel_id, user_id, display_name, status, created_at,
    expires_at, resolved_at, resolved_by, reason, tool_name, arguments, arguments_digest, agent_id, session_id,
    risk, summary, redeemed_at, grant_id, required_approvals, approved_by, first_message, handle, platform"""


async def subject(conn: Connection, tenant_id: str, channel_id: str, user_id: str) -> SubjectExport | None:
    row = await conn.fetchrow(
        """SELECT channel_id, user_id, status, source, display_name, permissions, expires_at, created_at,
                  updated_at
           FROM subjects WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3""",
        tenant_id, channel_id, user_id,
    )  # fmt: skip
    if row is None:
        return None
    values = dict(row.items())
    values["permissions"] = tuple(values["permissions"] or ())
    return SubjectExport(**values)


async def group_senders(conn: Connection, tenant_id: str, channel_id: str, user_id: str) -> list[GroupSender]:
    rows = await conn.fetch(
        """SELECT channel_id, group_id, user_id, created_at FROM group_senders
           WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3 ORDER BY group_id""",
        tenant_id, channel_id, user_id,
    )  # fmt: skip
    return [group_sender_from_row(r) for r in rows]


async def approvals(conn: Connection, tenant_id: str, channel_id: str, user_id: str) -> list[ApprovalExport]:
    """Pairing requests and tool calls the user requested on the channel, oldest first."""
    rows = await conn.fetch(
        f"""SELECT {_APPROVAL_EXPORT_COLUMNS} FROM approvals
            WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3
            ORDER BY created_at, approval_id""",
        tenant_id, channel_id, user_id,
    )  # fmt: skip
    return [_export(r) for r in rows]


async def delete_rows(
    conn: Connection, tenant_id: str, channel_id: str, user_id: str
) -> tuple[int, int, list[str]]:
    """Delete the user's subject, group sender and approval rows, rate bucket and
    invite attempt counter on the channel:
    (subjects deleted, group senders deleted, ids of the approvals deleted).
    Watchers of a deleted approval are woken, and find it gone."""
    subjects = await conn.execute(
        "DELETE FROM subjects WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3",
        tenant_id, channel_id, user_id,
    )  # fmt: skip
    senders = await conn.execute(
        "DELETE FROM group_senders WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3",
        tenant_id, channel_id, user_id,
    )  # fmt: skip
    gone = await conn.fetch(
        "DELETE FROM approvals WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3 RETURNING approval_id",
        tenant_id, channel_id, user_id,
    )  # fmt: skip
    for row in gone:
        await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{tenant_id} {row['approval_id']}")
    # The user's rate-limit bucket holds their id: it goes too (a missing bucket is a full one).
    await conn.execute(
        "DELETE FROM rate_buckets WHERE tenant_id = $1 AND channel_id = $2 AND scope = $3",
        tenant_id, channel_id, f"user:{user_id}",
    )  # fmt: skip
    # So does their invite attempt counter (flows.invites); a missing counter is an empty window.
    await conn.execute(
        "DELETE FROM attempt_limits WHERE tenant_id = $1 AND scope = $2",
        tenant_id, f"invite:user:{channel_id}:{user_id}",
    )  # fmt: skip
    return row_count(subjects), row_count(senders), [row["approval_id"] for row in gone]


async def scrub_rows(conn: Connection, tenant_id: str, channel_id: str, user_id: str) -> tuple[int, int]:
    """Remove the user's personal data from their subject and approval rows,
    keeping every state: display names, handles, first messages and the
    resolvers' reasons are blanked,
    and so are the arguments and summary of their decided tool calls (a pending
    one keeps them: an approver must see what they approve; redeeming needs
    only the digest). Returns (subjects, approvals) changed."""
    subjects = await conn.execute(
        """UPDATE subjects SET display_name = '', updated_at = now()
           WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3 AND display_name <> ''""",
        tenant_id, channel_id, user_id,
    )  # fmt: skip
    approvals = await conn.execute(
        """UPDATE approvals SET display_name = '', reason = '', first_message = '', handle = '',
                  arguments = CASE WHEN kind = 'tool' AND status <> 'pending' THEN '' ELSE arguments END,
                  summary = CASE WHEN kind = 'tool' AND status <> 'pending' THEN '' ELSE summary END
           WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3
             AND (display_name <> '' OR reason <> '' OR first_message <> '' OR handle <> ''
                  OR (kind = 'tool' AND status <> 'pending' AND (arguments <> '' OR summary <> '')))""",
        tenant_id, channel_id, user_id,
    )  # fmt: skip
    return row_count(subjects), row_count(approvals)


@dataclass(frozen=True, slots=True)
class PseudonymScope:
    """Where a purged user's id may still stand in rows that are not theirs:
    ``actor`` ("<platform>:<user id>") as the resolver or a voter of other
    users' approvals on the channel or without one, or as the maker or revoker
    of a standing grant from such an approval; and session ids an agent chose
    that hold the user id as a token (``session_pattern``)."""

    tenant_id: str
    channel_id: str
    actor: str
    pseudonym: str
    session_pattern: str


async def pseudonymize_rows(conn: Connection, scope: PseudonymScope) -> tuple[int, int]:
    """Replace the user's id by the pseudonym in other users' approvals
    (``resolved_by``, ``approved_by``, ``session_id``) and in standing grants
    (``created_by``, ``revoked_by``). The rows and their state stay: a grant
    keeps working, a decision stands. A vote of theirs on a request still
    pending no longer qualifies when the deciding vote comes (a pseudonym is no
    approver: fail closed). Returns (approvals, grants) changed."""
    approvals = await conn.execute(
        """UPDATE approvals SET
                  resolved_by = CASE WHEN resolved_by = $3 THEN $4 ELSE resolved_by END,
                  approved_by = array_replace(approved_by, $3, $4),
                  session_id = CASE WHEN session_id ~ $5 THEN $4 ELSE session_id END
           WHERE tenant_id = $1 AND (channel_id = $2 OR channel_id IS NULL)
             AND (resolved_by = $3 OR $3 = ANY(approved_by) OR session_id ~ $5)""",
        scope.tenant_id, scope.channel_id, scope.actor, scope.pseudonym, scope.session_pattern,
    )  # fmt: skip
    # A grant is tenant-wide; it is the channel's when the approval it came from
    # was (or had no channel, or is gone: the user's own, deleted just before).
    grants = await conn.execute(
        """UPDATE tool_grants g SET
                  created_by = CASE WHEN created_by = $3 THEN $4 ELSE created_by END,
                  revoked_by = CASE WHEN revoked_by = $3 THEN $4 ELSE revoked_by END
           WHERE tenant_id = $1 AND (created_by = $3 OR revoked_by = $3)
             AND NOT EXISTS (SELECT 1 FROM approvals a
                             WHERE a.tenant_id = $1 AND a.approval_id = g.approval_id AND a.channel_id <> $2)""",
        scope.tenant_id, scope.channel_id, scope.actor, scope.pseudonym,
    )  # fmt: skip
    return row_count(approvals), row_count(grants)


async def forget_send_denials(conn: Connection, scope: PseudonymScope) -> int:
    """Drop the channel's counts of denied sends (``send_denials``, working
    state until summarised) whose target, origin, session or reason name the
    user. The first denial of each bucket is already an audit event, which the
    purge pseudonymises; the rest of a bucket's count for this user is erased
    with them rather than summarised under their id. Returns the rows dropped."""
    done = await conn.execute(
        """DELETE FROM send_denials
           WHERE tenant_id = $1 AND channel_id = $2
             AND (target ~ $3 OR origin ~ $3 OR session_id ~ $3 OR reason ~ $3)""",
        scope.tenant_id, scope.channel_id, scope.session_pattern,
    )  # fmt: skip
    return row_count(done)
