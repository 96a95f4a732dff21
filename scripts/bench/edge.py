"""Decisions at the edge (issue #21): what answering repeat checks in the client
buys, and what the change streams that make it safe cost the service.

Every figure here uses the real SDK (``authz_service.client.connect`` with
``edge=EdgeSettings()``) against the bench server:

* ``edge_checkuser_per_core``: repeat CheckUser answered at the edge, calls per
  CPU second of the calling process (its stream's heartbeats included);
* ``service_cpu_per_turn_before`` / ``_after``: the service's CPU per message
  turn (CheckUser, then EvaluateSend of the reply) for repeat users, without
  and with the edge;
* ``edge_stale_allows_after_cut``: the stream cut silently (a TCP proxy stops
  forwarding), edge ALLOWs answered later than the bound after the cut;
* ``edge_streams_idle_cores`` / ``_mb`` / ``edge_streams_1_change_cores``: the
  service's CPU and memory for ``STREAMS`` open WatchChanges streams, idle and
  with one change per second;
* ``edge_revocation_p99``: a block committed in PostgreSQL until each of the
  ``STREAMS`` edges has dropped the user's answers, p99 over every edge and
  change, while a load process keeps the service busy with remote CheckUser;
  with the change stream over the service's HTTP listener (one connection per
  edge, as ``changes_url`` gives each connector), and again (``_grpc``) over
  gRPC (``CONNECTIONS`` connections, the streams sharing them);
* ``edge_service_us_per_stream_message`` / ``edge_client_us_per_stream_message``:
  CPU per stream message in the service (its idle heartbeats) and in the edges'
  process (every message it read): one change reaches ``STREAMS`` edges no
  sooner than ``STREAMS`` times either, each side having one core here.

The streams live in a process of their own (``_hold``), so reading them does
not slow the bench's own loop; times are ``time.monotonic()``, one clock for
every process of the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import psutil

from authz_service.client import EdgeCache, EdgeSettings, connect
from authz_service.client import edge as edge_answers
from authz_service.client.changes_http import HttpTarget
from authz_service.flows.changes import HEARTBEAT_SECONDS
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import authz_pb2_grpc
from authz_service.gen.authz.v1 import common_pb2 as cm

from .dataset import AGENT, CHANNEL, SEND_TARGET, user_name
from .report import log

STREAMS = 1000
CONNECTIONS = 20  # the streams' connections (50 streams each)
PROBE_USER = "edge-probe"


def check_request(user: str) -> az.CheckUserRequest:
    return az.CheckUserRequest(channel_id=CHANNEL, user_id=user, chat_kind=cm.CHAT_KIND_DIRECT, text="hello")


SEND = az.EvaluateSendRequest(channel_id=CHANNEL, agent_id=AGENT, origin="telegram:1", target=SEND_TARGET)


def server_cpu(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def server_rss_mb(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total / 2**20


# --- edge vs remote, and the service's CPU per turn ------------------------------------------


async def edge_calls_per_core(address: str, key: str, users: int, seconds: float) -> float:
    """Repeat CheckUser for ``users`` users answered at the edge, per CPU second."""
    reasons: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: reasons.append(record.getMessage())  # type: ignore[method-assign]
    edge_log = logging.getLogger("authz_service.client.edge")
    edge_log.addHandler(handler)
    edge_log.setLevel(logging.INFO)
    client = connect(address, key, edge=EdgeSettings(max_entries=max(users, 1)))
    try:
        cache = await _healthy(client.edge_cache)
        requests = [check_request(user_name(u)) for u in range(users)]
        for r in requests:  # fill
            await client.authz.CheckUser(r)
        if len(cache) != users:
            raise RuntimeError(f"the edge holds {len(cache)} of {users} answers: were they marked reusable?")
        hits, calls = cache.hits, 0
        cpu, end = time.process_time(), time.monotonic() + seconds
        stub = client.authz
        while time.monotonic() < end:
            for r in requests:
                await stub.CheckUser(r)
            calls += len(requests)
            # A hit completes without yielding: let the stream's heartbeats in, as any
            # connector's loop does between messages (else the edge turns itself off).
            await asyncio.sleep(0)
        cpu = time.process_time() - cpu
        if cache.hits - hits != calls:
            log(f"  WARNING: {calls - (cache.hits - hits)} of {calls} repeat checks went to the service "
                f"(the edge was dropped {cache.flushes} times: {sorted(set(reasons))})")  # fmt: skip
        return calls / cpu
    finally:
        edge_log.removeHandler(handler)
        await client.close()


async def cpu_per_turn(
    address: str, key: str, pids: Sequence[int], users: int, seconds: float, edge: bool
) -> float:
    """The service's CPU seconds per message turn (CheckUser + EvaluateSend) of
    repeat users, one turn at a time, as a connector makes them."""
    client = connect(address, key, edge=EdgeSettings(max_entries=users + 1) if edge else None)
    try:
        if edge:
            await _healthy(client.edge_cache)
        requests = [check_request(user_name(u)) for u in range(users)]
        for r in requests:  # every user has been seen before
            await client.authz.CheckUser(r)
        await client.authz.EvaluateSend(SEND)
        turns, cpu = 0, server_cpu(pids)
        end = time.monotonic() + seconds
        for r in itertools.cycle(requests):
            check = await client.authz.CheckUser(r)
            send = await client.authz.EvaluateSend(SEND)
            if check.decision != az.DECISION_ALLOW or not send.allow:
                raise RuntimeError("a repeat turn was refused")
            turns += 1
            if time.monotonic() >= end:
                break
        return (server_cpu(pids) - cpu) / turns
    finally:
        await client.close()


async def _healthy(cache: EdgeCache | None, timeout: float = 10.0) -> EdgeCache:
    assert cache is not None
    async with asyncio.timeout(timeout):
        while not cache.healthy:  # noqa: ASYNC110 - a state another task's stream sets
            await asyncio.sleep(0.02)
    return cache


# --- the silent cut ---------------------------------------------------------------------------


class StallProxy:
    """TCP forwarding that can stop moving bytes without closing anything."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port, self.listen_port = host, port, 0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self._writers += [writer, up_writer]
        with contextlib.suppress(asyncio.CancelledError):  # closed with the bench's loop
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await src.read(65536):
                await self.flowing.wait()
                dst.write(data)
                await dst.drain()

    async def close(self) -> None:
        self.flowing.set()
        for w in self._writers:
            w.transport.abort()
        if self._server is not None:
            self._server.close()


