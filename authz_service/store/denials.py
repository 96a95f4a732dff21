"""Denied sends, counted per interval bucket (migration 0013): the upsert made
with each denial, and the move of closed buckets into the audit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from .db import Connection, Database


@dataclass(frozen=True, slots=True)
class Denial:
    """One denied EvaluateSend, as counted."""

    tenant_id: str
    key_id: str
    agent_id: str
    channel_id: str
    target: str
    session_id: str
    origin: str
    reason: str
    interval_seconds: int


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket's count; ``denials`` 1 means it was just opened."""

    bucket_start: datetime
    key_id: str
    agent_id: str
    channel_id: str
    target: str
    denials: int
    first_at: datetime
    last_at: datetime
    reason: str


_BUCKET = "date_bin(make_interval(secs => $2), now(), timestamptz '2000-01-01 00:00:00+00')"


async def targets(conn: Connection, d: Denial) -> tuple[bool, int]:
    """Whether ``d.target`` has a bucket this interval, and how many targets
    the key and agent have buckets for."""
    row = await conn.fetchrow(
        f"""SELECT count(*) FILTER (WHERE channel_id = $5 AND target = $6) > 0 AS known, count(*) AS n
            FROM send_denials WHERE tenant_id = $1 AND bucket_start = {_BUCKET}
              AND key_id = $3 AND agent_id = $4""",
        d.tenant_id, d.interval_seconds, d.key_id, d.agent_id, d.channel_id, d.target,
    )  # fmt: skip
    assert row is not None
    return bool(row["known"]), int(row["n"])


async def count(conn: Connection, d: Denial) -> Bucket:
    """Count one denial in its bucket (opening it if needed)."""
    row = await conn.fetchrow(
        f"""INSERT INTO send_denials AS s (tenant_id, bucket_start, key_id, agent_id, channel_id, target,
                                           session_id, origin, reason)
            VALUES ($1, {_BUCKET}, $3, $4, $5, $6, $7, $8, $9)
            ON CONFLICT (tenant_id, bucket_start, key_id, agent_id, channel_id, target) DO UPDATE
               SET denials = s.denials + 1, last_at = now(), reason = EXCLUDED.reason
            RETURNING *""",
        d.tenant_id, d.interval_seconds, d.key_id, d.agent_id, d.channel_id, d.target, d.session_id,
        d.origin, d.reason,
    )  # fmt: skip
    assert row is not None
    return _bucket(row)


async def summarise_closed(conn: Connection, tenant_id: str | None, interval_seconds: int) -> int:
    """Move closed buckets into the audit (one ``send.denied_summary`` each
    that counted more than its first denial) and delete them; ``tenant_id``
    None: every tenant (needs an operator transaction). Each row is locked by
    the DELETE: a concurrent sweep waits, then finds it gone, so a bucket is
    summarised once across replicas. Returns the summaries written."""
    return int(
        await conn.fetchval("SELECT authz_summarise_send_denials($1, $2)", tenant_id, interval_seconds)
    )


async def sweep(db: Database, interval_seconds: int) -> int:
    """The periodic sweep over every tenant, so a burst's total reaches the
    audit even when no denial follows it."""
    async with db.operator() as conn:
        return await summarise_closed(conn, None, interval_seconds)


def _bucket(r: asyncpg.Record) -> Bucket:
    return Bucket(
        r["bucket_start"], r["key_id"], r["agent_id"], r["channel_id"], r["target"], r["denials"],
        r["first_at"], r["last_at"], r["reason"],
    )  # fmt: skip
