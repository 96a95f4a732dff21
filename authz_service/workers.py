"""`authz serve --workers N`: one listening port, N processes.

A Python process uses one core. The parent prepares the database once (starts
and migrates the embedded PostgreSQL when no AUTHZ_DATABASE_URL is set), then
starts N copies of `authz serve` that bind the same address with SO_REUSEPORT;
the kernel spreads connections across them. Each worker has its own pool,
cache and change listener; NOTIFY keeps their caches consistent exactly as it
does across replicas.

Metrics: each worker serves its own Prometheus endpoint on AUTHZ_METRICS_LISTEN's
port + its index (worker_env), and the chart scrapes every one. Not a shared
multiprocess registry: a worker's pool, listener and cache gauges describe that
worker alone, and summing its counters is the scraper's job.

The parent forwards SIGTERM/SIGINT to every worker and waits for them to drain.
If one worker dies, the parent stops the others and exits 1, so the
orchestrator restarts the whole pod rather than running short-handed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from .config import ConfigError, Settings
from .server import prepare_database

# Set by the parent in each worker's environment.
WORKER_ENV = "AUTHZ_WORKER_INDEX"


def worker_env(settings: Settings, dsn: str, index: int, environ: dict[str, str]) -> dict[str, str]:
    env = dict(environ)
    env[WORKER_ENV] = str(index)
    env["AUTHZ_WORKERS"] = "1"
    env["AUTHZ_DATABASE_URL"] = dsn
    if settings.embedded:
        # Dev mode generated the keys under AUTHZ_HOME: point the workers at those files.
        env.setdefault("AUTHZ_SECRET_KEY_FILE", str(settings.home / "secret.key"))
        env.setdefault("AUTHZ_OPERATOR_KEY_FILE", str(settings.home / "operator.key"))
    if settings.metrics_listen:
        host, _, port = settings.metrics_listen.rpartition(":")
        env["AUTHZ_METRICS_LISTEN"] = f"{host}:{int(port) + index}"  # one scrape port per worker
    return env


def run(settings: Settings, workers: int) -> int:
    if settings.listen.rsplit(":", 1)[-1] == "0":
        raise ConfigError("--workers needs a fixed port in AUTHZ_LISTEN (port 0 would differ per worker)")
    dsn = asyncio.run(prepare_database(settings))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "authz_service.cli.main", "serve"],
            env=worker_env(settings, dsn, i, dict(os.environ)),
        )
        for i in range(workers)
    ]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    print(f"authz service: {workers} workers on {settings.listen}", flush=True)
    code = 0
    while procs:
        pid, status = os.wait()
        done = next((p for p in procs if p.pid == pid), None)
        if done is None:
            continue
        procs.remove(done)
        done.returncode = os.waitstatus_to_exitcode(status)
        if not stopping:
            print(
                f"worker {pid} exited ({done.returncode}); stopping the others", file=sys.stderr, flush=True
            )
            code = 1
            forward(signal.SIGTERM, None)
    return code
