"""The edge's change stream over the service's HTTP listener (issue #21,
client.changes_http): the same guarantees as over gRPC (a change ends reused
answers, a cut or a stall turns the edge off within the bound, a reconnect
flushes, a revoked key ends it), against the real service; and the reader
itself, fed the service's own bytes in every split and broken ones."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from authz_service.client import Client, EdgeSettings, TlsConfig, connect
from authz_service.client.changes_http import ChangesProtocol, Ended, HttpTarget, open_stream
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Service, Tenant, eventually, rpc_error
from .edge_helpers import USER, check, healthy, served
from .pgproxy import PgProxy


def http_url(service: Service) -> str:
    assert service.running.http is not None
    return f"http://127.0.0.1:{service.running.http.port}"


async def allow_user(tenant: Tenant) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING)
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id=USER))


@pytest.fixture
async def http_proxy(service: Service) -> AsyncIterator[PgProxy]:
    """A TCP proxy in front of the service's HTTP listener: what goes through it went over HTTP."""
    proxy = PgProxy(f"postgresql://{http_url(service)[len('http://') :]}/x")
    await proxy.start()
    yield proxy
    proxy.restore()
    await proxy.close()


def through(proxy: PgProxy, heartbeat_timeout: float = 1.5) -> EdgeSettings:
    return EdgeSettings(changes_url=f"http://127.0.0.1:{proxy.port}", heartbeat_timeout=heartbeat_timeout)


@pytest.fixture
async def edge(service: Service, tenant: Tenant, http_proxy: PgProxy) -> AsyncIterator[Client]:
    await allow_user(tenant)
    client = connect(service.address, tenant.keys["connector"], edge=through(http_proxy))
    await healthy(client)
    assert http_proxy.open_links == 1  # the stream, over HTTP
    yield client
    await client.close()


async def test_a_block_ends_the_reused_allow(service: Service, tenant: Tenant, edge: Client) -> None:
    cache = edge.edge_cache
    assert cache is not None
    flushes, server_id = cache.flushes, cache.server_id
    first = await check(edge)
    assert first.decision == az.DECISION_ALLOW and first.reuse.cacheable
    before = served(service.running)
    assert (await check(edge)).trace_id == first.trace_id  # answered at the edge
    assert served(service.running) == before
    await tenant.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id=USER))

    async def dropped() -> bool:
        return len(cache) == 0

    await eventually(dropped)  # by the stream's invalidation, with no check made meanwhile
    assert cache.healthy and cache.flushes == flushes and cache.server_id == server_id  # not a reconnect
    assert (await check(edge)).decision == az.DECISION_BLOCKED


async def test_a_cut_drops_everything_and_the_reconnect_asks_again(
    service: Service, tenant: Tenant, http_proxy: PgProxy
) -> None:
    await allow_user(tenant)
    client = connect(service.address, tenant.keys["connector"], edge=through(http_proxy))
    try:
        cache = await healthy(client)
        assert (await check(client)).reuse.cacheable
        assert len(cache) == 1
        await http_proxy.cut()

        async def dropped() -> bool:
            return len(cache) == 0 and not cache.healthy

        await eventually(dropped)
        http_proxy.restore()
        await healthy(client)
        before = served(service.running)
        assert (await check(client)).decision == az.DECISION_ALLOW
        assert served(service.running) == before + 1
    finally:
        await client.close()


async def test_a_stalled_stream_turns_the_edge_off_within_the_bound(
    service: Service, tenant: Tenant, http_proxy: PgProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="authz_service.client.edge")
    await allow_user(tenant)
    client = connect(
        service.address, tenant.keys["connector"], edge=through(http_proxy, heartbeat_timeout=1.0)
    )
    try:
        cache = await healthy(client)
        await check(client)
        assert (await check(client)).decision == az.DECISION_ALLOW
        assert cache.hits >= 1
        http_proxy.stall()

        async def off() -> bool:
            return not cache.healthy and len(cache) == 0

        await eventually(off, timeout=10)
        before = served(service.running)
        await check(client)
        assert served(service.running) == before + 1  # the edge no longer answers

        async def given_up() -> bool:
            return any(
                "no message from the change stream within 1 s" in r.getMessage() for r in caplog.records
            )

        await eventually(given_up, timeout=10)
        http_proxy.restore()
        await healthy(client)
    finally:
        await client.close()


