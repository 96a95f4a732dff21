"""Two real service processes sharing one PostgreSQL: approvals survive a
crash with their original expiry, a decision on one replica wakes a watcher
on the other (LISTEN/NOTIFY), and racing resolves across replicas have one
winner.

Each replica is `authz serve` in its own process. The watchers' fallback
re-read is set to 10 minutes, so only a notification can explain a prompt wake.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from authz_service.client import Client, connect
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Dsns, eventually
from .replicas import Cluster, two_replicas


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
