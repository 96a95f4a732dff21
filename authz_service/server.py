"""Assemble and run the gRPC server: services, health, reflection, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .api.admin import AdminServicer
from .api.authz import AuthzServicer
from .api.rpc import Gate, Runtime
from .api.streams import StreamLimits, Streams
from .cache import StateCache
from .config import Settings
from .domain.errors import Unavailable
from .domain.floods import DENIED_SEND_INTERVAL_SECONDS
from .domain.pairing import Keyring
from .flows import CodeAttemptLimits, ToolApprovalLimits
from .flows.auth import FailureThrottle, hash_secret
from .flows.expiry import sweep as expire_due_approvals
from .flows.watch import ApprovalFeed
from .gen.authz.v1 import admin_pb2, admin_pb2_grpc, authz_pb2, authz_pb2_grpc
from .store import audit, denials, embedded
from .store.db import Database, schema_message
from .store.migrate import LATEST_VERSION, migrate
from .store.notify import CHANGES, ApprovalNotifier, Listener
from .telemetry import Telemetry, from_settings

log = logging.getLogger(__name__)

# Health service names: "" and the API services report readiness (the database
# answers with the schema this build needs); LIVENESS stays SERVING while the
# process runs, so a database outage does not get pods restarted.
LIVENESS = "liveness"
SERVICE_NAMES = (
    authz_pb2.DESCRIPTOR.services_by_name["AuthzService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
MAX_MESSAGE_BYTES = 256 * 1024


class Readiness:
    """Reports SERVING only while the database answers with the schema this
    build needs; with an old schema it also closes the gate, so every RPC is
    UNAVAILABLE (never a decision from a schema the code does not know)."""

    def __init__(self, db: Database, health: Any, gate: Gate, interval: float) -> None:
        self.db, self.health, self.gate, self.interval = db, health, gate, interval
        self.serving: bool | None = None
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> bool:
        try:
            version = await self.db.schema_version()
        except Unavailable:
            problem, gate = "database unavailable", ""  # calls fail on their own, and recover sooner
        else:
            problem = gate = schema_message(version) if version < LATEST_VERSION else ""
        self.gate.reason = gate
        await self._report(not problem, problem)
        return not problem

    async def _report(self, serving: bool, problem: str) -> None:
        if serving == self.serving:
            return
        self.serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)
        if serving:
            log.info("ready: SERVING")
        else:
            log.warning("not ready: %s", problem)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="readiness")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class DenialSweep:
    """Every ``interval`` seconds, move the closed buckets of denied sends of
    every tenant into the audit (store.denials.sweep): a burst's total is
    written even when no denial follows it. Replicas may sweep at once; each
    bucket is still summarised once."""

    def __init__(self, db: Database, interval: float) -> None:
        self.db, self.interval = db, interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="denial-sweep")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await denials.sweep(self.db, DENIED_SEND_INTERVAL_SECONDS)
            except Exception:  # the next round retries; the counts wait in the database
                log.warning("denied-send sweep failed", exc_info=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class ExpirySweep(DenialSweep):
    """Every ``interval`` seconds, expire the pending approvals of every tenant
    whose time is up, and audit each then (flows.expiry). One
    replica sweeps at a time (an advisory lock); the others skip the round."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="expiry-sweep")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await expire_due_approvals(self.db)
            except Exception:  # the next round retries; a lapsed request is refused meanwhile
                log.warning("expiry sweep failed", exc_info=True)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped)
    db: Database
    listener: Listener
    cache: StateCache
    readiness: Readiness
    telemetry: Telemetry | None = None
    sweep: DenialSweep | None = None
    expiry: ExpirySweep | None = None
    streams: Streams | None = None

    async def stop(self, grace: float = 5.0) -> None:
        """NOT_SERVING first (every name, liveness too), so load balancers drain
        us; then refuse new calls and let in-flight ones finish within ``grace``;
        then flush telemetry."""
        await self.readiness.stop()
        if self.sweep is not None:
            await self.sweep.stop()
        if self.expiry is not None:
            await self.expiry.stop()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.listener.close()
        if self.streams is not None:
            await self.streams.close()
        if self.telemetry is not None:
            await self.telemetry.shutdown()
        await self.db.close()


