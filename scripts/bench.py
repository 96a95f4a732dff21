"""``make bench``: a reproducible benchmark of the service on this machine.

What it does (docs/performance.md explains the method and the latest figures):

1. starts the embedded PostgreSQL in a temporary AUTHZ_HOME and migrates it;
2. loads a data set as the schema owner, with COPY: one tenant with 1,000
   allowlisted users (the small run), later 999 more tenants with 1,000 users
   each (1,000,000 subjects, the scale run);
3. runs the real server (``start_server``) in its own process pinned to one
   core, plus a bench-only ``authz.bench.Bench/Empty`` method declared with
   the same ``@rpc`` decorator as CheckUser (authentication, role check,
   trace id, error mapping): the empty RPC is the physical limit of this
   server stack, and every figure is compared with it;
4. drives it with multi-process grpc.aio clients pinned to the other core(s):
   pre-serialised requests, raw-bytes calls, many calls in flight; scenarios
   that are compared take turns of a second in one run (``Schedule``), so a
   host whose speed drifts cannot skew their ratios;
5. accounts for the CPU of every party over each window (server, PostgreSQL,
   clients, foreign processes) from /proc, samples the service's database
   connections, and repeats a run that another workload disturbed;
6. prints ``bench <name> <value> <unit>`` and ``ratio <name> <value>`` lines on
   stdout, progress on stderr, and writes a JSON report (``--report``).

Scenarios: empty RPC; CheckUser for an allowlisted user (the cached path when
the service caches); CheckUser with ``consistent=true`` (forced database
read); EvaluateSend; RequestPairing + ResolveApproval pairs; CheckUser latency
at half its peak (open loop); CheckUser on 1,000,000 subjects; and ``authz
serve --workers 1`` vs ``--workers 2`` when the CLI offers ``--workers``.

Only the virtualenv is needed. Usage::

    .venv/bin/python scripts/bench.py [--quick] [--duration S] [--skip-scale] [--skip-workers] [--report PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf import empty_pb2

from authz_service.api.rpc import Runtime, rpc
from authz_service.config import Settings
from authz_service.domain import policy as policy_codec
from authz_service.domain.model import ChannelPolicy, DmPolicy, Platform, Role, SendDefault, SendPolicy
from authz_service.flows import Context
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.server import RunningServer
from authz_service.store.db import Database

# --- the bench-only servicer -----------------------------------------------------

BENCH_SERVICE = "authz.bench.Bench"
EMPTY = f"/{BENCH_SERVICE}/Empty"
CHECK_USER = "/authz.v1.AuthzService/CheckUser"
EVALUATE_SEND = "/authz.v1.AuthzService/EvaluateSend"
REQUEST_PAIRING = "/authz.v1.AuthzService/RequestPairing"
RESOLVE_APPROVAL = "/authz.v1.AuthzService/ResolveApproval"


class BenchServicer:
    """The empty RPC: declared exactly as CheckUser is (keep them in step), no work."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @rpc(Role.CONNECTOR, Role.AGENT, read_only=True)
    async def Empty(self, request: empty_pb2.Empty, ctx: Context) -> empty_pb2.Empty:
        return empty_pb2.Empty()


def bench_handler(runtime: Runtime) -> grpc.GenericRpcHandler[Any, Any]:
    servicer = BenchServicer(runtime)
    return grpc.method_handlers_generic_handler(
        BENCH_SERVICE,
        {
            "Empty": grpc.unary_unary_rpc_method_handler(
                servicer.Empty,
                request_deserializer=empty_pb2.Empty.FromString,
                response_serializer=empty_pb2.Empty.SerializeToString,
            )
        },
    )


async def start_bench_server(
    db: Database, settings: Settings, listen: str, telemetry: Any = None
) -> RunningServer:
    """``start_server`` plus the bench servicer, sharing the server's own
    ``Runtime`` (its cache, gate, keyring and telemetry): the runtime is picked
    up as start_server hands it to the AuthzServicer, so nothing in the
    product changes for the bench."""
    from authz_service import server as server_module
    from authz_service.api.authz import AuthzServicer

    captured: list[Runtime] = []

    def capture(runtime: Runtime) -> AuthzServicer:
        captured.append(runtime)
        return AuthzServicer(runtime)

    names = vars(server_module)
    names["AuthzServicer"] = capture
    try:
        running = await server_module.start_server(db, settings, listen=listen, telemetry=telemetry)
    finally:
        names["AuthzServicer"] = AuthzServicer
    if len(captured) != 1:
        await running.stop(grace=0)
        raise RuntimeError("could not find the server's Runtime: start_server changed shape")
    # Handlers are looked up per call, so adding one to a started server works.
    running.server.add_generic_rpc_handlers((bench_handler(captured[0]),))
    return running


# --- the data set ------------------------------------------------------------------

MAIN_TENANT = "bench-0000"
CHANNEL = "tg"
AGENT = "default"
SEND_TARGET = "telegram:100"
OWNER = "1000"
USER_BASE = 10_000_000
# Decided pairing requests already on the pairing channels when the bench starts:
# a database in service has history, and its statistics (ANALYZE) show it. On
# empty tables PostgreSQL plans every lookup as if any index would do, and the
# plans it caches then stay until autovacuum's first ANALYZE (a minute or more).
PAIRING_HISTORY = 20_000
HISTORY_USER_BASE = 90_000_000


def tenant_name(i: int) -> str:
    return f"bench-{i:04d}"


def user_name(i: int) -> str:
    return str(USER_BASE + i)


