"""Made-up API keys never reach the database: the check in the key, the
negative cache kept apart from real entries, and the per-peer failure throttle."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field

import grpc
import pytest

from authz_service.client import connect
from authz_service.config import Settings
from authz_service.domain.pairing import Keyring
from authz_service.flows.auth import FailureThrottle
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.server import RunningServer, start_server
from authz_service.store.db import Database

from .conftest import SECRET_KEY, Dsns, Tenant, rpc_error

KEYRING = Keyring(SECRET_KEY.encode())


@dataclass
class TransactionCount:
    """A ``TransactionObserver`` (the seam telemetry uses): counts the
    transactions run in one tenant's scope, i.e. the database reads for it."""

    tenant_id: str
    count: int = 0

    @contextlib.contextmanager
    def transaction(self, settings: Mapping[str, str]) -> Iterator[None]:
        if settings.get("authz.tenant") == self.tenant_id:
            self.count += 1
        yield


@dataclass
class Server:
    running: RunningServer
    address: str
    reads: TransactionCount
    clients: list[object] = field(default_factory=list)

    async def call(self, key: str) -> grpc.StatusCode:
        """ListApiKeys with ``key``: OK or the refusal's code."""
        client = connect(self.address, key)
        try:
            await client.admin.ListApiKeys(adm.ListApiKeysRequest())
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        finally:
            await client.close()

    async def reads_of(self, key: str) -> tuple[grpc.StatusCode, int]:
        before = self.reads.count
        code = await self.call(key)
        return code, self.reads.count - before


@contextlib.asynccontextmanager
async def server(dsns: Dsns, tenant: Tenant, **env: str) -> AsyncIterator[Server]:
    """A server of its own (its own cache, throttle and pool), sharing the
    deployment's secret key as replicas do."""
    settings = Settings.from_env(
        {
            "AUTHZ_DATABASE_URL": dsns.service,
            "AUTHZ_SECRET_KEY": SECRET_KEY,
            "AUTHZ_HOME": "/nonexistent",
            **env,
        }
    )
    db = await Database.connect(dsns.service)
    reads = TransactionCount(tenant.tenant_id)
    db.observer = reads
    running = await start_server(db, settings, listen="127.0.0.1:0")
    for _ in range(200):  # the cache serves only once its listener is up
        if running.cache.usable:
            break
        await asyncio.sleep(0.05)
    assert running.cache.usable
    try:
        yield Server(running, f"127.0.0.1:{running.port}", reads)
    finally:
        await running.stop(grace=0)


def made_up(tenant_id: str, check: str | None) -> str:
    """A well-formed key for a key id that does not exist; ``check`` None: the
    four-part form of keys made before the check."""
    key_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
    key = f"azk.{tenant_id}.{key_id}.{secrets.token_urlsafe(32)}"
    if check == "valid":
        return f"{key}.{KEYRING.api_key_check(tenant_id, key_id)}"
    return key if check is None else f"{key}.{check}"


def legacy(key: str) -> str:
    """The same key as an older build printed it: no check."""
    return key.rsplit(".", 1)[0]


async def test_new_keys_carry_a_check_under_the_secret_key(tenant: Tenant) -> None:
    prefix, tenant_id, key_id, secret, check = tenant.keys["admin"].split(".")
    assert (prefix, tenant_id) == ("azk", tenant.tenant_id)
    assert len(secret) == 43 and len(check) == 16
    assert check == KEYRING.api_key_check(tenant_id, key_id)
    assert check != Keyring(b"another deployment's secret key!!").api_key_check(tenant_id, key_id)


async def test_a_forged_key_causes_no_database_read(dsns: Dsns, tenant: Tenant) -> None:
    async with server(dsns, tenant) as s:
        # The control: an unknown key id without a check is looked up (one read), so
        # the counter does see key lookups.
        assert await s.reads_of(made_up(tenant.tenant_id, None)) == (grpc.StatusCode.UNAUTHENTICATED, 1)
        # ... and so is an unknown key id whose MAC holds: the MAC alone decides.
        signed = made_up(tenant.tenant_id, "valid")
        assert await s.reads_of(signed) == (grpc.StatusCode.UNAUTHENTICATED, 1)
        assert await s.reads_of(signed[:-16] + secrets.token_urlsafe(12)) == (
            grpc.StatusCode.UNAUTHENTICATED,
            0,
        )
        real_id = tenant.keys["admin"].split(".")[2]
        forged = [
            made_up(tenant.tenant_id, secrets.token_urlsafe(12)),  # right format, wrong MAC
            made_up(tenant.tenant_id, KEYRING.api_key_check(tenant.tenant_id, real_id)),  # another id's MAC
            tenant.keys["admin"][:-1]
            + ("A" if tenant.keys["admin"][-1] != "A" else "B"),  # a real key, check altered
            f"azk.{tenant.tenant_id}.{real_id}.{secrets.token_urlsafe(32)}.{secrets.token_urlsafe(12)}",
            tenant.keys["admin"] + ".x",  # malformed
        ]
        for key in forged:
            assert await s.reads_of(key) == (grpc.StatusCode.UNAUTHENTICATED, 0), key
        # The genuine key works: its lookup plus the call's own read.
        assert await s.reads_of(tenant.keys["admin"]) == (grpc.StatusCode.OK, 2)