@dataclass(frozen=True)
class Cut:
    stale: int  # edge ALLOWs later than the bound after the cut
    last_edge_ms: float  # the last edge ALLOW, after the cut
    edge_after_cut: int


async def silent_cut(address: str, key: str, bound: float = 1.5, after: float = 3.0) -> Cut:
    host, _, port = address.rpartition(":")
    proxy = StallProxy(host, int(port))
    await proxy.start()
    client = connect(
        f"127.0.0.1:{proxy.listen_port}", key, edge=EdgeSettings(heartbeat_timeout=bound), timeout=0.2
    )
    try:
        cache = await _healthy(client.edge_cache)
        request = check_request(user_name(0))
        await client.authz.CheckUser(request)
        await asyncio.sleep(1.0)  # steady: answered at the edge
        proxy.flowing.clear()
        cut = time.monotonic()
        edge_times: list[float] = []
        failed = 0
        while time.monotonic() < cut + after:
            hits = cache.hits
            try:
                resp = await client.authz.CheckUser(request)
            except grpc.aio.AioRpcError:  # the service is out of reach: no answer, as it should be
                failed += 1
                continue
            if cache.hits > hits and resp.decision == az.DECISION_ALLOW:
                edge_times.append(time.monotonic() - cut)
            await asyncio.sleep(0.0005)
        late = [t for t in edge_times if t > bound]
        return Cut(len(late), 1000 * max(edge_times, default=0.0), len(edge_times))
    finally:
        await proxy.close()
        await client.close()


# --- 1,000 streams: cost and propagation ---------------------------------------------------------


class TimedEdge(EdgeCache):
    """An edge that notes when an invalidation of the probe user arrived."""

    def __init__(self, settings: EdgeSettings) -> None:
        super().__init__(settings)
        self.seen: list[float] = []
        self.messages = 0

    def on_message(self, message: az.WatchChangesResponse) -> None:
        self.messages += 1
        super().on_message(message)

    def invalidate(self, items: Any) -> None:
        items = list(items)
        if any(i.user_id == PROBE_USER for i in items):
            self.seen.append(time.monotonic())
        super().invalidate(items)


@dataclass(frozen=True)
class Holder:
    address: str
    key: str
    owner_dsn: str
    tenant: str
    changes_url: str = ""  # the service's HTTP listener: streams there, one connection each; "": gRPC


def _hold(holder: Holder, commands: Any, answers: Any) -> None:
    try:
        asyncio.run(_streams(holder, commands, answers))
    except BaseException as exc:  # the parent reports it
        answers.put(f"failed: {exc!r}")


