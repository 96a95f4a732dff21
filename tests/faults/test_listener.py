"""Reliability under faults (issue #8): the database unreachable without
anything announcing it (a partition): cached answers stop within a bound
(the listener's heartbeat timeout), then every call fails closed.
"""

from __future__ import annotations

import asyncio

import grpc

from authz_service.client import NO_RETRY, connect
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from tests.conftest import Tenant, eventually
from tests.health import NOT_SERVING, SERVING, health_of
from tests.pgproxy import PgProxy

from .load import UNKNOWN, Spawn, decision


async def test_a_silent_partition_stops_cached_answers_within_a_bound(
    tenant: Tenant, spawn: Spawn, proxy: PgProxy
) -> None:
    """The network between a replica and PostgreSQL goes silent: connections
    stay open, no byte flows, nothing is closed. Another replica blocks a user
    the stalled one has cached as allowed. The stalled replica must stop
    answering from its cache within a bound (its listener's heartbeat times out
    within 3 s, whatever AUTHZ_DB_TIMEOUT_SECONDS), then fail closed until the network heals,
    then answer BLOCKED."""
    await tenant.channel("tg")
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="42"))
    serve = await spawn(proxy.dsn)
    connector = connect(serve.address, tenant.keys["connector"], retry=NO_RETRY, timeout=10)
    try:
        for _ in range(2):
            assert await decision(connector, "42") == az.DECISION_ALLOW
        proxy.stall()
        await tenant.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id="42"))
        answers: list[int | grpc.StatusCode] = []

        async def refused() -> bool:
            try:
                answers.append(await decision(connector, "42"))
            except grpc.aio.AioRpcError as exc:
                answers.append(exc.code())
                return True
            return False

        try:
            await eventually(refused, timeout=30)
        except TimeoutError:
            raise AssertionError(
                f"still answering ALLOW from memory after 30 s ({len(answers)} answers)"
            ) from None
        stale = len(answers) - 1  # stale ALLOWs before the replica noticed
        assert set(answers[:stale]) <= {az.DECISION_ALLOW} and answers[stale] in UNKNOWN, answers
        # From then on, nothing but errors while the partition lasts.
        again = await asyncio.gather(*(decision(connector, "42") for _ in range(4)), return_exceptions=True)
        assert all(isinstance(a, grpc.aio.AioRpcError) and a.code() in UNKNOWN for a in again), again

        async def not_serving() -> bool:
            return bool(await health_of(serve.address) == NOT_SERVING)

        await eventually(not_serving, timeout=10)
        proxy.restore()

        async def blocked() -> bool:
            try:
                return await decision(connector, "42") == az.DECISION_BLOCKED
            except grpc.aio.AioRpcError:
                return False

        await eventually(blocked, timeout=30)

        async def serving() -> bool:
            return bool(await health_of(serve.address) == SERVING)

        await eventually(serving, timeout=10)
    finally:
        await connector.close()