def new_api_key(tenant_id: str) -> tuple[str, str, bytes]:
    """(key id, full key, stored hash), exactly as authz_service.flows.auth makes them."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    key_id = "".join(secrets.choice(alphabet) for _ in range(12))
    secret = secrets.token_urlsafe(32)
    return key_id, f"azk.{tenant_id}.{key_id}.{secret}", hashlib.sha256(secret.encode()).digest()


def _policy_json(**kwargs: Any) -> str:
    policy = policy_codec.validate(Platform.TELEGRAM, ChannelPolicy(**kwargs))
    return json.dumps(policy_codec.to_json(policy))


@dataclass
class DataSet:
    connector_keys: dict[str, str] = field(default_factory=dict)  # tenant -> connector key
    approver_key: str = ""
    pair_channels: list[str] = field(default_factory=list)
    tenants: int = 0
    users_per_tenant: int = 0

    @property
    def subjects(self) -> int:
        return self.tenants * self.users_per_tenant


async def load_tenants(
    owner_dsn: str, data: DataSet, first: int, count: int, users_per_tenant: int, pair_channels: int = 0
) -> None:
    """Tenants ``first``..``first+count-1``, each with a connector key, channel
    ``tg`` and ``users_per_tenant`` allowlisted subjects, loaded with COPY as
    the owner (a superuser: row-level security does not apply to it)."""
    channel_policy = _policy_json(
        dm_policy=DmPolicy.PAIRING,
        owner_id=OWNER,
        send_policy=SendPolicy(default=SendDefault.DENY, allow=(SEND_TARGET,)),
    )
    pairing_policy = _policy_json(dm_policy=DmPolicy.PAIRING, owner_id=OWNER, max_pending=10_000)
    tenants = [tenant_name(i) for i in range(first, first + count)]
    keys: list[tuple[str, str, str, str, bytes]] = []
    for t in tenants:
        key_id, key, digest = new_api_key(t)
        keys.append((t, key_id, "connector", "bench", digest))
        data.connector_keys[t] = key
    channels = [(t, CHANNEL, "telegram", channel_policy) for t in tenants]
    if pair_channels:
        key_id, key, digest = new_api_key(tenants[0])
        keys.append((tenants[0], key_id, "approver", "bench", digest))
        data.approver_key = key
        data.pair_channels = [f"pair-{j:03d}" for j in range(pair_channels)]
        channels += [(tenants[0], c, "telegram", pairing_policy) for c in data.pair_channels]

    def subjects() -> Iterator[tuple[str, str, str, str, str]]:
        for t in tenants:
            for u in range(users_per_tenant):
                yield (t, CHANNEL, user_name(u), "allowed", "admin")

    def history() -> Iterator[tuple[object, ...]]:
        """Decided (approved) pairing requests, spread over the pairing channels."""
        at = datetime.now(UTC) - timedelta(days=1)
        for j in range(PAIRING_HISTORY if pair_channels else 0):
            user = str(HISTORY_USER_BASE + j)
            yield (
                tenants[0], f"apr_bench{j:08d}", "pairing", data.pair_channels[j % pair_channels], user, "Bench",
                secrets.token_bytes(32), "approved", at, at + timedelta(minutes=5), at, f"telegram:{OWNER}",
                [f"telegram:{OWNER}"],
            )  # fmt: skip

    conn = await asyncpg.connect(owner_dsn)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "tenants", records=[(t, "bench") for t in tenants], columns=["tenant_id", "display_name"]
            )
            await conn.copy_records_to_table(
                "api_keys", records=keys, columns=["tenant_id", "key_id", "role", "name", "secret_hash"]
            )
            await conn.copy_records_to_table(
                "channels", records=channels, columns=["tenant_id", "channel_id", "platform", "policy"]
            )
            await conn.copy_records_to_table(
                "subjects",
                records=subjects(),
                columns=["tenant_id", "channel_id", "user_id", "status", "source"],
            )
            await conn.copy_records_to_table(
                "approvals",
                records=history(),
                columns=[
                    "tenant_id", "approval_id", "kind", "channel_id", "user_id", "display_name", "code_hash",
                    "status", "created_at", "expires_at", "resolved_at", "resolved_by", "approved_by",
                ],
            )  # fmt: skip
    finally:
        await conn.close()
    data.tenants = max(data.tenants, first + count)
    data.users_per_tenant = users_per_tenant


async def settle(owner_dsn: str) -> None:
    """After a bulk load: statistics, hint bits and a checkpoint now, not
    during a measurement."""
    conn = await asyncpg.connect(owner_dsn)
    try:
        for table in ("tenants", "api_keys", "channels", "subjects", "approvals"):
            await conn.execute(f"VACUUM (ANALYZE) {table}")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


# --- load generator --------------------------------------------------------------

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
class Cpu:
    """Where the CPU went during a window, in cores (1.0 = one core busy)."""

    server: float
    postgres: float
    clients: float
    kernel: float  # kernel threads, e.g. loopback networking deferred to ksoftirqd
    foreign: float  # every other process: another workload on the machine disturbs the figures
    unaccounted: float  # busy time of no process (interrupts, loopback networking, processes gone meanwhile)
    per_core: dict[int, float]

    @property
    def noise(self) -> float:
        """Cores used by no party of the bench: foreign processes, and
        unaccounted time (mostly processes that came and went meanwhile)."""
        return self.foreign + self.unaccounted

    def disturbed(self, strict: bool) -> bool:
        """Whether another workload may have taken CPU from the run: it used
        0.1 cores or more, and (unless ``strict``, for latency runs, where
        any contention shows) the machine had no idle core time left for it."""
        if self.noise < 0.1:
            return False
        return strict or len(self.per_core) - sum(self.per_core.values()) < self.noise


@dataclass(frozen=True)
class Proc:
    ppid: int
    ticks: int  # utime + stime


def processes() -> dict[int, Proc]:
    """Every process on the machine, from /proc."""
    out: dict[int, Proc] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                out[int(entry)] = Proc(int(fields[1]), int(fields[11]) + int(fields[12]))
    return out


def descendants(procs: dict[int, Proc], roots: Iterable[int]) -> set[int]:
    """``roots`` (those alive) and every process below them."""
    children: dict[int, list[int]] = {}
    for pid, proc in procs.items():
        children.setdefault(proc.ppid, []).append(pid)
    found: set[int] = set()
    todo = [r for r in roots if r in procs]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def tree_cpu_seconds(roots: Iterable[int]) -> float:
    """CPU seconds used so far by ``roots`` and all their descendants."""
    procs = processes()
    return sum(procs[p].ticks for p in descendants(procs, roots)) / os.sysconf("SC_CLK_TCK")


def core_ticks() -> dict[int, tuple[int, int]]:
    """Per core: (busy, total) jiffies since boot."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                v = [int(x) for x in values]
                idle = v[3] + (v[4] if len(v) > 4 else 0)
                out[int(name[3:])] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


