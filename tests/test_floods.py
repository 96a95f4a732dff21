"""Floods and retention (issue #15 item 9), over real gRPC on real PostgreSQL:
caps on pending tool approvals, paged listings, bounded audit details,
aggregated denied sends, and pruning the audit by whole partitions."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from urllib.parse import urlparse, urlunparse

import asyncpg
import grpc
import pytest

from authz_service.client import Client, connect
from authz_service.config import ConfigError, Settings
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.server import RunningServer, start_server
from authz_service.store.db import Database
from authz_service.store.migrate import load_migrations

from .conftest import Dsns, Service, Tenant, eventually, rpc_error
from .policy_helpers import make_cli, run_authz

APPROVER = "telegram:42"


@dataclass(frozen=True)
class Limited:
    """An in-process server with its own limits, on the session's database."""

    address: str
    running: RunningServer

    def client(self, key: str) -> Client:
        return connect(self.address, key)


async def limited(dsns: Dsns, service: Service, **limits: int) -> Limited:
    env = {
        "AUTHZ_DATABASE_URL": dsns.service,
        "AUTHZ_SECRET_KEY": service.settings.secret_key,
        "AUTHZ_HOME": tempfile.gettempdir(),
    }
    env.update({f"AUTHZ_{name.upper()}": str(value) for name, value in limits.items()})
    db = await Database.connect(dsns.service, max_size=5)
    running = await start_server(db, Settings.from_env(env), listen="127.0.0.1:0")
    return Limited(f"127.0.0.1:{running.port}", running)


@pytest.fixture(scope="module")
async def capped(dsns: Dsns, service: Service) -> AsyncIterator[Limited]:
    """3 pending tool approvals per agent, 5 per tenant."""
    server = await limited(
        dsns, service, pending_tool_approvals_per_agent=3, pending_tool_approvals_per_tenant=5
    )
    yield server
    await server.running.stop(grace=1)


async def agent_key(t: Tenant) -> str:
    key = await t.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="runtime"))
    return key.secret


async def ask(
    agent: Client, args: object, *, agent_id: str = "ops", tool: str = "shell"
) -> az.RequestApprovalResponse:
    return await agent.authz.RequestApproval(
        az.RequestApprovalRequest(
            tool_name=tool, arguments_json=json.dumps(args), agent_id=agent_id, timeout_seconds=600
        )
    )


# --- b. caps on pending tool approvals --------------------------------------------------


async def test_pending_tool_approvals_are_capped_per_agent_then_per_tenant(
    tenant: Tenant, capped: Limited
) -> None:
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[APPROVER]))
    agent = capped.client(await agent_key(tenant))
    try:
        first = [await ask(agent, {"n": i}) for i in range(3)]
        err = await rpc_error(ask(agent, {"n": 3}))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "agent ops has 3 pending tool approvals" in (err.details() or "")
        assert "AUTHZ_PENDING_TOOL_APPROVALS_PER_AGENT=3" in (err.details() or "")
        # Another agent still has room, until the tenant's cap.
        await ask(agent, {"n": 0}, agent_id="build")
        await ask(agent, {"n": 1}, agent_id="build")
        err = await rpc_error(ask(agent, {"n": 2}, agent_id="build"))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the tenant has 5 pending tool approvals" in (err.details() or "")
        # Deciding one frees a place (only live pending approvals count).
        resolved = await tenant.admin.authz.ResolveApproval(
            az.ResolveApprovalRequest(
                approval_id=first[0].approval.approval_id, action=cm.APPROVAL_ACTION_DENY
            )
        )
        assert resolved.approval.status == cm.APPROVAL_STATUS_DENIED
        assert (await ask(agent, {"n": 3})).approval.approval_id
        # Nothing was written for a refused request.
        listed = await tenant.admin.admin.ListApprovals(
            adm.ListApprovalsRequest(kind=cm.APPROVAL_KIND_TOOL, status=cm.APPROVAL_STATUS_PENDING)
        )
        assert len(listed.approvals) == 5
    finally:
        await agent.close()


async def test_the_cap_holds_under_concurrent_requests(tenant: Tenant, capped: Limited) -> None:
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[APPROVER]))
    agent = capped.client(await agent_key(tenant))
    try:
        results = await asyncio.gather(*(ask(agent, {"n": i}) for i in range(12)), return_exceptions=True)
        ok = [r for r in results if isinstance(r, az.RequestApprovalResponse)]
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(ok) == 3
        assert len(refused) == 9
        assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    finally:
        await agent.close()


