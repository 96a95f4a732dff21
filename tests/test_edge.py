"""Decisions at the edge (issue #21): the server marks what may be reused, the
SDK reuses only that, only while its change stream is healthy, and drops it on
every change, silence or reconnect. Real service, real PostgreSQL, real gRPC."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from authz_service.client import Client, EdgeSettings, connect
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Service, Tenant, eventually, rpc_error
from .edge_helpers import USER, check, healthy, served
from .pgproxy import PgProxy


@pytest.fixture
async def edge(service: Service, tenant: Tenant) -> AsyncIterator[Client]:
    """The tenant's connector key, with the edge on; channel "tg" allowlists USER."""
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING)
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id=USER))
    client = connect(service.address, tenant.keys["connector"], edge=EdgeSettings())
    await healthy(client)
    yield client
    await client.close()


async def test_a_reusable_allow_is_answered_at_the_edge_until_a_block(
    service: Service, tenant: Tenant, edge: Client
) -> None:
    first = await check(edge)
    assert first.decision == az.DECISION_ALLOW
    assert first.reuse.cacheable and first.reuse.channel_id == "tg" and first.reuse.user_id == USER
    before = served(service.running)
    for text in ("hello", "another message", "/start"):
        assert (await check(edge, text=text)).decision == az.DECISION_ALLOW
    assert served(service.running) == before  # never reached the service
    await tenant.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id=USER))

    async def blocked() -> bool:
        return (await check(edge)).decision == az.DECISION_BLOCKED

    await eventually(blocked)
    assert (await check(edge)).decision == az.DECISION_BLOCKED
    assert len(edge.edge_cache or ()) == 0


async def test_a_send_allow_is_reused_and_a_policy_change_ends_it(
    service: Service, tenant: Tenant, edge: Client
) -> None:
    policy = cm.SendPolicy(default=cm.SEND_DEFAULT_DENY, allow=["telegram:1"])
    await tenant.channel("tg", send_policy=policy)
    request = az.EvaluateSendRequest(channel_id="tg", agent_id="default", target="telegram:1")

    async def allowed() -> bool:
        return bool((await edge.authz.EvaluateSend(request)).allow)

    await eventually(allowed)
    first = await edge.authz.EvaluateSend(request)
    assert first.reuse.cacheable and first.reuse.user_id == ""
    before = served(service.running)
    assert (await edge.authz.EvaluateSend(request)).allow
    assert served(service.running) == before
    await tenant.channel("tg", send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_DENY))

    async def denied() -> bool:
        return not (await edge.authz.EvaluateSend(request)).allow

    await eventually(denied)


@pytest.mark.parametrize(
    "case",
    ["pairing_required", "consistent", "rate_limited_channel", "group_mention_rule", "deny", "time_windows"],
)
async def test_an_unreusable_answer_is_never_reused(
    service: Service, tenant: Tenant, edge: Client, case: str
) -> None:
    cache = edge.edge_cache
    assert cache is not None

    async def ask() -> az.CheckUserResponse | az.EvaluateSendResponse:
        if case == "time_windows":
            window = cm.TimeWindow(
                days=["mon", "tue", "wed", "thu", "fri", "sat", "sun"], start="00:00", end="23:59"
            )
            policy = cm.SendPolicy(
                default=cm.SEND_DEFAULT_ALLOW,
                time_restrictions=[cm.TimeRestriction(targets=["telegram:9"], windows=[window])],
            )
            await tenant.channel("tg", send_policy=policy)
            sent: az.EvaluateSendResponse = await edge.authz.EvaluateSend(
                az.EvaluateSendRequest(channel_id="tg", agent_id="default", target="telegram:1")
            )
            assert sent.allow
            return sent
        if case == "pairing_required":
            resp = await check(edge, user="777")
            assert resp.decision == az.DECISION_PAIRING_REQUIRED
        elif case == "consistent":
            resp = await check(edge, consistent=True)
            assert resp.decision == az.DECISION_ALLOW
        elif case == "rate_limited_channel":
            await tenant.channel("tg", rate_limit=cm.RateLimit(max_messages_per_hour=1000, burst=100))
            resp = await check(edge)
            assert resp.decision == az.DECISION_ALLOW
        elif case == "group_mention_rule":
            await tenant.channel("tg", group_policy=cm.GROUP_POLICY_OPEN, require_mention=True)
            resp = await check(edge, chat_kind=cm.CHAT_KIND_GROUP, group_id="-100", mentioned=True)
            assert resp.decision == az.DECISION_ALLOW
        else:
            await tenant.channel("tg", dm_policy=cm.DM_POLICY_DISABLED)
            resp = await check(edge)
            assert resp.decision == az.DECISION_DENY
        return resp

    answers = [await ask() for _ in range(4)]
    assert not any(a.HasField("reuse") for a in answers)
    # Each answer has a trace id of its own: the service answered every one.
    assert len({a.trace_id for a in answers}) == len(answers)
    assert len(cache) == 0


