"""The hot path's cache: it is used, `consistent` bypasses it, it drops what
changed, and it stops serving while the change listener is down (fail closed)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from authz_service.client import Client, connect
from authz_service.config import Settings
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.server import RunningServer, start_server
from authz_service.store.db import Database
from authz_service.store.notify import APPLICATION_NAME

from .conftest import SECRET_KEY, Dsns, Tenant, connect_as_tenant, eventually, rpc_error
from .pgproxy import PgProxy


@dataclasses.dataclass
class Cached:
    running: RunningServer
    client: Client


@pytest.fixture
async def cached(dsns: Dsns, tenant: Tenant) -> AsyncIterator[Cached]:
    """A server of its own, so this test owns its cache and its listener."""
    settings = Settings.from_env(
        {"AUTHZ_DATABASE_URL": dsns.service, "AUTHZ_SECRET_KEY": SECRET_KEY, "AUTHZ_HOME": "/nonexistent"}
    )
    running = await start_server(await Database.connect(dsns.service), settings, listen="127.0.0.1:0")
    client = connect(f"127.0.0.1:{running.port}", tenant.keys["connector"])
    await tenant.channel("tg")
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="42"))

    async def listening() -> bool:  # the cache serves once the listener's self-check passed
        return running.cache.usable

    await eventually(listening)
    yield Cached(running, client)
    await client.close()
    await running.stop(grace=0)


async def check(c: Cached, consistent: bool = False) -> int:
    resp = await c.client.authz.CheckUser(
        az.CheckUserRequest(
            channel_id="tg", user_id="42", chat_kind=cm.CHAT_KIND_DIRECT, consistent=consistent
        )
    )
    return resp.decision


async def block_without_notifying(dsns: Dsns, tenant: Tenant) -> None:
    """Change the truth behind the cache's back: the owner blocks the user with
    the change trigger switched off for the statement."""
    owner = await connect_as_tenant(dsns.owner, tenant.tenant_id)
    try:
        async with owner.transaction():
            await owner.execute("ALTER TABLE subjects DISABLE TRIGGER subjects_changes")
            await owner.execute(
                "UPDATE subjects SET status = 'blocked' WHERE tenant_id = $1 AND user_id = '42'",
                tenant.tenant_id,
            )
            await owner.execute("ALTER TABLE subjects ENABLE TRIGGER subjects_changes")
    finally:
        await owner.close()


async def test_cached_answers_and_consistent_reads(cached: Cached, dsns: Dsns, tenant: Tenant) -> None:
    cache = cached.running.cache
    assert await check(cached) == az.DECISION_ALLOW
    hits = cache.hits
    assert await check(cached) == az.DECISION_ALLOW
    assert cache.hits == hits + 1  # the second answer came from the cache
    await block_without_notifying(dsns, tenant)
    # Nothing announced the change: the cache still says allow, a consistent read does not.
    assert await check(cached) == az.DECISION_ALLOW
    assert await check(cached, consistent=True) == az.DECISION_BLOCKED


async def test_a_change_drops_the_cached_entry(cached: Cached, tenant: Tenant) -> None:
    assert await check(cached) == az.DECISION_ALLOW
    assert await check(cached) == az.DECISION_ALLOW
    await tenant.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id="42"))

    async def blocked() -> bool:
        return await check(cached) == az.DECISION_BLOCKED

    await eventually(blocked)


@pytest.mark.superuser
async def test_listener_loss_turns_the_cache_off_until_it_is_back(
    cached: Cached, dsns: Dsns, tenant: Tenant
) -> None:
    cache = cached.running.cache
    assert await check(cached) == az.DECISION_ALLOW
    assert cache.usable
    cached.running.listener.reconnect_delay = 5.0  # long enough to act while it is down
    admin = await asyncpg.connect(dsns.admin)  # ends another role's backend
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            APPLICATION_NAME,
        )
    finally:
        await admin.close()

    async def off() -> bool:
        return not cache.usable

    await eventually(off)
    # While it is down, nothing is cached (a fill would be stale later) and a
    # change nobody announces is still seen: every read goes to the database.
    assert await check(cached) == az.DECISION_ALLOW
    await block_without_notifying(dsns, tenant)
    assert await check(cached) == az.DECISION_BLOCKED

    async def on() -> bool:
        return cache.usable

    await eventually(on, timeout=20)  # the listener reconnects by itself
    assert await check(cached) == az.DECISION_BLOCKED


async def test_a_process_reads_its_own_writes_without_waiting_for_notify(
    cached: Cached, dsns: Dsns, tenant: Tenant
) -> None:
    """A write through this process forgets the tenant's cached state before it
    answers, so the next call here never depends on the NOTIFY's timing. The
    notification is switched off to prove it."""
    admin = connect(f"127.0.0.1:{cached.running.port}", tenant.keys["admin"])
    owner = await asyncpg.connect(dsns.owner)
    try:
        assert await check(cached) == az.DECISION_ALLOW
        assert await check(cached) == az.DECISION_ALLOW  # cached now
        await owner.execute("ALTER TABLE subjects DISABLE TRIGGER subjects_changes")
        await admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id="42"))
        assert await check(cached) == az.DECISION_BLOCKED
    finally:
        await owner.execute("ALTER TABLE subjects ENABLE TRIGGER subjects_changes")
        await owner.close()
        await admin.close()


async def test_evaluate_send_uses_the_cached_channel_policy(
    cached: Cached, dsns: Dsns, tenant: Tenant
) -> None:
    async def send(target: str) -> az.EvaluateSendResponse:
        return await cached.client.authz.EvaluateSend(
            az.EvaluateSendRequest(channel_id="tg", agent_id="a", origin="chat-1", target=target)
        )

    assert not (await send("ops")).allow  # no send policy: only the origin
    hits = cached.running.cache.hits
    assert not (await send("ops")).allow
    assert cached.running.cache.hits == hits + 1
    owner = await connect_as_tenant(dsns.owner, tenant.tenant_id)
    try:
        async with owner.transaction():  # allow "ops" behind the cache's back, unannounced
            await owner.execute("ALTER TABLE channels DISABLE TRIGGER channels_changes")
            await owner.execute(
                """UPDATE channels SET policy = jsonb_set(policy, '{send_policy}',
                       '{"default": "deny", "allow": ["ops"], "deny": []}') WHERE tenant_id = $1""",
                tenant.tenant_id,
            )
            await owner.execute("ALTER TABLE channels ENABLE TRIGGER channels_changes")
    finally:
        await owner.close()
    assert not (await send("ops")).allow  # still the cached policy: the cache is really used
    # An announced change (through the API, on another process) reaches it.
    await tenant.admin.admin.SetChannel(
        adm.SetChannelRequest(
            channel_id="tg",
            platform=cm.PLATFORM_TELEGRAM,
            policy=cm.ChannelPolicy(send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_DENY, allow=["ops"])),
        )
    )

    async def allowed() -> bool:
        return (await send("ops")).allow

    await eventually(allowed)


async def test_state_writes_keep_cached_keys_and_key_revocation_drops_them(
    cached: Cached, dsns: Dsns, tenant: Tenant
) -> None:
    """A write to a tenant's users leaves its cached API keys alone (pairing
    traffic does not make every call re-read its key), while revoking a key
    through this process refuses it at once, without waiting for NOTIFY (the
    key trigger is switched off to prove it)."""
    admin = connect(f"127.0.0.1:{cached.running.port}", tenant.keys["admin"])
    key_id = tenant.keys["connector"].split(".")[2]
    owner = await asyncpg.connect(dsns.owner)
    try:
        assert await check(cached) == az.DECISION_ALLOW  # the connector key is cached now
        assert cached.running.cache.key(tenant.tenant_id, key_id)[0]
        await admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="43"))
        assert cached.running.cache.key(tenant.tenant_id, key_id)[0]
        await owner.execute("ALTER TABLE api_keys DISABLE TRIGGER api_keys_changes")
        await admin.admin.RevokeApiKey(adm.RevokeApiKeyRequest(key_id=key_id))
        assert not cached.running.cache.key(tenant.tenant_id, key_id)[0]
        err = await rpc_error(check(cached))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await owner.execute("ALTER TABLE api_keys ENABLE TRIGGER api_keys_changes")
        await owner.close()
        await admin.close()


async def test_a_stalled_listener_turns_the_cache_off_within_3_s_whatever_the_db_timeout(
    dsns: Dsns, tenant: Tenant
) -> None:
    """The path to PostgreSQL goes silent (no byte flows, nothing is closed).
    With the longest allowed AUTHZ_DB_TIMEOUT_SECONDS the listener's heartbeat
    used to wait 300 s before the cache stopped serving; it has its own short
    timeout now, so the cache is off within 3 s."""
    proxy = PgProxy(dsns.service)
    await proxy.start()
    settings = Settings.from_env(
        {
            "AUTHZ_DATABASE_URL": proxy.dsn,
            "AUTHZ_SECRET_KEY": SECRET_KEY,
            "AUTHZ_HOME": "/nonexistent",
            "AUTHZ_DB_TIMEOUT_SECONDS": "300",
        }
    )
    running = await start_server(await Database.connect(proxy.dsn), settings, listen="127.0.0.1:0")
    client = connect(f"127.0.0.1:{running.port}", tenant.keys["connector"])
    try:
        await tenant.channel("tg")
        await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="42"))
        c = Cached(running, client)
        assert await check(c) == az.DECISION_ALLOW
        assert await check(c) == az.DECISION_ALLOW
        assert running.cache.usable and running.cache.hits > 0
        running.listener.reconnect_delay = 30.0  # and stays off while stalled
        proxy.stall()

        async def off() -> bool:
            return not running.cache.usable

        await eventually(off, timeout=3.0)
    finally:
        proxy.restore()
        await client.close()
        await running.stop(grace=0)
        await proxy.close()
