"""``make bench``: a reproducible benchmark of the service on this machine.

The command line: ``python -m bench`` with ``scripts/`` on the path. The
package's docstring says what a run does.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
from collections.abc import Sequence
from pathlib import Path

from .report import log
from .scenarios import Bench, Options


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--duration", type=float, help="measured seconds per scenario (default 8; --quick: 2)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per run (default 2; --quick: 0.5)")
    p.add_argument(
        "--rounds", type=int, help="runs per compared scenario, interleaved (default 3; --quick: 1)"
    )
    p.add_argument("--quick", action="store_true", help="short runs and a 100-tenant scale set: a smoke test")
    p.add_argument("--skip-scale", action="store_true", help="skip the 1,000,000-subject run")
    p.add_argument("--skip-workers", action="store_true", help="skip authz serve --workers 1 vs 2")
    p.add_argument("--skip-edge", action="store_true", help="skip the edge figures (issue #21)")
    p.add_argument("--edge-only", action="store_true", help="only the edge figures (a few minutes)")
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
        skip_edge=a.skip_edge,
        edge_only=a.edge_only,
    )


def run(opts: Options) -> int:
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
        if not opts.edge_only:
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