def test_pending_cap_settings_are_read_and_validated() -> None:
    base = {"AUTHZ_DATABASE_URL": "postgresql://x@localhost/x", "AUTHZ_SECRET_KEY": "k" * 32}
    defaults = Settings.from_env(base)
    assert (defaults.pending_tool_approvals_per_agent, defaults.pending_tool_approvals_per_tenant) == (
        20,
        200,
    )
    assert defaults.denied_send_sweep_seconds == 60
    custom = Settings.from_env(
        {
            **base,
            "AUTHZ_PENDING_TOOL_APPROVALS_PER_AGENT": "7",
            "AUTHZ_PENDING_TOOL_APPROVALS_PER_TENANT": "9",
            "AUTHZ_DENIED_SEND_SWEEP_SECONDS": "5",
        }
    )
    assert (custom.pending_tool_approvals_per_agent, custom.pending_tool_approvals_per_tenant) == (7, 9)
    assert custom.denied_send_sweep_seconds == 5
    with pytest.raises(ConfigError):
        Settings.from_env({**base, "AUTHZ_PENDING_TOOL_APPROVALS_PER_AGENT": "0"})


# --- d. listings page ---------------------------------------------------------------------


async def big_requests(t: Tenant, count: int) -> list[str]:
    """``count`` pending tool approvals of about 120 KB each (two agents, under the per-agent cap)."""
    out = []
    for i in range(count):
        arguments = json.dumps({"n": i, "blob": "é" * 60_000}, ensure_ascii=False)
        resp = await t.connector.authz.RequestApproval(
            az.RequestApprovalRequest(
                tool_name="upload", arguments_json=arguments, agent_id=f"a{i % 2}", timeout_seconds=600
            )
        )
        out.append(resp.approval.approval_id)
    return out


async def test_list_approvals_pages_big_approvals_instead_of_failing(tenant: Tenant) -> None:
    made = await big_requests(tenant, 36)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await tenant.admin.admin.ListApprovals(
            adm.ListApprovalsRequest(kind=cm.APPROVAL_KIND_TOOL, page_size=1000, page_token=token)
        )
        pages += 1
        assert 0 < page.ByteSize() <= 4 * 1024 * 1024
        seen.extend(a.approval_id for a in page.approvals)
        token = page.next_page_token
        if not token:
            break
    assert pages >= 3  # bounded by bytes, not only by page_size
    assert sorted(seen) == sorted(made)  # every approval once, none twice
    # Page size is honoured too, newest first across pages.
    first = await tenant.admin.admin.ListApprovals(
        adm.ListApprovalsRequest(kind=cm.APPROVAL_KIND_TOOL, page_size=5)
    )
    assert [a.approval_id for a in first.approvals] == made[::-1][:5]
    second = await tenant.admin.admin.ListApprovals(
        adm.ListApprovalsRequest(kind=cm.APPROVAL_KIND_TOOL, page_size=5, page_token=first.next_page_token)
    )
    assert [a.approval_id for a in second.approvals] == made[::-1][5:10]


async def test_list_approvals_refuses_bad_paging(tenant: Tenant) -> None:
    err = await rpc_error(tenant.admin.admin.ListApprovals(adm.ListApprovalsRequest(page_size=1001)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in (err.details() or "")
    err = await rpc_error(tenant.admin.admin.ListApprovals(adm.ListApprovalsRequest(page_token="bm9wZQ")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (err.details() or "")


async def test_cli_lists_35_big_tool_approvals(service: Service, tenant: Tenant) -> None:
    made = await big_requests(tenant, 36)
    r = await make_cli(service, tenant)("approvals", "list", "--kind", "tool", "--json")
    assert r.code == 0, r.err
    assert [row["approval_id"] for row in json.loads(r.out)] == made[::-1]
    r = await make_cli(service, tenant)(
        "approvals", "list", "--kind", "tool", "--agent", "a1", "--limit", "4", "--json"
    )
    assert r.code == 0, r.err
    assert [row["approval_id"] for row in json.loads(r.out)] == made[::-1][:8:2]


# --- c. the audit keeps a digest and an excerpt -------------------------------------------


async def test_audit_keeps_a_digest_and_an_excerpt_not_the_call(
    tenant: Tenant, owner: asyncpg.Connection
) -> None:
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[APPROVER]))
    arguments = json.dumps({"blob": "é" * 60_000, "cmd": "upload"}, ensure_ascii=False)
    canonical = json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    resp = await tenant.connector.authz.RequestApproval(
        az.RequestApprovalRequest(
            tool_name="upload", arguments_json=arguments, agent_id="ops", timeout_seconds=600
        )
    )
    aid = resp.approval.approval_id
    # The approval row keeps the whole call (what a decision binds to) ...
    assert resp.approval.tool.arguments_json == canonical
    await tenant.admin.authz.ResolveApproval(
        az.ResolveApprovalRequest(approval_id=aid, action=cm.APPROVAL_ACTION_ALWAYS_ALLOW)
    )
    refused = await tenant.connector.authz.RedeemApproval(
        az.RedeemApprovalRequest(approval_id=aid, tool_name="upload", arguments_json=canonical[:-2] + 'x"}')
    )
    assert not refused.allow
    # ... the audit only its digest, size and a bounded excerpt, in every event that names it.
    found = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="tool."))
    grants = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="grant.created"))
    by_event = {e.event: json.loads(e.details_json) for e in [*found.events, *grants.events]}
    for name in ("tool.requested", "grant.created"):
        details = by_event[name]
        assert "arguments" not in details
        assert details["arguments_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
        assert details["arguments_bytes"] == len(canonical.encode())
        assert canonical.startswith(details["arguments_excerpt"].removesuffix("…"))
        assert len(details["arguments_excerpt"].encode()) <= 512 + len("…".encode())
    assert (
        by_event["tool.redeem_refused"]["arguments_sha256"] != by_event["tool.requested"]["arguments_sha256"]
    )
    # As stored: no audit row of this tenant carries the call.
    sizes = await owner.fetch(
        "SELECT event, octet_length(details::text) AS n FROM audit_events WHERE tenant_id = $1",
        tenant.tenant_id,
    )
    assert sizes and max(r["n"] for r in sizes) < 2048, sizes


# --- a. denied sends, counted and aggregated ----------------------------------------------


async def deny_channel(t: Tenant) -> None:
    await t.channel("sl", cm.PLATFORM_SLACK, send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_DENY))


