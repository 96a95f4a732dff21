"""Web console sessions (migration 0017): only the SHA-256 of a session's secret
is stored, with the API key it was opened with (flows.sessions)."""

from __future__ import annotations

from dataclasses import dataclass

from .db import Connection


@dataclass(frozen=True, slots=True)
class SessionRow:
    key_id: str
    seconds_left: float


async def insert(
    conn: Connection, tenant_id: str, session_hash: bytes, key_id: str, ttl_seconds: int
) -> None:
    """A new session; also deletes the tenant's expired ones (they carry nothing)."""
    await conn.execute("DELETE FROM console_sessions WHERE tenant_id = $1 AND expires_at <= now()", tenant_id)
    await conn.execute(
        """INSERT INTO console_sessions (tenant_id, session_hash, key_id, expires_at)
           VALUES ($1, $2, $3, now() + make_interval(secs => $4))""",
        tenant_id, session_hash, key_id, ttl_seconds,
    )  # fmt: skip


async def get_live(conn: Connection, tenant_id: str, session_hash: bytes) -> SessionRow | None:
    """The session if it exists and has not expired by the database clock."""
    row = await conn.fetchrow(
        """SELECT key_id, extract(epoch FROM expires_at - now())::float8 AS left
           FROM console_sessions WHERE tenant_id = $1 AND session_hash = $2 AND expires_at > now()""",
        tenant_id, session_hash,
    )  # fmt: skip
    return None if row is None else SessionRow(row["key_id"], float(row["left"]))


async def delete(conn: Connection, tenant_id: str, session_hash: bytes) -> bool:
    result = await conn.execute(
        "DELETE FROM console_sessions WHERE tenant_id = $1 AND session_hash = $2", tenant_id, session_hash
    )
    return bool(result != "DELETE 0")
