"""Assemble and run the gRPC server: services, health, reflection, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
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
from .api.console import ConsoleSettings, add_console
from .api.http import HttpServer, build_app, server_ssl_context
from .api.rpc import Gate, Runtime
from .api.streams import StreamLimits, Streams
from .cache import StateCache
from .config import ConfigError, Settings
from .domain.errors import Unavailable
from .domain.floods import DENIED_SEND_INTERVAL_SECONDS
from .domain.pairing import Keyring
from .flows import CodeAttemptLimits, ToolApprovalLimits
from .flows.auth import FailureThrottle, hash_secret
from .flows.changes import ChangeFeed
from .flows.expiry import sweep as expire_due_approvals
from .flows.watch import ApprovalFeed
from .gen.authz.v1 import admin_pb2, admin_pb2_grpc, authz_pb2, authz_pb2_grpc
from .store import audit, denials, embedded
from .store.db import CannotConnect, Database, schema_message
from .store.migrate import LATEST_VERSION, migrate
from .store.notify import CHANGES, ApprovalNotifier, Listener
from .telemetry import Telemetry, from_settings

log = logging.getLogger(__name__)

# Health service names: "" and the API services report readiness (the database
# answers with the schema this build needs); LIVENESS stays SERVING while the
# process runs, so a database outage does not get pods restarted.
LIVENESS = "liveness"
# SERVING while change notifications are trusted (the listener's self-check,
# store/notify.py). NOT_SERVING: the cache is off and every call reads the
# database; decisions stay correct, so readiness itself stays SERVING.
CHANGE_FEED = "changes"
SERVICE_NAMES = (
    authz_pb2.DESCRIPTOR.services_by_name["AuthzService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
MAX_MESSAGE_BYTES = 256 * 1024


class StartupError(ConfigError):
    """A start-up failure the operator fixes by changing one setting, which the
    message names: `authz serve` prints it as one line and exits 2."""


class Readiness:
    """Reports SERVING only while the database answers with the schema this
    build needs; with an old schema it also closes the gate, so every RPC is
    UNAVAILABLE (never a decision from a schema the code does not know)."""

    def __init__(
        self, db: Database, health: Any, gate: Gate, interval: float, listener: Listener | None = None
    ) -> None:
        self.db, self.health, self.gate, self.interval = db, health, gate, interval
        self.listener = listener
        self.serving: bool | None = None
        self.changes_problem: str | None = None
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
        if self.listener is not None and self.listener.problem != self.changes_problem:
            self.changes_problem = self.listener.problem
            await self.health.set(
                CHANGE_FEED,
                health_pb2.HealthCheckResponse.NOT_SERVING
                if self.changes_problem
                else health_pb2.HealthCheckResponse.SERVING,
            )
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


class Sweep:
    """Every ``interval`` seconds, one round of background work over every
    tenant. A failed round is logged and the next one retries: what it moves
    waits in the database meanwhile. Replicas may sweep at once; each round's
    work is idempotent across them (see ``work``'s docstring)."""

    def __init__(self, name: str, interval: float, work: Callable[[], Awaitable[object]]) -> None:
        self.name, self.interval, self.work = name, interval, work
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.work()
            except Exception:
                log.warning("%s failed", self.name, exc_info=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


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
    sweep: Sweep | None = None  # denied sends into the audit (store.denials.sweep)
    expiry: Sweep | None = None  # lapsed approvals expired on time (flows.expiry)
    streams: Streams | None = None
    http: HttpServer | None = None
    """The HTTP/JSON API (AUTHZ_HTTP_LISTEN); None when off."""

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
        if self.http is None:
            await self.server.stop(grace)
        else:  # both drain at once
            await asyncio.gather(self.server.stop(grace), self.http.stop())
        await self.listener.close()
        if self.streams is not None:
            await self.streams.close()
        if self.telemetry is not None:
            await self.telemetry.shutdown()
        await self.db.close()


def connection_options(settings: Settings) -> list[tuple[str, int]]:
    """Keepalive and connection age (docs/deploy.md, "Balancing"): a connection
    that lives forever pins its client to one replica, so replicas an autoscaler
    adds get no traffic from clients already connected."""
    options = [
        ("grpc.keepalive_time_ms", settings.keepalive_seconds * 1000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # Accept the SDK's pings (every 30 s, also between calls) without a GOAWAY
        # for "too many pings".
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]
    if settings.max_connection_age_seconds:
        options += [
            ("grpc.max_connection_age_ms", settings.max_connection_age_seconds * 1000),
            ("grpc.max_connection_age_grace_ms", settings.max_connection_age_grace_seconds * 1000),
        ]
    return options


async def start_server(
    db: Database,
    settings: Settings,
    listen: str | None = None,
    telemetry: Telemetry | None = None,
    http_listen: str | None = None,
) -> RunningServer:
    """Serve on ``listen`` (default ``settings.listen``), and the HTTP/JSON API on
    ``http_listen`` (default ``settings.http_listen``; None: off). ``telemetry`` (None:
    off) becomes the server's: ``RunningServer.stop`` shuts it down."""
    # One LISTEN connection feeds the approval watchers and the hot path's cache.
    # Its heartbeat has a short timeout of its own (store.notify.HEARTBEAT_TIMEOUT).
    # It must reach PostgreSQL itself (AUTHZ_LISTEN_DATABASE_URL behind a pooler);
    # a NOTIFY sent through the pool checks that path at start and every few seconds.
    listener = Listener(
        settings.listen_database_url or db.dsn, probe=db.notify, probe_interval=settings.notify_check_seconds
    )
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
    # After the cache's handlers: a stream hears of a change once an answer
    # computed here reflects it (flows.changes).
    changes = ChangeFeed()
    listener.on(CHANGES, changes.on_change)
    listener.on_state(changes.on_listener)
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
        changes=changes,
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
            *connection_options(settings),
        ]
    )
    authz_servicer, admin_servicer = AuthzServicer(runtime), AdminServicer(runtime)
    authz_pb2_grpc.add_AuthzServiceServicer_to_server(authz_servicer, server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(admin_servicer, server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = listen or settings.listen
    try:
        if settings.tls is None:
            port = server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(settings.tls.private_key, settings.tls.certificate_chain)],
                root_certificates=settings.tls.client_ca,
                require_client_auth=settings.tls.client_ca is not None,
            )
            port = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpcio raises where older releases returned 0
        port = 0
    problem = ""
    if not port:
        problem = (
            f"cannot listen on {address} (in use, or not an address of this machine):"
            " change AUTHZ_LISTEN (or `authz serve --address`)"
        )
    elif telemetry is not None:
        # Before readiness says SERVING: a busy metrics port stops the start, not a running server.
        telemetry.attach(db, cache)
        try:
            telemetry.start()
        except OSError as exc:
            problem = (
                f"cannot serve metrics on {settings.metrics_listen} ({exc.strerror or exc}):"
                " change AUTHZ_METRICS_LISTEN"
            )
    http: HttpServer | None = None
    if not problem:
        # Before the gRPC server starts: a port that is taken fails start-up with nothing serving.
        http_address = http_listen or settings.http_listen
        try:
            http = await _start_http(settings, http_address, authz_servicer, admin_servicer)
        except OSError as exc:
            problem = f"cannot serve the HTTP API on {http_address} ({exc.strerror or exc}): change AUTHZ_HTTP_LISTEN"
    if problem:
        await listener.close()
        await streams.close()
        if telemetry is not None:
            await telemetry.shutdown()
        raise StartupError(problem)
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    readiness = Readiness(db, health_servicer, gate, settings.readiness_interval_seconds, listener)
    await readiness.check()  # before the first call is accepted
    await server.start()
    readiness.start()
    # A burst's total reaches the audit even when no denial follows it; each
    # closed bucket is summarised once whichever replica gets it.
    sweep = Sweep(
        "denied-send sweep",
        settings.denied_send_sweep_seconds,
        lambda: denials.sweep(db, DENIED_SEND_INTERVAL_SECONDS),
    )
    sweep.start()
    # One replica per tenant at a time (an advisory lock); a lapsed request is refused meanwhile.
    expiry = Sweep("expiry sweep", settings.expiry_sweep_seconds, lambda: expire_due_approvals(db))
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
        http=http,
        expiry=expiry,
    )


