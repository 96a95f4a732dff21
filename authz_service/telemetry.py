"""OpenTelemetry: a server span per RPC, a span per database transaction, and
the service's metrics; OTLP export and a Prometheus endpoint.

Off unless ``AUTHZ_TELEMETRY=on``. When off, no ``Telemetry`` exists: the RPC
decorators and ``Database._tx`` check one attribute (``runtime.telemetry``,
``db.observer``) for ``None`` and run exactly the code they ran before.

Providers are never installed globally: a ``Telemetry`` owns the tracer and
meter providers it is given, so tests build one with in-memory exporters.

Never recorded, anywhere: API keys, pairing codes, button payloads, message
text, tool arguments, display names, reasons, exception messages. Attributes
are the fixed set below; a failure is recorded as its status code or its error
class name only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import Token
from importlib import metadata
from typing import TYPE_CHECKING, Any, TypeVar
from wsgiref.simple_server import WSGIServer

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status
from opentelemetry.trace import StatusCode as SpanStatus

from . import names
from .domain.model import Principal
from .gen.authz.v1 import admin_pb2, authz_pb2

if TYPE_CHECKING:
    from .cache import StateCache
    from .config import Settings
    from .store.db import Database

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "authz-service"
SCOPE = "authz_service"
PENDING_INTERVAL_SECONDS = 30.0
# Seconds; an authorization answer should take milliseconds.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The proto service of every RPC, by method name (the names are unique across services).
SERVICE_OF = {
    m.name: s.full_name
    for f in (authz_pb2.DESCRIPTOR, admin_pb2.DESCRIPTOR)
    for s in f.services_by_name.values()
    for m in s.methods
}


_DECISION = names.DECISION.label_map()
_OUTCOME = names.PAIRING_OUTCOME.label_map()
_STATUS = names.APPROVAL_STATUS.label_map()
_INVITE = names.INVITE_OUTCOME.label_map()


def _allow(resp: Any) -> str:
    return "allow" if resp.allow else "deny"


def _approval(resp: Any) -> str:
    return _STATUS[resp.approval.status]


# The decision a response carries, by response type. Never the response's text.
DECISION_OF: dict[type[Any], Callable[[Any], str]] = {
    authz_pb2.CheckUserResponse: lambda r: _DECISION[r.decision],
    authz_pb2.EvaluateSendResponse: _allow,
    authz_pb2.RedeemApprovalResponse: _allow,
    authz_pb2.RequestPairingResponse: lambda r: _OUTCOME[r.outcome],
    authz_pb2.ResolveApprovalResponse: _approval,
    authz_pb2.RequestApprovalResponse: _approval,
    authz_pb2.RedeemInviteResponse: lambda r: _INVITE[r.outcome],
}

# Server span status is ERROR only for these (OpenTelemetry gRPC conventions):
# a deny, a bad key or a bad argument is the caller's outcome, not our failure.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_POOL = {"db.client.connection.pool.name": "authz"}
R = TypeVar("R")


class RpcCall:
    """One RPC's server span and metrics, as a context manager. ``api/rpc.py``
    tells it who called (``authorized``), how it failed (``failed``) and what
    it answered (``respond``)."""

    __slots__ = (
        "_attributes",
        "_code",
        "_context",
        "_decision",
        "_span",
        "_start",
        "_telemetry",
        "_token",
        "method",
        "stream",
        "trace_id",
    )

    def __init__(self, telemetry: Telemetry, method: str, md: Mapping[str, str], stream: bool) -> None:
        self._telemetry, self.method, self.stream = telemetry, method, stream
        self._code: grpc.StatusCode | None = None
        self._decision = ""
        service = SERVICE_OF.get(method, "")
        # OpenTelemetry's RPC conventions: the span's attributes, and the metrics' too.
        self._attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        # The caller's W3C traceparent (OTEL_PROPAGATORS) becomes the parent; never an ambient context.
        parent = propagate.extract(md, context=otel_context.Context())
        self._span = telemetry.tracer.start_span(
            f"{service}/{method}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=self._attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        span_context = self._span.get_span_context()
        # The id in the response, audit events and logs is the span's trace id.
        self.trace_id = (
            trace.format_trace_id(span_context.trace_id) if span_context.is_valid else secrets.token_hex(16)
        )
        self._span.set_attribute("authz.trace_id", self.trace_id)
        self._context = trace.set_span_in_context(self._span)
        self._token: Token[otel_context.Context] | None = None
        self._start = 0.0

    def __enter__(self) -> RpcCall:
        self._token = otel_context.attach(self._context)
        self._start = time.perf_counter()
        self._telemetry.rpc_active.add(1, self._attributes)
        return self

    def authorized(self, principal: Principal) -> None:
        if principal.tenant_id:
            self._span.set_attribute("authz.tenant", principal.tenant_id)
        self._span.set_attribute("authz.role", principal.role.value)

    def failed(self, code: grpc.StatusCode) -> None:
        self._code = code

    def respond(self, resp: R) -> R:
        decision_of = DECISION_OF.get(type(resp))
        if decision_of is not None:
            self._decision = decision_of(resp)
            self._span.set_attribute("authz.decision", self._decision)
        return resp

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        elapsed = time.perf_counter() - self._start
        code = self._code
        if code is None:
            if exc is None:
                code = grpc.StatusCode.OK
            elif isinstance(exc, asyncio.CancelledError | GeneratorExit):
                code = grpc.StatusCode.CANCELLED
            else:
                code = grpc.StatusCode.UNKNOWN
        self._span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_ERRORS:
            self._span.set_status(Status(SpanStatus.ERROR))
        # A stream abandoned mid-way is closed later from another task, where
        # our context was never current: nothing to detach there.
        if self._token is not None and otel_context.get_current() is self._context:
            otel_context.detach(self._token)
        self._span.end()
        tel = self._telemetry
        tel.rpc_active.add(-1, self._attributes)
        # Streams too (a watch lasts until its decision): rpc.server.duration is per call.
        tel.rpc_duration.record(elapsed, {**self._attributes, "rpc.grpc.status_code": code.value[0]})
        if self._decision:
            tel.decisions.add(1, {"rpc": self.method, "outcome": self._decision})


class PrometheusEndpoint:
    """``GET /metrics`` in the Prometheus text format, from its own registry
    (never prometheus_client's global one), served on a daemon thread."""

    def __init__(self, listen: str) -> None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry, ProcessCollector

        self.listen = listen
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.reader = PrometheusMetricReader(registry=self.registry)
        self.port = 0
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from prometheus_client import start_http_server

        host, _, port = self.listen.rpartition(":")
        self._server, self._thread = start_http_server(
            int(port), addr=host.strip("[]"), registry=self.registry
        )
        self.port = self._server.server_port
        log.info("metrics endpoint listening", extra={"port": self.port})

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None


async def count_pending(db: Database) -> int:
    """Live pending approvals across tenants. Row-level security shows the
    service role one tenant at a time, so this lists tenants (operator scope)
    and counts each under its own scope, in one read transaction."""
    total = 0
    async with db.operator() as conn:
        for row in await conn.fetch("SELECT tenant_id FROM tenants"):
            await conn.execute("SELECT set_config('authz.tenant', $1, true)", row["tenant_id"])
            total += await conn.fetchval(
                "SELECT count(*) FROM approvals"
                " WHERE tenant_id = $1 AND status = 'pending' AND expires_at > now()",
                row["tenant_id"],
            )
    return total


class Telemetry:
    """The tracer, the instruments and the background work of one server."""

    def __init__(
        self,
        tracer_provider: TracerProvider,
        meter_provider: MeterProvider,
        *,
        prometheus: PrometheusEndpoint | None = None,
        pending_interval: float = PENDING_INTERVAL_SECONDS,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.prometheus = prometheus
        self.pending_interval = pending_interval
        version = _version()
        self.tracer = tracer_provider.get_tracer(SCOPE, version)
        meter = meter_provider.get_meter(SCOPE, version)
        self.decisions = meter.create_counter(
            "authz.decisions", unit="{decision}", description="Decisions returned, by RPC and outcome."
        )
        # OpenTelemetry RPC semantic conventions; in seconds, as Prometheus expects.
        self.rpc_duration = meter.create_histogram(
            "rpc.server.duration",
            unit="s",
            description="Duration of RPCs, unary and streaming, by service, method and gRPC status code.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.rpc_active = meter.create_up_down_counter(
            "rpc.server.active_requests",
            unit="{request}",
            description="RPCs in flight (streams included), by service and method.",
        )
        # OpenTelemetry database client conventions for the pool.
        self.pool_wait = meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="Time to obtain a connection from the pool.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.db_errors = meter.create_counter(
            "authz.db.errors",
            unit="{error}",
            description="Database and connection errors in transactions, by error class (error.type).",
        )
        meter.create_observable_counter(
            "authz.cache.hits",
            callbacks=[self._observe_cache(lambda c: c.hits)],
            unit="{lookup}",
            description="Hot-path cache hits (CheckUser state and API keys).",
        )
        meter.create_observable_counter(
            "authz.cache.misses",
            callbacks=[self._observe_cache(lambda c: c.misses)],
            unit="{lookup}",
            description="Hot-path cache misses: the database was read.",
        )
        meter.create_observable_gauge(
            "authz.cache.on",
            callbacks=[self._observe_cache(lambda c: int(c.usable))],
            unit="1",
            description="1 while the hot-path cache serves: the change listener is connected and "
            "its self-check (a NOTIFY through the pool) passes; 0: every call reads the database.",
        )
        meter.create_observable_gauge(
            "authz.approvals.pending",
            callbacks=[self._observe_pending],
            unit="{approval}",
            description="Live pending approvals, all tenants (counted every 30 s; the same on every replica).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[self._observe_connections],
            unit="{connection}",
            description="Open connections in the database pool, by state (idle, used).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            callbacks=[self._observe_pool(lambda db: db.pool.get_max_size())],
            unit="{connection}",
            description="The most connections the pool opens (AUTHZ_DB_POOL_MAX).",
        )
        meter.create_observable_gauge(
            "authz.cache.entries",
            callbacks=[self._observe_cache_state(lambda c: c.entries)],
            unit="{entry}",
            description="Entries in the hot-path cache.",
        )
        self.pending: int | None = None
        self._db: Database | None = None
        self._cache: StateCache | None = None
        self._task: asyncio.Task[None] | None = None

    # -- wiring -------------------------------------------------------------

    def attach(self, db: Database, cache: StateCache | None = None) -> None:
        """Trace ``db``'s transactions, observe its pool and ``cache``, count pending approvals."""
        db.observer = self
        db.on_acquired = self.acquired
        self._db = db
        self._cache = cache

    def _observe_cache(
        self, read: Callable[[StateCache], int]
    ) -> Callable[[CallbackOptions], list[Observation]]:
        def observe(_options: CallbackOptions) -> list[Observation]:
            # Exported from the start (0), so a hit ratio reads 0/0 rather than "no data".
            return [Observation(read(self._cache) if self._cache is not None else 0)]

        return observe

    def _observe_cache_state(
        self, read: Callable[[StateCache], int]
    ) -> Callable[[CallbackOptions], list[Observation]]:
        def observe(_options: CallbackOptions) -> list[Observation]:
            return [] if self._cache is None else [Observation(read(self._cache))]

        return observe

    def start(self) -> None:
        if self.prometheus is not None:
            self.prometheus.start()
        if self._db is not None:
            self._task = asyncio.create_task(self._count_pending_forever(self._db), name="pending-approvals")

    async def shutdown(self) -> None:
        """Stop the background count and the endpoint; flush and close the exporters."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.prometheus is not None:
            self.prometheus.stop()
        await asyncio.to_thread(self.tracer_provider.shutdown)
        await asyncio.to_thread(self.meter_provider.shutdown)

    # -- called by api/rpc.py and store/db.py ---------------------------------

    def rpc(self, method: str, md: Mapping[str, str], *, stream: bool = False) -> RpcCall:
        return RpcCall(self, method, md, stream)

    def transaction(self, settings: Mapping[str, str]) -> contextlib.AbstractContextManager[None]:
        """A span for one database transaction, a child of the RPC span.
        Transactions outside any RPC (the pending-approvals count) are not traced."""
        if not trace.get_current_span().get_span_context().is_valid:
            return self._untraced_transaction()
        attributes = {
            "db.system.name": "postgresql",
            "db.operation.name": "transaction",
            "authz.db.scope": "operator" if settings.get("authz.operator") == "on" else "tenant",
        }
        if settings.get("authz.tenant"):
            attributes["authz.tenant"] = settings["authz.tenant"]
        return self._transaction_span(attributes)

    def acquired(self, waited: float) -> None:
        """Called by ``store/db.py`` once the pool hands over a connection (``db.on_acquired``)."""
        self.pool_wait.record(waited, _POOL)

    def _db_error(self, exc: BaseException) -> None:
        # Database trouble only; a domain error raised inside a transaction is not one.
        if isinstance(exc, OSError | TimeoutError) or type(exc).__module__.startswith("asyncpg"):
            self.db_errors.add(1, {"error.type": type(exc).__qualname__})

    @contextlib.contextmanager
    def _untraced_transaction(self) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            self._db_error(exc)
            raise

    @contextlib.contextmanager
    def _transaction_span(self, attributes: dict[str, str]) -> Iterator[None]:
        with self.tracer.start_as_current_span(
            "authz.db.transaction",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,  # exception messages may carry values
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(Status(SpanStatus.ERROR))
                self._db_error(exc)
                raise

    # -- gauges -------------------------------------------------------------

    async def refresh_pending(self) -> None:
        db = self._db
        if db is None:
            return
        try:
            self.pending = await count_pending(db)
        except Exception as exc:  # database down: report nothing rather than a stale number
            self.pending = None
            log.warning("cannot count pending approvals: %s", type(exc).__name__)

    async def _count_pending_forever(self, db: Database) -> None:
        while True:
            await self.refresh_pending()
            await asyncio.sleep(self.pending_interval)

    def _observe_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        return [] if self.pending is None else [Observation(self.pending)]

    def _observe_connections(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._db is None:
            return []
        pool = self._db.pool
        idle = pool.get_idle_size()
        return [
            Observation(idle, {**_POOL, "db.client.connection.state": "idle"}),
            Observation(pool.get_size() - idle, {**_POOL, "db.client.connection.state": "used"}),
        ]

    def _observe_pool(
        self, read: Callable[[Database], int]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [] if self._db is None else [Observation(read(self._db))]

        return observe


def _version() -> str:
    try:
        return metadata.version("authz-service")
    except metadata.PackageNotFoundError:
        return "0"


def resource() -> Resource:
    """OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win; the service name defaults to authz-service."""
    from_env = OTELResourceDetector().detect().attributes
    defaults = {SERVICE_NAME: DEFAULT_SERVICE_NAME, SERVICE_VERSION: _version()}
    return Resource.create({k: v for k, v in defaults.items() if k not in from_env})


def from_settings(settings: Settings) -> Telemetry | None:
    """The process's telemetry, or None when AUTHZ_TELEMETRY is off. OTLP
    exporters read the standard OTEL_EXPORTER_OTLP_* variables themselves;
    OTEL_TRACES_SAMPLER, OTEL_BSP_*, OTEL_METRIC_EXPORT_INTERVAL and
    OTEL_PROPAGATORS are honoured by the SDK."""
    if not settings.telemetry:
        return None
    res = resource()
    tracer_provider = TracerProvider(resource=res, shutdown_on_exit=False)
    if settings.otlp_traces:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    readers: list[MetricReader] = []
    if settings.otlp_metrics:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    prometheus = PrometheusEndpoint(settings.metrics_listen) if settings.metrics_listen else None
    if prometheus is not None:
        readers.append(prometheus.reader)
    if not (settings.otlp_traces or settings.otlp_metrics or prometheus):
        log.warning(
            "AUTHZ_TELEMETRY=on, but no OTLP endpoint and no AUTHZ_METRICS_LISTEN: nothing is exported"
        )
    meter_provider = MeterProvider(metric_readers=readers, resource=res, shutdown_on_exit=False)
    return Telemetry(tracer_provider, meter_provider, prometheus=prometheus)
