"""Audit retention (issue #15 item 9), over real gRPC on real PostgreSQL: the audit
in monthly partitions, pruned whole by the operator, with every guard of the
table kept on each partition."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from datetime import date
from urllib.parse import urlparse, urlunparse

import asyncpg
import grpc
import pytest

from authz_service.client import connect
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.store.migrate import load_migrations

from .conftest import Dsns, Service, Tenant, rpc_error
from .flood_helpers import audit_of
from .policy_helpers import run_authz

# --- e. retention: monthly partitions, pruned whole ---------------------------------------

CATALOG = {
    "policies": """SELECT policyname, permissive, roles::text, cmd, qual, with_check FROM pg_policies
                   WHERE tablename = 'audit_events' ORDER BY 1""",
    "triggers": """SELECT tgname, tgtype, tgfoid::regproc::text, tgenabled FROM pg_trigger
                   WHERE tgrelid = 'audit_events'::regclass AND NOT tgisinternal ORDER BY 1""",
    "rls": "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'audit_events'::regclass",
    "grants": """SELECT grantee, privilege_type FROM information_schema.role_table_grants
                 WHERE table_name = 'audit_events' AND grantee = 'authz_service' ORDER BY 1, 2""",
    "column_grants": """SELECT grantee, column_name, privilege_type FROM information_schema.column_privileges
                        WHERE table_name = 'audit_events' AND grantee = 'authz_service'
                          AND privilege_type = 'UPDATE' ORDER BY 1, 2, 3""",
    "columns": """SELECT attname, format_type(atttypid, atttypmod), attnotnull, attidentity
                  FROM pg_attribute WHERE attrelid = 'audit_events'::regclass AND attnum > 0
                    AND NOT attisdropped ORDER BY attnum""",
    "indexes": """SELECT indexname FROM pg_indexes WHERE tablename = 'audit_events'
                  AND indexname NOT LIKE '%pkey' ORDER BY 1""",
}


async def catalog(conn: asyncpg.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {name: [tuple(r) for r in await conn.fetch(sql)] for name, sql in CATALOG.items()}


@pytest.fixture
async def scratch(dsns: Dsns) -> AsyncIterator[asyncpg.Connection]:
    """A fresh database in the test cluster, owned by the schema owner and migrated by
    hand as it; the administrator creates and drops it (the owner may not create databases)."""
    name = f"scratch_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(dsns.admin)
    owner_role = urlparse(dsns.owner).username
    try:
        await admin.execute(f'CREATE DATABASE {name} OWNER "{owner_role}"')
        url = urlparse(dsns.owner)
        conn = await asyncpg.connect(urlunparse(url._replace(path="/" + name)))
        try:
            yield conn
        finally:
            await conn.close()
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.mark.superuser
async def test_the_partitioned_audit_keeps_every_row_and_every_guard(scratch: asyncpg.Connection) -> None:
    migrations = {m.version: m for m in load_migrations()}
    retention = next(v for v, m in migrations.items() if m.name == "audit_retention")
    await scratch.execute(
        "CREATE TABLE authz_schema_migrations (version int PRIMARY KEY, name text NOT NULL)"
    )
    for v in sorted(migrations):
        if v < retention:
            await scratch.execute(migrations[v].sql)
    for t in ("acme", "other"):  # row-level security binds the owner: one tenant at a time
        async with scratch.transaction():
            await scratch.execute("SELECT set_config('authz.tenant', $1, true)", t)
            await scratch.execute("INSERT INTO tenants (tenant_id) VALUES ($1)", t)
            await scratch.execute(
                """INSERT INTO audit_events (tenant_id, at, event, actor, details)
                   SELECT $1, at, 'old.event', 'x', jsonb_build_object('i', i)
                   FROM generate_series(1, 3) i,
                        unnest(ARRAY[timestamptz '2025-03-10 12:00+00', now()]) at""",
                t,
            )
    before = await catalog(scratch)
    rows = [tuple(r) for r in await all_tenants(scratch, "audit_events", ("acme", "other"))]
    async with scratch.transaction():
        await scratch.execute(migrations[retention].sql)
    after = await catalog(scratch)
    assert after == before  # policies, triggers, RLS, grants, columns, indexes: all as they were
    assert before["policies"] and before["triggers"] and before["column_grants"]
    assert [tuple(r) for r in await all_tenants(scratch, "audit_events", ("acme", "other"))] == rows
    assert (
        await scratch.fetchval("SELECT relkind::text FROM pg_class WHERE oid = 'audit_events'::regclass")
        == "p"
    )
    parts = {r["relname"] for r in await scratch.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'audit_events'::regclass"
    )}  # fmt: skip
    assert {"audit_events_p202503", "audit_events_pdefault"} <= parts
    assert len(await all_tenants(scratch, "audit_events_p202503", ("acme", "other"))) == 6
    # Identity continues after the moved rows.
    await scratch.execute("SELECT set_config('authz.tenant', 'acme', false)")
    await scratch.execute("INSERT INTO audit_events (tenant_id, event) VALUES ('acme', 'new.event')")
    assert await scratch.fetchval("SELECT max(event_id) FROM audit_events") == max(r[1] for r in rows) + 1
    # Still append-only, even for the owner (the trigger).
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await scratch.execute("DELETE FROM audit_events WHERE tenant_id = 'acme'")


async def all_tenants(conn: asyncpg.Connection, table: str, tenants: tuple[str, ...]) -> list[asyncpg.Record]:
    """``table``'s rows of each tenant in turn, in its scope (row-level security binds a
    non-superuser owner; a superuser sees every row, hence the filter too)."""
    rows: list[asyncpg.Record] = []
    for t in tenants:
        async with conn.transaction():
            await conn.execute("SELECT set_config('authz.tenant', $1, true)", t)
            rows += await conn.fetch(f"SELECT * FROM {table} WHERE tenant_id = $1 ORDER BY event_id", t)
    return rows


async def plant_month(owner: asyncpg.Connection, month: date, rows: dict[str, int]) -> str:
    """A month partition of the past with ``rows`` events per tenant (as the owner)."""
    name = f"audit_events_p{month:%Y%m}"
    following = date(month.year + month.month // 12, month.month % 12 + 1, 1)
    await owner.execute(
        f"CREATE TABLE {name} PARTITION OF audit_events FOR VALUES FROM ('{month} 00:00+00') TO ('{following} 00:00+00')"
    )
    for tenant_id, n in rows.items():
        async with owner.transaction():  # each tenant's rows in its scope (row-level security)
            await owner.execute("SELECT set_config('authz.tenant', $1, true)", tenant_id)
            await owner.execute(
                """INSERT INTO audit_events (tenant_id, at, event, actor)
                   SELECT $1, $2::date + interval '14 days', 'old.event', 'x' FROM generate_series(1, $3)""",
                tenant_id, month, n,
            )  # fmt: skip
    return name


async def partitions(owner: asyncpg.Connection) -> set[str]:
    rows = await owner.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'audit_events'::regclass"
    )
    return {r["relname"] for r in rows}


async def test_prune_drops_whole_old_months_and_audits_it_in_each_tenant(
    tenant: Tenant, other_tenant: Tenant, service: Service, owner: asyncpg.Connection
) -> None:
    year = 1900 + secrets.randbelow(100)  # past months no other test plants
    jan = await plant_month(owner, date(year, 1, 1), {tenant.tenant_id: 3, other_tenant.tenant_id: 2})
    feb = await plant_month(owner, date(year, 2, 1), {tenant.tenant_id: 4})
    op = connect(service.address, service.operator_key)
    try:
        resp = await op.admin.PruneAudit(adm.PruneAuditRequest(before=f"{year}-02-01"))
        assert [(p.partition, p.events) for p in resp.partitions] == [(jan, 5)]
        assert resp.partitions[0].range_to.ToDatetime().date() == date(year, 2, 1)
        assert jan not in await partitions(owner) and feb in await partitions(owner)
        # Each tenant's own trail says what went, and only its own count.
        for t, n in ((tenant, 3), (other_tenant, 2)):
            pruned = await audit_of(t, "audit.pruned")
            assert [(d["partition"], d["events"], d["before"]) for _, d in pruned] == [
                (jan, n, f"{year}-02-01")
            ]
        old = await owner.fetchval(
            "SELECT count(*) FROM audit_events WHERE tenant_id = $1 AND event = 'old.event'", tenant.tenant_id
        )
        assert old == 4  # February's stay: whole months only, never single rows
        # Again: nothing left to drop before that date.
        assert (
            list((await op.admin.PruneAudit(adm.PruneAuditRequest(before=f"{year}-02-01"))).partitions) == []
        )
        # The current month is never dropped, whatever the date.
        current = await owner.fetchval(
            "SELECT 'audit_events_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')"
        )
        await op.admin.PruneAudit(adm.PruneAuditRequest(before="2999-01-01"))
        assert current in await partitions(owner)
        assert feb not in await partitions(owner)
        assert await audit_of(tenant, "tenant.created")  # this month's events are all there
        err = await rpc_error(op.admin.PruneAudit(adm.PruneAuditRequest(before="last year")))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await op.close()


async def test_only_the_operator_prunes(tenant: Tenant, owner: asyncpg.Connection) -> None:
    year = 1900 + secrets.randbelow(100)
    name = await plant_month(owner, date(year, 5, 1), {tenant.tenant_id: 1})
    for client in (tenant.admin, tenant.connector, tenant.approver):
        err = await rpc_error(client.admin.PruneAudit(adm.PruneAuditRequest(before=f"{year + 1}-01-01")))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert name in await partitions(owner)
    await owner.execute(f"DROP TABLE {name}")


async def test_the_service_role_cannot_delete_audit_rows_or_drop_partitions(
    tenant: Tenant, dsns: Dsns, owner: asyncpg.Connection
) -> None:
    current = await owner.fetchval("SELECT 'audit_events_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMM')")
    conn = await asyncpg.connect(dsns.service)
    try:
        for sql in (
            "DELETE FROM audit_events",
            "TRUNCATE audit_events",
            f"DELETE FROM {current}",
            f"SELECT * FROM {current}",
            f"DROP TABLE {current}",
            f"ALTER TABLE audit_events DETACH PARTITION {current}",
        ):
            async with conn.transaction():
                await conn.execute("SELECT set_config('authz.tenant', $1, true)", tenant.tenant_id)
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)
    finally:
        await conn.close()
    assert (
        await owner.fetchval("SELECT count(*) FROM audit_events WHERE tenant_id = $1", tenant.tenant_id) > 0
    )
    # Every partition: no privilege for the service, and row-level security as strict as its table's.
    rows = await owner.fetch(
        """SELECT c.relname, c.relrowsecurity AND c.relforcerowsecurity AS forced,
                  (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies,
                  has_table_privilege('authz_service', c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE') AS granted
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'audit_events'::regclass"""
    )
    assert len(rows) >= 5  # default, this month and three ahead
    assert [r["relname"] for r in rows if not r["forced"] or r["policies"] < 1 or r["granted"]] == []


async def test_cli_prune_uses_the_operator_key(
    tenant: Tenant, service: Service, owner: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    year = 1900 + secrets.randbelow(100)
    name = await plant_month(owner, date(year, 3, 1), {tenant.tenant_id: 2})
    monkeypatch.setenv("AUTHZ_OPERATOR_KEY", service.operator_key)
    r = await run_authz("audit", "prune", "--before", f"{year}-04-01", "--address", service.address, "--json")
    assert r.code == 0, r.err
    assert [(row["partition"], row["events"]) for row in json.loads(r.out)] == [(name, 2)]
    assert name not in await partitions(owner)