def http_url(settings: Settings, port: int) -> str:
    """The HTTP API's base URL, e.g. ``http://127.0.0.1:8080``."""
    host = (settings.http_listen or "127.0.0.1:0").rpartition(":")[0]
    wildcard = host in ("0.0.0.0", "")  # noqa: S104  # a comparison: the URL names loopback instead
    host = "127.0.0.1" if wildcard else "[::1]" if host in ("[::]", "::") else host
    return f"{'https' if settings.tls is not None else 'http'}://{host}:{port}"


async def _start_http(settings: Settings, address: str | None, *servicers: object) -> HttpServer | None:
    """The same servicers over HTTP/JSON (api.http), with the gRPC server's TLS."""
    if address is None:
        return None
    names = (
        authz_pb2.DESCRIPTOR.services_by_name["AuthzService"],
        admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
    )
    tls = settings.tls
    console = None
    if settings.console:
        secure = tls is not None or settings.console_secure_cookies
        console_settings = ConsoleSettings(secure, settings.console_session_seconds)
        console = functools.partial(
            add_console, authz=servicers[0], admin=servicers[1], settings=console_settings
        )
    http = HttpServer(build_app(zip(names, servicers, strict=True), console))
    context = (
        None if tls is None else server_ssl_context(tls.certificate_chain, tls.private_key, tls.client_ca)
    )
    await http.start(address, context, reuse_port=settings.reuseport)
    return http


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