class CpuWindow:
    """CPU use over a measurement window, by party: ``stop()`` at its end."""

    def __init__(self, server_pids: Callable[[], list[int]], postgres_pid: int | None) -> None:
        self.server_pids, self.postgres_pid = server_pids, postgres_pid
        self.t = time.monotonic()
        self.procs = processes()
        self.cores = core_ticks()
        self.end: tuple[float, dict[int, Proc], dict[int, tuple[int, int]], list[int]] | None = None

    def stop(self) -> None:
        self.end = (time.monotonic(), processes(), core_ticks(), self.server_pids())

    def result(self, client_cpu_seconds: float) -> Cpu:
        if self.end is None:
            self.stop()
        assert self.end is not None
        t, procs, cores, server_pids = self.end
        dt = (t - self.t) * os.sysconf("SC_CLK_TCK")
        before = self.procs

        def used(pids: Iterable[int]) -> float:
            # A process born in the window used all its time in it.
            return sum(procs[p].ticks - before.get(p, Proc(0, 0)).ticks for p in pids) / dt

        server = descendants(procs, server_pids)
        postgres = descendants(procs, [self.postgres_pid] if self.postgres_pid else [])
        mine = descendants(procs, [os.getpid()])  # the server, the clients, this process
        kernel = {pid for pid, p in procs.items() if pid == 2 or p.ppid == 2}
        foreign = set(procs) - mine - postgres - kernel
        per_core = {
            c: (cores[c][0] - b) / max(1, cores[c][1] - t) for c, (b, t) in self.cores.items() if c in cores
        }
        return Cpu(
            server=round(used(server), 3),
            postgres=round(used(postgres), 3),
            clients=round(client_cpu_seconds * os.sysconf("SC_CLK_TCK") / dt, 3),
            kernel=round(used(kernel), 3),
            foreign=round(used(foreign), 3),
            unaccounted=round(max(0.0, sum(per_core.values()) - used(procs)), 3),
            per_core={c: round(v, 3) for c, v in per_core.items()},
        )


def machine_busy(interval: float = 0.5) -> float:
    """Cores busy over ``interval`` seconds, all processes together."""
    before = core_ticks()
    time.sleep(interval)
    after = core_ticks()
    return sum((after[c][0] - b) / max(1, after[c][1] - t) for c, (b, t) in before.items() if c in after)


def quiesce(limit: float = 15.0, idle: float = 0.15) -> tuple[float, float]:
    """Wait until the machine is idle (under ``idle`` cores busy over half a
    second): the server done digesting a bulk load's change notifications,
    the last scenario's processes gone. At most ``limit`` seconds. Returns
    (seconds waited, cores busy at the end)."""
    started = time.monotonic()
    busy = machine_busy()
    while busy >= idle and time.monotonic() - started < limit:
        busy = machine_busy()
    return time.monotonic() - started, busy


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


class TurnCpu:
    """A mix's CPU by scenario: the server's and PostgreSQL's (with backends
    the pool opens meanwhile) over each measured window of each scenario, read
    by a thread at the windows' edges."""

    def __init__(
        self, schedule: Schedule, server_pids: Callable[[], list[int]], postgres_pid: int | None
    ) -> None:
        self.schedule, self.server_pids, self.postgres_pid = schedule, server_pids, postgres_pid
        self.ticks = [[0, 0] for _ in range(schedule.kinds)]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        edges = sorted((w, k) for k in range(self.schedule.kinds) for w in self.schedule.windows(k))
        for (begin, end), kind in edges:
            time.sleep(max(0.0, begin - time.monotonic()))
            before = processes()
            time.sleep(max(0.0, end - time.monotonic()))
            after = processes()
            roots = (self.server_pids(), [self.postgres_pid] if self.postgres_pid else [])
            for i, pids in enumerate(roots):
                self.ticks[kind][i] += sum(
                    after[p].ticks - before.get(p, Proc(0, 0)).ticks for p in descendants(after, pids)
                )

    def result(self) -> list[tuple[float, float]]:
        """Per scenario: (server cores, PostgreSQL cores)."""
        self.thread.join(timeout=5)
        hz = os.sysconf("SC_CLK_TCK")
        out = []
        for kind, (server, postgres) in enumerate(self.ticks):
            seconds = max(1e-9, self.schedule.measured(kind)) * hz
            out.append((round(server / seconds, 3), round(postgres / seconds, 3)))
        return out


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
        turns = TurnCpu(schedule, server_pids, postgres_pid) if schedule.kinds > 1 else None
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


# --- requests ----------------------------------------------------------------------


def check_user_calls(
    pairs: Sequence[tuple[str, str]], keys: dict[str, str], consistent: bool
) -> tuple[Call, ...]:
    """One pre-serialised CheckUser per (tenant, user) of ``pairs``."""
    metadata = {t: bearer(k) for t, k in keys.items()}
    return tuple(
        Call(
            CHECK_USER,
            az.CheckUserRequest(
                channel_id=CHANNEL,
                user_id=user,
                chat_kind=cm.CHAT_KIND_DIRECT,
                text="hello",
                consistent=consistent,
            ).SerializeToString(),
            metadata[tenant],
        )
        for tenant, user in pairs
    )


def evaluate_send_calls(key: str) -> tuple[Call, ...]:
    request = az.EvaluateSendRequest(
        channel_id=CHANNEL, agent_id=AGENT, session_id="s1", origin="telegram:1", target=SEND_TARGET
    )
    return (Call(EVALUATE_SEND, request.SerializeToString(), bearer(key)),)


def empty_calls(key: str) -> tuple[Call, ...]:
    return (Call(EMPTY, b"", bearer(key)),)


# --- report ------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    name: str
    value: float | None  # None: skipped
    unit: str = ""


