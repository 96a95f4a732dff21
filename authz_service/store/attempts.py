"""Attempt limits on guessable codes (pairing codes, invites).

One counter row per (tenant, scope), migration 0005. A window starts at the
first lookup after the previous window ended and lasts ``window_seconds``,
judged by the database clock, so every replica counts in the same window."""

from __future__ import annotations

from .db import Connection

_WINDOW_ENDED = "a.window_start + make_interval(secs => $3) <= now()"


async def open_window(
    conn: Connection, tenant_id: str, scopes: list[str], window_seconds: int
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


async def count_failure(conn: Connection, tenant_id: str, scopes: list[str], window_seconds: int) -> None:
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


async def count_refused(conn: Connection, tenant_id: str, scopes: list[str]) -> bool:
    """Count a lookup refused for being over the limit of ``scopes``. True if it
    is the first refusal in the window of one of them (the one worth auditing)."""
    rows = await conn.fetch(
        """UPDATE attempt_limits SET refused = refused + 1
           WHERE tenant_id = $1 AND scope = ANY($2::text[]) RETURNING refused""",
        tenant_id, scopes,
    )  # fmt: skip
    return any(r["refused"] == 1 for r in rows)
