"""Tenants and their settings (approvers, agent approvers, time zone)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ..domain.errors import AlreadyExists
from .db import Connection


@dataclass(frozen=True, slots=True)
class TenantRow:
    tenant_id: str
    display_name: str
    created_at: datetime


def _tenant(row: asyncpg.Record) -> TenantRow:
    return TenantRow(row["tenant_id"], row["display_name"], row["created_at"])


async def insert(conn: Connection, tenant_id: str, display_name: str) -> TenantRow:
    try:
        row = await conn.fetchrow(
            "INSERT INTO tenants (tenant_id, display_name) VALUES ($1, $2) RETURNING *",
            tenant_id,
            display_name,
        )
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"tenant {tenant_id!r} already exists") from None
    assert row is not None
    return _tenant(row)


async def list_all(conn: Connection) -> list[TenantRow]:
    return [_tenant(r) for r in await conn.fetch("SELECT * FROM tenants ORDER BY tenant_id")]


async def approvers(conn: Connection, tenant_id: str) -> tuple[str, ...]:
    value = await conn.fetchval("SELECT approvers FROM tenants WHERE tenant_id = $1", tenant_id)
    return tuple(value or ())


async def set_approvers(conn: Connection, tenant_id: str, approvers: list[str]) -> None:
    await conn.execute("UPDATE tenants SET approvers = $2 WHERE tenant_id = $1", tenant_id, approvers)


async def timezone(conn: Connection, tenant_id: str) -> str:
    value = await conn.fetchval("SELECT timezone FROM tenants WHERE tenant_id = $1", tenant_id)
    return str(value or "UTC")


async def set_timezone(conn: Connection, tenant_id: str, timezone: str) -> str:
    """Returns the zone it replaced."""
    old = await conn.fetchval(
        """UPDATE tenants t SET timezone = $2 FROM tenants o
           WHERE t.tenant_id = $1 AND o.tenant_id = t.tenant_id RETURNING o.timezone""",
        tenant_id, timezone,
    )  # fmt: skip
    return str(old or "UTC")


async def agent_approvers(conn: Connection, tenant_id: str) -> dict[str, tuple[str, ...]]:
    value = await conn.fetchval("SELECT agent_approvers FROM tenants WHERE tenant_id = $1", tenant_id)
    data = json.loads(value) if value else {}
    return {str(k): tuple(str(a) for a in v) for k, v in data.items()}


async def set_agent_approvers(conn: Connection, tenant_id: str, approvers: dict[str, list[str]]) -> None:
    await conn.execute(
        "UPDATE tenants SET agent_approvers = $2::jsonb WHERE tenant_id = $1",
        tenant_id,
        json.dumps(approvers),
    )