async def denied_send(t: Tenant, target: str, agent: str = "ops") -> None:
    resp = await t.connector.authz.EvaluateSend(
        az.EvaluateSendRequest(
            channel_id="sl", agent_id=agent, session_id="s1", origin="slack:C0HOME1", target=target
        )
    )
    assert not resp.allow


async def clear_of_a_bucket_edge(owner: asyncpg.Connection) -> None:
    """Start a burst well inside one 60 s bucket of the database clock (not a
    timing assertion: a burst that straddles two buckets is two aggregates)."""
    left = float(await owner.fetchval("SELECT 60 - extract(epoch FROM now())::numeric % 60"))
    if left < 15:
        await asyncio.sleep(left + 0.5)


async def audit_of(t: Tenant, event: str) -> list[tuple[str, dict[str, object]]]:
    found = await t.admin.admin.QueryAudit(adm.QueryAuditRequest(event=event, limit=1000))
    return [(e.subject, json.loads(e.details_json)) for e in found.events]


async def test_a_flood_of_denied_sends_is_one_event_and_a_count(
    tenant: Tenant, owner: asyncpg.Connection
) -> None:
    await deny_channel(tenant)
    await clear_of_a_bucket_edge(owner)
    await asyncio.gather(*(denied_send(tenant, "slack:#exec") for _ in range(50)))
    events = await audit_of(tenant, "send.denied")
    assert len(events) == 1
    subject, details = events[0]
    assert subject == "slack:#exec" and details["count"] == 1 and details["interval_seconds"] == 60
    assert details["reason"] and details["key"] == tenant.keys["connector"].split(".")[2]
    # Every denial counted, committed with its decision.
    rows = await owner.fetch("SELECT * FROM send_denials WHERE tenant_id = $1", tenant.tenant_id)
    assert [(r["target"], r["agent_id"], r["denials"]) for r in rows] == [("slack:#exec", "ops", 50)]
    # Another agent, or another target, is its own event.
    await denied_send(tenant, "slack:#exec", agent="build")
    await denied_send(tenant, "slack:#random")
    assert sorted(s for s, _ in await audit_of(tenant, "send.denied")) == [
        "slack:#exec",
        "slack:#exec",
        "slack:#random",
    ]


async def test_a_closed_bucket_becomes_one_summary_with_its_total(
    tenant: Tenant, owner: asyncpg.Connection
) -> None:
    await deny_channel(tenant)
    await clear_of_a_bucket_edge(owner)
    for _ in range(7):
        await denied_send(tenant, "slack:#exec")
    assert await audit_of(tenant, "send.denied_summary") == []  # still open: nothing but the first event
    # Plant the evidence of time passing: the bucket is two intervals old.
    await owner.execute(
        """UPDATE send_denials SET bucket_start = bucket_start - interval '120 s',
                  first_at = first_at - interval '120 s', last_at = last_at - interval '120 s'
           WHERE tenant_id = $1""",
        tenant.tenant_id,
    )
    # The next denials open a new bucket: the old one is summarised once, then gone.
    await asyncio.gather(*(denied_send(tenant, "slack:#exec") for _ in range(10)))
    summaries = await audit_of(tenant, "send.denied_summary")
    assert len(summaries) == 1
    subject, details = summaries[0]
    assert (subject, details["count"]) == ("slack:#exec", 7)
    assert details["first_at"] <= details["last_at"]  # type: ignore[operator]
    rows = await owner.fetch("SELECT denials FROM send_denials WHERE tenant_id = $1", tenant.tenant_id)
    assert [r["denials"] for r in rows] == [10]
    assert len(await audit_of(tenant, "send.denied")) == 2  # one per bucket