@dataclass(frozen=True)
class Ratio:
    name: str
    value: float


def _number(value: float, unit: str) -> str:
    if unit in ("rps", "pairs/s"):
        return f"{value:.0f}"
    if unit == "ms":
        return f"{value:.2f}"
    return f"{value:.4g}"


def format_lines(figures: Sequence[Figure], ratios: Sequence[Ratio]) -> list[str]:
    """``bench <name> <value> <unit>`` (``bench <name> skipped``) and ``ratio <name> <value>``."""
    lines = [
        f"bench {f.name} skipped"
        if f.value is None
        else f"bench {f.name} {_number(f.value, f.unit)} {f.unit}"
        for f in figures
    ]
    lines += [f"ratio {r.name} {r.value:.2f}" for r in ratios]
    return lines


def ratio(name: str, numerator: float | None, denominator: float | None) -> Ratio | None:
    if numerator is None or not denominator:
        return None
    return Ratio(name, numerator / denominator)


TARGETS = {
    "checkuser_cached_vs_empty": 0.8,
    "checkuser_cold_vs_empty": 0.5,
    "evaluatesend_vs_empty": 0.8,
    "checkuser_1m_vs_1k": 0.9,
}


def build_report(
    figures: Sequence[Figure], ratios: Sequence[Ratio], scenarios: dict[str, Any], meta: dict[str, Any]
) -> dict[str, Any]:
    targets: dict[str, Any] = {
        name: {"target": f">= {goal}", "met": next((r.value >= goal for r in ratios if r.name == name), None)}
        for name, goal in TARGETS.items()
    }
    pairs = next((f.value for f in figures if f.name == "pairing_pairs"), None)
    targets["pairing_pairs"] = {"target": ">= 500 pairs/s", "met": None if pairs is None else pairs >= 500}
    p99 = next((f.value for f in figures if f.name == "checkuser_p99_half_peak"), None)
    targets["checkuser_p99_half_peak"] = {"target": "< 5 ms", "met": None if p99 is None else p99 < 5.0}
    return {
        **meta,
        "figures": [asdict(f) for f in figures],
        "ratios": {r.name: round(r.value, 4) for r in ratios},
        "targets": targets,
        "scenarios": scenarios,
        "lines": format_lines(figures, ratios),
    }


# --- processes: the bench server, the CLI server, PostgreSQL ----------------------


@dataclass(frozen=True)
class ServerSpec:
    dsn: str
    secret_key: str
    operator_key: str
    home: str
    log_path: str
    cpus: list[int] | None


def server_env(spec: ServerSpec) -> dict[str, str]:
    """The service's AUTHZ_* settings: the bench's, plus AUTHZ_DB_* (pool
    tuning) and AUTHZ_TELEMETRY from the caller's environment; nothing else."""
    passed = {k: v for k, v in os.environ.items() if k.startswith("AUTHZ_DB_") or k == "AUTHZ_TELEMETRY"}
    return {
        **passed,
        "AUTHZ_DATABASE_URL": spec.dsn,
        "AUTHZ_SECRET_KEY": spec.secret_key,
        "AUTHZ_OPERATOR_KEY": spec.operator_key,
        "AUTHZ_HOME": spec.home,
    }


def _settings(spec: ServerSpec) -> Settings:
    return Settings.from_env(server_env(spec))


def _server_main(spec: ServerSpec, ports: Any) -> None:
    """The bench server process: the same start-up as ``authz serve`` (logging,
    pool, telemetry setting), on a free port, plus the bench servicer."""
    if spec.cpus:
        os.sched_setaffinity(0, spec.cpus)
    log = os.open(spec.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 2)
    from authz_service.logs import setup_logging
    from authz_service.telemetry import from_settings

    setup_logging()

    async def main() -> None:
        settings = _settings(spec)
        db = await Database.connect(
            spec.dsn, min_size=settings.pool_min, max_size=settings.pool_max, timeout=settings.db_timeout
        )
        running = await start_bench_server(db, settings, "127.0.0.1:0", from_settings(settings))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ports.put(running.port)
        await stop.wait()
        await running.stop(grace=1)

    asyncio.run(main())


class BenchServer:
    def __init__(self, spec: ServerSpec) -> None:
        ctx = multiprocessing.get_context("spawn")
        ports = ctx.Queue()
        self.process = ctx.Process(target=_server_main, args=(spec, ports), daemon=True)
        self.process.start()
        self.log_path = spec.log_path
        try:
            self.port: int = ports.get(timeout=60)
        except Exception:
            self.stop()
            raise RuntimeError(f"the bench server did not start; see {spec.log_path}") from None
        self.address = f"127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process.pid else []

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=15)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cli_supports_workers() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "authz_service.cli.main", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return "--workers" in out.stdout


class CliServer:
    """``authz serve --workers N`` on a free port, in its own process group."""

    def __init__(self, spec: ServerSpec, workers: int) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
        env.update(server_env(spec), AUTHZ_LISTEN=self.address)
        cpus = spec.cpus
        self.log_path = spec.log_path
        with open(spec.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "authz_service.cli.main", "serve", "--workers", str(workers)],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=None if cpus is None else (lambda: os.sched_setaffinity(0, cpus)),
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + 90
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"authz serve exited with {self.process.returncode}; see {self.log_path}"
                    )
                with contextlib.suppress(grpc.RpcError):
                    resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                time.sleep(0.2)
        raise RuntimeError(f"authz serve did not become ready; see {self.log_path}")

    def pids(self) -> list[int]:
        return [self.process.pid]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # our own session: stragglers of this server only
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


async def postgres_settings(dsn: str) -> dict[str, str]:
    names = ("server_version", "max_connections", "shared_buffers", "synchronous_commit", "fsync")
    conn = await asyncpg.connect(dsn)
    try:
        return {n: str(await conn.fetchval(f"SHOW {n}")) for n in names}
    finally:
        await conn.close()


def postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# --- the run -----------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Options:
    duration: float
    warmup: float
    processes: int
    concurrency: int
    connections: int
    scale_tenants: int
    users: int
    skip_scale: bool
    skip_workers: bool
    keep: bool
    report: Path
    quick: bool


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--duration", type=float, help="measured seconds per scenario (default 8; --quick: 2)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per run (default 2; --quick: 0.5)")
    p.add_argument(
        "--rounds", type=int, help="runs per compared scenario, interleaved (default 3; --quick: 1)"
    )
    p.add_argument("--quick", action="store_true", help="short runs and a 100-tenant scale set: a smoke test")
    p.add_argument("--skip-scale", action="store_true", help="skip the 1,000,000-subject run")
    p.add_argument("--skip-workers", action="store_true", help="skip authz serve --workers 1 vs 2")
    p.add_argument("--processes", type=int, default=2, help="load-generator processes (default 2)")
    p.add_argument("--concurrency", type=int, default=32, help="calls in flight per process (default 32)")
    p.add_argument("--connections", type=int, default=8, help="connections per process (default 8)")
    p.add_argument("--tenants", type=int, help="tenants in the scale run (default 1000; --quick: 100)")
    p.add_argument("--users", type=int, default=1000, help="allowlisted users per tenant (default 1000)")
    p.add_argument("--report", type=Path, default=Path("bench-report.json"), help="JSON report path")
    p.add_argument(
        "--keep", action="store_true", help="keep the temporary AUTHZ_HOME (database, server logs)"
    )
    a = p.parse_args(argv)
    return Options(
        duration=a.duration or (2.0 if a.quick else 8.0),
        warmup=a.warmup if a.warmup is not None else (0.5 if a.quick else 2.0),
        processes=max(1, a.processes),
        concurrency=max(1, a.concurrency),
        connections=max(1, a.connections),
        scale_tenants=max(1, a.tenants or (100 if a.quick else 1000)),
        users=max(1, a.users),
        skip_scale=a.skip_scale,
        skip_workers=a.skip_workers,
        keep=a.keep,
        report=a.report,
        quick=a.quick,
    )


async def preflight(address: str, calls: Sequence[Call], check: Callable[[bytes], str | None]) -> None:
    """The first calls of a scenario, checked before it is measured."""
    async with grpc.aio.insecure_channel(address) as channel:
        for call in calls[:3]:
            raw = await channel.unary_unary(call.method, None, None)(
                call.request, metadata=call.metadata, timeout=10
            )
            problem = check(raw)
            if problem:
                raise RuntimeError(f"preflight of {call.method} failed: {problem}")


def expect_ok(raw: bytes) -> str | None:
    return None


def expect_allow(raw: bytes) -> str | None:
    resp = az.CheckUserResponse.FromString(raw)
    if resp.decision != az.DECISION_ALLOW:
        return f"decision {az.Decision.Name(resp.decision)} ({resp.reason})"
    return None


def expect_send(raw: bytes) -> str | None:
    resp = az.EvaluateSendResponse.FromString(raw)
    return None if resp.allow else f"denied: {resp.reason}"


def product_has_cache() -> bool:
    """Whether this build has the hot path's cache (informational)."""
    import authz_service

    return (Path(authz_service.__file__).parent / "cache.py").exists()


def loop_ms() -> float:
    """Milliseconds for a fixed pure-Python loop, best of three: how fast the
    host runs us right now (a VM's neighbours change it)."""
    best = math.inf
    for _ in range(3):
        t, total = time.perf_counter(), 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - t)
    return round(best * 1000, 1)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


@dataclass(frozen=True)
class Run:
    """One run: its load (one scenario, or a mix of them taking turns), the
    scenarios' names, whose CPU is the server's, where the clients run."""

    names: tuple[str, ...]
    load: Load
    pids: Callable[[], list[int]]
    cpus: list[int] | None
    processes: int | None = None  # None: --processes


RETRY_BUDGET_S = 300  # no re-runs of disturbed scenarios after this long: stay under 10 minutes
SLOW_HOST = 1.3  # a run whose host loop took this many times the bench's fastest is repeated


