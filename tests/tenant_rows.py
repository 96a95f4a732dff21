"""The tenant tables and one tenant's rows in them, shared by the tenancy tests."""

from __future__ import annotations

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from tests.conftest import Tenant

TENANT_TABLES = ("tenants", "api_keys", "channels", "subjects", "group_senders", "approvals", "audit_events")
DIRECT = cm.CHAT_KIND_DIRECT
OWNER = "100"
Conn = asyncpg.Connection | PoolConnectionProxy


async def _populate(t: Tenant) -> az.RequestPairingResponse:
    """A channel, an allowlisted user, a group sender, a pending pairing and a send denial."""
    await t.channel("tg", cm.PLATFORM_TELEGRAM, owner_id=OWNER)
    await t.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="7", display_name="Alice"))
    await t.admin.admin.AllowGroupSender(adm.GroupSenderRef(channel_id="tg", group_id="-1001", user_id="7"))
    created = await t.connector.authz.RequestPairing(az.RequestPairingRequest(channel_id="tg", user_id="42"))
    assert created.outcome == az.PAIRING_OUTCOME_CREATED
    denied = await t.connector.authz.EvaluateSend(
        az.EvaluateSendRequest(channel_id="tg", agent_id="default", target="slack:#ops")
    )
    assert not denied.allow
    return created


async def _tenants_seen(conn: Conn, table: str) -> list[str]:
    rows = await conn.fetch(f"SELECT DISTINCT tenant_id FROM {table} ORDER BY 1")
    return [r["tenant_id"] for r in rows]


async def _counts(conn: Conn) -> dict[str, int]:
    return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TENANT_TABLES}


async def _scoped(conn: asyncpg.Connection, tenant_id: str, sql: str, *args: object) -> str:
    """Run one statement in a transaction scoped to ``tenant_id``, as the store does."""
    async with conn.transaction():
        await conn.execute("SELECT set_config('authz.tenant', $1, true)", tenant_id)
        return await conn.execute(sql, *args)
