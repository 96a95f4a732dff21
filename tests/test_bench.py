"""Smoke test of the benchmark's building blocks (scripts/bench/), in-process.

The bench measures performance; this test never does. It only checks that
the pieces work: the bench servicer behind the real ``@rpc`` decorator, the
load generator (closed loop, open loop, pairing pairs) and the output format.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path

import grpc

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.store.db import Database

from .conftest import Dsns, Service, Tenant

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bench import calls, dataset, host, load, report, server

LINE = re.compile(r"bench [a-z0-9_]+ (skipped|\d+(\.\d+)? (rps|ms|pairs/s))|ratio [a-z0-9_]+ \d+\.\d\d")


async def _empty_status(address: str, key: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await channel.unary_unary(server.EMPTY, None, None)(b"", metadata=load.bearer(key), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_schedule_turns() -> None:
    one = load.Schedule(start=10.0, end=18.0)
    assert one.windows(0) == [(10.0, 18.0)]
    assert one.counts(12.0, 0)
    assert not one.counts(9.0, 0)
    two = load.Schedule(start=0.0, end=4.0, kinds=2, phase=1.0, settle=0.25)
    assert two.windows(0) == [(0.25, 1.0), (2.25, 3.0)]
    assert two.windows(1) == [(1.25, 2.0), (3.25, 4.0)]
    assert two.measured(1) == 1.5
    assert [two.kind_at(t) for t in (-0.5, 0.5, 1.5, 2.5)] == [1, 0, 1, 0]  # warm-up takes turns too
    assert two.counts(0.5, 0)
    assert not two.counts(0.1, 0)  # settling: the previous scenario's calls may still run
    assert not two.counts(1.5, 0)  # the other scenario's turn


def test_cpu_accounting() -> None:
    procs = {
        1: host.Proc(0, 5.0),
        10: host.Proc(1, 1.0),  # the server
        11: host.Proc(10, 2.0),  # its worker
        12: host.Proc(11, 0.5),  # and below that
        20: host.Proc(1, 9.0),  # someone else
    }
    assert host.descendants(procs, [10, 99]) == {10, 11, 12}  # a root gone meanwhile is skipped
    later = {**procs, 11: host.Proc(10, 3.5), 13: host.Proc(10, 0.25)}
    assert host.used_seconds(procs, later, host.descendants(later, [10])) == 1.75  # 13 was born in between
    assert host.busy_per_core({0: (10.0, 20.0), 1: (0.0, 20.0)}, {0: (11.0, 22.0), 1: (2.0, 22.0)}) == {
        0: 0.5,
        1: 1.0,
    }
    # Read from this machine: this process, under its parent.
    assert host.processes()[os.getpid()].ppid == os.getppid()

    def cpu(foreign: float, per_core: dict[int, float]) -> host.Cpu:
        return host.Cpu(1.0, 0.2, 0.5, 0.0, foreign, 0.0, per_core)

    assert not cpu(0.05, {0: 1.0, 1: 1.0}).disturbed(strict=True)  # under 0.1 cores: noise
    assert cpu(0.3, {0: 1.0, 1: 0.9}).disturbed(strict=False)  # no idle time left for it
    assert not cpu(0.3, {0: 1.0, 1: 0.5}).disturbed(strict=False)  # it ran on idle time
    assert cpu(0.3, {0: 1.0, 1: 0.5}).disturbed(strict=True)  # latency runs: any contention shows


async def test_bench_building_blocks(service: Service, dsns: Dsns, tenant: Tenant) -> None:
    await tenant.channel(dataset.CHANNEL, dm_policy=cm.DM_POLICY_ALLOWLIST)
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id=dataset.CHANNEL, user_id="42"))
    await tenant.channel("pair-000", dm_policy=cm.DM_POLICY_PAIRING, max_pending=1000)
    keys = {tenant.tenant_id: tenant.keys["connector"]}
    key = tenant.keys["connector"]

    # A second server on the session's database: the real one plus the bench servicer.
    running = await server.start_bench_server(
        await Database.connect(dsns.service, max_size=4), service.settings, "127.0.0.1:0"
    )
    address = f"127.0.0.1:{running.port}"
    try:
        # The empty RPC goes through the same authentication and role check.
        assert await _empty_status(address, key) == grpc.StatusCode.OK
        assert await _empty_status(address, "azk.nope.aaaaaaaaaaaa.x") == grpc.StatusCode.UNAUTHENTICATED
        assert await _empty_status(address, tenant.keys["approver"]) == grpc.StatusCode.PERMISSION_DENIED

        cached = calls.check_user_calls([(tenant.tenant_id, "42")], keys, consistent=False)
        cold = calls.check_user_calls([(tenant.tenant_id, "42")], keys, consistent=True)
        await calls.preflight(address, cached, calls.expect_allow)
        await calls.preflight(address, cold, calls.expect_allow)
        empty = await load.drive(
            load.Load(address, mix=(calls.empty_calls(key),), concurrency=4, warmup=0.1, duration=0.3)
        )
        # Two scenarios taking turns in one run, as the bench compares them.
        mixed = await load.drive(
            load.Load(
                address, mix=(cached, cold), concurrency=4, warmup=0.2, duration=0.6, phase=0.15, settle=0.05
            )
        )
        check, cold_result = mixed.kinds
        paced = await load.drive(load.Load(address, mix=(cold,), rate=100, warmup=0.1, duration=0.3))
        pairing = load.Pairing(
            channels=("pair-000",),
            connector=load.bearer(key),
            approver=load.bearer(tenant.keys["approver"]),
            nonce=123,
        )
        pairs = await load.drive(load.Load(address, pairing=pairing, concurrency=2, warmup=0.1, duration=0.3))
    finally:
        await running.stop(grace=0)

    for result in (empty, check, cold_result, paced, pairs):
        assert result.ok > 0
        assert result.errors == {}
        assert len(result.latencies_ms) == result.ok
    assert mixed.errors == {}
    assert mixed.ok == check.ok + cold_result.ok
    assert paced.lag_ms
    merged = load.LoadResult.merge([mixed, load.LoadResult.from_dict(dataclasses.asdict(mixed))])
    assert merged.ok == 2 * mixed.ok
    assert [k.ok for k in merged.kinds] == [2 * check.ok, 2 * cold_result.ok]
    assert merged.processes == 2

    figures = [
        report.Figure("empty_rpc", empty.rps, "rps"),
        report.Figure("checkuser_cached", check.rps, "rps"),
        report.Figure("pairing_pairs", pairs.rps, "pairs/s"),
        report.Figure("checkuser_p99_half_peak", load.percentile(paced.latencies_ms, 0.99), "ms"),
        report.Figure("workers_scaling", None),
    ]
    ratios = [r for r in (report.ratio("checkuser_cached_vs_empty", check.rps, empty.rps),) if r]
    lines = report.format_lines(figures, ratios)
    assert len(lines) == 6
    assert all(LINE.fullmatch(line) for line in lines), lines
    assert lines[-2] == "bench workers_scaling skipped"
    assert lines[-1].startswith("ratio checkuser_cached_vs_empty ")
    built = report.build_report(figures, ratios, {"empty_rpc": {}}, {"date": "today"})
    assert json.loads(json.dumps(built))["lines"] == lines
    assert built["targets"]["checkuser_cached_vs_empty"]["met"] in (True, False)
    assert built["targets"]["checkuser_1m_vs_1k"]["met"] is None