async def test_revoking_the_key_ends_the_stream(
    service: Service, tenant: Tenant, http_proxy: PgProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="authz_service.client.edge")
    key = await tenant.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="c"))
    await allow_user(tenant)
    client = connect(service.address, key.secret, edge=through(http_proxy))
    try:
        cache = await healthy(client)
        assert http_proxy.open_links == 1
        assert (await check(client)).reuse.cacheable
        await tenant.admin.admin.RevokeApiKey(adm.RevokeApiKeyRequest(key_id=key.key.key_id))

        async def off() -> bool:
            return len(cache) == 0 and not cache.healthy

        await eventually(off)

        async def said_why() -> bool:  # the end frame's code, then the next stream's refusal
            messages = [r.getMessage() for r in caplog.records]
            return any(m.startswith("change stream failed: UNAUTHENTICATED") for m in messages) and any(
                m.startswith("change stream refused: HTTP 401") for m in messages
            )

        await eventually(said_why)
        assert (await rpc_error(check(client))).code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await client.close()


async def test_a_key_that_may_not_watch_is_refused_and_waits_long(service: Service, tenant: Tenant) -> None:
    target = HttpTarget.of(http_url(service), tenant.keys["approver"])
    messages: list[az.WatchChangesResponse] = []
    ended = await asyncio.wait_for(open_stream(target, messages.append), 10)
    assert ended.reason == "change stream refused: HTTP 403" and ended.long_pause
    assert messages == []


# --- the reader ------------------------------------------------------------------------


async def _raw_stream(service: Service, key: str, change: Callable[[], Awaitable[None]]) -> bytes:
    """The service's own bytes for a WatchChanges stream over HTTP: the head,
    the first message, and the message of one change (``change`` makes it)."""
    target = HttpTarget.of(http_url(service), key)
    reader, writer = await asyncio.open_connection(target.host, target.port)
    writer.write(target.request())
    data = b""
    try:
        async with asyncio.timeout(10):
            while b"\r\n\r\n" not in data:
                data += await reader.read(65536)
            await change()
            while b"\x0a\x02tg\x12\x0277" not in data:  # the invalidation (tg, 77) on the wire
                data += await reader.read(65536)
    finally:
        writer.close()
    return data


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True


async def _feed(data: bytes, step: int) -> tuple[list[az.WatchChangesResponse], ChangesProtocol]:
    messages: list[az.WatchChangesResponse] = []
    protocol = ChangesProtocol(b"request", messages.append)
    transport = _Transport()
    protocol.connection_made(transport)
    assert transport.written == b"request"
    for i in range(0, len(data), step):
        protocol.data_received(data[i : i + step])
    return messages, protocol


async def test_the_reader_parses_the_services_bytes_in_any_split(service: Service, tenant: Tenant) -> None:
    await tenant.channel("tg")

    async def change() -> None:
        await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="77"))

    data = await _raw_stream(service, tenant.keys["connector"], change)
    whole, _ = await _feed(data, len(data))
    assert whole[0].server_id and whole[0].heartbeat_ms == 500
    assert ("tg", "77") in [(i.channel_id, i.user_id) for m in whole for i in m.invalidations]
    for step in (1, 2, 3, 7, 64):
        parts, protocol = await _feed(data, step)
        assert parts == whole
        assert not protocol.ended.done()


def _end_frame(payload: bytes) -> bytes:
    return struct.pack(">BI", 2, len(payload)) + payload


def _chunk(payload: bytes) -> bytes:
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/connect+proto\r\nTransfer-Encoding: chunked\r\n\r\n"
_MESSAGE = az.WatchChangesResponse(server_id="s", heartbeat_ms=500).SerializeToString()