class Bench:
    """One run: the database, the data set, the scenarios, the results."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.started = time.monotonic()
        self.all_cpus = sorted(os.sched_getaffinity(0))
        self.server_cpus: list[int] | None = self.all_cpus[:1] if len(self.all_cpus) > 1 else None
        self.client_cpus: list[int] | None = self.all_cpus[1:] if len(self.all_cpus) > 1 else None
        self.home = Path(tempfile.mkdtemp(prefix="authz-bench-"))
        self.data = DataSet()
        self.rng = random.Random(6)  # noqa: S311 - a reproducible sample, not a secret
        self.scenarios: dict[str, Any] = {}
        self.figures: list[Figure] = []
        self.ratios: list[Ratio] = []
        self.values: dict[str, float] = {}
        self.notes: dict[str, str] = {}
        self.pg_pid: int | None = None
        self.owner_dsn = ""
        self.pg_settings: dict[str, str] = {}
        self.log_summary: dict[str, Any] = {}
        self.speed: dict[str, float] = {}
        self.loops: list[float] = []  # loop_ms() before and after every run
        self.spec: ServerSpec | None = None
        self.nonce = self.rng.randrange(100, 800)  # pairing user ids: unique across runs on one database

    # -- set-up --------------------------------------------------------------------

    def start_database(self) -> None:
        from authz_service.store import embedded
        from authz_service.store.migrate import migrate

        log(f"starting embedded PostgreSQL in {self.home}")
        emb = embedded.start(self.home)  # before any pinning: PostgreSQL may use every core
        asyncio.run(embedded.ensure_database(emb))
        asyncio.run(migrate(emb.owner_dsn))
        self.pg_pid = postmaster_pid(self.home / "pgdata")
        self.owner_dsn = emb.owner_dsn
        self.pg_settings = asyncio.run(postgres_settings(self.owner_dsn))
        self.spec = ServerSpec(
            dsn=emb.service_dsn,
            secret_key=secrets.token_urlsafe(32),
            operator_key=secrets.token_urlsafe(32),
            home=str(self.home),
            log_path=str(self.home / "server.log"),
            cpus=self.server_cpus,
        )
        if self.client_cpus:
            os.sched_setaffinity(0, self.client_cpus)  # this process only coordinates
        self.loops.append(loop_ms())

    def load_small(self) -> None:
        t = time.monotonic()
        channels = self.opts.processes * self.opts.concurrency
        asyncio.run(load_tenants(self.owner_dsn, self.data, 0, 1, self.opts.users, pair_channels=channels))
        asyncio.run(settle(self.owner_dsn))
        log(f"small data set: 1 tenant, {self.opts.users:,} users ({time.monotonic() - t:.1f} s)")

    def load_scale(self) -> None:
        t = time.monotonic()
        for first in range(1, self.opts.scale_tenants, 100):
            count = min(100, self.opts.scale_tenants - first)
            asyncio.run(load_tenants(self.owner_dsn, self.data, first, count, self.opts.users))
            log(f"  loaded tenants {first}..{first + count - 1}")
        asyncio.run(settle(self.owner_dsn))
        log(f"scale data set: {self.data.tenants:,} tenants, {self.data.subjects:,} subjects "
            f"({time.monotonic() - t:.1f} s)")  # fmt: skip

    # -- measuring -----------------------------------------------------------------

    def load(self, address: str, *mix: tuple[Call, ...], **kw: Any) -> Load:
        """The load of one run; several scenarios take turns (``Schedule``):
        ``--duration`` measured seconds each, every one warmed up first."""
        o = self.opts
        phase, settle = (0.5, 0.15) if o.quick else (1.0, 0.2)
        duration, warmup = o.duration, o.warmup
        if len(mix) > 1:  # whole rounds of turns; two warm-up turns each (a cache fills in the first)
            duration = math.ceil(o.duration / (phase - settle)) * len(mix) * phase
            warmup = max(warmup, 2 * len(mix) * phase)
        load = Load(
            address,
            mix=mix,
            concurrency=o.concurrency,
            connections=o.connections,
            warmup=warmup,
            duration=duration,
            phase=phase,
            settle=settle,
        )
        return replace(load, **kw)

    def run_once(self, run: Run) -> Measured:
        """One measured run. On a shared machine, a single-scenario run that
        another workload disturbed (``Cpu.disturbed``), or that the host ran
        markedly slower than at its fastest in this bench (``SLOW_HOST``: the
        fixed loop before or after the run took that much longer; a VM's
        neighbours do this, invisibly from inside), is repeated, up to three
        runs; the least disturbed one counts. A mix is not repeated: its
        scenarios took turns, so a disturbance hit them alike."""
        o, load = self.opts, run.load
        processes = run.processes or o.processes
        name = "+".join(run.names)
        best: Measured | None = None
        best_disturbed = False
        for attempt in range(1, 2 if load.kinds > 1 else 4):
            # Past the retry budget, wait less for a busy machine: stay under 10 minutes.
            waited, busy = quiesce(15.0 if time.monotonic() - self.started < RETRY_BUDGET_S else 2.0)
            if busy >= 0.15:
                log(f"WARNING: the machine is busy before {name} ({busy:.2f} cores)")
            elif waited > 1:
                log(f"  waited {waited:.1f} s for the machine to go idle")
            if load.pairing is not None:  # fresh users for every run
                self.nonce += 1
                load = replace(load, pairing=replace(load.pairing, nonce=self.nonce))
            mode = (
                f"open loop at {load.rate * processes:.0f}/s"
                if load.rate
                else f"{load.concurrency} in flight"
            )
            turns = f" in turns of {load.phase:g} s" if load.kinds > 1 else ""
            log(f"{name}: {processes} processes x {load.connections} connections, {mode}, "
                f"{load.warmup:g} s warm-up + {load.duration:g} s{turns}")  # fmt: skip
            speed_before = loop_ms()
            m = run_load(
                load,
                processes,
                run.cpus,
                server_pids=run.pids,
                postgres_pid=self.pg_pid,
                db_dsn=self.owner_dsn,
            )
            speed_after = loop_ms()
            m.host_loop_ms, m.host_loop_ms_after = speed_before, speed_after
            m.slow_host = max(speed_before, speed_after) > SLOW_HOST * min(self.loops, default=speed_before)
            self.loops += [speed_before, speed_after]
            for scenario, s in m.summaries(run.names).items():
                line = f"  {scenario}: {s['rps']:.0f}/s  p50 {s['p50_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms"
                if "cpu_cores" in s:
                    line += f"  server {s['cpu_cores']['server']:.2f} postgres {s['cpu_cores']['postgres']:.2f} cores"
                log(line)
            if m.cpu is not None:
                c = m.cpu
                line = (f"  run: clients {c.clients:.2f} cores, other {c.noise:.2f}, "
                        f"idle {len(c.per_core) - sum(c.per_core.values()):.2f}")  # fmt: skip
                if m.connections is not None:
                    line += f", db busy {m.connections.busy_mean:.1f} (max {m.connections.busy_max})"
                log(line)
            if m.result.errors:
                raise RuntimeError(f"{name}: calls failed: {m.result.errors}")
            m.attempts = attempt
            disturbed = m.cpu is not None and m.cpu.disturbed(strict=load.rate is not None)
            if best is None or (disturbed, m.slow_host, m.noise) < (
                best_disturbed,
                best.slow_host,
                best.noise,
            ):
                best, best_disturbed = m, disturbed
            if not disturbed and not m.slow_host:
                break
            if disturbed:
                log(f"WARNING: {name} run {attempt} disturbed: other processes used {m.noise:.2f} cores")
            else:
                log(f"WARNING: {name} run {attempt} on a slow host: the fixed loop took "
                    f"{max(m.host_loop_ms, m.host_loop_ms_after):.0f} ms (fastest {min(self.loops):.0f} ms)")  # fmt: skip
            if time.monotonic() - self.started > RETRY_BUDGET_S:
                break
        assert best is not None
        return best

    def measure(self, run: Run) -> dict[str, LoadResult]:
        """One run, its scenarios recorded."""
        m = self.run_once(run)
        for name, summary in m.summaries(run.names).items():
            self.scenarios[name] = {**summary, "attempts": m.attempts}
        return dict(zip(run.names, m.result.per_kind(), strict=True))

    def alternate(self, runs: Sequence[Run], rounds: int) -> dict[str, LoadResult]:
        """Runs that cannot share a run (different servers), round after round
        (A B A B ...); the median run of each scenario counts."""
        done: dict[str, list[Measured]] = {r.names[0]: [] for r in runs}
        for i in range(rounds):
            if rounds > 1:
                log(f"round {i + 1} of {rounds}")
            for run in runs:
                done[run.names[0]].append(self.run_once(run))
        out: dict[str, LoadResult] = {}
        for name, measured in done.items():
            median = sorted(measured, key=lambda m: m.result.rps)[(len(measured) - 1) // 2]
            self.scenarios[name] = {
                **median.summary(),
                "runs_rps": [round(m.result.rps, 1) for m in measured],
                "attempts": sum(m.attempts for m in measured),
            }
            out[name] = median.result
        return out

    def figure(self, name: str, value: float | None, unit: str = "") -> None:
        self.figures.append(Figure(name, value, unit))
        if value is not None:
            self.values[name] = value

    def ratio(self, name: str, numerator: str, denominator: str) -> None:
        r = ratio(name, self.values.get(numerator), self.values.get(denominator))
        if r is not None:
            self.ratios.append(r)

    def check_user(self, pairs: Sequence[tuple[str, str]], consistent: bool) -> tuple[Call, ...]:
        return check_user_calls(pairs, self.data.connector_keys, consistent)

    # -- scenarios -----------------------------------------------------------------

    def on_bench_server(self) -> None:
        assert self.spec is not None
        o, rng = self.opts, self.rng
        server = BenchServer(self.spec)
        log(f"bench server on {server.address} (pid {server.process.pid}, cpus {self.server_cpus or 'all'})")
        at, key = server.address, self.data.connector_keys[MAIN_TENANT]

        def run(names: tuple[str, ...], load: Load, processes: int | None = None) -> Run:
            return Run(names, load, server.pids, self.client_cpus, processes)

        small = [(MAIN_TENANT, user_name(u)) for u in range(o.users)]
        rng.shuffle(small)
        try:
            cached, cold = self.check_user(small, False), self.check_user(small, True)
            empty, send = empty_calls(key), evaluate_send_calls(key)
            for calls, check in (
                (empty, expect_ok),
                (cached, expect_allow),
                (cold, expect_allow),
                (send, expect_send),
            ):
                asyncio.run(preflight(at, calls, check))
            # The four take turns in one run, so the ratios hold on a host whose speed drifts.
            names = ("empty_rpc", "checkuser_cached", "checkuser_cold", "evaluatesend")
            for name, result in self.measure(run(names, self.load(at, empty, cached, cold, send))).items():
                self.figure(name, result.rps, "rps")
            self.ratio("checkuser_cached_vs_empty", "checkuser_cached", "empty_rpc")
            self.ratio("checkuser_cold_vs_empty", "checkuser_cold", "empty_rpc")
            self.ratio("evaluatesend_vs_empty", "evaluatesend", "empty_rpc")

            pairing = Pairing(
                channels=tuple(self.data.pair_channels),
                connector=bearer(key),
                approver=bearer(self.data.approver_key),
            )
            pairs = self.measure(run(("pairing_pairs",), self.load(at, pairing=pairing)))["pairing_pairs"]
            self.figure("pairing_pairs", pairs.rps, "pairs/s")

            # One client process per client core: two on one core would add
            # their scheduling delays to the latencies measured.
            half, n = self.values["checkuser_cached"] / 2, len(self.client_cpus or [0])
            paced = self.measure(run(("checkuser_half_peak",), self.load(at, cached, rate=half / n), n))
            latencies = paced["checkuser_half_peak"].latencies_ms
            self.scenarios["checkuser_half_peak"]["offered_rps"] = round(half, 1)
            self.figure("checkuser_half_peak_rate", paced["checkuser_half_peak"].rps, "rps")
            self.figure("checkuser_p50_half_peak", percentile(latencies, 0.5), "ms")
            self.figure("checkuser_p99_half_peak", percentile(latencies, 0.99), "ms")

            if o.skip_scale:
                self.figure("checkuser_1m", None)
                return
            self.load_scale()
            # Cached path: as many distinct users as the small run (its working
            # set), one per tenant. Forced read: users drawn from all subjects,
            # so the database reads across the whole table. Each takes turns
            # with the small set in the same run.
            tenants = self.data.tenants
            working_set = [
                (tenant_name(i % tenants), user_name(rng.randrange(o.users))) for i in range(o.users)
            ]
            everywhere = [
                (tenant_name(rng.randrange(tenants)), user_name(rng.randrange(o.users)))
                for _ in range(50_000)
            ]
            scale_cached, scale_cold = self.check_user(working_set, False), self.check_user(everywhere, True)
            asyncio.run(preflight(at, scale_cached, expect_allow))
            asyncio.run(preflight(at, scale_cold, expect_allow))
            names = ("checkuser_1k", "checkuser_1m", "checkuser_cold_1k", "checkuser_cold_1m")
            mix = self.load(at, cached, scale_cached, cold, scale_cold)
            for name, result in self.measure(run(names, mix)).items():
                self.figure(name, result.rps, "rps")
                big = name.endswith("1m")
                self.scenarios[name].update(tenants=tenants if big else 1, subjects=self.data.subjects)
            self.scenarios["checkuser_1k"]["users_called"] = len(small)
            self.scenarios["checkuser_cold_1k"]["users_called"] = len(small)
            self.scenarios["checkuser_1m"]["users_called"] = len(working_set)
            self.scenarios["checkuser_cold_1m"]["users_called"] = len(everywhere)
            self.ratio("checkuser_1m_vs_1k", "checkuser_1m", "checkuser_1k")
            self.ratio("checkuser_cold_1m_vs_1k", "checkuser_cold_1m", "checkuser_cold_1k")
        finally:
            server.stop()

    def workers(self) -> None:
        """CheckUser (default path) against the real ``authz serve``, both
        servers up at once on their own ports, measured in alternating runs.
        One worker: pinned like the bench server, clients on the other
        core(s). Two workers: every core, shared with the clients and
        PostgreSQL."""
        assert self.spec is not None
        if self.opts.skip_workers:
            self.notes["workers"] = "skipped (--skip-workers)"
        elif not cli_supports_workers():
            self.notes["workers"] = "skipped: `authz serve --help` offers no --workers"
        if "workers" in self.notes:
            log(f"workers: {self.notes['workers']}")
            self.figure("workers_scaling", None)
            return
        small = [(MAIN_TENANT, user_name(u)) for u in range(self.opts.users)]
        calls = self.check_user(small, False)
        rounds = 1 if self.opts.quick else 3
        servers: list[CliServer] = []
        runs: list[Run] = []
        try:
            for workers, server_cpus, client_cpus in (
                (1, self.server_cpus, self.client_cpus),
                (2, self.all_cpus, self.all_cpus),
            ):
                name = f"workers_{workers}"
                log_path = str(self.home / f"{name}.log")
                cli = CliServer(
                    ServerSpec(**{**asdict(self.spec), "cpus": server_cpus, "log_path": log_path}), workers
                )
                servers.append(cli)
                log(f"authz serve --workers {workers} on {cli.address} (cpus {server_cpus or 'all'})")
                asyncio.run(preflight(cli.address, calls, expect_allow))
                load = self.load(cli.address, calls, duration=self.opts.duration / rounds * 1.5)
                runs.append(Run((name,), load, cli.pids, client_cpus))
            for name, result in self.alternate(runs, rounds).items():
                self.figure(name, result.rps, "rps")
        finally:
            for cli in servers:
                cli.stop()
        self.notes["workers"] = "measured"
        self.ratio("workers_2_vs_1", "workers_2", "workers_1")

    # -- report --------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        o = self.opts
        return {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "elapsed_s": round(time.monotonic() - self.started, 1),
            "quick": o.quick,
            "machine": {
                "cpus": len(self.all_cpus),
                "model": _cpu_model(),
                "kernel": platform.release(),
                "python": platform.python_version(),
                "grpc": grpc.__version__,
            },
            "placement": {
                "server_cpus": self.server_cpus,
                "client_cpus": self.client_cpus,
                "postgres": "unpinned",
                "workers_2": "server workers, clients and PostgreSQL share every core",
            },
            "config": {
                "duration_s": o.duration,
                "warmup_s": o.warmup,
                "client_processes": o.processes,
                "connections_per_process": o.connections,
                "in_flight_per_process": o.concurrency,
                "users_per_tenant": o.users,
                "scale_tenants": None if o.skip_scale else self.data.tenants,
                "scale_subjects": None if o.skip_scale else self.data.subjects,
                "pool_max": _settings(self.spec).pool_max if self.spec else None,
                "pairing_action": "APPROVE",
                "pairing_channels": len(self.data.pair_channels),
            },
            "postgres": self.pg_settings,
            "host_speed": self.speed,
            "product": {"checkuser_cache": product_has_cache()},
            "notes": self.notes,
        }

    def server_logs(self) -> dict[str, Any]:
        """Warnings and errors the servers logged: a cache that switched
        itself off, a listener that reconnected, an exception."""
        levels: Counter[str] = Counter()
        examples: list[str] = []
        for path in sorted(self.home.glob("*.log")):
            with contextlib.suppress(OSError):
                for line in path.read_text(errors="replace").splitlines():
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if not isinstance(record, dict) or record.get("level") not in (
                        "warning",
                        "error",
                        "critical",
                    ):
                        continue
                    levels[record["level"]] += 1
                    text = f"{path.stem}: {record['level']}: {record.get('msg', '')}"
                    if text not in examples and len(examples) < 10:
                        examples.append(text)
        for text in examples:
            log(f"server log: {text}")
        return {"by_level": dict(levels), "examples": examples}

    def finish(self) -> dict[str, Any]:
        self.log_summary = self.server_logs()
        if self.loops:
            best, worst = min(self.loops), max(self.loops)
            self.speed = {
                "loop_ms_best": best,
                "loop_ms_median": percentile(self.loops, 0.5),
                "loop_ms_worst": worst,
            }
            if worst > 1.25 * best:
                log(f"WARNING: the host's speed varied: a fixed loop took {best} to {worst} ms before the runs; "
                    "absolute figures are uncertain, ratios come from interleaved runs")  # fmt: skip
        report = build_report(
            self.figures, self.ratios, self.scenarios, {**self.meta(), "server_logs": self.log_summary}
        )
        self.opts.report.write_text(json.dumps(report, indent=2) + "\n")
        for line in format_lines(self.figures, self.ratios):
            print(line, flush=True)
        for name, t in report["targets"].items():
            if t["met"] is not None:
                log(f"target {name} {t['target']}: {'met' if t['met'] else 'NOT met'}")
        log(f"report written to {self.opts.report} ({time.monotonic() - self.started:.0f} s in all)")
        return report


def run(opts: Options) -> int:
    import atexit

    bench = Bench(opts)
    if bench.server_cpus is None:
        log("only one CPU: server and load generator share it")
    # Registered before the database starts, so it runs after the database has stopped.
    if opts.keep:
        log(f"keeping {bench.home}")
    else:
        atexit.register(shutil.rmtree, bench.home, True)
    try:
        bench.start_database()
        bench.load_small()
        bench.on_bench_server()
    except BaseException:
        atexit.unregister(shutil.rmtree)
        log(f"failed; logs kept in {bench.home}")
        raise
    code = 0
    try:
        bench.workers()
    except Exception as exc:  # the rest of the figures still count
        atexit.unregister(shutil.rmtree)
        log(f"workers failed: {exc}; logs kept in {bench.home}")
        bench.notes["workers"] = f"failed: {exc}"
        bench.figures = [f for f in bench.figures if not f.name.startswith("workers_")]
        bench.figure("workers_scaling", None)
        code = 1
    bench.finish()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