async def test_keys_made_before_the_check_keep_working_unless_switched_off(
    dsns: Dsns, tenant: Tenant
) -> None:
    old = legacy(tenant.keys["admin"])
    async with server(dsns, tenant) as s:
        assert await s.call(old) == grpc.StatusCode.OK
        wrong_secret = legacy(tenant.keys["connector"]).rsplit(".", 1)[0] + "." + secrets.token_urlsafe(32)
        assert await s.call(wrong_secret) == grpc.StatusCode.UNAUTHENTICATED
    async with server(dsns, tenant, AUTHZ_LEGACY_API_KEYS="off") as s:
        assert await s.reads_of(old) == (grpc.StatusCode.UNAUTHENTICATED, 0)
        assert await s.call(tenant.keys["admin"]) == grpc.StatusCode.OK


@pytest.mark.parametrize("form", ["legacy", "valid check"])
async def test_a_flood_of_made_up_keys_does_not_evict_a_real_key(
    dsns: Dsns, tenant: Tenant, form: str
) -> None:
    """Unknown key ids that do reach the database (keys without a check, or with
    a check made with the secret key) land in the negative cache only."""
    async with server(dsns, tenant, AUTHZ_AUTH_FAILURE_BURST="1000000") as s:
        s.running.cache.max_entries = 50  # small, so a flood would overflow it
        s.running.cache.max_unknown_keys = 20
        admin = tenant.keys["admin"]
        assert await s.reads_of(admin) == (grpc.StatusCode.OK, 2)  # lookup + the call
        assert await s.reads_of(admin) == (grpc.StatusCode.OK, 1)  # the call: key cached
        flood = [made_up(tenant.tenant_id, None if form == "legacy" else "valid") for _ in range(120)]
        for key in flood:
            assert await s.call(key) == grpc.StatusCode.UNAUTHENTICATED
        assert await s.reads_of(admin) == (grpc.StatusCode.OK, 1)  # still cached
        found, record = s.running.cache.key(tenant.tenant_id, admin.split(".")[2])
        assert found and record is not None
        # The negative cache is bounded and keeps the most recent unknown ids.
        assert await s.reads_of(flood[-1]) == (grpc.StatusCode.UNAUTHENTICATED, 0)
        assert await s.reads_of(flood[0]) == (grpc.StatusCode.UNAUTHENTICATED, 1)


async def test_repeated_failures_from_one_peer_are_slowed(dsns: Dsns, tenant: Tenant) -> None:
    async with server(dsns, tenant, AUTHZ_AUTH_FAILURE_BURST="5", AUTHZ_AUTH_FAILURES_PER_MINUTE="1") as s:
        admin = tenant.keys["admin"]
        assert await s.call(admin) == grpc.StatusCode.OK  # cached from now on
        for _ in range(5):
            assert await s.call(made_up(tenant.tenant_id, None)) == grpc.StatusCode.UNAUTHENTICATED
        # The allowance is spent: what would need the database is refused before it.
        client = connect(s.address, made_up(tenant.tenant_id, None))
        err = await rpc_error(client.admin.ListApiKeys(adm.ListApiKeysRequest()))
        await client.close()
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry in" in (err.details() or "")
        assert await s.reads_of(made_up(tenant.tenant_id, "valid")) == (grpc.StatusCode.RESOURCE_EXHAUSTED, 0)
        assert await s.reads_of(tenant.keys["approver"]) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            0,
        )  # not cached
        # Refused in memory as before; a cached genuine key still works.
        assert await s.reads_of(made_up(tenant.tenant_id, "x" * 16)) == (grpc.StatusCode.UNAUTHENTICATED, 0)
        assert await s.call(admin) == grpc.StatusCode.OK


def test_the_throttle_refills_and_forgets_the_least_recent_peer() -> None:
    now = [0.0]
    throttle = FailureThrottle(burst=2, per_minute=60, max_peers=2, clock=lambda: now[0])
    assert throttle.retry_after("a") == 0
    throttle.failed("a")
    throttle.failed("a")
    assert throttle.retry_after("a") == 1
    now[0] += 0.5
    assert throttle.retry_after("a") == 1  # half a token
    now[0] += 0.5
    assert throttle.retry_after("a") == 0
    throttle.failed("a")
    throttle.failed("b")
    throttle.failed("b")
    assert throttle.retry_after("b") == 1
    throttle.failed("c")  # a third peer: the least recently failed one ("a") is dropped
    assert throttle.retry_after("a") == 0 and throttle.retry_after("b") == 1
