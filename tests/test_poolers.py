"""Behind a real PgBouncer, in transaction and session modes.

The rule: a user blocked through replica A is denied on replica B within the
documented bound (at once with AUTHZ_LISTEN_DATABASE_URL straight to
PostgreSQL; within AUTHZ_NOTIFY_CHECK_SECONDS + the probe timeout when the
listener is misrouted through the pooler, whose self-check then turns the
cache off and says why). Never a stale ALLOW.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from authz_service.client import Client, connect
from authz_service.config import Settings
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.server import CHANGE_FEED, start_server
from authz_service.store.db import Database
from authz_service.store.notify import PROBE_TIMEOUT, Listener

from .conftest import SECRET_KEY, Dsns, Tenant, eventually
from .health import NOT_SERVING, SERVING, health_of
from .pgbouncer import Pooler, pgbouncer
from .replicas import Cluster, new_tenant, two_replicas

CHECK_SECONDS = 1


@pytest.fixture(params=["transaction", "session"])
async def pooler(request: pytest.FixtureRequest, dsns: Dsns) -> AsyncIterator[Pooler]:
    async with pgbouncer(dsns.service, request.param) as p:
        yield p


@pytest.fixture
async def transaction_pooler(dsns: Dsns) -> AsyncIterator[Pooler]:
    async with pgbouncer(dsns.service, "transaction") as p:
        yield p


async def decision(client: Client, user_id: str = "42") -> int:
    resp = await client.authz.CheckUser(
        az.CheckUserRequest(channel_id="tg", user_id=user_id, chat_kind=cm.CHAT_KIND_DIRECT)
    )
    return resp.decision


async def test_the_service_works_through_the_pooler(pooler: Pooler, dsns: Dsns, tenant: Tenant) -> None:
    """Without named prepared statements every call works in either mode, on
    many server connections at once; the listener goes straight to PostgreSQL."""
    settings = Settings.from_env(
        {
            "AUTHZ_DATABASE_URL": pooler.dsn,
            "AUTHZ_LISTEN_DATABASE_URL": dsns.service,
            "AUTHZ_SECRET_KEY": SECRET_KEY,
            "AUTHZ_HOME": "/nonexistent",
            "AUTHZ_DB_STATEMENT_CACHE_SIZE": "0",
        }
    )
    db = await Database.connect(pooler.dsn, max_size=8, statement_cache_size=settings.statement_cache_size)
    running = await start_server(db, settings, listen="127.0.0.1:0")
    client = connect(f"127.0.0.1:{running.port}", tenant.keys["admin"])
    try:
        assert running.listener.problem == ""
        assert running.cache.usable
        await client.admin.SetChannel(
            adm.SetChannelRequest(channel_id="tg", platform=cm.PLATFORM_TELEGRAM, policy=cm.ChannelPolicy())
        )
        users = [str(100 + i) for i in range(20)]
        await asyncio.gather(
            *(client.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id=u)) for u in users)
        )
        for _ in range(3):
            got = await asyncio.gather(*(decision(client, u) for u in users))
            assert set(got) == {az.DECISION_ALLOW}
        assert await health_of(f"127.0.0.1:{running.port}", CHANGE_FEED) == SERVING
    finally:
        await client.close()
        await running.stop(grace=0)


async def blocked_on_b_after_blocking_on_a(cluster: Cluster, bound: float) -> float:
    """Allow user 42, let B cache it, block through A; seconds until B denies."""
    admin_a = await new_tenant(cluster.a, cluster.operator_key, "pgb")
    key = await admin_a.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="tg"))
    connector_b = connect(cluster.b.address, key.secret)
    try:
        await admin_a.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="42"))
        async with asyncio.timeout(10):  # B may take a moment to see the new key
            while True:
                try:
                    if await decision(connector_b) == az.DECISION_ALLOW:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)
        assert await decision(connector_b) == az.DECISION_ALLOW  # cached on B, if B trusts its cache
        await admin_a.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id="42"))
        start = time.monotonic()

        async def denied() -> bool:
            return await decision(connector_b) == az.DECISION_BLOCKED

        await eventually(denied, timeout=bound)
        return time.monotonic() - start
    finally:
        await admin_a.close()
        await connector_b.close()


async def test_a_block_on_a_reaches_b_at_once_with_the_listener_straight_to_postgres(
    transaction_pooler: Pooler, dsns: Dsns
) -> None:
    async with two_replicas(
        dsns,
        AUTHZ_DATABASE_URL=transaction_pooler.dsn,
        AUTHZ_LISTEN_DATABASE_URL=dsns.service,
        AUTHZ_DB_STATEMENT_CACHE_SIZE="0",
    ) as cluster:
        assert await health_of(cluster.b.address, CHANGE_FEED) == SERVING
        took = await blocked_on_b_after_blocking_on_a(cluster, bound=2.0)
        assert took < 2.0


async def test_a_listener_through_the_pooler_turns_the_cache_off_and_says_why(
    transaction_pooler: Pooler, dsns: Dsns
) -> None:
    """The misconfiguration of issue #18: LISTEN through a transaction-mode
    pooler. The self-check notices; B reads the database, so the block still
    reaches it within the documented bound, and health "changes" says why."""
    bound = CHECK_SECONDS + PROBE_TIMEOUT + 1.0  # + one poll and an RPC's slack
    async with two_replicas(
        dsns,
        AUTHZ_DATABASE_URL=transaction_pooler.dsn,
        AUTHZ_DB_STATEMENT_CACHE_SIZE="0",
        AUTHZ_NOTIFY_CHECK_SECONDS=str(CHECK_SECONDS),
        AUTHZ_READINESS_INTERVAL_SECONDS="1",
    ) as cluster:
        for _ in range(3):
            await blocked_on_b_after_blocking_on_a(cluster, bound=bound)

        async def says_why() -> bool:
            status = await health_of(cluster.b.address, CHANGE_FEED)
            return bool(status == NOT_SERVING)

        await eventually(says_why, timeout=bound + 1)
        # Decisions are still right (from the database): readiness stays SERVING.
        assert await health_of(cluster.b.address, "") == SERVING


async def test_the_self_check_turns_the_cache_off_when_notifications_do_not_come_back(
    transaction_pooler: Pooler, dsns: Dsns
) -> None:
    """In process: a listener through the pooler fails its probe at start-up."""
    db = await Database.connect(transaction_pooler.dsn, statement_cache_size=0)
    states: list[bool] = []
    listener = Listener(transaction_pooler.dsn, probe=db.notify, probe_interval=0.5)
    listener.on_state(states.append)
    try:
        await listener.start()
        # LISTEN landed on one server session; the probe went out on another.
        assert listener.problem.startswith("a notification sent through the pool did not reach")
        assert states == [False]
    finally:
        await listener.close()
        await db.close()


async def test_the_self_check_passes_straight_to_postgres(dsns: Dsns) -> None:
    db = await Database.connect(dsns.service)
    states: list[bool] = []
    listener = Listener(dsns.service, probe=db.notify, probe_interval=0.2)
    listener.on_state(states.append)
    try:
        await listener.start()
        assert listener.problem == ""
        assert states == [True]
        await asyncio.sleep(0.6)  # a few periodic probes: no flapping
        assert states == [True]
    finally:
        await listener.close()
        await db.close()
