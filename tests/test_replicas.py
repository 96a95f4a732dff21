"""Two real service processes sharing one PostgreSQL: approvals survive a
crash with their original expiry, a decision on one replica wakes a watcher
on the other (LISTEN/NOTIFY), and racing resolves across replicas have one
winner.

Each replica is `authz serve` in its own process. The watchers' fallback
re-read is set to 10 minutes, so only a notification can explain a prompt wake.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import pytest

from authz_service.client import Client, connect
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Dsns, eventually

AUTHZ = [sys.executable, "-m", "authz_service.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Replica:
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return self.env["AUTHZ_LISTEN"]

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *AUTHZ, "serve", env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        assert self.proc.stdout is not None
        seen: list[str] = []
        async with asyncio.timeout(60):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError("replica exited during start-up:\n" + "".join(seen))
                seen.append(line)
                if "authz service listening on" in line:
                    break
        self._drain = asyncio.create_task(self._discard(self.proc.stdout))

    @staticmethod
    async def _discard(stream: asyncio.StreamReader) -> None:
        while await stream.readline():
            pass

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        await self._drain
        return code


@dataclass
class Cluster:
    a: Replica
    b: Replica
    # The environment both share (without AUTHZ_LISTEN): for CLI runs against them.
    env: dict[str, str]

    @property
    def operator_key(self) -> str:
        return self.env["AUTHZ_OPERATOR_KEY"]


@asynccontextmanager
async def two_replicas(dsns: Dsns, **settings: str) -> AsyncIterator[Cluster]:
    """Two `authz serve` processes on the test database, with one server key and
    operator key, plus ``settings`` (AUTHZ_* variables). Both are stopped
    afterwards, also after a test killed and restarted them."""
    with tempfile.TemporaryDirectory(prefix="authz-replicas-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
        env.update(
            AUTHZ_HOME=home,
            AUTHZ_DATABASE_URL=dsns.service,
            AUTHZ_SECRET_KEY=secrets.token_urlsafe(32),
            AUTHZ_OPERATOR_KEY=secrets.token_urlsafe(32),
            AUTHZ_LOG_FORMAT="text",
            **settings,
        )
        a = Replica({**env, "AUTHZ_LISTEN": f"127.0.0.1:{free_port()}"})
        b = Replica({**env, "AUTHZ_LISTEN": f"127.0.0.1:{free_port()}"})
        await asyncio.gather(a.start(), b.start())
        try:
            yield Cluster(a, b, env)
        finally:
            for r in (a, b):
                if r.proc is not None and r.proc.returncode is None:
                    await r.stop()


async def new_tenant(replica: Replica, operator_key: str, prefix: str) -> Client:
    """A fresh tenant with a Telegram channel "tg" (default policy), made
    through ``replica``; its admin client there (the caller closes it)."""
    op = connect(replica.address, operator_key)
    try:
        created = await op.admin.CreateTenant(
            adm.CreateTenantRequest(tenant_id=prefix + secrets.token_hex(5))
        )
    finally:
        await op.close()
    admin = connect(replica.address, created.secret)
    await admin.admin.SetChannel(
        adm.SetChannelRequest(channel_id="tg", platform=cm.PLATFORM_TELEGRAM, policy=cm.ChannelPolicy())
    )
    return admin


@pytest.fixture
async def cluster(dsns: Dsns) -> AsyncIterator[Cluster]:
    async with two_replicas(dsns, AUTHZ_WATCH_FALLBACK_SECONDS="600") as pair:
        yield pair


@dataclass
class Clients:
    admin_a: Client
    admin_b: Client
    agent_a: Client
    connector_b: Client

    async def close(self) -> None:
        for c in (self.admin_a, self.admin_b, self.agent_a, self.connector_b):
            await c.close()


async def tenant_on(cluster: Cluster) -> Clients:
    op = connect(cluster.a.address, cluster.operator_key)
    tenant_id = "r" + secrets.token_hex(5)
    created = await op.admin.CreateTenant(adm.CreateTenantRequest(tenant_id=tenant_id))
    await op.close()
    admin_a = connect(cluster.a.address, created.secret)
    await admin_a.admin.SetTenantSettings(adm.TenantSettings(approvers=["telegram:42"]))
    agent_key = await admin_a.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="agent"))
    conn_key = await admin_a.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="tg"))
    return Clients(
        admin_a,
        connect(cluster.b.address, created.secret),
        connect(cluster.a.address, agent_key.secret),
        connect(cluster.b.address, conn_key.secret),
    )


async def request(agent: Client, timeout: int = 120) -> az.RequestApprovalResponse:
    return await agent.authz.RequestApproval(
        az.RequestApprovalRequest(
            tool_name="shell", arguments_json='{"cmd": "ls"}', agent_id="ops", timeout_seconds=timeout
        )
    )


async def test_decision_on_replica_b_wakes_a_watcher_on_replica_a(cluster: Cluster) -> None:
    c = await tenant_on(cluster)
    try:
        resp = await request(c.agent_a)
        states: list[str] = []
        first = asyncio.Event()

        async def watch() -> None:
            async for info in c.agent_a.watch_approval(resp.approval.approval_id):
                states.append(info.status)
                first.set()

        watcher = asyncio.create_task(watch())
        await asyncio.wait_for(first.wait(), 10)
        assert states == ["pending"]
        approve = next(b for b in resp.notification.buttons if b.action == cm.APPROVAL_ACTION_APPROVE)
        await c.connector_b.authz.ResolveApproval(
            az.ResolveApprovalRequest(callback_payload=approve.callback_payload, actor_id="telegram:42")
        )
        # The fallback re-read is 600 s away: only NOTIFY can finish this in time.
        await asyncio.wait_for(watcher, 5)
        assert states == ["pending", "approved"]
    finally:
        await c.close()


async def test_pending_approval_survives_a_crash_with_its_original_expiry(cluster: Cluster) -> None:
    c = await tenant_on(cluster)
    try:
        resp = await request(c.agent_a, timeout=30)
        aid = resp.approval.approval_id
        expires = resp.approval.expires_at.ToDatetime()
        assert await cluster.a.stop(signal.SIGKILL) == -signal.SIGKILL
        await cluster.a.start()
        # Ask the restarted replica: nothing lost, the clock not reset.
        again = await c.admin_a.admin.GetApproval(adm.GetApprovalRequest(approval_id=aid))
        assert again.status == cm.APPROVAL_STATUS_PENDING
        assert again.expires_at.ToDatetime() == expires
        assert again.tool.arguments_json == '{"cmd":"ls"}'
        # It is still resolvable, and the approved call still redeems once.
        await c.admin_b.authz.ResolveApproval(
            az.ResolveApprovalRequest(approval_id=aid, action=cm.APPROVAL_ACTION_APPROVE)
        )
        redeemed = await c.agent_a.redeem_approval(aid, "shell", {"cmd": "ls"})
        assert redeemed.allow
    finally:
        await c.close()


async def test_concurrent_resolves_across_replicas_have_one_winner(cluster: Cluster) -> None:
    c = await tenant_on(cluster)
    connector_a = None
    try:
        resp = await request(c.agent_a)
        approve = next(b for b in resp.notification.buttons if b.action == cm.APPROVAL_ACTION_APPROVE)
        key = await c.admin_a.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="a"))
        connector_a = connect(cluster.a.address, key.secret)
        clients = (connector_a, c.connector_b)
        results = await asyncio.gather(
            *(
                clients[i % 2].authz.ResolveApproval(
                    az.ResolveApprovalRequest(
                        callback_payload=approve.callback_payload, actor_id="telegram:42"
                    )
                )
                for i in range(50)
            ),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, az.ResolveApprovalResponse)]
        errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(winners) == 1 and len(errors) == 49
        assert {e.code() for e in errors} == {grpc.StatusCode.FAILED_PRECONDITION}
        audit = await c.admin_b.admin.QueryAudit(adm.QueryAuditRequest(event="tool.approved"))
        assert len(audit.events) == 1
    finally:
        if connector_a is not None:
            await connector_a.close()
        await c.close()


async def test_a_block_or_key_revocation_on_one_replica_reaches_the_cache_of_the_other(
    cluster: Cluster,
) -> None:
    """Replica A caches an allowed user and a key; B blocks the user and revokes
    the key; A's very next answers reflect both (the cache has no TTL: only the
    NOTIFY-driven invalidation can explain it)."""
    c = await tenant_on(cluster)
    try:
        await c.admin_a.admin.SetChannel(
            adm.SetChannelRequest(channel_id="tg", platform=cm.PLATFORM_TELEGRAM, policy=cm.ChannelPolicy())
        )
        await c.admin_a.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="42"))
        key = await c.admin_a.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="a"))
        on_a = connect(cluster.a.address, key.secret)
        try:
            for _ in range(3):  # warm A's cache
                assert (await on_a.check_user("tg", "42")).decision == "allow"
            await c.admin_b.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id="42"))

            async def blocked() -> bool:
                return (await on_a.check_user("tg", "42")).decision == "blocked"

            await eventually(blocked)
            await c.admin_b.admin.RevokeApiKey(adm.RevokeApiKeyRequest(key_id=key.key.key_id))

            async def refused() -> bool:
                try:
                    await on_a.check_user("tg", "42")
                except grpc.aio.AioRpcError as exc:
                    return exc.code() == grpc.StatusCode.UNAUTHENTICATED
                return False

            await eventually(refused)
        finally:
            await on_a.close()
    finally:
        await c.close()