async def start_server(
    db: Database, settings: Settings, listen: str | None = None, telemetry: Telemetry | None = None
) -> RunningServer:
    """Serve on ``listen`` (default ``settings.listen``). ``telemetry`` (None:
    off) becomes the server's: ``RunningServer.stop`` shuts it down."""
    # One LISTEN connection feeds the approval watchers and the hot path's cache.
    # Its heartbeat has a short timeout of its own (store.notify.HEARTBEAT_TIMEOUT).
    listener = Listener(db.dsn)
    notifier = ApprovalNotifier(listener, fallback_interval=settings.watch_fallback_seconds)
    cache = StateCache()
    listener.on(CHANGES, cache.on_change)
    listener.on_state(cache.on_listener)
    operator_key_hash = hash_secret(settings.operator_key) if settings.operator_key else None
    keyring = Keyring(settings.secret_key.encode())
    streams = Streams(
        db,
        cache,
        keyring,
        operator_key_hash,
        StreamLimits(
            per_key=settings.streams_per_key,
            per_tenant=settings.streams_per_tenant,
            per_process=settings.streams_per_process,
            max_seconds=settings.stream_max_seconds,
        ),
        legacy_keys=settings.legacy_api_keys,
    )
    # After the cache's handlers: a key's streams re-check once its entry is dropped.
    listener.on(CHANGES, streams.on_change)
    listener.on_state(streams.on_listener)
    await listener.start()
    await audit.prepare_partitions(db)
    gate = Gate()
    runtime = Runtime(
        gate=gate,
        db=db,
        keyring=keyring,
        operator_key_hash=operator_key_hash,
        feed=ApprovalFeed(db, notifier),
        streams=streams,
        cache=cache,
        telemetry=telemetry,
        code_limits=CodeAttemptLimits(
            per_channel=settings.code_attempts_per_channel,
            per_key=settings.code_attempts_per_key,
            per_tenant=settings.code_attempts_per_tenant,
            window_seconds=settings.code_attempt_window_seconds,
        ),
        auth_throttle=FailureThrottle(settings.auth_failure_burst, settings.auth_failures_per_minute),
        legacy_keys=settings.legacy_api_keys,
        tool_limits=ToolApprovalLimits(
            per_agent=settings.pending_tool_approvals_per_agent,
            per_tenant=settings.pending_tool_approvals_per_tenant,
        ),
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # Only `serve --workers` shares a port; otherwise a second server on
            # the same port must fail to start, not silently split the traffic.
            ("grpc.so_reuseport", 1 if settings.reuseport else 0),
        ]
    )
    authz_pb2_grpc.add_AuthzServiceServicer_to_server(AuthzServicer(runtime), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(runtime), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = listen or settings.listen
    if settings.tls is None:
        port = server.add_insecure_port(address)
    else:
        credentials = grpc.ssl_server_credentials(
            [(settings.tls.private_key, settings.tls.certificate_chain)],
            root_certificates=settings.tls.client_ca,
            require_client_auth=settings.tls.client_ca is not None,
        )
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}")
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    readiness = Readiness(db, health_servicer, gate, settings.readiness_interval_seconds)
    await readiness.check()  # before the first call is accepted
    if telemetry is not None:
        telemetry.attach(db, cache)
        telemetry.start()
    await server.start()
    readiness.start()
    sweep = DenialSweep(db, settings.denied_send_sweep_seconds)
    sweep.start()
    expiry = ExpirySweep(db, settings.expiry_sweep_seconds)
    expiry.start()
    return RunningServer(
        server,
        port,
        health_servicer,
        db,
        listener,
        cache,
        readiness,
        telemetry,
        sweep=sweep,
        streams=streams,
        expiry=expiry,
    )


async def prepare_database(settings: Settings, *, announce: Callable[[str], None] = print) -> str:
    """Return the service role's DSN, starting and migrating the embedded
    database when no AUTHZ_DATABASE_URL is set. With a URL, never starts one."""
    if settings.database_url is not None:
        return settings.database_url
    announce(f"starting embedded PostgreSQL in {settings.home / 'pgdata'} ...")
    emb = await asyncio.to_thread(embedded.start, settings.home)
    await embedded.ensure_database(emb)
    applied = await migrate(emb.owner_dsn)
    if applied:
        announce(f"applied migrations: {', '.join(f'{m.version:04d}_{m.name}' for m in applied)}")
    return emb.service_dsn


async def serve(
    settings: Settings, *, on_ready: Callable[[RunningServer], Awaitable[None]] | None = None
) -> None:
    dsn = await prepare_database(settings)
    db = await Database.connect(
        dsn,
        min_size=settings.pool_min,
        max_size=settings.pool_max,
        timeout=settings.db_timeout,
        require_schema=False,  # serve NOT_SERVING until `authz migrate` has run
    )
    running = await start_server(db, settings, telemetry=from_settings(settings))
    log.info("authz service listening", extra={"port": running.port, "embedded": settings.embedded})
    worker = f" (worker pid {os.getpid()})" if settings.reuseport else ""
    print(
        f"authz service listening on {settings.listen.rsplit(':', 1)[0]}:{running.port}{worker}", flush=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        await on_ready(running)
    await stop.wait()
    print("shutting down: health NOT_SERVING, draining in-flight calls ...", flush=True)
    await running.stop()
