"""Approval rows: pairing requests and tool-call approvals (``kind``).
Every decision is a compare-and-set from ``pending``, judged by the
database clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ..domain.model import Approval, ApprovalStatus, Risk, ToolCall
from .db import Connection


@dataclass(frozen=True, slots=True)
class PendingPairing:
    """A live pairing request and the seed its code is derived from (a repeat
    request shows the same code again)."""

    approval: Approval
    code_seed: bytes


@dataclass(frozen=True, slots=True)
class PairingInsertInput:
    tenant_id: str
    approval_id: str
    channel_id: str
    user_id: str
    display_name: str
    code_seed: bytes
    code_hash: bytes
    ttl_seconds: int
    required_approvals: int = 1
    first_message: str = ""  # as domain.pairing.stored_first_message makes it
    handle: str = ""
    platform: str = ""
    renewal: bool = False  # renews a lapsed pairing


@dataclass(frozen=True, slots=True)
class AutoApprovedInput:
    tenant_id: str
    approval_id: str
    channel_id: str
    user_id: str
    display_name: str
    actor: str  # ``auto:<rule>``


@dataclass(frozen=True, slots=True)
class FinishInput:
    """A move out of ``pending``. ``live`` requires the approval unexpired (a
    decision); otherwise it must have expired (the expiry transition)."""

    tenant_id: str
    approval_id: str
    status: ApprovalStatus
    actor: str
    reason: str = ""
    live: bool = True


@dataclass(frozen=True, slots=True)
class ToolApprovalInput:
    """A tool-call approval; approved at once when ``grant_id`` names a standing grant."""

    tenant_id: str
    approval_id: str
    channel_id: str
    requester_id: str
    call: ToolCall
    request_key: str
    timeout_seconds: int
    grant_id: str = ""


def tool_from_row(row: asyncpg.Record) -> ToolCall:
    return ToolCall(
        tool_name=row["tool_name"],
        arguments=row["arguments"],
        digest=bytes(row["arguments_digest"]),
        agent_id=row["agent_id"],
        session_id=row.get("session_id", ""),
        risk=Risk(row.get("risk", "medium")),
        summary=row.get("summary", ""),
        request_key=row.get("request_key") or "",
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
        tool=tool_from_row(row) if row["kind"] == "tool" else None,
        redeemed_at=row["redeemed_at"],
        grant_id=row["grant_id"],
        required_approvals=row.get("required_approvals") or 1,
        approved_by=_approved_by(row),
        first_message=row.get("first_message") or "",
        handle=row.get("handle") or "",
        platform=row.get("platform") or "",
        renewal=bool(row.get("renewal")),
    )


def _approved_by(row: asyncpg.Record) -> tuple[str, ...]:
    """The votes; for an approval decided before votes were recorded (or by a
    standing grant), its resolver."""
    votes = tuple(row.get("approved_by") or ())
    if not votes and row["status"] == ApprovalStatus.APPROVED.value and row["resolved_by"]:
        return (row["resolved_by"],)
    return votes


async def pending_pairing_for_user(
    conn: Connection, tenant_id: str, channel_id: str, user_id: str
) -> PendingPairing | None:
    row = await conn.fetchrow(
        """SELECT * FROM approvals WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3
             AND kind = 'pairing' AND status = 'pending' FOR UPDATE""",
        tenant_id, channel_id, user_id,
    )  # fmt: skip
    return None if row is None else PendingPairing(approval_from_row(row), bytes(row["code_seed"]))


async def live_for_user(conn: Connection, tenant_id: str, channel_id: str, user_id: str) -> list[Approval]:
    """The user's live pending approvals on the channel (pairing requests, and
    tool calls asked for them), newest first. A plain read: nothing is locked."""
    rows = await conn.fetch(
        """SELECT * FROM approvals WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3
             AND status = 'pending' AND expires_at > now()
           ORDER BY created_at DESC LIMIT 20""",
        tenant_id, channel_id, user_id,
    )  # fmt: skip
    return [approval_from_row(r) for r in rows]


async def count_live_pending(conn: Connection, tenant_id: str, channel_id: str) -> int:
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


async def insert_pairing(conn: Connection, new: PairingInsertInput) -> Approval:
    row = await conn.fetchrow(
        """INSERT INTO approvals (tenant_id, approval_id, kind, channel_id, user_id, display_name,
                                  code_seed, code_hash, expires_at, required_approvals,
                                  first_message, handle, platform, renewal)
           VALUES ($1, $2, 'pairing', $3, $4, $5, $6, $7, now() + make_interval(secs => $8), $9, $10, $11, $12,
                   $13)
           RETURNING *""",
        new.tenant_id, new.approval_id, new.channel_id, new.user_id, new.display_name, new.code_seed,
        new.code_hash, new.ttl_seconds, new.required_approvals, new.first_message, new.handle, new.platform,
        new.renewal,
    )  # fmt: skip
    assert row is not None
    return approval_from_row(row)


async def insert_auto_approved_pairing(conn: Connection, new: AutoApprovedInput) -> Approval:
    """A pairing request approved by an auto-approve rule at once: no code, one vote."""
    row = await conn.fetchrow(
        """INSERT INTO approvals (tenant_id, approval_id, kind, channel_id, user_id, display_name, expires_at,
                                  status, resolved_at, resolved_by, approved_by)
           VALUES ($1, $2, 'pairing', $3, $4, $5, now(), 'approved', now(), $6, ARRAY[$6])
           RETURNING *""",
        new.tenant_id, new.approval_id, new.channel_id, new.user_id, new.display_name, new.actor,
    )  # fmt: skip
    assert row is not None
    return approval_from_row(row)


async def auto_approve_pending(
    conn: Connection, tenant_id: str, approval_id: str, actor: str
) -> Approval | None:
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


async def add_vote(conn: Connection, tenant_id: str, approval_id: str, actor: str) -> Approval | None:
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


async def replace_votes(
    conn: Connection, tenant_id: str, approval_id: str, expected: tuple[str, ...], votes: tuple[str, ...]
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


async def get(
    conn: Connection, tenant_id: str, approval_id: str, *, for_update: bool = False
) -> Approval | None:
    sql = "SELECT * FROM approvals WHERE tenant_id = $1 AND approval_id = $2"
    row = await conn.fetchrow(sql + (" FOR UPDATE" if for_update else ""), tenant_id, approval_id)
    return None if row is None else approval_from_row(row)


async def by_code(conn: Connection, tenant_id: str, channel_id: str, code_hash: bytes) -> Approval | None:
    row = await conn.fetchrow(
        """SELECT * FROM approvals WHERE tenant_id = $1 AND channel_id = $2 AND code_hash = $3
           ORDER BY (status = 'pending') DESC, created_at DESC LIMIT 1 FOR UPDATE""",
        tenant_id, channel_id, code_hash,
    )  # fmt: skip
    return None if row is None else approval_from_row(row)


async def finish(conn: Connection, move: FinishInput) -> Approval | None:
    """Compare-and-set from pending (see FinishInput). None: lost the race."""
    row = await conn.fetchrow(
        """UPDATE approvals SET status = $3, resolved_at = now(), resolved_by = $4, reason = $5,
                  approved_by = CASE WHEN $3 = 'approved' THEN approved_by || $4::text ELSE approved_by END
           WHERE tenant_id = $1 AND approval_id = $2 AND status = 'pending'
             AND (CASE WHEN $6 THEN expires_at > now() ELSE expires_at <= now() END)
             -- Approved only by the last distinct vote the quorum needs.
             AND ($3 <> 'approved'
                  OR (cardinality(approved_by) + 1 >= required_approvals AND NOT ($4 = ANY(approved_by))))
           RETURNING *""",
        move.tenant_id, move.approval_id, move.status.value, move.actor, move.reason, move.live,
    )  # fmt: skip
    return None if row is None else approval_from_row(row)


async def cancel_pending_for_user(
    conn: Connection, tenant_id: str, channel_id: str, user_id: str, actor: str
) -> list[str]:
    rows = await conn.fetch(
        """UPDATE approvals SET status = 'blocked', resolved_at = now(), resolved_by = $4, reason = 'user blocked'
           WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3 AND status = 'pending'
           RETURNING approval_id""",
        tenant_id, channel_id, user_id, actor,
    )  # fmt: skip
    return [r["approval_id"] for r in rows]


async def list_recent(
    conn: Connection,
    tenant_id: str,
    channel_id: str,
    status: ApprovalStatus | None,
    limit: int,
    kind: str = "",
) -> list[Approval]:
    """Newest first; ``status`` None means every status, ``kind`` '' every kind."""
    rows = await conn.fetch(
        """SELECT * FROM approvals WHERE tenant_id = $1 AND ($2 = '' OR channel_id = $2)
             AND ($3::text IS NULL OR status = $3) AND ($5 = '' OR kind = $5)
           ORDER BY created_at DESC LIMIT $4""",
        tenant_id, channel_id, None if status is None else status.value, limit, kind,
    )  # fmt: skip
    return [approval_from_row(r) for r in rows]


@dataclass(frozen=True, slots=True)
class ApprovalPage:
    """ListApprovals' filters and position: newest first, after the approval
    ``after`` (its created_at and id; None: from the newest)."""

    tenant_id: str
    channel_id: str = ""
    status: ApprovalStatus | None = None
    kind: str = ""
    size: int = 50
    after: tuple[datetime, str] | None = None


async def list_page(conn: Connection, page: ApprovalPage) -> tuple[list[Approval], bool]:
    """One page, and whether more follow."""
    after_at, after_id = page.after if page.after else (None, "")
    rows = await conn.fetch(
        """SELECT * FROM approvals WHERE tenant_id = $1 AND ($2 = '' OR channel_id = $2)
             AND ($3::text IS NULL OR status = $3) AND ($4 = '' OR kind = $4)
             AND ($6::timestamptz IS NULL OR (created_at, approval_id) < ($6, $7))
           ORDER BY created_at DESC, approval_id DESC LIMIT $5 + 1""",
        page.tenant_id, page.channel_id, None if page.status is None else page.status.value, page.kind,
        page.size, after_at, after_id,
    )  # fmt: skip
    return [approval_from_row(r) for r in rows[: page.size]], len(rows) > page.size


async def expire_due(conn: Connection, tenant_id: str, limit: int) -> list[Approval] | None:
    """Move up to ``limit`` of the tenant's pending approvals whose time is up
    to ``expired`` (compare-and-set from pending, skipping rows a decision holds),
    oldest expiry first. None when another replica is sweeping this tenant (a
    transaction-level advisory lock): it does the work."""
    if not await conn.fetchval(
        "SELECT pg_try_advisory_xact_lock(hashtextextended('authz:expiry-sweep:' || $1, 0))", tenant_id
    ):
        return None
    rows = await conn.fetch(
        """WITH due AS (
               SELECT approval_id FROM approvals
               WHERE tenant_id = $1 AND status = 'pending' AND expires_at <= now()
               ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
           UPDATE approvals a SET status = 'expired', resolved_at = now(), resolved_by = 'system'
           FROM due WHERE a.tenant_id = $1 AND a.approval_id = due.approval_id AND a.status = 'pending'
           RETURNING a.*""",
        tenant_id, limit,
    )  # fmt: skip
    return sorted((approval_from_row(r) for r in rows), key=lambda a: a.expires_at)


async def tool_by_key(conn: Connection, tenant_id: str, request_key: str) -> Approval | None:
    row = await conn.fetchrow(
        "SELECT * FROM approvals WHERE tenant_id = $1 AND request_key = $2 FOR UPDATE", tenant_id, request_key
    )
    return None if row is None else approval_from_row(row)


async def lock_tool_requests(conn: Connection, tenant_id: str) -> None:
    """Serialize new tool approvals of one tenant until the transaction ends,
    so two concurrent requests cannot both pass the pending caps."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('authz:tool-pending:' || $1, 0))", tenant_id
    )


