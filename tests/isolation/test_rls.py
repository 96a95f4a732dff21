"""Row-level security: for every table that has a ``tenant_id`` column (enumerated
from pg_catalog, so a new table without RLS fails), a query without a tenant
filter, under B's tenant setting, sees none of A's rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.conftest import Dsns, Tenant

from .sweep import World, tenant_tables


@pytest.fixture
async def service_conn(dsns: Dsns) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsns.service)
    yield conn
    await conn.close()


async def test_a_query_without_tenant_filter_sees_no_other_tenant_in_any_table(
    world: World, other_tenant: Tenant, owner: asyncpg.Connection, service_conn: asyncpg.Connection
) -> None:
    tables = await tenant_tables(owner)
    # The enumeration finds what it must (and whatever is added later).
    assert {"tenants", "api_keys", "channels", "subjects", "group_senders", "approvals", "audit_events",
            "tool_grants", "attempt_limits", "invites"} <= set(tables)  # fmt: skip
    a, b = world.ids.tenant, other_tenant.tenant_id
    await other_tenant.channel("tg")
    rls = {
        r["relname"]: (r["relrowsecurity"], r["relforcerowsecurity"], r["policies"])
        for r in await owner.fetch(
            """SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
                      (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies
               FROM pg_class c WHERE c.relname = ANY($1::text[]) AND c.relnamespace = to_regnamespace(current_schema())""",
            tables,
        )
    }
    assert role_is_bound(await service_conn.fetchrow(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"))  # fmt: skip
    for table in tables:
        assert rls[table][:2] == (True, True), f"{table}: row-level security is not enabled and forced"
        assert rls[table][2] >= 1, f"{table}: no row-level security policy"
        # Under B's setting, a query that forgets the tenant filter sees B's rows only.
        async with service_conn.transaction():
            await service_conn.execute("SELECT set_config('authz.tenant', $1, true)", b)
            seen = {r["tenant_id"] for r in await service_conn.fetch(f"SELECT tenant_id FROM {table}")}
            assert seen <= {b}, f"{table}: tenant {b} sees rows of {sorted(seen - {b})}"
            assert await service_conn.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", a) == 0
        # With no setting at all: nothing.
        assert await service_conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        # A's rows are there (so the checks above are not vacuous): A sees them under its own setting.
        async with service_conn.transaction():
            await service_conn.execute("SELECT set_config('authz.tenant', $1, true)", a)
            assert await service_conn.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", a) > 0, (
                f"{table}: tenant A has no rows here; give the sweep's world one"
            )


def role_is_bound(row: asyncpg.Record | None) -> bool:
    return row is not None and not row["rolsuper"] and not row["rolbypassrls"]
