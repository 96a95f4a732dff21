"""Rate limit buckets (migration 0007): SQL, and nothing else.

Every check runs in the caller's tenant-scoped transaction and judges time by
the database clock, so all replicas draw on the same buckets. A bucket's rows
are locked in scope order (the order ``domain.rate.buckets`` returns), so two
checks that share buckets queue up instead of deadlocking.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from ..domain.errors import NotFound
from ..domain.rate import Bucket

Conn = asyncpg.Connection

PRUNE_BATCH = 100


def _available(rate: str, burst: str) -> str:
    """Tokens in bucket ``b`` now (the transaction's start) under the given
    limit. A check that waited for the row lock may find an ``updated_at``
    later than its own ``now()``: no time has passed then, never negative."""
    return (
        f"LEAST({burst}, b.tokens + GREATEST(0, extract(epoch FROM now() - b.updated_at)::float8) * {rate})"
    )


_TAKE_AVAILABLE = _available("EXCLUDED.rate", "EXCLUDED.burst")

# Refill, and take one token from each bucket that holds one. A new bucket
# starts full (a missing row is a full bucket). ON CONFLICT locks every
# existing row, also those it leaves unchanged (WHERE false): those are the
# buckets that refused, and stay locked until commit.
_TAKE = f"""
INSERT INTO rate_buckets AS b (tenant_id, channel_id, scope, rate, burst, tokens, updated_at, full_at)
SELECT $1, $2, u.scope, u.rate, u.burst, u.burst - 1, now(), now() + make_interval(secs => 1 / u.rate)
FROM unnest($3::text[], $4::float8[], $5::float8[]) WITH ORDINALITY AS u(scope, rate, burst, i)
ORDER BY u.i
ON CONFLICT (tenant_id, channel_id, scope) DO UPDATE SET
    rate = EXCLUDED.rate,
    burst = EXCLUDED.burst,
    tokens = {_TAKE_AVAILABLE} - 1,
    updated_at = GREATEST(b.updated_at, now()),
    full_at = GREATEST(b.updated_at, now())
              + make_interval(secs => (EXCLUDED.burst - ({_TAKE_AVAILABLE} - 1)) / EXCLUDED.rate)
WHERE {_TAKE_AVAILABLE} >= 1
RETURNING b.scope, (b.xmax = 0) AS created
"""

_REFUSE_AVAILABLE = _available("u.rate", "u.burst")

# A refused message takes nothing: give back the tokens the other buckets just
# gave (their rows are still locked by this transaction, so nobody saw them
# missing). The refusing buckets are refilled under the current limit and
# report how many tokens they hold.
_REFUSE = f"""
WITH given_back AS (
    UPDATE rate_buckets SET tokens = tokens + 1,
                            full_at = updated_at + make_interval(secs => (burst - tokens - 1) / rate)
    WHERE tenant_id = $1 AND channel_id = $2 AND scope = ANY($3::text[])
)
UPDATE rate_buckets AS b SET
    rate = u.rate,
    burst = u.burst,
    tokens = {_REFUSE_AVAILABLE},
    updated_at = GREATEST(b.updated_at, now()),
    full_at = GREATEST(b.updated_at, now()) + make_interval(secs => (u.burst - {_REFUSE_AVAILABLE}) / u.rate)
FROM unnest($4::text[], $5::float8[], $6::float8[]) AS u(scope, rate, burst)
WHERE b.tenant_id = $1 AND b.channel_id = $2 AND b.scope = u.scope
RETURNING b.scope, b.tokens AS available
"""

# Full buckets are as good as missing ones. Skips the rows other checks hold,
# and this check's own.
_PRUNE = """
DELETE FROM rate_buckets WHERE tenant_id = $1 AND (channel_id, scope) IN (
    SELECT channel_id, scope FROM rate_buckets
    WHERE tenant_id = $1 AND full_at <= now() AND NOT (channel_id = $2 AND scope = ANY($3::text[]))
    ORDER BY full_at LIMIT $4
    FOR UPDATE SKIP LOCKED)
"""


async def take(conn: Conn, tenant_id: str, channel_id: str, buckets: Sequence[Bucket]) -> dict[str, float]:
    """Take one token from every bucket in ``buckets``, or from none.

    Returns the refusing buckets (those holding less than one token) with the
    tokens they hold; empty: the message is admitted and every bucket gave one.
    One statement when admitted into existing buckets; creating a bucket also
    prunes up to ``PRUNE_BATCH`` full ones of the tenant. Raises NotFound if
    the channel no longer exists (the transaction is then aborted).
    """
    try:
        return await _take(conn, tenant_id, channel_id, buckets)
    except asyncpg.ForeignKeyViolationError:
        raise NotFound(f"channel {channel_id!r} not found") from None


_PEEK = f"""
SELECT b.scope, {_REFUSE_AVAILABLE} AS available
FROM rate_buckets AS b JOIN unnest($3::text[], $4::float8[], $5::float8[]) AS u(scope, rate, burst)
  ON b.scope = u.scope
WHERE b.tenant_id = $1 AND b.channel_id = $2
"""


async def peek(conn: Conn, tenant_id: str, channel_id: str, buckets: Sequence[Bucket]) -> dict[str, float]:
    """What ``take`` would refuse now, read only: the buckets holding less
    than one token, with the tokens they hold (a missing bucket is full).
    Nothing is taken, locked or written."""
    rows = await conn.fetch(
        _PEEK, tenant_id, channel_id, [b.scope for b in buckets], [b.rate for b in buckets],
        [b.burst for b in buckets],
    )  # fmt: skip
    return {r["scope"]: float(r["available"]) for r in rows if float(r["available"]) < 1}


async def _take(conn: Conn, tenant_id: str, channel_id: str, buckets: Sequence[Bucket]) -> dict[str, float]:
    scopes = [b.scope for b in buckets]
    rows = await conn.fetch(
        _TAKE, tenant_id, channel_id, scopes, [b.rate for b in buckets], [b.burst for b in buckets]
    )
    taken = {r["scope"] for r in rows}
    refused: dict[str, float] = {}
    if len(taken) < len(scopes):
        refusing = [b for b in buckets if b.scope not in taken]
        rows_refused = await conn.fetch(
            _REFUSE, tenant_id, channel_id, sorted(taken),
            [b.scope for b in refusing], [b.rate for b in refusing], [b.burst for b in refusing],
        )  # fmt: skip
        available = {r["scope"]: float(r["available"]) for r in rows_refused}
        # A row that vanished is read as empty: refuse all the same (fail closed).
        refused = {b.scope: available.get(b.scope, 0.0) for b in refusing}
    if any(r["created"] for r in rows):
        await conn.execute(_PRUNE, tenant_id, channel_id, scopes, PRUNE_BATCH)
    return refused