async def _connect(dsn: str, settings: Settings) -> Database:
    """The pool, or a StartupError naming AUTHZ_DATABASE_URL with what PostgreSQL said."""
    try:
        return await Database.connect_or_explain(
            dsn,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            timeout=settings.db_timeout,
            require_schema=False,  # serve NOT_SERVING until `authz migrate` has run
            statement_cache_size=settings.statement_cache_size,
        )
    except CannotConnect as exc:
        raise StartupError(f"{exc}: check AUTHZ_DATABASE_URL") from None


# The collector's thresholds once serving (see settle_heap): the youngest
# generation every 50,000 allocations instead of 700, the older two as often
# relative to it as by default.
GC_THRESHOLDS = (50_000, 20, 20)


def settle_heap() -> None:
    """A serving process's garbage collector, tuned once it is up.

    What start-up made (modules, generated code, settings) lives as long as
    the process: ``gc.freeze`` takes it out of every collection. Serving makes
    short-lived objects by the tens of thousands (a change fanned out to 1,000
    streams, a burst of calls); with the default thresholds the collector ran
    dozens of times during one such pass, and a full collection there was the
    tail of the revocation latency to 1,000 edges (docs/performance.md). Cyclic
    garbage is still collected, in larger batches."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(
    settings: Settings, *, on_ready: Callable[[RunningServer], Awaitable[None]] | None = None
) -> None:
    dsn = await prepare_database(settings)
    db = await _connect(dsn, settings)
    try:
        running = await start_server(db, settings, telemetry=from_settings(settings))
    except BaseException:
        await db.close()
        raise
    settle_heap()
    log.info("authz service listening", extra={"port": running.port, "embedded": settings.embedded})
    worker = f" (worker pid {os.getpid()})" if settings.reuseport else ""
    print(
        f"authz service listening on {settings.listen.rsplit(':', 1)[0]}:{running.port}{worker}", flush=True
    )
    if running.http is not None and settings.http_listen is not None:
        print(f"HTTP/JSON API on {http_url(settings, running.http.port)}{worker}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        await on_ready(running)
    await stop.wait()
    print("shutting down: health NOT_SERVING, draining in-flight calls ...", flush=True)
    await running.stop()