async def _streams(holder: Holder, commands: Any, answers: Any) -> None:
    channels = [
        grpc.aio.insecure_channel(holder.address, options=[("bench.edge", i)]) for i in range(CONNECTIONS)
    ]
    metadata = (("authorization", f"Bearer {holder.key}"),)

    class Stub:
        """WatchChanges with the key, as the SDK's interceptor would send it."""

        def __init__(self, channel: grpc.aio.Channel) -> None:
            self._stub = authz_pb2_grpc.AuthzServiceStub(channel)

        def WatchChanges(self, request: az.WatchChangesRequest) -> Any:
            return self._stub.WatchChanges(request, metadata=metadata)

    settings = EdgeSettings()
    edges = [TimedEdge(settings) for _ in range(STREAMS)]
    if holder.changes_url:
        target = HttpTarget.of(holder.changes_url, holder.key)
        tasks = [asyncio.create_task(edge_answers.follow_changes_http(target, e)) for e in edges]
    else:
        tasks = [
            asyncio.create_task(edge_answers.follow_changes(Stub(channels[i % CONNECTIONS]), e))
            for i, e in enumerate(edges)
        ]
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(60):
        while not all(e.healthy for e in edges):  # noqa: ASYNC110 - set by the streams' tasks
            await asyncio.sleep(0.05)
    answers.put("ready")
    owner = await asyncpg.connect(holder.owner_dsn)
    await owner.execute(
        "INSERT INTO subjects (tenant_id, channel_id, user_id, status, source) VALUES ($1, $2, $3, 'allowed', 'admin')"
        " ON CONFLICT DO NOTHING",
        holder.tenant, CHANNEL, PROBE_USER,
    )  # fmt: skip
    blocked = False
    try:
        while True:
            command = await loop.run_in_executor(None, commands.get)
            if command == "stop":
                break
            count, rate = command
            for e in edges:
                e.seen.clear()
            starts: list[float] = []
            unhealthy = 0
            cpu, wall = time.process_time(), time.monotonic()
            received = sum(e.messages for e in edges)
            for _ in range(count):
                blocked = not blocked
                start = time.monotonic()
                await owner.execute(
                    "UPDATE subjects SET status = $4 WHERE tenant_id = $1 AND channel_id = $2 AND user_id = $3",
                    holder.tenant, CHANNEL, PROBE_USER, "blocked" if blocked else "allowed",
                )  # fmt: skip
                starts.append(start)
                await asyncio.sleep(1 / rate)
            await asyncio.sleep(0.5)
            unhealthy = sum(not e.healthy for e in edges)
            latencies: list[float] = []
            missing = 0
            for e in edges:
                for i, s in enumerate(starts):
                    end = starts[i + 1] if i + 1 < len(starts) else float("inf")
                    got = [t for t in e.seen if s <= t < end]
                    if got:
                        latencies.append(1000 * (got[0] - s))
                    else:
                        missing += 1
            holder_cpu = time.process_time() - cpu
            holder_cores = holder_cpu / (time.monotonic() - wall)
            received = sum(e.messages for e in edges) - received
            answers.put((latencies, missing, unhealthy, holder_cores, 1e6 * holder_cpu / max(received, 1)))
    finally:
        await owner.close()
        for t in tasks:
            t.cancel()
        for ch in channels:
            await ch.close(None)


LOAD_RPS = 800  # remote CheckUser per second while revocations are measured: about 40 % of a core


def _load(address: str, key: str, users: int, rate: float, stop: Any) -> None:
    """Remote CheckUser at ``rate`` per second (open loop), until ``stop`` is set."""

    async def run() -> None:
        client = connect(address, key)
        requests = itertools.cycle([check_request(user_name(u)) for u in range(users)])
        pending: set[asyncio.Task[Any]] = set()
        start, sent = time.monotonic(), 0
        while not stop.is_set():
            due = int((time.monotonic() - start) * rate)
            for _ in range(due - sent):
                task = asyncio.ensure_future(client.authz.CheckUser(next(requests)))
                pending.add(task)
                task.add_done_callback(pending.discard)
            sent = max(sent, due)
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending, return_exceptions=True)
        await client.close()

    asyncio.run(run())


