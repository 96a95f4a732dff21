"""Health and lifecycle: readiness follows the database schema, and a graceful
shutdown flips health first, refuses new calls and lets in-flight ones finish."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz_service.client import NO_RETRY, connect
from authz_service.config import Settings
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.server import LIVENESS, RunningServer, start_server
from authz_service.store.db import Database
from authz_service.store.migrate import LATEST_VERSION, migrate

from .conftest import SECRET_KEY, Dsns, Tenant, connect_as_tenant, rpc_error
from .health import NOT_SERVING, SERVING, health_of


def settings(dsn: str) -> Settings:
    base = Settings.from_env(
        {"AUTHZ_DATABASE_URL": dsn, "AUTHZ_SECRET_KEY": SECRET_KEY, "AUTHZ_HOME": "/nonexistent"}
    )
    return dataclasses.replace(base, readiness_interval_seconds=0.2)


def _in_db(dsn: str, database: str) -> str:
    head, _, tail = dsn.partition("?")
    return head.rsplit("/", 1)[0] + f"/{database}" + (f"?{tail}" if tail else "")


@pytest.fixture
async def behind(dsns: Dsns) -> AsyncIterator[tuple[str, str]]:
    """A fresh database whose schema is one version behind this build."""
    name = "authz_old_" + secrets.token_hex(4)
    # The administrator creates it (the owner may not create databases); the owner owns it.
    admin = await asyncpg.connect(_in_db(dsns.admin, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}" OWNER "{urlparse(dsns.owner).username}"')
    owner_dsn = _in_db(dsns.owner, name)
    try:
        await migrate(owner_dsn)
        owner = await asyncpg.connect(owner_dsn)
        await owner.execute("DELETE FROM authz_schema_migrations WHERE version = $1", LATEST_VERSION)
        await owner.close()
        yield owner_dsn, _in_db(dsns.service, name)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


@pytest.mark.superuser  # creates a database
async def test_readiness_is_not_serving_until_the_schema_is_current(behind: tuple[str, str]) -> None:
    owner_dsn, service_dsn = behind
    with pytest.raises(RuntimeError, match="authz migrate"):
        await Database.connect(service_dsn)  # the strict default still refuses
    db = await Database.connect(service_dsn, require_schema=False)
    running = await start_server(db, settings(service_dsn), listen="127.0.0.1:0")
    address = f"127.0.0.1:{running.port}"
    try:
        assert await health_of(address) == NOT_SERVING
        assert await health_of(address, "authz.v1.AuthzService") == NOT_SERVING
        assert await health_of(address, LIVENESS) == SERVING
        client = connect(address, "azk.x.y.z", retry=NO_RETRY)
        err = await rpc_error(client.authz.CheckUser(az.CheckUserRequest()))
        await client.close()
        # Refused before anything else, with the fix in the message.
        assert err.code() == grpc.StatusCode.UNAVAILABLE and "authz migrate" in (err.details() or "")

        owner = await asyncpg.connect(owner_dsn)
        await owner.execute(
            "INSERT INTO authz_schema_migrations (version, name) VALUES ($1, 'tool_approvals')",
            LATEST_VERSION,
        )
        await owner.close()
        async with grpc.aio.insecure_channel(address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            async with asyncio.timeout(10):
                async for update in watch:
                    if update.status == SERVING:
                        break
        client = connect(address, "azk.x.y.z", retry=NO_RETRY)
        err = await rpc_error(client.authz.CheckUser(az.CheckUserRequest()))
        await client.close()
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED  # the gate is open: the key is now checked
    finally:
        await running.stop(grace=0)


async def test_graceful_shutdown_flips_health_refuses_new_calls_and_drains(
    dsns: Dsns, tenant: Tenant
) -> None:
    await tenant.channel("tg", owner_id="100")
    db = await Database.connect(dsns.service)
    running: RunningServer = await start_server(db, settings(dsns.service), listen="127.0.0.1:0")
    address = f"127.0.0.1:{running.port}"
    client = connect(address, tenant.keys["connector"], retry=NO_RETRY, timeout=30)
    owner = await connect_as_tenant(dsns.owner, tenant.tenant_id)
    try:
        # Hold the channel row so a RequestPairing is in flight (it locks that row).
        lock = owner.transaction()
        await lock.start()
        await owner.execute(
            "SELECT 1 FROM channels WHERE tenant_id = $1 AND channel_id = 'tg' FOR UPDATE", tenant.tenant_id
        )
        in_flight = asyncio.ensure_future(
            client.authz.RequestPairing(az.RequestPairingRequest(channel_id="tg", user_id="42"))
        )
        async with grpc.aio.insecure_channel(address) as channel:
            statuses = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await statuses.read()).status == SERVING
            await asyncio.sleep(0.2)  # let the RequestPairing reach the lock
            assert not in_flight.done()
            stopping = asyncio.create_task(running.stop(grace=10))
            assert (await statuses.read()).status == NOT_SERVING  # health flips first
        # New calls are refused while the in-flight one is still waiting.
        async with asyncio.timeout(5):
            while True:
                late = connect(address, tenant.keys["connector"], retry=NO_RETRY, timeout=2)
                try:
                    err = await rpc_error(
                        late.authz.CheckUser(az.CheckUserRequest(channel_id="tg", user_id="7"))
                    )
                except AssertionError:
                    await asyncio.sleep(0.05)  # accepted just before the listener closed; try again
                    continue
                finally:
                    await late.close()
                break
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert not in_flight.done()
        await lock.rollback()  # release: the in-flight call completes, not cut off
        resp = await asyncio.wait_for(in_flight, 10)
        assert resp.outcome == az.PAIRING_OUTCOME_CREATED and len(resp.code) == 8
        await asyncio.wait_for(stopping, 15)
    finally:
        await owner.close()
        await client.close()


async def test_losing_the_database_turns_readiness_off_but_not_liveness(dsns: Dsns) -> None:
    db = await Database.connect(dsns.service)
    running = await start_server(db, settings(dsns.service), listen="127.0.0.1:0")
    address = f"127.0.0.1:{running.port}"
    try:
        assert await health_of(address) == SERVING
        async with grpc.aio.insecure_channel(address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == SERVING
            await db.pool.close()  # the database is gone for this process
            async with asyncio.timeout(10):
                assert (await watch.read()).status == NOT_SERVING
        assert await health_of(address, LIVENESS) == SERVING  # no restart for a database outage
    finally:
        await running.stop(grace=0)