async def test_a_reconnect_flushes(service: Service, tenant: Tenant) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING)
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id=USER))
    proxy = PgProxy(f"postgresql://{service.address}/x")
    await proxy.start()
    client = connect(f"127.0.0.1:{proxy.port}", tenant.keys["connector"], edge=EdgeSettings())
    try:
        cache = await healthy(client)
        assert (await check(client)).reuse.cacheable
        assert len(cache) == 1
        flushes = cache.flushes
        await proxy.cut()  # the stream breaks; the client opens another

        async def dropped() -> bool:
            return len(cache) == 0 and not cache.healthy

        await eventually(dropped)
        assert cache.flushes == flushes + 1
        proxy.restore()
        await healthy(client)
        assert len(cache) == 0
        before = served(service.running)
        assert (await check(client)).decision == az.DECISION_ALLOW
        assert served(service.running) == before + 1  # asked again after the reconnect
    finally:
        await client.close()
        await proxy.close()


async def test_a_stalled_stream_turns_the_edge_off_within_the_bound(
    service: Service, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    """No byte flows (a partition): nothing tells the client, only the missing
    heartbeats. Every reused answer is dropped, and the checks go to the service
    (which, through the same stalled path, cannot answer: fail closed). The
    stream's watchdog gives the silent stream up and opens another."""
    caplog.set_level(logging.INFO, logger="authz_service.client.edge")
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING)
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id=USER))
    proxy = PgProxy(f"postgresql://{service.address}/x")
    await proxy.start()
    settings = EdgeSettings(heartbeat_timeout=1.0)
    client = connect(f"127.0.0.1:{proxy.port}", tenant.keys["connector"], edge=settings, timeout=0.5)
    try:
        cache = await healthy(client)
        assert (await check(client)).decision == az.DECISION_ALLOW
        assert (await check(client)).decision == az.DECISION_ALLOW
        assert cache.hits >= 1
        proxy.stall()

        async def off() -> bool:
            return not cache.healthy and len(cache) == 0

        await eventually(off, timeout=10)

        async def given_up() -> bool:
            return any(
                "no message from the change stream within 1 s" in r.getMessage() for r in caplog.records
            )

        await eventually(given_up, timeout=10)
        # The edge no longer answers: the call goes out, into the stall, and fails.
        err = await rpc_error(check(client))
        assert err.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        proxy.restore()
        await healthy(client)
        assert (await check(client)).decision == az.DECISION_ALLOW
    finally:
        proxy.restore()
        await client.close()
        await proxy.close()


async def test_watch_changes_is_scoped_to_the_keys_channels(service: Service, tenant: Tenant) -> None:
    """A connector key bound to "tg" hears of "tg" and not of "other"."""
    await tenant.channel("tg")
    await tenant.channel("other")
    key = await tenant.admin.admin.CreateApiKey(
        adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="bound", channels=["tg"])
    )
    client = connect(service.address, key.secret)
    try:
        call = client.authz.WatchChanges(az.WatchChangesRequest())
        first = await call.read()
        assert isinstance(first, az.WatchChangesResponse) and first.server_id and first.heartbeat_ms == 500
        await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="other", user_id="1"))
        await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="2"))
        seen: list[tuple[str, str]] = []
        while ("tg", "2") not in seen:
            msg = await call.read()
            assert isinstance(msg, az.WatchChangesResponse)
            seen.extend((i.channel_id, i.user_id) for i in msg.invalidations)
        assert all(channel == "tg" for channel, _ in seen)
        call.cancel()
    finally:
        await client.close()


async def test_revoking_the_key_ends_the_stream_and_the_edge(service: Service, tenant: Tenant) -> None:
    key = await tenant.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="c"))
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING)
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id=USER))
    client = connect(service.address, key.secret, edge=EdgeSettings())
    try:
        cache = await healthy(client)
        assert (await check(client)).reuse.cacheable
        assert len(cache) == 1
        await tenant.admin.admin.RevokeApiKey(adm.RevokeApiKeyRequest(key_id=key.key.key_id))

        async def off() -> bool:
            return len(cache) == 0 and not cache.healthy

        await eventually(off)
        err = await rpc_error(check(client))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await client.close()