@dataclass(frozen=True)
class Streams:
    idle_cores_before: float
    idle_cores: float
    rss_mb_before: float
    rss_mb: float
    change_cores: float
    p50_idle_ms: float
    p99_idle_ms: float
    p50_load_ms: float
    p99_load_ms: float
    samples_load: int
    missing: int
    unhealthy: int
    holder_cores_idle: float
    holder_cores_load: float
    load_cores: float
    service_us_per_message: float  # the service's CPU per stream message, heartbeats at idle
    holder_us_per_message: float  # the edges' process's CPU per stream message received, no load


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def streams(holder: Holder, pids: Sequence[int], users: int, client_cpus: Sequence[int] | None) -> Streams:
    ctx = multiprocessing.get_context("spawn")
    commands, answers = ctx.Queue(), ctx.Queue()

    def cores(seconds: float) -> float:
        before = server_cpu(pids)
        time.sleep(seconds)
        return (server_cpu(pids) - before) / seconds

    idle_before, rss_before = cores(3.0), server_rss_mb(pids)
    proc = ctx.Process(target=_hold, args=(holder, commands, answers), daemon=True)
    proc.start()
    if client_cpus and proc.pid is not None:
        os.sched_setaffinity(proc.pid, client_cpus)
    try:
        ready = answers.get(timeout=120)
        if ready != "ready":
            raise RuntimeError(f"the stream holder {ready}")
        time.sleep(1.0)
        idle, rss = cores(4.0), server_rss_mb(pids)
        # Idle, the streams' only messages are heartbeats: STREAMS per HEARTBEAT_SECONDS.
        service_us = 1e6 * (idle - idle_before) / (STREAMS / HEARTBEAT_SECONDS)
        log(f"  {STREAMS} streams: service {idle:.3f} cores idle (before {idle_before:.3f}, "
            f"{service_us:.0f} µs per stream message), RSS {rss:.0f} MB (before {rss_before:.0f} MB)")  # fmt: skip
        before = server_cpu(pids)
        t = time.monotonic()
        commands.put((6, 1.0))
        result = answers.get(timeout=120)
        if isinstance(result, str):
            raise RuntimeError(f"the stream holder {result}")
        change_cores = (server_cpu(pids) - before) / (time.monotonic() - t)
        lat_idle, missing_idle, unhealthy_idle, holder_idle, holder_us = result
        stop = ctx.Event()
        loaders = [
            ctx.Process(target=_load, args=(holder.address, holder.key, users, LOAD_RPS, stop), daemon=True)
        ]
        for p in loaders:
            p.start()
            if client_cpus and p.pid is not None:
                os.sched_setaffinity(p.pid, client_cpus)
            if p.pid is not None:
                # The load is on the service; on this host it shares the edges' core, where it
                # yields to them (niceness 19): elsewhere the load's callers and the edges are
                # not the same machines. It still runs whenever the edges are idle, which is
                # almost always (the service's load is measured and printed).
                os.setpriority(os.PRIO_PROCESS, p.pid, 19)
        time.sleep(2.0)  # the load is up
        load_cpu, t = server_cpu(pids), time.monotonic()
        commands.put((10, 2.0))
        result = answers.get(timeout=120)
        load_cores = (server_cpu(pids) - load_cpu) / (time.monotonic() - t)
        stop.set()
        for p in loaders:
            p.join(timeout=10)
        if isinstance(result, str):
            raise RuntimeError(f"the stream holder {result}")
        lat_load, missing_load, unhealthy_load, holder_load, _ = result
        log(f"  one change/s: service {change_cores:.3f} cores; revocation p50/p99 idle "
            f"{_p(lat_idle, 0.5):.1f}/{_p(lat_idle, 0.99):.1f} ms, under load ({load_cores:.2f} service cores) "
            f"{_p(lat_load, 0.5):.1f}/{_p(lat_load, 0.99):.1f} ms over {len(lat_load)} "
            f"deliveries; missing {missing_idle + missing_load}, unhealthy edges {unhealthy_idle + unhealthy_load}; "
            f"the edges' process used {holder_idle:.2f} / {holder_load:.2f} cores "
            f"({holder_us:.0f} µs per message received, no load)")  # fmt: skip
        return Streams(
            idle_before, idle, rss_before, rss, change_cores,
            _p(lat_idle, 0.5), _p(lat_idle, 0.99), _p(lat_load, 0.5), _p(lat_load, 0.99), len(lat_load),
            missing_idle + missing_load, unhealthy_idle + unhealthy_load, holder_idle, holder_load, load_cores,
            service_us, holder_us,
        )  # fmt: skip
    finally:
        with contextlib.suppress(Exception):
            commands.put("stop")
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
        with contextlib.suppress(queue.Empty, OSError):
            answers.get_nowait()