@pytest.mark.parametrize(
    ("data", "reason", "long_pause"),
    [
        (b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", "change stream refused: HTTP 401", False),
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "change stream refused: HTTP 404", True),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "change stream broken: not an HTTP/1.1 response", False),
        (
            _HEAD.replace(b"connect+proto", b"connect+json"),
            "change stream broken: unexpected content type",
            False,
        ),
        (_HEAD + b"zz\r\n", "change stream broken: bad chunk size", False),
        (_HEAD + b"7fffffff\r\n", "change stream broken: chunk too large", False),
        (_HEAD + b"5\r\nabcdeXX", "change stream broken: chunk not terminated", False),
        (_HEAD + _chunk(struct.pack(">BI", 0, 1 << 30)), "change stream broken: frame too large", False),
        (
            _HEAD + _chunk(struct.pack(">BI", 1, len(_MESSAGE)) + _MESSAGE),
            "change stream broken: compressed frame (none was asked for)",
            False,
        ),
        (
            _HEAD + _chunk(struct.pack(">BI", 0, 3) + b"\xff\xff\xff"),
            "change stream broken: message does not parse",
            False,
        ),
        (
            _HEAD + _chunk(struct.pack(">BI", 2, 46) + b'{"error":{"code":"unavailable","message":"x"}}'),
            "change stream failed: UNAVAILABLE",
            False,
        ),
        (_HEAD + _chunk(struct.pack(">BI", 2, 2) + b"{}") + b"0\r\n\r\n", "change stream ended", False),
        (_HEAD + b"0\r\n\r\n", "change stream ended", False),
        (  # the error frame and the last chunk in one read: the error is not lost
            _HEAD + _chunk(_end_frame(b'{"error":{"code":"unauthenticated","message":"x"}}')) + b"0\r\n\r\n",
            "change stream failed: UNAUTHENTICATED",
            False,
        ),
        (
            _HEAD + _chunk(_end_frame(b'{"error":{"code":"permission_denied","message":"x"}}')),
            "change stream failed: PERMISSION_DENIED",
            True,
        ),
        (b"HTTP/1.1 415 Unsupported\r\n\r\n", "change stream refused: HTTP 415", True),
        (
            "HTTP/1.1 \u00b200 OK\r\n\r\n".encode("latin-1"),
            "change stream broken: not an HTTP/1.1 response",
            False,
        ),
        (_HEAD + b"0x5\r\n", "change stream broken: bad chunk size", False),
        (
            b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * 20000,
            "change stream broken: response head too large",
            False,
        ),
    ],
)
async def test_the_reader_ends_the_stream_on_anything_unexpected(
    data: bytes, reason: str, long_pause: bool
) -> None:
    messages, protocol = await _feed(data, 1000)
    assert protocol.ended.done()
    assert protocol.ended.result() == Ended(reason, long_pause)
    assert messages == []


@pytest.mark.parametrize(
    ("url", "key", "error"),
    [
        ("ftp://authz:8081", "k", "must be http://host:port"),
        ("http://", "k", "must be http://host:port"),
        ("http://user:pw@authz:8081", "k", "no query, fragment or credentials"),
        ("http://authz:8081/?x=1", "k", "no query, fragment or credentials"),
        ("http://authz:8081", "k\r\nX-Evil: 1", "printable ASCII"),
        ("http://authz:8081", "", "printable ASCII"),
    ],
)
def test_a_bad_url_or_key_is_refused_up_front(url: str, key: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        HttpTarget.of(url, key)


def test_https_verifies_and_a_prefix_is_kept() -> None:
    target = HttpTarget.of("https://authz.example/api/", "key")
    assert target.port == 443 and target.ssl_context is not None
    assert target.path == "/api/authz.v1.AuthzService/WatchChanges"
    assert target.request().startswith(
        b"POST /api/authz.v1.AuthzService/WatchChanges HTTP/1.1\r\nHost: authz.example:443\r\n"
    )


async def test_the_stream_never_takes_the_key_in_the_clear_beside_tls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ValueError, match="must be https:// when the client uses TLS"):
        connect("authz:50051", "key", tls=TlsConfig(), edge=EdgeSettings(changes_url="http://authz:8081"))
    caplog.set_level(logging.WARNING, logger="authz_service.client")
    client = connect("127.0.0.1:1", "key", edge=EdgeSettings(changes_url="http://192.0.2.1:8081"))
    await client.close()
    assert any("192.0.2.1:8081" in r.getMessage() and "TLS" in r.getMessage() for r in caplog.records)