async def test_the_sweep_summarises_a_burst_that_nothing_follows(
    tenant: Tenant, dsns: Dsns, service: Service, owner: asyncpg.Connection
) -> None:
    await deny_channel(tenant)
    await clear_of_a_bucket_edge(owner)
    for _ in range(4):
        await denied_send(tenant, "slack:#exec")
    await owner.execute(
        "UPDATE send_denials SET bucket_start = bucket_start - interval '120 s' WHERE tenant_id = $1",
        tenant.tenant_id,
    )
    # No further denial: a process sweeping every second writes the summary by itself.
    sweeper = await limited(dsns, service, denied_send_sweep_seconds=1)
    try:

        async def summarised() -> bool:
            return bool(await audit_of(tenant, "send.denied_summary"))

        await eventually(summarised, timeout=15)
    finally:
        await sweeper.running.stop(grace=1)
    assert [(s, d["count"]) for s, d in await audit_of(tenant, "send.denied_summary")] == [("slack:#exec", 4)]
    assert (
        await owner.fetchval("SELECT count(*) FROM send_denials WHERE tenant_id = $1", tenant.tenant_id) == 0
    )


async def test_spraying_targets_is_bounded_per_key_and_agent(
    tenant: Tenant, owner: asyncpg.Connection
) -> None:
    await deny_channel(tenant)
    await clear_of_a_bucket_edge(owner)
    for i in range(26):
        await denied_send(tenant, f"slack:#t{i}")
    events = await audit_of(tenant, "send.denied")
    assert len(events) == 21  # 20 targets, then one '*' for the rest
    assert events[-1][0] == "*" and events[-1][1]["target"] == "slack:#t20"
    star = await owner.fetchval(
        "SELECT denials FROM send_denials WHERE tenant_id = $1 AND target = '*'", tenant.tenant_id
    )
    assert star == 6


async def test_the_service_role_cannot_forge_the_counts_of_another_tenant(
    tenant: Tenant, other_tenant: Tenant, dsns: Dsns
) -> None:
    await deny_channel(tenant)
    await denied_send(tenant, "slack:#exec")
    conn = await asyncpg.connect(dsns.service)
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('authz.tenant', $1, true)", other_tenant.tenant_id)
            assert await conn.fetchval("SELECT count(*) FROM send_denials") == 0
            status = await conn.execute("UPDATE send_denials SET denials = 1")
            assert status == "UPDATE 0"
    finally:
        await conn.close()


async def _as_tenant(conn: asyncpg.Connection, tenant_id: str, sql: str, *args: object) -> None:
    async with conn.transaction():
        await conn.execute("SELECT set_config('authz.tenant', $1, true)", tenant_id)
        await conn.fetch(sql, *args)


async def test_the_definer_functions_refuse_what_the_callers_scope_would_not_allow(
    tenant: Tenant, other_tenant: Tenant, dsns: Dsns
) -> None:
    """The summary and prune functions run as the schema owner; from the service
    role they still act within the caller's scope: its own tenant, every tenant
    or a prune only with the operator scope, never an open bucket closed early."""
    await deny_channel(other_tenant)
    await denied_send(other_tenant, "slack:#exec")
    await denied_send(other_tenant, "slack:#exec")
    conn = await asyncpg.connect(dsns.service)
    refused = {
        "another tenant": ("SELECT authz_summarise_send_denials($1, 60)", other_tenant.tenant_id),
        "every tenant": ("SELECT authz_summarise_send_denials(NULL, 60)",),
        "an open bucket": ("SELECT authz_summarise_send_denials($1, 0)", tenant.tenant_id),
        "a prune": ("SELECT * FROM authz_audit_prune('2000-01-01')",),
    }
    try:
        for sql, *args in refused.values():
            with pytest.raises(asyncpg.RaiseError):
                await _as_tenant(conn, tenant.tenant_id, sql, *args)
    finally:
        await conn.close()
    counted = await Database.connect(dsns.service, max_size=1)
    try:
        async with counted.tenant(other_tenant.tenant_id) as c:
            assert await c.fetchval("SELECT sum(denials) FROM send_denials") == 2  # nothing was moved
    finally:
        await counted.close()


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
