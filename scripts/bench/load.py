"""The load generator: client processes that send pre-serialised requests
over many calls in flight (or at a fixed rate), scenarios that take turns
(``Schedule``), and what one run measured (``Measured``).

Each client process runs ``drive`` under its own event loop, pinned to the
client core(s); ``run_load`` starts them together and reads the CPU of every
party (``host``) and the service's database connections over the measured
window.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

import asyncpg
import grpc

from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .host import Cpu, CpuWindow, TurnCpu

REQUEST_PAIRING = "/authz.v1.AuthzService/RequestPairing"
RESOLVE_APPROVAL = "/authz.v1.AuthzService/ResolveApproval"

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Call:
    method: str
    request: bytes
    metadata: Metadata


def bearer(key: str) -> Metadata:
    return (("authorization", f"Bearer {key}"),)


@dataclass(frozen=True)
class Pairing:
    """RequestPairing for a fresh user, then ResolveApproval of it by id."""

    channels: tuple[str, ...]
    connector: Metadata
    approver: Metadata
    action: int = cm.APPROVAL_ACTION_APPROVE
    nonce: int = 100  # 100..999: keeps user ids unique across runs on one database


@dataclass(frozen=True)
class Load:
    """What each client process sends. ``mix``: the scenarios of one run; with
    more than one they take turns of ``phase`` seconds (see ``Schedule``)."""

    address: str
    mix: tuple[tuple[Call, ...], ...] = ()
    pairing: Pairing | None = None
    concurrency: int = 32  # calls in flight per process (closed loop)
    connections: int = 1  # HTTP/2 connections per process, calls spread over them
    warmup: float = 2.0
    duration: float = 8.0  # measured seconds (a mix: the whole run)
    rate: float | None = None  # open loop: calls per second per process; None: closed loop
    timeout: float = 5.0
    phase: float = 1.0  # a mix: seconds per turn
    settle: float = 0.2  # a mix: seconds at the start of a turn that do not count

    @property
    def kinds(self) -> int:
        return max(1, len(self.mix))


@dataclass(frozen=True)
class Schedule:
    """When the scenarios of a run are measured. One scenario: from ``start``
    to ``end``. A mix: turns of ``phase`` seconds from ``start`` (before it too,
    during the warm-up), turn k for scenario k mod n; a call counts for its
    scenario when it completes in one of that scenario's turns, after the
    first ``settle`` seconds, when the previous scenario's calls are done.
    Scenarios measured in alternating turns see the same machine: a VM whose
    speed drifts (its neighbours) slows them alike, so their ratios hold."""

    start: float
    end: float
    kinds: int = 1
    phase: float = 1.0
    settle: float = 0.0

    @classmethod
    def of(cls, load: Load, go: float) -> Schedule:
        start = go + load.warmup
        if load.kinds == 1:
            return cls(start, start + load.duration)
        return cls(start, start + load.duration, load.kinds, load.phase, load.settle)

    def kind_at(self, t: float) -> int:
        return 0 if self.kinds == 1 else math.floor((t - self.start) / self.phase) % self.kinds

    def counts(self, t: float, kind: int) -> bool:
        if not self.start <= t <= self.end:
            return False
        if self.kinds == 1:
            return True
        turn = math.floor((t - self.start) / self.phase)
        return turn % self.kinds == kind and t - self.start - turn * self.phase >= self.settle

    def windows(self, kind: int) -> list[tuple[float, float]]:
        """The measured windows of one scenario."""
        if self.kinds == 1:
            return [(self.start, self.end)]
        out, turn = [], kind
        while self.start + turn * self.phase + self.settle < self.end:
            begin = self.start + turn * self.phase
            out.append((begin + self.settle, min(begin + self.phase, self.end)))
            turn += self.kinds
        return out

    def measured(self, kind: int) -> float:
        return sum(b - a for a, b in self.windows(kind))


@dataclass
class LoadResult:
    ok: int = 0  # successful calls counted (completed in the measured windows)
    errors: dict[str, int] = field(default_factory=dict)  # every failure, warm-up included
    total_ok: int = 0
    duration: float = 0.0  # measured seconds
    latencies_ms: list[float] = field(default_factory=list)  # of the calls counted
    lag_ms: list[float] = field(default_factory=list)  # open loop: send time minus intended time
    cpu_seconds: float = 0.0  # client CPU during the run's window
    processes: int = 1
    kinds: list[LoadResult] = field(default_factory=list)  # a mix: one result per scenario

    @property
    def rps(self) -> float:
        return self.ok / self.duration if self.duration else 0.0

    def per_kind(self) -> list[LoadResult]:
        return self.kinds or [self]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadResult:
        return cls(**{**data, "kinds": [cls.from_dict(k) for k in data.get("kinds", [])]})

    @classmethod
    def merge(cls, parts: Sequence[LoadResult]) -> LoadResult:
        errors: Counter[str] = Counter()
        out = cls(duration=max((p.duration for p in parts), default=0.0), processes=len(parts))
        for p in parts:
            out.ok += p.ok
            out.total_ok += p.total_ok
            errors.update(p.errors)
            out.latencies_ms.extend(p.latencies_ms)
            out.lag_ms.extend(p.lag_ms)
            out.cpu_seconds += p.cpu_seconds
        out.errors = dict(errors)
        if parts and parts[0].kinds:
            out.kinds = [cls.merge(same) for same in zip(*(p.kinds for p in parts), strict=True)]
        return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class _Recorder:
    def __init__(self, schedule: Schedule, by_start: bool) -> None:
        self.schedule, self.by_start = schedule, by_start
        self.results = [LoadResult(duration=schedule.measured(k)) for k in range(schedule.kinds)]
        self.errors: Counter[str] = Counter()

    def done(self, t0: float, t1: float, error: str | None, kind: int = 0) -> None:
        if error is not None:
            self.errors[error] += 1
            return
        result = self.results[kind]
        result.total_ok += 1
        if self.schedule.counts(t0 if self.by_start else t1, kind):
            result.ok += 1
            result.latencies_ms.append((t1 - t0) * 1000.0)

    def result(self, cpu_seconds: float) -> LoadResult:
        if len(self.results) == 1:
            out = self.results[0]
        else:
            out = LoadResult.merge(self.results)
            out.kinds, out.processes = self.results, 1
            out.duration = self.schedule.end - self.schedule.start
        out.errors, out.cpu_seconds = dict(self.errors), cpu_seconds
        return out


def _code(exc: grpc.aio.AioRpcError) -> str:
    return str(exc.code().name)


async def drive(load: Load, index: int = 0, go: float | None = None) -> LoadResult:
    """Run ``load`` from this process: warm up, then measure (``Schedule``,
    from ``go``, default now). ``index`` (of the client processes) spreads the
    work across processes: offsets in the request lists, pairing channels."""
    # Separate connections (not one shared subchannel), so SO_REUSEPORT
    # workers each get their share of them.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(load.address, options=options) for _ in range(load.connections)]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), 30)
        schedule = Schedule.of(load, time.monotonic() if go is None else go)
        return await _drive(load, index, channels, schedule)
    finally:
        for c in channels:
            await c.close(None)


async def _drive(load: Load, index: int, channels: list[grpc.aio.Channel], schedule: Schedule) -> LoadResult:
    stubs: dict[tuple[int, str], Any] = {}

    def stub(slot: int, method: str) -> Any:
        key = (slot % len(channels), method)
        if key not in stubs:
            stubs[key] = channels[key[0]].unary_unary(method, None, None)  # bytes in, bytes out
        return stubs[key]

    start, end = schedule.start, schedule.end
    rec = _Recorder(schedule, by_start=load.rate is not None)

    async def cpu_meter() -> float:
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        before = time.process_time()
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        return time.process_time() - before

    meter = asyncio.create_task(cpu_meter())

    async def one(slot: int, call: Call, t0: float, kind: int = 0) -> None:
        try:
            await stub(slot, call.method)(call.request, metadata=call.metadata, timeout=load.timeout)
        except grpc.aio.AioRpcError as exc:
            rec.done(t0, time.monotonic(), _code(exc), kind)
        else:
            rec.done(t0, time.monotonic(), None, kind)

    async def closed(worker: int) -> None:
        i = index * 7919 + worker * 104_729
        while True:
            t0 = time.monotonic()
            if t0 >= end:
                return
            kind = schedule.kind_at(t0)
            calls = load.mix[kind]
            await one(worker, calls[i % len(calls)], t0, kind)
            i += 1

    async def open_loop() -> None:
        assert load.rate is not None
        calls, interval = load.mix[0], 1.0 / load.rate
        t_first = time.monotonic() + random.random() * interval  # noqa: S311 - desynchronise processes
        pending: set[asyncio.Task[None]] = set()
        n = 0
        while True:
            due = t_first + n * interval
            if due >= end:
                break
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
                now = time.monotonic()
            if now >= start:
                rec.results[0].lag_ms.append((now - due) * 1000.0)
            if len(pending) >= 10_000:
                rec.errors["client_backlog"] += 1
            else:
                task = asyncio.create_task(one(n, calls[(index * 7919 + n) % len(calls)], now))
                pending.add(task)
                task.add_done_callback(pending.discard)
            n += 1
        if pending:
            await asyncio.wait(pending, timeout=load.timeout + 1)

    async def pairs(worker: int) -> None:
        p = load.pairing
        assert p is not None
        slot = index * load.concurrency + worker
        channel_id = p.channels[slot % len(p.channels)]
        request, resolve = stub(worker, REQUEST_PAIRING), stub(worker, RESOLVE_APPROVAL)
        n = 0
        while True:
            t0 = time.monotonic()
            if t0 >= end:
                return
            user = f"{p.nonce}{slot:04d}{n:08d}"
            n += 1
            error: str | None = None
            try:
                raw = await request(
                    az.RequestPairingRequest(
                        channel_id=channel_id, user_id=user, display_name="Bench", first_message="hi"
                    ).SerializeToString(),
                    metadata=p.connector,
                    timeout=load.timeout,
                )
                created = az.RequestPairingResponse.FromString(raw)
                if created.outcome != az.PAIRING_OUTCOME_CREATED:
                    error = f"pairing_outcome_{az.PairingOutcome.Name(created.outcome)}"
                else:
                    await resolve(
                        az.ResolveApprovalRequest(
                            approval_id=created.approval_id,
                            action=p.action,  # type: ignore[arg-type]
                        ).SerializeToString(),
                        metadata=p.approver,
                        timeout=load.timeout,
                    )
            except grpc.aio.AioRpcError as exc:
                error = _code(exc)
            rec.done(t0, time.monotonic(), error)

    if load.pairing is not None:
        await asyncio.gather(*(pairs(w) for w in range(load.concurrency)))
    elif load.rate is not None:
        await open_loop()
    else:
        await asyncio.gather(*(closed(w) for w in range(load.concurrency)))
    return rec.result(await meter)


def _client_main(
    load: Load, index: int, cpus: list[int] | None, ready: Any, go: MpEvent, go_at: Any, results: Any
) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)

    async def main() -> LoadResult:
        async with grpc.aio.insecure_channel(load.address) as probe:
            await asyncio.wait_for(probe.channel_ready(), 30)
        ready.put(index)
        await asyncio.to_thread(go.wait)
        return await drive(load, index, go_at.value)

    try:
        results.put((index, asdict(asyncio.run(main()))))
    except BaseException as exc:
        results.put((index, {"error": f"{type(exc).__name__}: {exc}"}))
        raise


@dataclass
class Measured:
    result: LoadResult
    cpu: Cpu | None
    connections: DbConnections | None = None
    attempts: int = 1
    host_loop_ms: float = 0.0  # loop_ms() just before the run, on the idle machine
    host_loop_ms_after: float = 0.0  # and just after it
    slow_host: bool = False  # the host ran us markedly slower than at its fastest in this bench
    turn_cpu: list[tuple[float, float]] = field(
        default_factory=list
    )  # a mix: (server, postgres) cores per scenario

    @property
    def noise(self) -> float:
        return self.cpu.noise if self.cpu is not None else 0.0

    def summary(self) -> dict[str, Any]:
        r = self.result
        out: dict[str, Any] = {
            "rps": round(r.rps, 1),
            "ok": r.ok,
            "errors": r.errors,
            "duration_s": r.duration,
            "client_processes": r.processes,
            "p50_ms": round(percentile(r.latencies_ms, 0.50), 3),
            "p99_ms": round(percentile(r.latencies_ms, 0.99), 3),
            "p999_ms": round(percentile(r.latencies_ms, 0.999), 3),
            "max_ms": round(max(r.latencies_ms, default=0.0), 3),
        }
        if r.lag_ms:
            out["send_lag_p99_ms"] = round(percentile(r.lag_ms, 0.99), 3)
        if self.cpu is not None:
            out["cpu_cores"] = asdict(self.cpu)
            if self.cpu.server > 0:
                out["rps_per_server_core"] = round(r.rps / self.cpu.server, 1)
        if self.connections is not None:
            out["db_connections"] = asdict(self.connections)
        if self.host_loop_ms:
            out["host_loop_ms"] = self.host_loop_ms
            out["host_loop_ms_after"] = self.host_loop_ms_after
        return out

    def summaries(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """One summary per scenario of the run. In a mix, each scenario has
        its own throughput, latencies and server/PostgreSQL CPU (``TurnCpu``);
        the whole run's CPU and connections are under ``run``."""
        if not self.result.kinds:
            return {names[0]: self.summary()}
        out: dict[str, dict[str, Any]] = {}
        whole = self.summary()
        for kind, (name, result) in enumerate(zip(names, self.result.kinds, strict=True)):
            summary = Measured(result, None).summary()
            if self.turn_cpu:
                server, postgres = self.turn_cpu[kind]
                summary["cpu_cores"] = {"server": server, "postgres": postgres}
                if server > 0:
                    summary["rps_per_server_core"] = round(result.rps / server, 1)
            summary["mix"] = list(names)
            summary["run"] = {
                k: v
                for k, v in whole.items()
                if k in ("cpu_cores", "db_connections", "host_loop_ms", "host_loop_ms_after")
            }
            out[name] = summary
        return out


