"""The service under test, in processes of its own: the bench server (the
real ``start_server`` plus a bench-only empty RPC), ``authz serve --workers
N`` for the workers figures, and what the bench reads about PostgreSQL.

The bench server runs ``start_server`` in its own process pinned to one core,
plus ``authz.bench.Bench/Empty``, declared with the same ``@rpc`` decorator as
CheckUser (authentication, role check, trace id, error mapping): the empty RPC
is the physical limit of this server stack, and every figure is compared with
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf import empty_pb2

from authz_service.api.rpc import Runtime, rpc
from authz_service.config import Settings
from authz_service.domain.model import Role
from authz_service.flows import Context
from authz_service.server import RunningServer
from authz_service.store.db import Database

BENCH_SERVICE = "authz.bench.Bench"
EMPTY = f"/{BENCH_SERVICE}/Empty"


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
    db: Database, settings: Settings, listen: str, telemetry: Any = None, http_listen: str | None = None
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
        running = await server_module.start_server(
            db, settings, listen=listen, telemetry=telemetry, http_listen=http_listen
        )
    finally:
        names["AuthzServicer"] = AuthzServicer
    if len(captured) != 1:
        await running.stop(grace=0)
        raise RuntimeError("could not find the server's Runtime: start_server changed shape")
    # Handlers are looked up per call, so adding one to a started server works.
    running.server.add_generic_rpc_handlers((bench_handler(captured[0]),))
    return running


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
        # The watchers scenario holds 2,000 streams of one key (defaults: 100 per key, 1,000 per tenant).
        "AUTHZ_STREAMS_PER_KEY": "2500",
        "AUTHZ_STREAMS_PER_TENANT": "2500",
    }


def service_settings(spec: ServerSpec) -> Settings:
    return Settings.from_env(server_env(spec))


def _server_main(spec: ServerSpec, ports: Any) -> None:
    """The bench server process: the same start-up as ``authz serve`` (logging,
    pool, telemetry setting, the collector's tuning), on a free port, plus the
    bench servicer."""
    if spec.cpus:
        os.sched_setaffinity(0, spec.cpus)
    log = os.open(spec.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 2)
    from authz_service.logs import setup_logging
    from authz_service.server import settle_heap
    from authz_service.telemetry import from_settings

    setup_logging()

    async def main() -> None:
        settings = service_settings(spec)
        db = await Database.connect(
            spec.dsn, min_size=settings.pool_min, max_size=settings.pool_max, timeout=settings.db_timeout
        )
        # The HTTP/JSON API and the web console too (bench.console).
        running = await start_bench_server(
            db, settings, "127.0.0.1:0", from_settings(settings), http_listen="127.0.0.1:0"
        )
        settle_heap()  # as `authz serve` does once it is up
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ports.put((running.port, running.http.port if running.http is not None else 0))
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
            self.port, self.http_port = ports.get(timeout=60)
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
