"""Denied sends, counted per interval bucket (migration 0015): the upsert made
with each denial, and the move of closed buckets into the audit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from .db import Connection


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


async def take_closed(conn: Connection, tenant_id: str, interval_seconds: int) -> list[Bucket]:
    """Delete and return the tenant's buckets whose interval has ended (each
    row locked: a concurrent taker waits, then finds it gone)."""
    rows = await conn.fetch(
        """DELETE FROM send_denials
           WHERE tenant_id = $1 AND bucket_start + make_interval(secs => $2) <= now()
           RETURNING *""",
        tenant_id, interval_seconds,
    )  # fmt: skip
    return sorted((_bucket(r) for r in rows), key=lambda b: (b.bucket_start, b.first_at))


def _bucket(r: asyncpg.Record) -> Bucket:
    return Bucket(
        r["bucket_start"], r["key_id"], r["agent_id"], r["channel_id"], r["target"], r["denials"],
        r["first_at"], r["last_at"], r["reason"],
    )  # fmt: skip
