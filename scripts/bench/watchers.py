"""Streams cannot starve others (issue #15): tenant B's consistent CheckUser
p99, idle, and with 2,000 ``WatchApprovals`` streams of one approver key open
in tenant A while A's approvals change. The goal: within 2x of idle.

Idle is measured before the streams open and again after they are closed; the
two windows are pooled. The load is modest (a few calls in flight): this is a
latency figure, not a throughput one. The streams are held, and the approvals
changed, by a process of their own, so that reading 2,000 streams does not
delay the probe's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import admin_pb2_grpc, authz_pb2_grpc
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .dataset import CHANNEL, _policy_json, new_api_key, user_name
from .load import bearer, percentile
from .report import log

TENANT_B = "bench-watch-b"
B_USERS = 100
STREAMS = 2000
CHANNELS = 8  # connections the streams are spread over
CHANGE_RATE = 2.0  # approval changes per second in tenant A while measured: 4,000 stream messages/s
IN_FLIGHT = 4  # tenant B's CheckUser calls in flight


@dataclass
class WatchersResult:
    idle_ms: list[float] = field(default_factory=list)
    busy_ms: list[float] = field(default_factory=list)
    changes: int = 0
    delivered_min: int = 0  # of the changes made while measured, what the slowest stream got
    open_seconds: float = 0.0

    @property
    def p99_idle(self) -> float:
        return percentile(self.idle_ms, 0.99)

    @property
    def p99_busy(self) -> float:
        return percentile(self.busy_ms, 0.99)


async def load_tenant_b(owner_dsn: str, secret_key: str) -> str:
    """Tenant B: a connector key, channel ``tg`` and ``B_USERS`` allowlisted users."""
    key_id, key, digest = new_api_key(TENANT_B, secret_key)
    conn = await asyncpg.connect(owner_dsn)
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO tenants (tenant_id, display_name) VALUES ($1, 'bench')", TENANT_B)
            await conn.execute(
                "INSERT INTO api_keys (tenant_id, key_id, role, name, secret_hash) VALUES ($1, $2, 'connector', 'bench', $3)",
                TENANT_B,
                key_id,
                digest,
            )
            await conn.execute(
                "INSERT INTO channels (tenant_id, channel_id, platform, policy) VALUES ($1, $2, 'telegram', $3)",
                TENANT_B,
                CHANNEL,
                _policy_json(),
            )
            await conn.copy_records_to_table(
                "subjects",
                records=[(TENANT_B, CHANNEL, user_name(u), "allowed", "admin") for u in range(B_USERS)],
                columns=["tenant_id", "channel_id", "user_id", "status", "source"],
            )
    finally:
        await conn.close()
    return key


async def _checks(address: str, key: str, seconds: float, out: list[float]) -> None:
    """Consistent CheckUser calls of tenant B, ``IN_FLIGHT`` at a time."""
    metadata = bearer(key)
    users = itertools.cycle(range(B_USERS))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = authz_pb2_grpc.AuthzServiceStub(channel)
        end = time.monotonic() + seconds

        async def one() -> None:
            while time.monotonic() < end:
                request = az.CheckUserRequest(
                    channel_id=CHANNEL,
                    user_id=user_name(next(users)),
                    chat_kind=cm.CHAT_KIND_DIRECT,
                    text="hello",
                    consistent=True,
                )
                t = time.perf_counter()
                resp = await stub.CheckUser(request, metadata=metadata, timeout=30)
                out.append((time.perf_counter() - t) * 1000)
                if resp.decision != az.DECISION_ALLOW:
                    raise RuntimeError(f"tenant B: {az.Decision.Name(resp.decision)}")

        await asyncio.gather(*(one() for _ in range(IN_FLIGHT)))


@dataclass(frozen=True)
class Holder:
    """What the stream-holding process needs (it is spawned: plain values only)."""

    address: str
    approver_key: str
    connector_key: str
    pair_channels: tuple[str, ...]
    nonce: int


def _hold(holder: Holder, ready: Any, stop: Any, done: Any) -> None:
    """In its own process, so that reading 2,000 streams does not delay the
    latency probe's event loop: open the streams, report ready, change tenant
    A's approvals until told to stop, then report what the streams received."""
    try:
        done.put(asyncio.run(_streams(holder, ready, stop)))
    except BaseException as exc:  # the parent reports it
        ready.put(f"failed: {exc!r}")
        done.put(f"failed: {exc!r}")


