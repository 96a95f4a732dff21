"""SQL, and nothing else. Every function takes a connection already inside a
tenant-scoped transaction and still filters by ``tenant_id`` explicitly:
row-level security is the second lock, not the only one. The one-statement
calls (``check_state``, ``pairing_create``, ``approval_state``,
``pairing_decide``) take the Database instead: their SQL functions set the
tenant themselves and run in the statement's own transaction."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from ..domain import policy as policy_codec
from ..domain.errors import AlreadyExists
from ..domain.invites import Invite
from ..domain.model import (
    Approval,
    ApprovalStatus,
    Channel,
    ChannelPolicy,
    Grant,
    Platform,
    Risk,
    Role,
    Subject,
    SubjectSource,
    SubjectStatus,
    ToolCall,
)
from .notify import APPROVALS as NOTIFY_CHANNEL

if TYPE_CHECKING:
    from .db import Database

Conn = asyncpg.Connection


async def now(conn: Conn) -> datetime:
    value: datetime = await conn.fetchval("SELECT now()")
    return value


# --- audit -------------------------------------------------------------------


async def audit(
    conn: Conn,
    tenant_id: str,
    event: str,
    *,
    actor: str = "",
    channel_id: str = "",
    subject: str = "",
    approval_id: str = "",
    trace_id: str = "",
    details: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO audit_events
               (tenant_id, event, actor, channel_id, subject, approval_id, trace_id, details)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)""",
        tenant_id, event, actor, channel_id, subject, approval_id, trace_id, json.dumps(details or {}),
    )  # fmt: skip


async def query_audit(
    conn: Conn,
    tenant_id: str,
    *,
    since: datetime | None,
    until: datetime | None,
    channel_id: str,
    user_id: str,
    event: str,
    after_event_id: int,
    limit: int,
) -> list[asyncpg.Record]:
    prefix = event.endswith(".")
    return await conn.fetch(
        """SELECT * FROM audit_events
           WHERE tenant_id = $1 AND event_id > $2
             AND ($3::timestamptz IS NULL OR at >= $3)
             AND ($4::timestamptz IS NULL OR at < $4)
             AND ($5 = '' OR channel_id = $5)
             AND ($6 = '' OR subject = $6)
             AND ($7 = '' OR (CASE WHEN $8 THEN starts_with(event, $7) ELSE event = $7 END))
           ORDER BY event_id LIMIT $9""",
        tenant_id, after_event_id, since, until, channel_id, user_id, event, prefix, limit,
    )  # fmt: skip


# --- tenants and keys ----------------------------------------------------------


async def insert_tenant(conn: Conn, tenant_id: str, display_name: str) -> asyncpg.Record:
    try:
        row = await conn.fetchrow(
            "INSERT INTO tenants (tenant_id, display_name) VALUES ($1, $2) RETURNING *",
            tenant_id,
            display_name,
        )
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"tenant {tenant_id!r} already exists") from None
    assert row is not None
    return row


