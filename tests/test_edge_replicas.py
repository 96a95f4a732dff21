"""Decisions at the edge across service processes (issue #21): a block made on
one replica reaches an SDK client whose change stream is served by another,
and the client drops the reused answer before anyone asks again."""

from __future__ import annotations

import logging

import pytest

from authz_service.client import EdgeSettings, connect
from authz_service.client.edge import REPICKS
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az

from .conftest import Dsns, eventually
from .edge_helpers import USER, check, healthy
from .pgproxy import PgProxy
from .replicas import OWN_PORT, new_tenant, two_replicas


@pytest.mark.parametrize("stream", ["grpc", "http"])
async def test_a_block_on_one_replica_empties_the_edge_of_a_client_of_the_other(
    dsns: Dsns, stream: str
) -> None:
    http = {"AUTHZ_HTTP_LISTEN": OWN_PORT} if stream == "http" else {}
    async with two_replicas(dsns, **http) as cluster:
        admin = await new_tenant(cluster.a, cluster.operator_key, "edge")
        key = await admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="c"))
        await admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id=USER))
        settings, proxy = EdgeSettings(), None
        if stream == "http":  # through a proxy: what crosses it went over HTTP
            proxy = PgProxy(f"postgresql://{cluster.b.http_url[len('http://') :]}/x")
            await proxy.start()
            settings = EdgeSettings(changes_url=f"http://127.0.0.1:{proxy.port}")
        client = connect(cluster.b.address, key.secret, edge=settings)
        try:
            cache = await healthy(client)
            assert proxy is None or proxy.open_links == 1

            async def allowed() -> bool:
                return (await check(client)).decision == az.DECISION_ALLOW

            await eventually(allowed)  # replica B has heard of the allowlisting
            first = await check(client)
            assert first.reuse.cacheable
            again = await check(client)
            assert again.trace_id == first.trace_id  # answered at the edge: B was not asked
            assert len(cache) == 1

            await admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id=USER))

            async def dropped() -> bool:
                return len(cache) == 0

            await eventually(dropped)  # by the stream from B, with no check made meanwhile
            assert (await check(client)).decision == az.DECISION_BLOCKED
        finally:
            await client.close()
            await admin.close()
            if proxy is not None:
                await proxy.close()


async def test_a_stream_over_http_on_another_process_than_the_calls_falls_back_to_grpc(
    dsns: Dsns, caplog: pytest.LogCaptureFixture
) -> None:
    """Calls go to replica A, the HTTP stream always lands on B: A's answers
    cannot be kept against B's stream. The client opens the stream again
    ``REPICKS`` times, then follows changes on its gRPC channel (A), and the
    edge works; a block made on B still reaches it."""
    caplog.set_level(logging.INFO, logger="authz_service.client.edge")
    async with two_replicas(dsns, AUTHZ_HTTP_LISTEN=OWN_PORT) as cluster:
        admin = await new_tenant(cluster.b, cluster.operator_key, "edge")
        key = await admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="c"))
        await admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id=USER))
        settings = EdgeSettings(changes_url=cluster.b.http_url, reconnect_delay=0.05, max_reconnect_delay=0.1)
        client = connect(cluster.a.address, key.secret, edge=settings)
        try:
            cache = await healthy(client)

            async def reused() -> bool:
                first = await check(client)
                return (
                    first.decision == az.DECISION_ALLOW and (await check(client)).trace_id == first.trace_id
                )

            await eventually(reused, timeout=20)
            reopened = [
                r for r in caplog.records if "served by another process than the calls" in r.getMessage()
            ]
            assert len(reopened) == REPICKS
            assert any("following it over gRPC" in r.getMessage() for r in caplog.records)
            assert len(cache) == 1

            await admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id=USER))

            async def dropped() -> bool:
                return len(cache) == 0

            await eventually(dropped)
            assert (await check(client)).decision == az.DECISION_BLOCKED
        finally:
            await client.close()
            await admin.close()