async def _streams(holder: Holder, ready: Any, stop: Any) -> tuple[int, int, float]:
    # Distinct arguments: each channel its own connection (equal ones share one).
    channels = [
        grpc.aio.insecure_channel(holder.address, options=[("bench.watch", i)]) for i in range(CHANNELS)
    ]
    reopened = [0]
    seen: list[set[str]] = [set() for _ in range(STREAMS)]
    calls: list[grpc.aio.UnaryStreamCall[adm.WatchApprovalsRequest, cm.Approval]] = []
    readers: list[asyncio.Task[None]] = []
    users = itertools.count(80_000_000 + holder.nonce * 100_000)
    a_meta = bearer(holder.connector_key)
    a_stub = authz_pb2_grpc.AuthzServiceStub(channels[0])
    loop = asyncio.get_running_loop()

    async def pair(i: int) -> str:
        resp = await a_stub.RequestPairing(
            az.RequestPairingRequest(
                channel_id=holder.pair_channels[i % len(holder.pair_channels)],
                user_id=str(next(users)),
                display_name="Bench",
            ),
            metadata=a_meta,
            timeout=30,
        )
        return str(resp.approval_id)

    async def read(i: int) -> None:
        """One stream, opened again when it breaks (gRPC cancels some of a
        burst of new streams on one connection before they reach the server)."""
        stub = admin_pb2_grpc.AdminServiceStub(channels[i % CHANNELS])
        while True:
            call = stub.WatchApprovals(
                adm.WatchApprovalsRequest(kind=cm.APPROVAL_KIND_PAIRING), metadata=bearer(holder.approver_key)
            )
            calls.append(call)
            with contextlib.suppress(grpc.aio.AioRpcError):
                async for approval in call:
                    seen[i].add(approval.approval_id)
            reopened[0] += 1
            await asyncio.sleep(0.2)

    try:
        t = time.monotonic()
        readers.extend(asyncio.create_task(read(i)) for i in range(STREAMS))
        marker = await pair(0)  # every stream is open once each has seen it
        for _ in range(1200):  # at most 120 s
            if all(marker in s for s in seen):
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"{sum(marker not in s for s in seen)} streams never opened")
        opened = time.monotonic() - t
        made: list[str] = []

        async def change() -> None:
            n, start = 1, time.monotonic()
            while True:
                made.append(await pair(n))
                n += 1
                await asyncio.sleep(max(0.0, start + n / CHANGE_RATE - time.monotonic()))

        changer = asyncio.create_task(change())
        ready.put("ready")
        await loop.run_in_executor(None, stop.get)
        changer.cancel()
        await asyncio.gather(changer, return_exceptions=True)
        await asyncio.sleep(2.0)  # the last changes reach the streams
        log(f"  streams opened again after a break: {reopened[0]}")
        return len(made), min(len(s.intersection(made)) for s in seen), opened
    finally:
        for reader in readers:
            reader.cancel()
        for call in calls:
            call.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for channel in channels:
            await channel.close(None)


def measure(
    address: str,
    approver_key: str,
    connector_key: str,
    pair_channels: list[str],
    tenant_b_key: str,
    seconds: float,
    nonce: int,
) -> WatchersResult:
    """Idle probe; the streams open (another process) and A's approvals
    change while the probe runs again; the streams close; idle probe again."""
    result = WatchersResult()
    asyncio.run(_checks(address, tenant_b_key, seconds / 2, result.idle_ms))
    ctx = multiprocessing.get_context("spawn")
    ready, stop, done = ctx.Queue(), ctx.Queue(), ctx.Queue()
    holder = Holder(address, approver_key, connector_key, tuple(pair_channels), nonce)
    process = ctx.Process(target=_hold, args=(holder, ready, stop, done), daemon=True)
    process.start()
    try:
        state = ready.get(timeout=300)
        if state != "ready":
            raise RuntimeError(f"watch streams: {state}")
        asyncio.run(_checks(address, tenant_b_key, seconds, result.busy_ms))
        stop.put("stop")
        out = done.get(timeout=120)
        if isinstance(out, str):
            raise RuntimeError(f"watch streams: {out}")
        result.changes, result.delivered_min, result.open_seconds = out
    finally:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
    time.sleep(1.0)
    asyncio.run(_checks(address, tenant_b_key, seconds / 2, result.idle_ms))
    return result