async def list_tenants(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM tenants ORDER BY tenant_id")


async def tenant_approvers(conn: Conn, tenant_id: str) -> tuple[str, ...]:
    value = await conn.fetchval("SELECT approvers FROM tenants WHERE tenant_id = $1", tenant_id)
    return tuple(value or ())


async def set_tenant_approvers(conn: Conn, tenant_id: str, approvers: list[str]) -> None:
    await conn.execute("UPDATE tenants SET approvers = $2 WHERE tenant_id = $1", tenant_id, approvers)


async def tenant_timezone(conn: Conn, tenant_id: str) -> str:
    value = await conn.fetchval("SELECT timezone FROM tenants WHERE tenant_id = $1", tenant_id)
    return str(value or "UTC")


async def set_tenant_timezone(conn: Conn, tenant_id: str, timezone: str) -> str:
    """Returns the zone it replaced."""
    old = await conn.fetchval(
        """UPDATE tenants t SET timezone = $2 FROM tenants o
           WHERE t.tenant_id = $1 AND o.tenant_id = t.tenant_id RETURNING o.timezone""",
        tenant_id, timezone,
    )  # fmt: skip
    return str(old or "UTC")


async def agent_approvers(conn: Conn, tenant_id: str) -> dict[str, tuple[str, ...]]:
    value = await conn.fetchval("SELECT agent_approvers FROM tenants WHERE tenant_id = $1", tenant_id)
    data = json.loads(value) if value else {}
    return {str(k): tuple(str(a) for a in v) for k, v in data.items()}


async def set_agent_approvers(conn: Conn, tenant_id: str, approvers: dict[str, list[str]]) -> None:
    await conn.execute(
        "UPDATE tenants SET agent_approvers = $2::jsonb WHERE tenant_id = $1",
        tenant_id,
        json.dumps(approvers),
    )


async def insert_key(
    conn: Conn, tenant_id: str, key_id: str, role: Role, name: str, secret_hash: bytes
) -> asyncpg.Record:
    row = await conn.fetchrow(
        """INSERT INTO api_keys (tenant_id, key_id, role, name, secret_hash)
           VALUES ($1, $2, $3, $4, $5) RETURNING *""",
        tenant_id, key_id, role.value, name, secret_hash,
    )  # fmt: skip
    assert row is not None
    return row


async def get_key(conn: Conn, tenant_id: str, key_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM api_keys WHERE tenant_id = $1 AND key_id = $2", tenant_id, key_id
    )


async def list_keys(conn: Conn, tenant_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, key_id", tenant_id
    )


async def revoke_key(conn: Conn, tenant_id: str, key_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
           WHERE tenant_id = $1 AND key_id = $2 RETURNING *""",
        tenant_id, key_id,
    )  # fmt: skip


# --- channels ------------------------------------------------------------------


# The tenant's time zone travels with every channel that can reach the cache
# (get_channel, check_state, send_channel): send time windows are judged in it.
_TIMEZONE = "(SELECT tz.timezone FROM tenants tz WHERE tz.tenant_id = c.tenant_id) AS timezone"


def channel_from_row(tenant_id: str, row: asyncpg.Record) -> Channel:
    """Raises CorruptPolicy for a policy that does not parse: callers deny.
    Rows without a ``timezone`` column (admin listings) carry UTC."""
    return Channel(
        tenant_id,
        row["channel_id"],
        Platform(row["platform"]),
        policy_codec.from_json(json.loads(row["policy"])),
        row.get("timezone") or "UTC",
    )


async def get_channel(
    conn: Conn, tenant_id: str, channel_id: str, *, for_update: bool = False
) -> Channel | None:
    sql = f"""SELECT c.channel_id, c.platform, c.policy, c.updated_at, {_TIMEZONE}
               FROM channels c WHERE c.tenant_id = $1 AND c.channel_id = $2"""
    # NO KEY UPDATE: serializes writers of the channel (RequestPairing's cap) without
    # blocking the foreign-key KEY SHARE lock an approve takes to insert a subject,
    # which would deadlock with a RequestPairing waiting for that approve's request row.
    row = await conn.fetchrow(sql + (" FOR NO KEY UPDATE" if for_update else ""), tenant_id, channel_id)
    return None if row is None else channel_from_row(tenant_id, row)


async def get_channel_row(conn: Conn, tenant_id: str, channel_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT channel_id, platform, policy, updated_at FROM channels WHERE tenant_id = $1 AND channel_id = $2",
        tenant_id, channel_id,
    )  # fmt: skip


async def list_channel_rows(conn: Conn, tenant_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT channel_id, platform, policy, updated_at FROM channels WHERE tenant_id = $1 ORDER BY channel_id",
        tenant_id,
    )


async def upsert_channel(
    conn: Conn, tenant_id: str, channel_id: str, platform: Platform, policy: ChannelPolicy
) -> asyncpg.Record:
    row = await conn.fetchrow(
        """INSERT INTO channels (tenant_id, channel_id, platform, policy)
           VALUES ($1, $2, $3, $4::jsonb)
           ON CONFLICT (tenant_id, channel_id)
           DO UPDATE SET platform = EXCLUDED.platform, policy = EXCLUDED.policy, updated_at = now()
           RETURNING channel_id, platform, policy, updated_at""",
        tenant_id, channel_id, platform.value, json.dumps(policy_codec.to_json(policy)),
    )  # fmt: skip
    assert row is not None
    return row


async def delete_channel(conn: Conn, tenant_id: str, channel_id: str) -> bool:
    status = await conn.execute(
        "DELETE FROM channels WHERE tenant_id = $1 AND channel_id = $2", tenant_id, channel_id
    )
    return bool(status != "DELETE 0")


async def check_state(
    db: Database, tenant_id: str, channel_id: str, user_id: str, group_id: str
) -> asyncpg.Record | None:
    """Everything CheckUser needs, in one round trip (migration 0009 sets the
    tenant inside the function, so no explicit transaction is needed)."""
    return await db.fetchrow_as(
        tenant_id, "SELECT * FROM authz_check_state($1, $2, $3, $4)", tenant_id, channel_id, user_id, group_id
    )


async def send_channel(conn: Conn, tenant_id: str, channel_id: str) -> asyncpg.Record | None:
    """EvaluateSend's read: the channel, its tenant's zone and the database clock."""
    return await conn.fetchrow(
        f"""SELECT c.channel_id, c.platform, c.policy, now() AS now, {_TIMEZONE}
            FROM channels c WHERE c.tenant_id = $1 AND c.channel_id = $2""",
        tenant_id, channel_id,
    )  # fmt: skip


# --- subjects ------------------------------------------------------------------


def subject_from_row(channel_id: str, user_id: str, row: asyncpg.Record) -> Subject:
    return Subject(
        channel_id=channel_id,
        user_id=user_id,
        status=SubjectStatus(row["status"]),
        source=SubjectSource(row["source"]),
        display_name=row["display_name"],
        permissions=tuple(row["permissions"] or ()),
        expires_at=row["expires_at"],
        updated_at=row["updated_at"],
    )


async def get_subject(conn: Conn, tenant_id: str, channel_id: str, user_id: str) -> Subject | None:
    row = await conn.fetchrow(
        "SELECT * FROM subjects WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3 FOR UPDATE",
        tenant_id, channel_id, user_id,
    )  # fmt: skip
    return None if row is None else subject_from_row(channel_id, user_id, row)


async def put_subject(
    conn: Conn,
    tenant_id: str,
    channel_id: str,
    user_id: str,
    *,
    status: SubjectStatus,
    source: SubjectSource,
    display_name: str,
    permissions: list[str],
    ttl_seconds: int = 0,
) -> Subject:
    row = await conn.fetchrow(
        "SELECT * FROM authz_put_subject($1, $2, $3, $4, $5, $6, $7, $8)",
        tenant_id, channel_id, user_id, status.value, source.value, display_name, permissions, ttl_seconds,
    )  # fmt: skip
    assert row is not None
    return subject_from_row(channel_id, user_id, row)


async def delete_subject(
    conn: Conn,
    tenant_id: str,
    channel_id: str,
    user_id: str,
    *,
    status: SubjectStatus,
    source: SubjectSource | None,
) -> bool:
    result = await conn.execute(
        """DELETE FROM subjects WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3
             AND status = $4 AND ($5::text IS NULL OR source = $5)""",
        tenant_id, channel_id, user_id, status.value, None if source is None else source.value,
    )  # fmt: skip
    return bool(result != "DELETE 0")


async def list_subjects(
    conn: Conn, tenant_id: str, channel_id: str, status: SubjectStatus | None, source: SubjectSource | None
) -> list[Subject]:
    rows = await conn.fetch(
        """SELECT * FROM subjects WHERE tenant_id = $1 AND channel_id = $2
             AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR source = $4)
           ORDER BY user_id""",
        tenant_id, channel_id, None if status is None else status.value, None if source is None else source.value,
    )  # fmt: skip
    return [subject_from_row(channel_id, r["user_id"], r) for r in rows]


async def add_group_sender(
    conn: Conn, tenant_id: str, channel_id: str, group_id: str, user_id: str
) -> asyncpg.Record:
    row = await conn.fetchrow(
        """INSERT INTO group_senders (tenant_id, channel_id, group_id, user_id) VALUES ($1, $2, $3, $4)
           ON CONFLICT (tenant_id, channel_id, group_id, user_id) DO UPDATE SET user_id = EXCLUDED.user_id
           RETURNING *""",
        tenant_id, channel_id, group_id, user_id,
    )  # fmt: skip
    assert row is not None
    return row


async def remove_group_sender(
    conn: Conn, tenant_id: str, channel_id: str, group_id: str, user_id: str
) -> bool:
    result = await conn.execute(
        "DELETE FROM group_senders WHERE tenant_id = $1 AND channel_id = $2 AND group_id = $3 AND user_id = $4",
        tenant_id, channel_id, group_id, user_id,
    )  # fmt: skip
    return bool(result != "DELETE 0")


async def list_group_senders(
    conn: Conn, tenant_id: str, channel_id: str, group_id: str
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT * FROM group_senders WHERE tenant_id = $1 AND channel_id = $2 AND ($3 = '' OR group_id = $3)
           ORDER BY group_id, user_id""",
        tenant_id, channel_id, group_id,
    )  # fmt: skip


