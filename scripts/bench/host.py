"""What the machine does while the bench measures: CPU by party over a window
(server, PostgreSQL, clients, kernel threads, foreign processes), whether it
is idle, and how fast the host runs us right now.

CPU times come from psutil: per process (user + system, all its threads) and
per core. A shared machine or a VM's neighbours change the figures; these
readings are how a run tells that it was disturbed.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil


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
    cpu: float  # seconds, user + system


def processes() -> dict[int, Proc]:
    """Every process on the machine (those that vanish while read are left out)."""
    out: dict[int, Proc] = {}
    for p in psutil.process_iter(["ppid", "cpu_times"]):
        ppid, times = p.info["ppid"], p.info["cpu_times"]
        if ppid is not None and times is not None:
            out[p.pid] = Proc(ppid, times.user + times.system)
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


def used_seconds(before: dict[int, Proc], after: dict[int, Proc], pids: Iterable[int]) -> float:
    """CPU seconds ``pids`` used between two readings. A process born in
    between used all its time in it."""
    return sum(after[p].cpu - before.get(p, Proc(0, 0.0)).cpu for p in pids)


def core_times() -> dict[int, tuple[float, float]]:
    """Per core: (busy, total) seconds since boot."""
    out: dict[int, tuple[float, float]] = {}
    for core, t in enumerate(psutil.cpu_times(percpu=True)):
        total = t.user + t.nice + t.system + t.idle + t.iowait + t.irq + t.softirq + t.steal
        out[core] = (total - t.idle - t.iowait, total)
    return out


def busy_per_core(
    before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]
) -> dict[int, float]:
    """Per core, the share of the time between two readings it was busy."""
    return {c: (after[c][0] - b) / max(1e-9, after[c][1] - t) for c, (b, t) in before.items() if c in after}


class CpuWindow:
    """CPU use over a measurement window, by party: ``stop()`` at its end."""

    def __init__(self, server_pids: Callable[[], list[int]], postgres_pid: int | None) -> None:
        self.server_pids, self.postgres_pid = server_pids, postgres_pid
        self.t = time.monotonic()
        self.procs = processes()
        self.cores = core_times()
        self.end: tuple[float, dict[int, Proc], dict[int, tuple[float, float]], list[int]] | None = None

    def stop(self) -> None:
        self.end = (time.monotonic(), processes(), core_times(), self.server_pids())

    def result(self, client_cpu_seconds: float) -> Cpu:
        if self.end is None:
            self.stop()
        assert self.end is not None
        t, procs, cores, server_pids = self.end
        dt = t - self.t

        def used(pids: Iterable[int]) -> float:
            return used_seconds(self.procs, procs, pids) / dt

        server = descendants(procs, server_pids)
        postgres = descendants(procs, [self.postgres_pid] if self.postgres_pid else [])
        mine = descendants(procs, [os.getpid()])  # the server, the clients, this process
        kernel = {pid for pid, p in procs.items() if pid == 2 or p.ppid == 2}
        foreign = set(procs) - mine - postgres - kernel
        per_core = busy_per_core(self.cores, cores)
        return Cpu(
            server=round(used(server), 3),
            postgres=round(used(postgres), 3),
            clients=round(client_cpu_seconds / dt, 3),
            kernel=round(used(kernel), 3),
            foreign=round(used(foreign), 3),
            unaccounted=round(max(0.0, sum(per_core.values()) - used(procs)), 3),
            per_core={c: round(v, 3) for c, v in per_core.items()},
        )


class TurnCpu:
    """A mix's CPU by scenario: the server's and PostgreSQL's (with backends
    the pool opens meanwhile) over each measured window of each scenario, read
    by a thread at the windows' edges. ``windows[k]``: scenario k's windows
    (``Schedule.windows``)."""

    def __init__(
        self,
        windows: Sequence[Sequence[tuple[float, float]]],
        server_pids: Callable[[], list[int]],
        postgres_pid: int | None,
    ) -> None:
        self.windows, self.server_pids, self.postgres_pid = windows, server_pids, postgres_pid
        self.seconds = [[0.0, 0.0] for _ in windows]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        edges = sorted((w, k) for k, windows in enumerate(self.windows) for w in windows)
        for (begin, end), kind in edges:
            time.sleep(max(0.0, begin - time.monotonic()))
            before = processes()
            time.sleep(max(0.0, end - time.monotonic()))
            after = processes()
            roots = (self.server_pids(), [self.postgres_pid] if self.postgres_pid else [])
            for i, pids in enumerate(roots):
                self.seconds[kind][i] += used_seconds(before, after, descendants(after, pids))

    def result(self) -> list[tuple[float, float]]:
        """Per scenario: (server cores, PostgreSQL cores)."""
        self.thread.join(timeout=5)
        out = []
        for windows, (server, postgres) in zip(self.windows, self.seconds, strict=True):
            measured = max(1e-9, sum(b - a for a, b in windows))
            out.append((round(server / measured, 3), round(postgres / measured, 3)))
        return out


def machine_busy(interval: float = 0.5) -> float:
    """Cores busy over ``interval`` seconds, all processes together."""
    before = core_times()
    time.sleep(interval)
    return sum(busy_per_core(before, core_times()).values())


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


def cpu_model() -> str:
    """The CPU's model name, for the report (psutil does not know it)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()
