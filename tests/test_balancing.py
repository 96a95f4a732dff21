"""Balancing (docs/deploy.md): a client connected before a replica was added
moves to it once its connection reaches AUTHZ_MAX_CONNECTION_AGE_SECONDS.

Two real servers sit behind a TCP balancer that sends each new connection to
its current backend, as a Kubernetes Service does after a scale-up. The client
(the SDK) asks the health service which server answers: only the second one
knows the service name ``replica-b``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz_service.client import connect
from authz_service.config import Settings
from authz_service.server import RunningServer, start_server
from authz_service.store.db import Database

from .conftest import Dsns, Service, Tenant


class Balancer:
    """Forwards each new TCP connection to ``backend`` as it is when the connection arrives."""

    def __init__(self, backend: int) -> None:
        self.backend = backend
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@contextlib.asynccontextmanager
async def replica(dsns: Dsns, settings: Settings, name: str = "") -> AsyncIterator[RunningServer]:
    db = await Database.connect(dsns.service, max_size=2)
    running = await start_server(db, settings, listen="127.0.0.1:0")
    if name:
        await running.health.set(name, health_pb2.HealthCheckResponse.SERVING)
    try:
        yield running
    finally:
        await running.stop(grace=0.5)


async def served_by_b(stub: health_pb2_grpc.HealthStub) -> bool:
    try:
        await stub.Check(health_pb2.HealthCheckRequest(service="replica-b"), timeout=5)
    except Exception:  # NOT_FOUND from replica A
        return False
    return True


async def moves_within(dsns: Dsns, settings: Settings, tenant: Tenant, seconds: float) -> bool:
    """Connect through the balancer to A, add B, keep calling: does the client reach B?"""
    async with replica(dsns, settings) as a, replica(dsns, settings, "replica-b") as b:
        balancer = Balancer(a.port)
        await balancer.start()
        client = connect(f"127.0.0.1:{balancer.port}", tenant.keys["admin"])
        try:
            stub = health_pb2_grpc.HealthStub(client.channel)
            assert not await served_by_b(stub)  # connected to A
            balancer.backend = b.port  # the scale-up: new connections go to B
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if await served_by_b(stub):
                    return True
                await asyncio.sleep(0.2)
            return False
        finally:
            await client.close()
            await balancer.close()


@pytest.mark.parametrize("age", [0, 1])
async def test_a_long_lived_client_moves_to_a_new_replica_after_the_connection_age(
    dsns: Dsns, service: Service, tenant: Tenant, age: int
) -> None:
    settings = dataclasses.replace(
        service.settings, max_connection_age_seconds=age, max_connection_age_grace_seconds=1
    )
    moved = await moves_within(dsns, settings, tenant, seconds=6)
    # Without an age the connection (and the client) stays on A: the test can tell.
    assert moved is bool(age)


def test_defaults_bound_the_connection_age() -> None:
    settings = Settings.from_env(
        {"AUTHZ_HOME": "/tmp", "AUTHZ_SECRET_KEY": "k" * 32, "AUTHZ_OPERATOR_KEY": "o" * 24}
    )
    assert 0 < settings.max_connection_age_seconds <= 600
    assert settings.keepalive_seconds >= 10