async def count_pending_tools(conn: Connection, tenant_id: str, agent_id: str) -> tuple[int, int]:
    """Live pending tool approvals: the agent's, and the tenant's."""
    row = await conn.fetchrow(
        """SELECT count(approval_id) FILTER (WHERE agent_id = $2) AS agent, count(approval_id) AS tenant
           FROM approvals WHERE tenant_id = $1 AND status = 'pending' AND expires_at > now() AND kind = 'tool'""",
        tenant_id, agent_id,
    )  # fmt: skip
    assert row is not None
    return int(row["agent"]), int(row["tenant"])


async def insert_tool(conn: Connection, new: ToolApprovalInput) -> Approval | None:
    """None: another request with the same key won the race."""
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
        new.tenant_id, new.approval_id, new.channel_id, new.requester_id, new.call.tool_name, new.call.arguments,
        new.call.digest, new.call.agent_id, new.call.session_id, new.call.risk.value, new.call.summary,
        new.request_key, new.timeout_seconds, new.grant_id,
    )  # fmt: skip
    return None if row is None else approval_from_row(row)


async def mark_redeemed(conn: Connection, tenant_id: str, approval_id: str) -> Approval | None:
    """Compare-and-set: only an approved, never redeemed approval. None: lost."""
    row = await conn.fetchrow(
        """UPDATE approvals SET redeemed_at = now()
           WHERE tenant_id = $1 AND approval_id = $2 AND status = 'approved' AND redeemed_at IS NULL
           RETURNING *""",
        tenant_id, approval_id,
    )  # fmt: skip
    return None if row is None else approval_from_row(row)
