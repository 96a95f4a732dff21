"""The floor of a server-stream message, outside our code (docs/performance.md,
"The change stream over HTTP"): 1,000 streams, one message each per round, CPU
per message on each side, for

* ``grpc``: a bare ``grpc.aio`` server and client (raw bytes, 20 connections);
* ``http-await``: an aiohttp server, an aiohttp client that awaits each message
  (one connection per stream);
* ``http-protocol``: the same server, a reader built on ``asyncio.Protocol``
  that handles each message in the socket's callback (what client.changes_http does).

Server and client each pinned to a core of their own when the host has two.
Run: ``PYTHONPATH=scripts .venv/bin/python -m bench.stream_floor``. Not in CI.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import struct
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import ClientSession, TCPConnector, web

STREAMS = 1000
CONNECTIONS = 20  # gRPC: the streams share these, as in bench.edge
ROUNDS = 5
PAYLOAD = b"x" * 60
FRAME = struct.pack(">BI", 0, len(PAYLOAD)) + PAYLOAD
_KEEP: list[object] = []  # the servers, alive while their process runs


def _server(kind: str, ports: Any, commands: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        state = {"go": loop.create_future()}

        async def next_round() -> None:
            await state["go"]

        port = await (_grpc_server(next_round) if kind == "grpc" else _http_server(next_round))
        ports.put(port)
        while (await loop.run_in_executor(None, commands.get)) != "stop":
            cpu = time.process_time()
            old, state["go"] = state["go"], loop.create_future()
            old.set_result(None)
            await asyncio.sleep(0.3)
            ports.put(time.process_time() - cpu)
        for kept in _KEEP:
            if isinstance(kept, web.AppRunner):
                await kept.cleanup()
            else:
                await kept.stop(None)  # type: ignore[attr-defined]

    asyncio.run(main())


async def _grpc_server(next_round: Any) -> int:
    async def handler(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield PAYLOAD
        while True:
            await next_round()
            yield PAYLOAD

    method = grpc.unary_stream_rpc_method_handler(handler)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("floor.Floor", {"Watch": method})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    _KEEP.append(server)
    return port


async def _http_server(next_round: Any) -> int:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/connect+proto"})
        await response.prepare(request)
        await response.write(FRAME)
        while True:
            await next_round()
            await response.write(FRAME)

    app = web.Application()
    app.router.add_post("/watch", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    _KEEP.append(runner)
    port: int = runner.addresses[0][1]
    return port


class _Counter:
    def __init__(self) -> None:
        self.messages = 0


async def _grpc_readers(port: int, counter: _Counter) -> list[asyncio.Task[None]]:
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("floor", i)]) for i in range(CONNECTIONS)
    ]
    _KEEP.extend(channels)

    async def read(i: int) -> None:
        call = channels[i % CONNECTIONS].unary_stream(
            "/floor.Floor/Watch", request_serializer=None, response_deserializer=None
        )(b"")
        async for _ in call:
            counter.messages += 1

    return [asyncio.create_task(read(i)) for i in range(STREAMS)]


async def _http_await_readers(port: int, counter: _Counter) -> list[asyncio.Task[None]]:
    session = ClientSession(connector=TCPConnector(limit=0))
    _KEEP.append(session)

    async def read() -> None:
        async with session.post(f"http://127.0.0.1:{port}/watch", data=b"") as resp:
            buf = b""
            while data := await resp.content.readany():
                buf += data
                while len(buf) >= 5 and len(buf) >= 5 + struct.unpack_from(">I", buf, 1)[0]:
                    buf = buf[5 + struct.unpack_from(">I", buf, 1)[0] :]
                    counter.messages += 1

    return [asyncio.create_task(read()) for _ in range(STREAMS)]


class _Reader(asyncio.Protocol):
    def __init__(self, counter: _Counter) -> None:
        self.counter = counter
        self.buf = b""
        self.in_body = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(b"POST /watch HTTP/1.1\r\nHost: floor\r\nContent-Length: 0\r\n\r\n")

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.in_body:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            self.in_body, buf = True, buf[end + 4 :]
        while (line := buf.find(b"\r\n")) >= 0:  # chunked: size line, data, CRLF
            size = int(buf[:line], 16)
            if len(buf) < line + 4 + size:
                break
            self.counter.messages += 1  # one frame per chunk, as the server writes them
            buf = buf[line + 4 + size :]
        self.buf = buf


async def _http_protocol_readers(port: int, counter: _Counter) -> list[asyncio.Task[None]]:
    loop = asyncio.get_running_loop()
    for _ in range(STREAMS):
        await loop.create_connection(lambda: _Reader(counter), "127.0.0.1", port)
    return []


async def _client(kind: str, port: int, commands: Any, answers: Any) -> None:
    counter = _Counter()
    start = {
        "grpc": _grpc_readers,
        "http-await": _http_await_readers,
        "http-protocol": _http_protocol_readers,
    }
    tasks = await start[kind](port, counter)
    while counter.messages < STREAMS:  # noqa: ASYNC110 - the readers count, nothing signals
        await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    for r in range(ROUNDS):
        wall, cpu = time.monotonic(), time.process_time()
        commands.put("go")
        while counter.messages < STREAMS * (r + 2):  # noqa: ASYNC110 - as above
            await asyncio.sleep(0.001)
        client_cpu, last = time.process_time() - cpu, time.monotonic() - wall
        server_cpu = await loop.run_in_executor(None, answers.get)
        print(
            f"{kind:14s} server {1e6 * server_cpu / STREAMS:5.1f} µs/message, client "
            f"{1e6 * client_cpu / STREAMS:5.1f} µs/message, last of {STREAMS} after {1000 * last:5.1f} ms"
        )
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for kept in _KEEP:
        if isinstance(kept, ClientSession):
            await kept.close()
        elif isinstance(kept, grpc.aio.Channel):
            await kept.close(None)
    _KEEP.clear()
    commands.put("stop")


def main() -> None:
    ctx = multiprocessing.get_context("spawn")
    two = len(os.sched_getaffinity(0)) >= 2
    for kind in ("grpc", "http-await", "http-protocol"):
        answers, commands = ctx.Queue(), ctx.Queue()
        server = ctx.Process(target=_server, args=(kind, answers, commands), daemon=True)
        server.start()
        if two and server.pid is not None:
            os.sched_setaffinity(server.pid, {0})
            os.sched_setaffinity(0, {1})
        port = answers.get(timeout=30)
        asyncio.run(_client(kind, port, commands, answers))
        server.join(timeout=5)
        server.kill()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
