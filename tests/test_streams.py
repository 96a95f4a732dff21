"""Open streams (issue #15): a revoked or changed key's streams end within 1 s,
streams have a maximum lifetime, and open streams are capped per key, per
tenant and per process. Real servers on real PostgreSQL; the revoke reaches a
replica's streams through NOTIFY, or through nothing at all while its listener
is down."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field

import asyncpg
import grpc
import pytest

from authz_service.client import NO_RETRY, Client, connect
from authz_service.config import ConfigError, Settings
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.server import RunningServer, start_server
from authz_service.store.db import Database
from authz_service.store.notify import APPLICATION_NAME

from .conftest import SECRET_KEY, Dsns, Service, Tenant, eventually
from .pgproxy import PgProxy


@dataclass
class Watch:
    """One WatchApprovals stream read in the background: what it delivered and
    how it ended."""

    call: grpc.aio.UnaryStreamCall[adm.WatchApprovalsRequest, cm.Approval]
    seen: list[cm.Approval] = field(default_factory=list)
    ended: asyncio.Future[grpc.StatusCode] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    details: str = ""
    task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        try:
            async for approval in self.call:
                self.seen.append(approval)
            self.ended.set_result(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as exc:
            self.details = exc.details() or ""
            self.ended.set_result(exc.code())

    def ids(self) -> set[str]:
        return {a.approval_id for a in self.seen}

    def cancel(self) -> None:
        self.call.cancel()
        if self.task is not None:
            self.task.cancel()


def watch(client: Client) -> Watch:
    w = Watch(client.admin.WatchApprovals(adm.WatchApprovalsRequest()))
    w.task = asyncio.create_task(w._read())
    return w


@contextlib.asynccontextmanager
async def watching(client: Client) -> AsyncIterator[Watch]:
    w = watch(client)
    try:
        yield w
    finally:
        w.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(w.task or asyncio.sleep(0), return_exceptions=True)


async def pair(tenant: Tenant, user_id: str) -> str:
    resp = await tenant.connector.authz.RequestPairing(
        az.RequestPairingRequest(channel_id="tg", user_id=user_id, display_name="Mallory's victim")
    )
    return str(resp.approval_id)


async def delivered(w: Watch, approval_id: str) -> None:
    async def arrived() -> bool:
        return approval_id in w.ids()

    await eventually(arrived, timeout=10)


async def new_key(
    tenant: Tenant, address: str, role: adm.Role.ValueType = adm.ROLE_APPROVER
) -> tuple[str, Client]:
    created = await tenant.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=role, name="watcher"))
    return created.key.key_id, connect(address, created.secret, retry=NO_RETRY)


async def own_server(dsns: Dsns, **env: str) -> RunningServer:
    settings = Settings.from_env(
        {
            "AUTHZ_DATABASE_URL": dsns.service,
            "AUTHZ_SECRET_KEY": SECRET_KEY,
            "AUTHZ_HOME": "/nonexistent",
            **env,
        }
    )
    return await start_server(await Database.connect(dsns.service), settings, listen="127.0.0.1:0")


@pytest.fixture
async def replica(dsns: Dsns) -> AsyncIterator[RunningServer]:
    """A second server: its streams learn of a revoke only through NOTIFY."""
    running = await own_server(dsns)
    yield running
    await running.stop(grace=0)


async def ends_within(w: Watch, seconds: float, since: float) -> grpc.StatusCode:
    try:
        code = await asyncio.wait_for(asyncio.shield(w.ended), max(0.0, since + seconds - time.monotonic()))
    except TimeoutError:
        raise AssertionError(f"the stream was still open {seconds} s after the change") from None
    return code


# --- revocation and role changes --------------------------------------------------------


@pytest.mark.parametrize("where", ["same process", "another replica"])
async def test_revoking_a_key_ends_its_open_streams_within_a_second(
    tenant: Tenant, service: Service, replica: RunningServer, where: str
) -> None:
    """Before the fix a revoked key's WatchApprovals kept receiving every new
    approval (user ids, names) for as long as it stayed open."""
    await tenant.channel("tg")
    address = service.address if where == "same process" else f"127.0.0.1:{replica.port}"
    key_id, client = await new_key(tenant, address)
    _, bystander = await new_key(tenant, address)
    try:
        async with watching(client) as w, watching(client) as w2, watching(bystander) as other:
            first = await pair(tenant, "1001")
            for stream in (w, w2, other):
                await delivered(stream, first)
            revoked_at = time.monotonic()
            await tenant.admin.admin.RevokeApiKey(adm.RevokeApiKeyRequest(key_id=key_id))
            assert await ends_within(w, 1.0, revoked_at) == grpc.StatusCode.UNAUTHENTICATED
            assert await ends_within(w2, 1.0, revoked_at) == grpc.StatusCode.UNAUTHENTICATED
            later = await pair(tenant, "1002")
            await delivered(other, later)  # another key of the tenant keeps watching
            assert not other.ended.done()
    finally:
        await client.close()
        await bystander.close()


async def test_a_role_change_ends_the_keys_streams_within_a_second(
    tenant: Tenant, replica: RunningServer, owner: asyncpg.Connection
) -> None:
    """The key's row changes under its open stream (here its role, written
    directly): the stream ends."""
    await tenant.channel("tg")
    key_id, client = await new_key(tenant, f"127.0.0.1:{replica.port}")
    try:
        async with watching(client) as w:
            await delivered(w, await pair(tenant, "2001"))
            changed_at = time.monotonic()
            await owner.execute(
                "UPDATE api_keys SET role = 'connector' WHERE tenant_id = $1 AND key_id = $2",
                tenant.tenant_id,
                key_id,
            )
            assert await ends_within(w, 1.0, changed_at) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await client.close()


@pytest.mark.superuser
async def test_an_unannounced_revoke_ends_streams_while_the_listener_is_down(
    tenant: Tenant, replica: RunningServer, owner: asyncpg.Connection, dsns: Dsns
) -> None:
    """With the change listener down no notification arrives, so the replica
    re-reads the keys of its open streams itself: a revoke nobody announces
    (trigger off) still ends them within 1 s."""
    await tenant.channel("tg")
    key_id, client = await new_key(tenant, f"127.0.0.1:{replica.port}")
    replica.listener.reconnect_delay = 30.0  # stays down for the whole test
    try:
        async with watching(client) as w:
            await delivered(w, await pair(tenant, "3001"))
            admin = await asyncpg.connect(dsns.admin)  # ends the service role's backend
            try:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                    APPLICATION_NAME,
                )
            finally:
                await admin.close()

            async def down() -> bool:
                return not replica.cache.usable

            await eventually(down)
            async with owner.transaction():
                await owner.execute("ALTER TABLE api_keys DISABLE TRIGGER api_keys_changes")
                await owner.execute(
                    "UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1 AND key_id = $2",
                    tenant.tenant_id,
                    key_id,
                )
                await owner.execute("ALTER TABLE api_keys ENABLE TRIGGER api_keys_changes")
            revoked_at = time.monotonic()
            assert await ends_within(w, 1.0, revoked_at) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await client.close()


async def test_streams_end_at_their_maximum_lifetime(tenant: Tenant, dsns: Dsns) -> None:
    running = await own_server(dsns, AUTHZ_STREAM_MAX_SECONDS="1")
    client = connect(f"127.0.0.1:{running.port}", tenant.keys["approver"], retry=NO_RETRY)
    try:
        await tenant.channel("tg")
        async with watching(client) as w:
            opened = time.monotonic()
            await delivered(w, await pair(tenant, "4001"))
            # UNAVAILABLE: clients open the stream again (and authenticate again).
            assert await ends_within(w, 3.0, opened) == grpc.StatusCode.UNAVAILABLE
            assert "maximum lifetime" in w.details
        async with watching(client) as again:  # a new stream is accepted
            await delivered(again, await pair(tenant, "4002"))
    finally:
        await client.close()
        await running.stop(grace=0)


# --- one read per change, bounded reads ---------------------------------------------------


class CountingObserver:
    """Counts a server's database transactions (the store's TransactionObserver
    seam, which telemetry uses for its spans): how many, and most at once."""

    def __init__(self) -> None:
        self.count = 0
        self.open = 0
        self.most = 0

    @contextlib.contextmanager
    def transaction(self, settings: Mapping[str, str]) -> Iterator[None]:
        self.count += 1
        self.open += 1
        self.most = max(self.most, self.open)
        try:
            yield
        finally:
            self.open -= 1


async def test_a_change_is_read_once_for_every_watcher_of_the_tenant(
    tenant: Tenant, replica: RunningServer
) -> None:
    """Before, each WatchApprovals stream re-read every change in a transaction
    of its own: N streams, N transactions per change."""
    await tenant.channel("tg")
    client = connect(f"127.0.0.1:{replica.port}", tenant.keys["approver"], retry=NO_RETRY)
    observer = CountingObserver()
    replica.db.observer = observer
    try:
        async with contextlib.AsyncExitStack() as stack:
            watches = [await stack.enter_async_context(watching(client)) for _ in range(40)]
            first = await pair(tenant, "5001")  # through the session's server, not the replica
            for w in watches:
                await delivered(w, first)
            before = observer.count
            second = await pair(tenant, "5002")
            for w in watches:
                await delivered(w, second)
            # One read of the change (two if the notification arrived in two
            # wake-ups), however many streams watch.
            assert observer.count - before <= 2, observer.count - before
    finally:
        replica.db.observer = None
        await client.close()


async def test_watch_reads_leave_half_the_pool_to_decisions(
    tenant: Tenant, service: Service, dsns: Dsns, owner: asyncpg.Connection
) -> None:
    """Many single-approval watchers woken at once, on a slow path to the
    database: their re-reads hold at most half of the pool, and a consistent
    CheckUser is answered meanwhile."""
    proxy = PgProxy(dsns.service)
    await proxy.start()
    settings = Settings.from_env(
        {
            "AUTHZ_DATABASE_URL": proxy.dsn,
            "AUTHZ_SECRET_KEY": SECRET_KEY,
            "AUTHZ_HOME": "/nonexistent",
        }
    )
    running = await start_server(
        await Database.connect(proxy.dsn, max_size=4), settings, listen="127.0.0.1:0"
    )
    address = f"127.0.0.1:{running.port}"
    approver = connect(address, tenant.keys["approver"], retry=NO_RETRY)
    connector = connect(address, tenant.keys["connector"], retry=NO_RETRY, timeout=20)
    observer = CountingObserver()
    tenant_address = service.address
    tasks: list[asyncio.Task[list[cm.Approval]]] = []
    try:
        await tenant.channel("tg")
        await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="42"))
        await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=["telegram:42"]))
        agent_key = await tenant.admin.admin.CreateApiKey(
            adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="a")
        )
        agent = connect(tenant_address, agent_key.secret, retry=NO_RETRY)
        try:
            ids = [
                (
                    await agent.authz.RequestApproval(
                        az.RequestApprovalRequest(
                            tool_name="shell",
                            arguments_json=f'{{"n": {i}}}',
                            agent_id="ops",
                            timeout_seconds=300,
                        )
                    )
                ).approval.approval_id
                for i in range(12)
            ]
        finally:
            await agent.close()

        async def follow(approval_id: str) -> list[cm.Approval]:
            call = approver.authz.WatchApproval(az.WatchApprovalRequest(approval_id=approval_id))
            return [a async for a in call]

        tasks = [asyncio.create_task(follow(a)) for a in ids]
        streams = running.streams
        assert streams is not None

        async def all_open() -> bool:
            return streams.open_count == len(ids)

        await eventually(all_open, timeout=20)
        await asyncio.sleep(0.5)  # each has read its approval once
        running.db.observer = observer
        proxy.delay = 0.3  # every answer from the database takes 0.3 s now
        await owner.execute(
            "UPDATE approvals SET status = 'denied', resolved_at = now(), resolved_by = 'test'"
            " WHERE tenant_id = $1 AND approval_id = ANY($2)",
            tenant.tenant_id,
            ids,
        )
        await asyncio.sleep(0.2)  # the watchers are re-reading now
        resp = await connector.authz.CheckUser(
            az.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=cm.CHAT_KIND_DIRECT, consistent=True)
        )
        assert resp.decision == az.DECISION_ALLOW
        done = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert all(seen[-1].status == cm.APPROVAL_STATUS_DENIED for seen in done)
        # 12 re-reads and the decision went through a pool of 4: never more than
        # 2 watch reads at once, so at most 3 transactions with the decision.
        assert observer.most <= 3, observer.most
    finally:
        for t in tasks:
            t.cancel()
        proxy.delay = 0.0
        await approver.close()
        await connector.close()
        await running.stop(grace=0)
        await proxy.close()


# --- caps -------------------------------------------------------------------------------


async def test_open_streams_are_capped_per_key_per_tenant_and_per_process(
    tenant: Tenant, other_tenant: Tenant, dsns: Dsns
) -> None:
    running = await own_server(
        dsns, AUTHZ_STREAMS_PER_KEY="2", AUTHZ_STREAMS_PER_TENANT="3", AUTHZ_STREAMS_PER_PROCESS="4"
    )
    address = f"127.0.0.1:{running.port}"
    streams = running.streams
    assert streams is not None
    _, k1 = await new_key(tenant, address)
    _, k2 = await new_key(tenant, address)
    _, b1 = await new_key(other_tenant, address)
    _, b2 = await new_key(other_tenant, address)
    opened: list[Watch] = []

    async def open_(client: Client) -> Watch:
        before = streams.open_count
        w = watch(client)
        opened.append(w)

        async def settled() -> bool:
            return streams.open_count > before or w.ended.done()

        await eventually(settled, timeout=10)
        return w

    async def refused(client: Client, why: str) -> None:
        w = await open_(client)
        code = await asyncio.wait_for(asyncio.shield(w.ended), 10)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, w.details)
        assert why in w.details

    try:
        a, _ = await open_(k1), await open_(k1)
        await refused(k1, "API key")  # a third stream of one key
        await open_(k2)
        await refused(k2, "tenant")  # the tenant holds 3
        await open_(b1)
        await refused(b2, "server")  # the process holds 4
        assert streams.open_count == 4
        for w in opened[:]:
            assert not w.ended.done() or w.ended.result() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Closing one frees its place.
        a.cancel()

        async def freed() -> bool:
            return streams.open_count == 3

        await eventually(freed)
        survivor = await open_(b2)
        await asyncio.sleep(0.2)
        assert not survivor.ended.done()
    finally:
        for w in opened:
            w.cancel()
        for c in (k1, k2, b1, b2):
            await c.close()
        await running.stop(grace=0)


def test_stream_settings_are_read_and_validated() -> None:
    base = {"AUTHZ_DATABASE_URL": "postgresql://x/y", "AUTHZ_SECRET_KEY": "s" * 43}
    defaults = Settings.from_env(base)
    assert (
        defaults.streams_per_key,
        defaults.streams_per_tenant,
        defaults.streams_per_process,
        defaults.stream_max_seconds,
    ) == (100, 1000, 10_000, 3600.0)
    s = Settings.from_env(
        {
            **base,
            "AUTHZ_STREAMS_PER_KEY": "7",
            "AUTHZ_STREAMS_PER_TENANT": "8",
            "AUTHZ_STREAMS_PER_PROCESS": "9",
            "AUTHZ_STREAM_MAX_SECONDS": "10",
        }
    )
    assert (s.streams_per_key, s.streams_per_tenant, s.streams_per_process, s.stream_max_seconds) == (
        7,
        8,
        9,
        10.0,
    )
    for name in (
        "AUTHZ_STREAMS_PER_KEY",
        "AUTHZ_STREAMS_PER_TENANT",
        "AUTHZ_STREAMS_PER_PROCESS",
        "AUTHZ_STREAM_MAX_SECONDS",
    ):
        for bad in ("0", "-1", "x", "99999999"):
            with pytest.raises(ConfigError):
                Settings.from_env({**base, name: bad})