# --- approvals -----------------------------------------------------------------


def _tool_from_row(row: asyncpg.Record) -> ToolCall:
    return ToolCall(
        tool_name=row["tool_name"],
        arguments=row["arguments"],
        digest=bytes(row["arguments_digest"]),
        agent_id=row["agent_id"],
        session_id=row.get("session_id", ""),
        risk=Risk(row.get("risk", "medium")),
        summary=row.get("summary", ""),
    )


def approval_from_row(row: asyncpg.Record) -> Approval:
    return Approval(
        approval_id=row["approval_id"],
        channel_id=row["channel_id"] or "",
        user_id=row["user_id"],
        status=ApprovalStatus(row["status"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        display_name=row["display_name"],
        resolved_at=row["resolved_at"],
        resolved_by=row["resolved_by"],
        kind=row["kind"],
        reason=row["reason"],
        tool=_tool_from_row(row) if row["kind"] == "tool" else None,
        redeemed_at=row["redeemed_at"],
        grant_id=row["grant_id"],
        required_approvals=row.get("required_approvals") or 1,
        approved_by=_approved_by(row),
    )


def _approved_by(row: asyncpg.Record) -> tuple[str, ...]:
    """The votes; for an approval decided before votes were recorded (or by a
    standing grant), its resolver."""
    votes = tuple(row.get("approved_by") or ())
    if not votes and row["status"] == ApprovalStatus.APPROVED.value and row["resolved_by"]:
        return (row["resolved_by"],)
    return votes


async def pending_pairing_for_user(
    conn: Conn, tenant_id: str, channel_id: str, user_id: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT * FROM approvals WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3
             AND kind = 'pairing' AND status = 'pending' FOR UPDATE""",
        tenant_id, channel_id, user_id,
    )  # fmt: skip


async def count_live_pending(conn: Conn, tenant_id: str, channel_id: str) -> int:
    # count(approval_id), not count(*): a column outside approvals_pending_by_channel
    # makes this a plain index scan, which marks the entries of decided requests
    # dead as it passes them; an index-only scan would visit each one in the heap
    # on every count until the next VACUUM (same in authz_pairing_create).
    return int(
        await conn.fetchval(
            """SELECT count(approval_id) FROM approvals WHERE tenant_id = $1 AND channel_id = $2
                 AND status = 'pending' AND expires_at > now()""",
            tenant_id,
            channel_id,
        )
    )


async def insert_pairing(
    conn: Conn,
    tenant_id: str,
    approval_id: str,
    channel_id: str,
    user_id: str,
    display_name: str,
    code_seed: bytes,
    code_hash: bytes,
    ttl_seconds: int,
    required_approvals: int = 1,
) -> Approval:
    row = await conn.fetchrow(
        """INSERT INTO approvals (tenant_id, approval_id, kind, channel_id, user_id, display_name,
                                  code_seed, code_hash, expires_at, required_approvals)
           VALUES ($1, $2, 'pairing', $3, $4, $5, $6, $7, now() + make_interval(secs => $8), $9)
           RETURNING *""",
        tenant_id, approval_id, channel_id, user_id, display_name, code_seed, code_hash, ttl_seconds,
        required_approvals,
    )  # fmt: skip
    assert row is not None
    return approval_from_row(row)


async def insert_auto_approved_pairing(
    conn: Conn, tenant_id: str, approval_id: str, channel_id: str, user_id: str, display_name: str, actor: str
) -> Approval:
    """A pairing request approved by an auto-approve rule at once: no code, one vote."""
    row = await conn.fetchrow(
        """INSERT INTO approvals (tenant_id, approval_id, kind, channel_id, user_id, display_name, expires_at,
                                  status, resolved_at, resolved_by, approved_by)
           VALUES ($1, $2, 'pairing', $3, $4, $5, now(), 'approved', now(), $6, ARRAY[$6])
           RETURNING *""",
        tenant_id, approval_id, channel_id, user_id, display_name, actor,
    )  # fmt: skip
    assert row is not None
    return approval_from_row(row)


async def auto_approve_pending(conn: Conn, tenant_id: str, approval_id: str, actor: str) -> Approval | None:
    """Approve a live pairing request by an auto-approve rule. The rule decides
    alone (one vote of one required); earlier human votes stay in the audit
    trail. None: it was no longer pending and live."""
    row = await conn.fetchrow(
        """UPDATE approvals SET status = 'approved', resolved_at = now(), resolved_by = $3,
                  approved_by = ARRAY[$3::text], required_approvals = 1
           WHERE tenant_id = $1 AND approval_id = $2 AND status = 'pending' AND expires_at > now()
           RETURNING *""",
        tenant_id, approval_id, actor,
    )  # fmt: skip
    return None if row is None else approval_from_row(row)


async def add_approval_vote(conn: Conn, tenant_id: str, approval_id: str, actor: str) -> Approval | None:
    """Record one more distinct approver on a live request that needs more
    (compare-and-set: pending, unexpired, not yet voted by ``actor``, short of
    its quorum). None: the row changed under us."""
    row = await conn.fetchrow(
        """UPDATE approvals SET approved_by = approved_by || $3::text
           WHERE tenant_id = $1 AND approval_id = $2 AND status = 'pending' AND expires_at > now()
             AND NOT ($3 = ANY(approved_by)) AND cardinality(approved_by) + 1 < required_approvals
           RETURNING *""",
        tenant_id, approval_id, actor,
    )  # fmt: skip
    return None if row is None else approval_from_row(row)


async def replace_approval_votes(
    conn: Conn, tenant_id: str, approval_id: str, expected: tuple[str, ...], votes: tuple[str, ...]
) -> bool:
    """Set the votes of a live pending request to ``votes`` (compare-and-set:
    only if they are still ``expected``). False: the row changed under us."""
    row = await conn.fetchrow(
        """UPDATE approvals SET approved_by = $4::text[]
           WHERE tenant_id = $1 AND approval_id = $2 AND status = 'pending' AND expires_at > now()
             AND approved_by = $3::text[]
           RETURNING approval_id""",
        tenant_id, approval_id, list(expected), list(votes),
    )  # fmt: skip
    return row is not None


async def get_approval(
    conn: Conn, tenant_id: str, approval_id: str, *, for_update: bool = False
) -> asyncpg.Record | None:
    sql = "SELECT * FROM approvals WHERE tenant_id = $1 AND approval_id = $2"
    return await conn.fetchrow(sql + (" FOR UPDATE" if for_update else ""), tenant_id, approval_id)


async def approval_by_code(
    conn: Conn, tenant_id: str, channel_id: str, code_hash: bytes
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT * FROM approvals WHERE tenant_id = $1 AND channel_id = $2 AND code_hash = $3
           ORDER BY (status = 'pending') DESC, created_at DESC LIMIT 1 FOR UPDATE""",
        tenant_id, channel_id, code_hash,
    )  # fmt: skip


async def finish_approval(
    conn: Conn,
    tenant_id: str,
    approval_id: str,
    status: ApprovalStatus,
    actor: str,
    reason: str,
    *,
    live: bool,
) -> Approval | None:
    """Compare-and-set from pending. ``live`` requires it unexpired (a decision);
    otherwise it must have expired (the expiry transition). None: lost the race."""
    row = await conn.fetchrow(
        """UPDATE approvals SET status = $3, resolved_at = now(), resolved_by = $4, reason = $5,
                  approved_by = CASE WHEN $3 = 'approved' THEN approved_by || $4::text ELSE approved_by END
           WHERE tenant_id = $1 AND approval_id = $2 AND status = 'pending'
             AND (CASE WHEN $6 THEN expires_at > now() ELSE expires_at <= now() END)
             -- Approved only by the last distinct vote the quorum needs.
             AND ($3 <> 'approved'
                  OR (cardinality(approved_by) + 1 >= required_approvals AND NOT ($4 = ANY(approved_by))))
           RETURNING *""",
        tenant_id, approval_id, status.value, actor, reason, live,
    )  # fmt: skip
    return None if row is None else approval_from_row(row)


async def pairing_create(
    db: Database,
    tenant_id: str,
    channel: Channel,
    policy_json: str,
    user_id: str,
    approval_id: str,
    display_name: str,
    code_seed: bytes,
    code_hash: bytes,
    expires_at: datetime,
    ttl_seconds: int,
    required_approvals: int,
    max_pending: int,
    actor: str,
    trace_id: str,
    details: dict[str, Any],
) -> str:
    """RequestPairing's common case in one statement (migration 0010): the
    request and its audit row, written only if the user still has no subject
    row and no pending request, the channel's platform is still
    ``channel.platform`` and its policy ``policy_json``, it is under its cap and ``expires_at`` is within 2 s of the database's
    ``now()`` + ``ttl_seconds``. Returns ``created``, or why nothing was
    written: ``policy_changed``, ``state_changed`` or ``clock_skew``."""
    row = await db.fetchrow_as(
        tenant_id,
        """SELECT authz_pairing_create($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                                       $15, $16::jsonb)""",
        tenant_id, channel.channel_id, channel.platform.value, policy_json, user_id, approval_id, display_name, code_seed, code_hash,
        expires_at, ttl_seconds, required_approvals, max_pending, actor, trace_id, json.dumps(details),
    )  # fmt: skip
    assert row is not None
    return str(row[0])


async def approval_state(db: Database, tenant_id: str, approval_id: str) -> asyncpg.Record | None:
    """ResolveApproval's read in one round trip (migration 0010): ``approval``
    (the row), its channel (``channel_id``, ``platform``, ``policy``), ``now``,
    the tenant's ``approvers`` and the requester's ``subject_status``."""
    return await db.fetchrow_as(
        tenant_id, "SELECT * FROM authz_approval_state($1, $2)", tenant_id, approval_id
    )


async def pairing_decide(
    db: Database,
    tenant_id: str,
    approval_id: str,
    channel: Channel,
    policy_json: str,
    approvers: tuple[str, ...] | None,
    status: ApprovalStatus,
    actor: str,
    reason: str,
    subject: tuple[SubjectStatus, SubjectSource, int] | None,
    trace_id: str,
    details: dict[str, Any],
) -> Approval | None:
    """The single decision on a live pairing request with no votes that needs
    one (migration 0010): the request, the requester's ``subject`` (status,
    source, TTL in seconds) and the audit row in one statement, written only if
    the request is on ``channel``, whose platform is still ``channel.platform``
    and policy ``policy_json``, and the tenant's approvers are still
    ``approvers`` (None: not checked). None: the state moved (nothing
    was written)."""
    status_, source, ttl = (
        (None, None, 0) if subject is None else (subject[0].value, subject[1].value, subject[2])
    )
    row = await db.fetchrow_as(
        tenant_id,
        """SELECT * FROM authz_pairing_decide($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, $12, $13,
                                              $14::jsonb)""",
        tenant_id, approval_id, channel.channel_id, channel.platform.value, policy_json, None if approvers is None else list(approvers), status.value, actor,
        reason, status_, source, ttl, trace_id, json.dumps(details),
    )  # fmt: skip
    return None if row is None else approval_from_row(row)


async def cancel_pending_for_user(
    conn: Conn, tenant_id: str, channel_id: str, user_id: str, actor: str
) -> list[str]:
    rows = await conn.fetch(
        """UPDATE approvals SET status = 'blocked', resolved_at = now(), resolved_by = $4, reason = 'user blocked'
           WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3 AND status = 'pending'
           RETURNING approval_id""",
        tenant_id, channel_id, user_id, actor,
    )  # fmt: skip
    return [r["approval_id"] for r in rows]


async def list_approvals(
    conn: Conn, tenant_id: str, channel_id: str, status: ApprovalStatus | None, limit: int, kind: str = ""
) -> list[asyncpg.Record]:
    """Newest first; ``status`` None means every status, ``kind`` '' every kind."""
    return await conn.fetch(
        """SELECT * FROM approvals WHERE tenant_id = $1 AND ($2 = '' OR channel_id = $2)
             AND ($3::text IS NULL OR status = $3) AND ($5 = '' OR kind = $5)
           ORDER BY created_at DESC LIMIT $4""",
        tenant_id, channel_id, None if status is None else status.value, limit, kind,
    )  # fmt: skip


# --- tool approvals and grants -------------------------------------------------


async def tool_approval_by_key(conn: Conn, tenant_id: str, request_key: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM approvals WHERE tenant_id = $1 AND request_key = $2 FOR UPDATE", tenant_id, request_key
    )


async def insert_tool_approval(
    conn: Conn,
    tenant_id: str,
    approval_id: str,
    channel_id: str,
    requester_id: str,
    call: ToolCall,
    request_key: str,
    timeout_seconds: int,
    grant_id: str = "",
) -> Approval | None:
    """Pending, or approved at once when ``grant_id`` names a standing grant.
    None: another request with the same key won the race."""
    row = await conn.fetchrow(
        """INSERT INTO approvals (tenant_id, approval_id, kind, channel_id, user_id, tool_name, arguments,
                                  arguments_digest, agent_id, session_id, risk, summary, request_key,
                                  expires_at, status, resolved_at, resolved_by, grant_id)
           VALUES ($1, $2, 'tool', NULLIF($3, ''), $4, $5, $6, $7, $8, $9, $10, $11, NULLIF($12, ''),
                   now() + make_interval(secs => $13),
                   CASE WHEN $14 = '' THEN 'pending' ELSE 'approved' END,
                   CASE WHEN $14 = '' THEN NULL ELSE now() END,
                   CASE WHEN $14 = '' THEN '' ELSE 'grant:' || $14 END, $14)
           ON CONFLICT (tenant_id, request_key) WHERE request_key IS NOT NULL DO NOTHING
           RETURNING *""",
        tenant_id, approval_id, channel_id, requester_id, call.tool_name, call.arguments, call.digest,
        call.agent_id, call.session_id, call.risk.value, call.summary, request_key, timeout_seconds, grant_id,
    )  # fmt: skip
    return None if row is None else approval_from_row(row)


async def mark_redeemed(conn: Conn, tenant_id: str, approval_id: str) -> Approval | None:
    """Compare-and-set: only an approved, never redeemed approval. None: lost."""
    row = await conn.fetchrow(
        """UPDATE approvals SET redeemed_at = now()
           WHERE tenant_id = $1 AND approval_id = $2 AND status = 'approved' AND redeemed_at IS NULL
           RETURNING *""",
        tenant_id, approval_id,
    )  # fmt: skip
    return None if row is None else approval_from_row(row)


def grant_from_row(row: asyncpg.Record) -> Grant:
    return Grant(
        grant_id=row["grant_id"],
        agent_id=row["agent_id"],
        tool=_tool_from_row(row),  # a grant row has no session, risk or summary: defaults
        approval_id=row["approval_id"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        revoked_by=row["revoked_by"],
    )


async def live_grant(conn: Conn, tenant_id: str, agent_id: str, digest: bytes) -> Grant | None:
    row = await conn.fetchrow(
        """SELECT * FROM tool_grants WHERE tenant_id = $1 AND agent_id = $2 AND arguments_digest = $3
             AND revoked_at IS NULL""",
        tenant_id, agent_id, digest,
    )  # fmt: skip
    return None if row is None else grant_from_row(row)


async def insert_grant(
    conn: Conn, tenant_id: str, grant_id: str, call: ToolCall, approval_id: str, actor: str
) -> Grant:
    """Create the live grant for this exact call, or return the one that exists."""
    row = await conn.fetchrow(
        """INSERT INTO tool_grants (tenant_id, grant_id, agent_id, tool_name, arguments, arguments_digest,
                                    approval_id, created_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (tenant_id, agent_id, arguments_digest) WHERE revoked_at IS NULL DO NOTHING
           RETURNING *""",
        tenant_id, grant_id, call.agent_id, call.tool_name, call.arguments, call.digest, approval_id, actor,
    )  # fmt: skip
    if row is None:
        existing = await live_grant(conn, tenant_id, call.agent_id, call.digest)
        assert existing is not None
        return existing
    return grant_from_row(row)


async def list_grants(
    conn: Conn, tenant_id: str, agent_id: str, include_revoked: bool
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT * FROM tool_grants WHERE tenant_id = $1 AND ($2 = '' OR agent_id = $2)
             AND ($3 OR revoked_at IS NULL)
           ORDER BY created_at DESC LIMIT 1000""",
        tenant_id, agent_id, include_revoked,
    )  # fmt: skip


async def revoke_grant(conn: Conn, tenant_id: str, grant_id: str, actor: str) -> Grant | None:
    row = await conn.fetchrow(
        """UPDATE tool_grants SET revoked_at = coalesce(revoked_at, now()),
                  revoked_by = CASE WHEN revoked_at IS NULL THEN $3 ELSE revoked_by END
           WHERE tenant_id = $1 AND grant_id = $2 RETURNING *""",
        tenant_id, grant_id, actor,
    )  # fmt: skip
    return None if row is None else grant_from_row(row)


# --- invites -------------------------------------------------------------------


def invite_from_row(row: asyncpg.Record) -> Invite:
    return Invite(
        invite_id=row["invite_id"],
        channel_id=row["channel_id"],
        max_uses=row["max_uses"],
        uses=row["uses"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        created_by=row["created_by"],
        permissions=tuple(row["permissions"] or ()),
        note=row["note"],
    )


async def insert_invite(
    conn: Conn,
    tenant_id: str,
    invite_id: str,
    channel_id: str,
    code_hash: bytes,
    *,
    max_uses: int,
    ttl_seconds: int,
    permissions: list[str],
    note: str,
    created_by: str,
) -> Invite:
    row = await conn.fetchrow(
        """INSERT INTO invites (tenant_id, invite_id, channel_id, code_hash, max_uses, permissions, note,
                                created_by, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9))
           RETURNING *""",
        tenant_id, invite_id, channel_id, code_hash, max_uses, permissions, note, created_by, ttl_seconds,
    )  # fmt: skip
    assert row is not None
    return invite_from_row(row)


async def invite_by_hash(conn: Conn, tenant_id: str, channel_id: str, code_hash: bytes) -> Invite | None:
    """The invite with this code on this channel, locked (redeems queue up on it)."""
    row = await conn.fetchrow(
        "SELECT * FROM invites WHERE tenant_id = $1 AND channel_id = $2 AND code_hash = $3 FOR UPDATE",
        tenant_id, channel_id, code_hash,
    )  # fmt: skip
    return None if row is None else invite_from_row(row)


async def use_invite(conn: Conn, tenant_id: str, invite_id: str) -> Invite | None:
    """One more use, only of a live invite with a use left (compare-and-set).
    None: it was revoked, expired or used up meanwhile."""
    row = await conn.fetchrow(
        """UPDATE invites SET uses = uses + 1
           WHERE tenant_id = $1 AND invite_id = $2 AND revoked_at IS NULL AND expires_at > now()
             AND uses < max_uses
           RETURNING *""",
        tenant_id, invite_id,
    )  # fmt: skip
    return None if row is None else invite_from_row(row)


async def list_invites(conn: Conn, tenant_id: str, channel_id: str, include_inactive: bool) -> list[Invite]:
    """Newest first; ``channel_id`` '' means every channel."""
    rows = await conn.fetch(
        """SELECT * FROM invites WHERE tenant_id = $1 AND ($2 = '' OR channel_id = $2)
             AND ($3 OR (revoked_at IS NULL AND expires_at > now() AND uses < max_uses))
           ORDER BY created_at DESC, invite_id LIMIT 1000""",
        tenant_id, channel_id, include_inactive,
    )  # fmt: skip
    return [invite_from_row(r) for r in rows]


async def revoke_invite(conn: Conn, tenant_id: str, invite_id: str) -> tuple[Invite, bool] | None:
    """(the invite, whether this call revoked it); None if there is no such invite."""
    live = await conn.fetchval(
        "SELECT revoked_at IS NULL FROM invites WHERE tenant_id = $1 AND invite_id = $2 FOR UPDATE",
        tenant_id, invite_id,
    )  # fmt: skip
    if live is None:
        return None
    row = await conn.fetchrow(
        """UPDATE invites SET revoked_at = coalesce(revoked_at, now())
           WHERE tenant_id = $1 AND invite_id = $2 RETURNING *""",
        tenant_id, invite_id,
    )  # fmt: skip
    assert row is not None
    return invite_from_row(row), bool(live)


# --- attempt limits (pairing code guessing) ------------------------------------
#
# One counter row per (tenant, scope), migration 0005. A window starts at the
# first lookup after the previous window ended and lasts ``window_seconds``,
# judged by the database clock, so every replica counts in the same window.

_WINDOW_ENDED = "a.window_start + make_interval(secs => $3) <= now()"


async def open_attempt_window(
    conn: Conn, tenant_id: str, scopes: list[str], window_seconds: int
) -> dict[str, tuple[int, float]]:
    """Create and lock the counters of ``scopes`` (in the given order), start a
    new window for those whose window has ended, and return per scope the
    failures counted in its window and the seconds until the window ends. The
    row locks are held until commit, so concurrent lookups in one scope queue
    up and each sees the failures of the ones before it."""
    rows = await conn.fetch(
        f"""INSERT INTO attempt_limits AS a (tenant_id, scope)
            SELECT $1, u.scope FROM unnest($2::text[]) WITH ORDINALITY AS u(scope, i) ORDER BY u.i
            ON CONFLICT (tenant_id, scope) DO UPDATE SET
                failures = CASE WHEN {_WINDOW_ENDED} THEN 0 ELSE a.failures END,
                refused = CASE WHEN {_WINDOW_ENDED} THEN 0 ELSE a.refused END,
                window_start = CASE WHEN {_WINDOW_ENDED} THEN now() ELSE a.window_start END
            RETURNING scope, failures,
                      extract(epoch FROM window_start + make_interval(secs => $3) - now())::float8 AS left""",
        tenant_id, scopes, window_seconds,
    )  # fmt: skip
    return {r["scope"]: (int(r["failures"]), float(r["left"])) for r in rows}


async def count_attempt_failure(conn: Conn, tenant_id: str, scopes: list[str], window_seconds: int) -> None:
    """One more failure in each of ``scopes`` (opened by ``open_attempt_window``
    in this transaction). Also prunes the tenant's other counters whose window
    has ended: they hold nothing, and made-up channel ids must not pile up."""
    await conn.execute(
        "UPDATE attempt_limits SET failures = failures + 1 WHERE tenant_id = $1 AND scope = ANY($2::text[])",
        tenant_id, scopes,
    )  # fmt: skip
    await conn.execute(
        f"""DELETE FROM attempt_limits WHERE tenant_id = $1 AND scope IN (
                SELECT a.scope FROM attempt_limits a
                WHERE a.tenant_id = $1 AND NOT (a.scope = ANY($2::text[])) AND {_WINDOW_ENDED}
                FOR UPDATE SKIP LOCKED)""",
        tenant_id, scopes, window_seconds,
    )  # fmt: skip


async def count_attempt_refused(conn: Conn, tenant_id: str, scopes: list[str]) -> bool:
    """Count a lookup refused for being over the limit of ``scopes``. True if it
    is the first refusal in the window of one of them (the one worth auditing)."""
    rows = await conn.fetch(
        """UPDATE attempt_limits SET refused = refused + 1
           WHERE tenant_id = $1 AND scope = ANY($2::text[]) RETURNING refused""",
        tenant_id, scopes,
    )  # fmt: skip
    return any(r["refused"] == 1 for r in rows)


# --- data rights ---------------------------------------------------------------
#
# One user on one channel. Their audit events are those on the channel whose
# subject is the user, whose actor is "<platform>:<user id>" or whose details
# name them as a tool call's requester; those without a channel that they acted
# in (e.g. a tenant approver deciding a channel-less tool call); and those about
# one of their approvals.

PERSONAL_DETAILS = ["display_name", "first_message", "arguments", "reason"]

_USER_EVENTS = """tenant_id = $1 AND (
        (channel_id = $2 AND (subject = $3 OR actor = $4 OR details ->> 'requester_id' = $3))
        OR (channel_id = '' AND actor = $4)
        OR (approval_id <> '' AND approval_id = ANY($5::text[])))"""

# Everything an approval row holds except key material (code seed and keyed
# hash) and the agent's idempotency key.
_APPROVAL_EXPORT_COLUMNS = """approval_id, kind, channel_id, user_id, display_name, status, created_at,
    expires_at, resolved_at, resolved_by, reason, tool_name, arguments, arguments_digest, agent_id, session_id,
    risk, summary, redeemed_at, grant_id, required_approvals, approved_by"""


async def user_subject_row(
    conn: Conn, tenant_id: str, channel_id: str, user_id: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """SELECT channel_id, user_id, status, source, display_name, permissions, expires_at, created_at,
                  updated_at
           FROM subjects WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3""",
        tenant_id, channel_id, user_id,
    )  # fmt: skip


async def user_group_senders(
    conn: Conn, tenant_id: str, channel_id: str, user_id: str
) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT channel_id, group_id, user_id, created_at FROM group_senders
           WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3 ORDER BY group_id""",
        tenant_id, channel_id, user_id,
    )  # fmt: skip


async def user_approvals(conn: Conn, tenant_id: str, channel_id: str, user_id: str) -> list[asyncpg.Record]:
    """Pairing requests and tool calls the user requested on the channel, oldest first."""
    return await conn.fetch(
        f"""SELECT {_APPROVAL_EXPORT_COLUMNS} FROM approvals
            WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3
            ORDER BY created_at, approval_id""",
        tenant_id, channel_id, user_id,
    )  # fmt: skip


async def user_audit_events(
    conn: Conn, tenant_id: str, channel_id: str, user_id: str, actor: str, approval_ids: list[str]
) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT * FROM audit_events WHERE {_USER_EVENTS} ORDER BY event_id",
        tenant_id, channel_id, user_id, actor, approval_ids,
    )  # fmt: skip


async def enable_audit_anonymization(conn: Conn) -> None:
    """Let this transaction (only) rewrite audit events as the trigger allows:
    actor and subject to a pseudonym, personal details removed."""
    await conn.execute("SELECT set_config('authz.anonymize', 'on', true)")


async def pseudonymize_audit(
    conn: Conn,
    tenant_id: str,
    channel_id: str,
    user_id: str,
    actor: str,
    approval_ids: list[str],
    pseudonym: str,
) -> int:
    """Replace the user's id by ``pseudonym`` (actor, subject, requester) and drop
    personal details in their audit events. Returns the number of rows changed."""
    status = await conn.execute(
        f"""UPDATE audit_events SET
                actor = CASE WHEN actor = $4 THEN $6 ELSE actor END,
                subject = CASE WHEN channel_id = $2 AND subject = $3 THEN $6 ELSE subject END,
                details = CASE
                    WHEN channel_id = $2 AND details ->> 'requester_id' = $3
                        THEN jsonb_set(details - $7::text[], '{{requester_id}}', to_jsonb($6::text))
                    ELSE details - $7::text[] END
            WHERE {_USER_EVENTS}
              AND (actor = $4 OR (channel_id = $2 AND subject = $3) OR details ?| $7::text[]
                   OR (channel_id = $2 AND details ->> 'requester_id' = $3))""",
        tenant_id, channel_id, user_id, actor, approval_ids, pseudonym, PERSONAL_DETAILS,
    )  # fmt: skip
    return _count(status)


async def scrub_audit_details(
    conn: Conn, tenant_id: str, channel_id: str, user_id: str, actor: str, approval_ids: list[str]
) -> int:
    """Drop personal details from the user's audit events; actor and subject stay."""
    status = await conn.execute(
        f"""UPDATE audit_events SET details = details - $6::text[]
            WHERE {_USER_EVENTS} AND details ?| $6::text[]""",
        tenant_id, channel_id, user_id, actor, approval_ids, PERSONAL_DETAILS,
    )  # fmt: skip
    return _count(status)


async def delete_user_rows(
    conn: Conn, tenant_id: str, channel_id: str, user_id: str
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
    return _count(subjects), _count(senders), [row["approval_id"] for row in gone]


async def scrub_user_rows(conn: Conn, tenant_id: str, channel_id: str, user_id: str) -> tuple[int, int]:
    """Remove the user's personal data from their subject and approval rows,
    keeping every state: display names and the resolvers' reasons are blanked,
    and so are the arguments and summary of their decided tool calls (a pending
    one keeps them: an approver must see what they approve; redeeming needs
    only the digest). Returns (subjects, approvals) changed."""
    subjects = await conn.execute(
        """UPDATE subjects SET display_name = '', updated_at = now()
           WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3 AND display_name <> ''""",
        tenant_id, channel_id, user_id,
    )  # fmt: skip
    approvals = await conn.execute(
        """UPDATE approvals SET display_name = '', reason = '',
                  arguments = CASE WHEN kind = 'tool' AND status <> 'pending' THEN '' ELSE arguments END,
                  summary = CASE WHEN kind = 'tool' AND status <> 'pending' THEN '' ELSE summary END
           WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3
             AND (display_name <> '' OR reason <> ''
                  OR (kind = 'tool' AND status <> 'pending' AND (arguments <> '' OR summary <> '')))""",
        tenant_id, channel_id, user_id,
    )  # fmt: skip
    return _count(subjects), _count(approvals)


def _count(status: str) -> int:
    """The row count of a command tag such as ``DELETE 3`` or ``UPDATE 0``."""
    return int(status.rsplit(" ", 1)[-1])
