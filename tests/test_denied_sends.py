"""Floods of denied sends (issue #15 item 9), over real gRPC on real PostgreSQL:
one event and a count per key, agent and target, summaries of closed buckets,
the sweep, and the counts bound to their tenant."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.store.db import Database

from .conftest import Dsns, Service, Tenant, eventually
from .flood_helpers import audit_of, limited

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
