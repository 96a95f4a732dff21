"""Smoke test of the benchmark's building blocks (scripts/bench.py), in-process.

The bench measures performance; this test never does. It only checks that
the pieces work: the bench servicer behind the real ``@rpc`` decorator, the
load generator (closed loop, open loop, pairing pairs) and the output format.
"""

from __future__ import annotations

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
            bench.Load(address, calls=bench.empty_calls(key), concurrency=4, warmup=0.1, duration=0.5)
        )
        check = await bench.drive(bench.Load(address, calls=calls, concurrency=4, warmup=0.1, duration=0.5))
        paced = await bench.drive(bench.Load(address, calls=cold, rate=100, warmup=0.1, duration=0.4))
        pairing = bench.Pairing(
            channels=("pair-000",),
            connector=bench.bearer(key),
            approver=bench.bearer(tenant.keys["approver"]),
            nonce=123,
        )
        pairs = await bench.drive(
            bench.Load(address, pairing=pairing, concurrency=2, warmup=0.1, duration=0.4)
        )
    finally:
        await running.stop(grace=0)

    for result in (empty, check, paced, pairs):
        assert result.ok > 0
        assert result.errors == {}
        assert len(result.latencies_ms) == result.ok
    assert paced.lag_ms
    merged = bench.LoadResult.merge([empty, check])
    assert merged.ok == empty.ok + check.ok
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