@dataclass
class DbConnections:
    """The service role's connections, sampled every 50 ms over a window."""

    busy_mean: float  # in a transaction (active or idle in transaction)
    busy_max: int
    open_max: int  # pooled connections plus the LISTEN connection(s)


class ConnectionSampler:
    QUERY = """SELECT count(*) FILTER (WHERE state IN ('active', 'idle in transaction')),
                      count(*)
               FROM pg_stat_activity WHERE usename = 'authz_service'"""

    def __init__(self, dsn: str) -> None:
        self.dsn, self.samples = dsn, list[tuple[int, int]]()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while not self.stopping.is_set():
                row = await conn.fetchrow(self.QUERY)
                assert row is not None
                self.samples.append((row[0], row[1]))
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    def stop(self) -> DbConnections | None:
        self.stopping.set()
        self.thread.join(timeout=5)
        if not self.samples:
            return None
        busy = [b for b, _ in self.samples]
        return DbConnections(round(sum(busy) / len(busy), 2), max(busy), max(n for _, n in self.samples))


def run_load(
    load: Load,
    processes: int,
    cpus: list[int] | None,
    *,
    server_pids: Callable[[], list[int]] = list,
    postgres_pid: int | None = None,
    db_dsn: str | None = None,
) -> Measured:
    """``load`` from ``processes`` client processes (spawned, pinned to
    ``cpus``), started together; CPU use (and with ``db_dsn``, the service's
    database connections) sampled over the measured window."""
    ctx = multiprocessing.get_context("spawn")
    ready, results, go, go_at = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    procs = [
        ctx.Process(target=_client_main, args=(load, i, cpus, ready, go, go_at, results), daemon=True)
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=60)
        go_at.value = time.monotonic() + 0.05
        go.set()
        schedule = Schedule.of(load, go_at.value)
        windows = [schedule.windows(k) for k in range(schedule.kinds)]
        turns = TurnCpu(windows, server_pids, postgres_pid) if schedule.kinds > 1 else None
        time.sleep(max(0.0, schedule.start - time.monotonic()))
        window = CpuWindow(server_pids, postgres_pid)
        sampler = ConnectionSampler(db_dsn) if db_dsn else None
        time.sleep(max(0.0, schedule.end - time.monotonic()))
        window.stop()
        connections = sampler.stop() if sampler else None
        parts: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + load.timeout + 30
        while len(parts) < processes:
            index, payload = results.get(timeout=max(1.0, deadline - time.monotonic()))
            parts[index] = payload
        failed = [p["error"] for p in parts.values() if "error" in p]
        if failed:
            raise RuntimeError(f"load generator failed: {failed[0]}")
        merged = LoadResult.merge([LoadResult.from_dict(p) for p in parts.values()])
        measured = Measured(merged, window.result(merged.cpu_seconds), connections)
        measured.turn_cpu = turns.result() if turns else []
        return measured
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
