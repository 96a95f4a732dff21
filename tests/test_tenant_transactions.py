"""The tenant transaction: its one-message opening, the scoped check-state function, and
its round trips.
"""

from __future__ import annotations

import asyncpg
import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.store.db import Database, _opening
from tests.conftest import Dsns, Tenant
from tests.tenant_rows import TENANT_TABLES, _counts


async def test_transaction_opening_inlines_only_safe_values(dsns: Dsns, tenant: Tenant) -> None:
    """Tenant ids are inlined into the one-message ``BEGIN; set_config`` opening;
    any other value goes through a bound parameter and reads back verbatim.
    A statement that fails inside the transaction leaves the pooled connection usable."""
    db = await Database.connect(dsns.service, min_size=1, max_size=1)
    try:
        odd = "x'); SELECT 1; --"
        async with db._tx({"authz.tenant": odd}) as conn:
            assert await conn.fetchval("SELECT current_setting('authz.tenant', true)") == odd
        with pytest.raises(asyncpg.DivisionByZeroError):
            async with db.tenant(tenant.tenant_id) as conn:
                await conn.fetchval("SELECT 1 / 0")
        async with db.tenant(tenant.tenant_id) as conn:
            assert await conn.fetchval("SELECT current_setting('authz.tenant', true)") == tenant.tenant_id
        async with db.pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT current_setting('authz.tenant', true)") in (None, "")
    finally:
        await db.close()


async def test_check_state_function_scopes_its_own_statement(
    dsns: Dsns, tenant: Tenant, other_tenant: Tenant
) -> None:
    """CheckUser's one-round-trip read (migration 0009) sets the tenant inside
    the function: it reads that tenant's rows only, and the setting is gone
    when the statement ends."""
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_ALLOWLIST)
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="42"))
    db = await Database.connect(dsns.service, min_size=1, max_size=1)
    sql = "SELECT * FROM authz_check_state($1, $2, $3, $4)"
    try:
        row = await db.fetchrow_as(tenant.tenant_id, sql, tenant.tenant_id, "tg", "42", "")
        assert row is not None and (row["channel_id"], row["status"], row["in_group"]) == (
            "tg",
            "allowed",
            False,
        )
        assert (
            await db.fetchrow_as(other_tenant.tenant_id, sql, other_tenant.tenant_id, "tg", "42", "") is None
        )
        async with db.pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT current_setting('authz.tenant', true)") in (None, "")
            assert await _counts(conn) == dict.fromkeys(TENANT_TABLES, 0)
    finally:
        await db.close()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"authz.tenant": "acme-1"}, "BEGIN; SELECT set_config('authz.tenant', 'acme-1', true)"),
        (
            {"authz.operator": "on", "authz.tenant": "t2"},
            "BEGIN; SELECT set_config('authz.operator', 'on', true), set_config('authz.tenant', 't2', true)",
        ),
        ({}, "BEGIN"),
        ({"authz.tenant": "it's"}, None),
        ({"authz.tenant": "a\\b"}, None),
        ({"authz.tenant": "x" * 129}, None),
        ({"authz.tenant": "a b"}, None),
        ({"authz.tenant'": "a"}, None),
    ],
    ids=["slug", "two", "none", "quote", "backslash", "too-long", "space", "odd-name"],
)
def test_transaction_opening_message(settings: dict[str, str], expected: str | None) -> None:
    """Only plain slugs are inlined into the one-message opening; anything else
    (None) goes through bound parameters."""
    assert _opening(settings) == expected


async def test_tenant_transaction_costs_three_round_trips(dsns: Dsns, tenant: Tenant) -> None:
    """BEGIN + set_config in one message, the query, COMMIT; no reset on release.
    Counted as statements the server saw, via the connection's query log."""
    db = await Database.connect(dsns.service, min_size=1, max_size=1)
    seen: list[str] = []
    try:
        async with db.pool.acquire() as conn:
            conn.add_query_logger(lambda record: seen.append(record.query))
        seen.clear()
        async with db.tenant(tenant.tenant_id) as conn:
            await conn.fetchval("SELECT 1")
        async with db.pool.acquire():
            pass
        assert seen == [
            f"BEGIN; SELECT set_config('authz.tenant', '{tenant.tenant_id}', true)",
            "SELECT 1",
            "COMMIT",
        ]
    finally:
        await db.close()
