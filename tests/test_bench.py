"""Smoke test of the benchmark's building blocks (scripts/bench.py), in-process.

The bench measures performance; this test never does. It only checks that
the pieces work: the bench servicer behind the real ``@rpc`` decorator, the
load generator (closed loop, open loop, pairing pairs) and the output format.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import grpc

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.store.db import Database

from .conftest import Dsns, Service, Tenant

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench

LINE = re.compile(r"bench [a-z0-9_]+ (skipped|\d+(\.\d+)? (rps|ms|pairs/s))|ratio [a-z0-9_]+ \d+\.\d\d")


async def _empty_status(address: str, key: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await channel.unary_unary(bench.EMPTY, None, None)(b"", metadata=bench.bearer(key), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_schedule_turns() -> None:
    one = bench.Schedule(start=10.0, end=18.0)
    assert one.windows(0) == [(10.0, 18.0)]
    assert one.counts(12.0, 0)
    assert not one.counts(9.0, 0)
    two = bench.Schedule(start=0.0, end=4.0, kinds=2, phase=1.0, settle=0.25)
    assert two.windows(0) == [(0.25, 1.0), (2.25, 3.0)]
    assert two.windows(1) == [(1.25, 2.0), (3.25, 4.0)]
    assert two.measured(1) == 1.5
    assert [two.kind_at(t) for t in (-0.5, 0.5, 1.5, 2.5)] == [1, 0, 1, 0]  # warm-up takes turns too
    assert two.counts(0.5, 0)
    assert not two.counts(0.1, 0)  # settling: the previous scenario's calls may still run
    assert not two.counts(1.5, 0)  # the other scenario's turn


async def test_bench_building_blocks(service: Service, dsns: Dsns, tenant: Tenant) -> None:
    await tenant.channel(bench.CHANNEL, dm_policy=cm.DM_POLICY_ALLOWLIST)
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id=bench.CHANNEL, user_id="42"))
    await tenant.channel("pair-000", dm_policy=cm.DM_POLICY_PAIRING, max_pending=1000)
    keys = {tenant.tenant_id: tenant.keys["connector"]}
    key = tenant.keys["connector"]

    # A second server on the session's database: the real one plus the bench servicer.
    running = await bench.start_bench_server(
        await Database.connect(dsns.service, max_size=4), service.settings, "127.0.0.1:0"
    )
    address = f"127.0.0.1:{running.port}"
    try:
        # The empty RPC goes through the same authentication and role check.
        assert await _empty_status(address, key) == grpc.StatusCode.OK
        assert await _empty_status(address, "azk.nope.aaaaaaaaaaaa.x") == grpc.StatusCode.UNAUTHENTICATED
        assert await _empty_status(address, tenant.keys["approver"]) == grpc.StatusCode.PERMISSION_DENIED

        calls = bench.check_user_calls([(tenant.tenant_id, "42")], keys, consistent=False)
        cold = bench.check_user_calls([(tenant.tenant_id, "42")], keys, consistent=True)
        await bench.preflight(address, calls, bench.expect_allow)
        await bench.preflight(address, cold, bench.expect_allow)
        empty = await bench.drive(
            bench.Load(address, mix=(bench.empty_calls(key),), concurrency=4, warmup=0.1, duration=0.3)
        )
        # Two scenarios taking turns in one run, as the bench compares them.
        mixed = await bench.drive(
            bench.Load(
                address, mix=(calls, cold), concurrency=4, warmup=0.2, duration=0.6, phase=0.15, settle=0.05
            )
        )
        check, cold_result = mixed.kinds
        paced = await bench.drive(bench.Load(address, mix=(cold,), rate=100, warmup=0.1, duration=0.3))
        pairing = bench.Pairing(
            channels=("pair-000",),
            connector=bench.bearer(key),
            approver=bench.bearer(tenant.keys["approver"]),
            nonce=123,
        )
        pairs = await bench.drive(
            bench.Load(address, pairing=pairing, concurrency=2, warmup=0.1, duration=0.3)
        )
    finally:
        await running.stop(grace=0)

    for result in (empty, check, cold_result, paced, pairs):
        assert result.ok > 0
        assert result.errors == {}
        assert len(result.latencies_ms) == result.ok
    assert mixed.errors == {}
    assert mixed.ok == check.ok + cold_result.ok
    assert paced.lag_ms
    merged = bench.LoadResult.merge([mixed, bench.LoadResult.from_dict(dataclasses.asdict(mixed))])
    assert merged.ok == 2 * mixed.ok
    assert [k.ok for k in merged.kinds] == [2 * check.ok, 2 * cold_result.ok]
    assert merged.processes == 2

    figures = [
        bench.Figure("empty_rpc", empty.rps, "rps"),
        bench.Figure("checkuser_cached", check.rps, "rps"),
        bench.Figure("pairing_pairs", pairs.rps, "pairs/s"),
        bench.Figure("checkuser_p99_half_peak", bench.percentile(paced.latencies_ms, 0.99), "ms"),
        bench.Figure("workers_scaling", None),
    ]
    ratios = [r for r in (bench.ratio("checkuser_cached_vs_empty", check.rps, empty.rps),) if r]
    lines = bench.format_lines(figures, ratios)
    assert len(lines) == 6
    assert all(LINE.fullmatch(line) for line in lines), lines
    assert lines[-2] == "bench workers_scaling skipped"
    assert lines[-1].startswith("ratio checkuser_cached_vs_empty ")
    report = bench.build_report(figures, ratios, {"empty_rpc": {}}, {"date": "today"})
    assert json.loads(json.dumps(report))["lines"] == lines
    assert report["targets"]["checkuser_cached_vs_empty"]["met"] in (True, False)
    assert report["targets"]["checkuser_1m_vs_1k"]["met"] is None
