"""Standing grants: an agent's exact tool call, approved for good until revoked."""

from __future__ import annotations

import asyncpg

from ..domain.model import Grant, ToolCall
from .approvals import tool_from_row
from .db import Connection


def grant_from_row(row: asyncpg.Record) -> Grant:
    return Grant(
        grant_id=row["grant_id"],
        agent_id=row["agent_id"],
        tool=tool_from_row(row),  # a grant row has no session, risk or summary: defaults
        approval_id=row["approval_id"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        revoked_by=row["revoked_by"],
    )


async def live(conn: Connection, tenant_id: str, agent_id: str, digest: bytes) -> Grant | None:
    row = await conn.fetchrow(
        """SELECT * FROM tool_grants WHERE tenant_id = $1 AND agent_id = $2 AND arguments_digest = $3
             AND revoked_at IS NULL""",
        tenant_id, agent_id, digest,
    )  # fmt: skip
    return None if row is None else grant_from_row(row)


async def insert(
    conn: Connection, tenant_id: str, grant_id: str, call: ToolCall, approval_id: str, actor: str
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
        existing = await live(conn, tenant_id, call.agent_id, call.digest)
        assert existing is not None
        return existing
    return grant_from_row(row)


async def list_for_agent(
    conn: Connection, tenant_id: str, agent_id: str, include_revoked: bool
) -> list[Grant]:
    rows = await conn.fetch(
        """SELECT * FROM tool_grants WHERE tenant_id = $1 AND ($2 = '' OR agent_id = $2)
             AND ($3 OR revoked_at IS NULL)
           ORDER BY created_at DESC LIMIT 1000""",
        tenant_id, agent_id, include_revoked,
    )  # fmt: skip
    return [grant_from_row(r) for r in rows]


async def revoke(conn: Connection, tenant_id: str, grant_id: str, actor: str) -> Grant | None:
    row = await conn.fetchrow(
        """UPDATE tool_grants SET revoked_at = coalesce(revoked_at, now()),
                  revoked_by = CASE WHEN revoked_at IS NULL THEN $3 ELSE revoked_by END
           WHERE tenant_id = $1 AND grant_id = $2 RETURNING *""",
        tenant_id, grant_id, actor,
    )  # fmt: skip
    return None if row is None else grant_from_row(row)
