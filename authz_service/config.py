"""Settings, from the environment (``AUTHZ_*``). Every knob is documented in
docs/configuration.md; defaults fail closed."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(RuntimeError):
    pass


def _int(env: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _switch(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw not in ("on", "off"):
        raise ConfigError(f"{name} must be 'on' or 'off', got {raw!r}")
    return raw == "on"


def _secret(env: dict[str, str], name: str) -> str | None:
    """A secret from NAME, or from the file named by NAME_FILE (Kubernetes Secrets)."""
    if env.get(name):
        return env[name].strip()
    path = env.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    return None


def private_home(home: Path) -> Path:
    """Create AUTHZ_HOME 0700 (parents as the umask says), or take group and other
    bits away from an existing one; group search alone stays (the embedded
    PostgreSQL's account, run as root: store/embedded.py). Nothing above is touched."""
    try:
        home.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(home, 0o700)
        except FileExistsError:
            if not home.is_dir():
                raise ConfigError(f"AUTHZ_HOME {home} is not a folder: set AUTHZ_HOME to a folder") from None
            if home.stat().st_mode & 0o067:
                home.chmod(0o700)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(home) else ""
        raise ConfigError(
            f"cannot use AUTHZ_HOME {home}{where}: {exc.strerror or exc}; set AUTHZ_HOME to a folder "
            "this user can write"
        ) from None
    return home


def write_private(path: Path, text: str, *, replace: bool = False) -> bool:
    """Write ``path`` 0600 from its creation, atomically: readers see the whole file
    or none. Without ``replace``, returns False (and writes nothing) when it exists."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if another process published first
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def home_secret(home: Path, filename: str, nbytes: int) -> str:
    """Dev mode only: a secret from the CSPRNG, generated once and kept 0600 under AUTHZ_HOME."""
    path = private_home(home) / filename
    write_private(path, secrets.token_urlsafe(nbytes) + "\n")
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)  # written by an older build
    return path.read_text().strip()


@dataclass(frozen=True)
class ServerTls:
    """PEM bytes read at start-up. With ``client_ca``, clients must present a
    certificate signed by it (mutual TLS)."""

    certificate_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = field(default=None, repr=False)


def _read_pem(env: dict[str, str], name: str) -> bytes | None:
    path = env.get(name)
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None


def _server_tls(env: dict[str, str]) -> ServerTls | None:
    cert = _read_pem(env, "AUTHZ_TLS_CERT_FILE")
    key = _read_pem(env, "AUTHZ_TLS_KEY_FILE")
    client_ca = _read_pem(env, "AUTHZ_TLS_CLIENT_CA_FILE")
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError("AUTHZ_TLS_CLIENT_CA_FILE needs AUTHZ_TLS_CERT_FILE and AUTHZ_TLS_KEY_FILE")
        return None
    if cert is None or key is None:
        raise ConfigError("AUTHZ_TLS_CERT_FILE and AUTHZ_TLS_KEY_FILE must be set together")
    return ServerTls(cert, key, client_ca)


def _listen(env: dict[str, str], name: str) -> str | None:
    raw = env.get(name, "")
    if not raw:
        return None
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name} must be host:port, got {raw!r}")
    return raw


def _telemetry(env: dict[str, str]) -> tuple[bool, str | None, bool, bool]:
    """AUTHZ_TELEMETRY, AUTHZ_METRICS_LISTEN and which OTLP exporters the OTEL_* variables ask for."""
    switch = env.get("AUTHZ_TELEMETRY", "").strip().lower() or "off"
    if switch not in ("on", "off"):
        raise ConfigError(f"AUTHZ_TELEMETRY must be 'on' or 'off', got {switch!r}")
    metrics_listen = _listen(env, "AUTHZ_METRICS_LISTEN")
    if switch == "off":
        if metrics_listen is not None:
            raise ConfigError("AUTHZ_METRICS_LISTEN needs AUTHZ_TELEMETRY=on")
        return False, None, False, False
    for name in (
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ):
        if env.get(name, "grpc") != "grpc":
            raise ConfigError(f"{name}: only 'grpc' is supported, got {env[name]!r}")
    both = bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    return (
        True,
        metrics_listen,
        both or bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
        both or bool(env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")),
    )


@dataclass(frozen=True)
class Settings:
    home: Path
    """AUTHZ_HOME: data folder of the embedded database and dev-mode secrets."""
    database_url: str | None
    """AUTHZ_DATABASE_URL: the service role's connection. Unset: embedded PostgreSQL."""
    listen: str
    """AUTHZ_LISTEN: host:port of the gRPC server."""
    secret_key: str
    """AUTHZ_SECRET_KEY(_FILE): key for pairing codes and button payloads."""
    operator_key: str | None
    """AUTHZ_OPERATOR_KEY(_FILE): the key that manages tenants."""
    pool_min: int
    pool_max: int
    db_timeout: float
    watch_fallback_seconds: float = 15.0
    """AUTHZ_WATCH_FALLBACK_SECONDS: watchers re-read an approval this often even
    without a notification (a safety net; NOTIFY wakes them at once)."""
    readiness_interval_seconds: float = 5.0
    """AUTHZ_READINESS_INTERVAL_SECONDS: how often health re-checks the database and its schema."""
    tls: ServerTls | None = None
    """AUTHZ_TLS_CERT_FILE / AUTHZ_TLS_KEY_FILE (TLS), AUTHZ_TLS_CLIENT_CA_FILE (mutual TLS)."""
    workers: int = 1
    """AUTHZ_WORKERS (or `authz serve --workers`): processes sharing the port (SO_REUSEPORT)."""
    reuseport: bool = False
    """Set in each worker started by `--workers` (AUTHZ_WORKER_INDEX): bind with SO_REUSEPORT."""
    telemetry: bool = False
    """AUTHZ_TELEMETRY=on: OpenTelemetry traces and metrics (see authz_service/telemetry.py)."""
    http_listen: str | None = None
    """AUTHZ_HTTP_LISTEN: host:port of the HTTP/JSON API (Connect protocol, docs/http-api.md),
    with the gRPC server's TLS settings; unset, none."""
    console: bool = True
    """AUTHZ_CONSOLE=off: no web console on the HTTP port (docs/console.md); the API stays."""
    console_session_seconds: int = 8 * 3600
    """AUTHZ_CONSOLE_SESSION_SECONDS: a console session's lifetime from login."""
    console_secure_cookies: bool = False
    """AUTHZ_CONSOLE_SECURE_COOKIES=on: Secure console cookies although this port speaks
    plain HTTP (TLS ends at a proxy in front). With AUTHZ_TLS_* they are Secure anyway."""
    metrics_listen: str | None = None
    """AUTHZ_METRICS_LISTEN: host:port of the Prometheus /metrics endpoint; unset, none."""
    otlp_traces: bool = False
    otlp_metrics: bool = False
    """OTEL_EXPORTER_OTLP_(TRACES_|METRICS_)ENDPOINT set: export over OTLP/gRPC. The
    exporters read the other OTEL_* variables themselves."""
    code_attempts_per_channel: int = 10
    """AUTHZ_CODE_ATTEMPTS_PER_CHANNEL: failed pairing code lookups per channel per window."""
    code_attempts_per_key: int = 10
    """AUTHZ_CODE_ATTEMPTS_PER_KEY: failed pairing code lookups per API key per window."""
    code_attempts_per_tenant: int = 50
    """AUTHZ_CODE_ATTEMPTS_PER_TENANT: failed pairing code lookups per tenant per window."""
    code_attempt_window_seconds: int = 600
    """AUTHZ_CODE_ATTEMPT_WINDOW_SECONDS: the window those limits count in (stored in PostgreSQL)."""
    auth_failure_burst: int = 30
    """AUTHZ_AUTH_FAILURE_BURST: failed authentications one peer address may make in a row
    before its calls that need the database are refused (RESOURCE_EXHAUSTED); per process."""
    auth_failures_per_minute: int = 60
    """AUTHZ_AUTH_FAILURES_PER_MINUTE: how fast that allowance refills."""
    legacy_api_keys: bool = True
    """AUTHZ_LEGACY_API_KEYS=on|off: accept four-part API keys made before keys carried a
    check (they cost a database read when unknown); off once every such key is replaced."""
    pending_tool_approvals_per_agent: int = 20
    """AUTHZ_PENDING_TOOL_APPROVALS_PER_AGENT: live pending tool approvals one agent may have;
    RequestApproval beyond is RESOURCE_EXHAUSTED."""
    pending_tool_approvals_per_tenant: int = 200
    """AUTHZ_PENDING_TOOL_APPROVALS_PER_TENANT: the same, for all agents of a tenant together."""
    denied_send_sweep_seconds: int = 60
    """AUTHZ_DENIED_SEND_SWEEP_SECONDS: how often a process moves closed buckets of denied
    sends into the audit (migration 0013), for every tenant."""
    expiry_sweep_seconds: int = 5
    """AUTHZ_EXPIRY_SWEEP_SECONDS: how often a process expires pending approvals whose time
    is up (migration 0016; one replica at a time)."""
    streams_per_key: int = 100
    """AUTHZ_STREAMS_PER_KEY: open WatchApproval/WatchApprovals streams one API key may hold in this process."""
    streams_per_tenant: int = 1000
    """AUTHZ_STREAMS_PER_TENANT: open streams one tenant (all its keys) may hold in this process."""
    streams_per_process: int = 10_000
    """AUTHZ_STREAMS_PER_PROCESS: open streams this process holds at most, all tenants together."""
    stream_max_seconds: float = 3600.0
    """AUTHZ_STREAM_MAX_SECONDS: a stream ends (UNAVAILABLE, open it again) after this long."""
    keepalive_seconds: int = 60
    """AUTHZ_KEEPALIVE_SECONDS: the server pings an idle connection this often (and drops it
    when the ping is not answered within 20 s)."""
    max_connection_age_seconds: int = 300
    """AUTHZ_MAX_CONNECTION_AGE_SECONDS: a client connection is asked to go (GOAWAY; the client
    reconnects, through the load balancer) after about this long (±10%), so new replicas get
    traffic from clients already connected; 0: never."""
    max_connection_age_grace_seconds: int = 30
    """AUTHZ_MAX_CONNECTION_AGE_GRACE_SECONDS: calls in flight on such a connection get this long
    to finish before it closes (open streams end UNAVAILABLE: clients open them again)."""
    listen_database_url: str | None = None
    """AUTHZ_LISTEN_DATABASE_URL: the change listener's connection (LISTEN needs a session of
    its own: straight to PostgreSQL, never through a transaction-mode pooler). Unset: the
    service's own connection (AUTHZ_DATABASE_URL, or the embedded database)."""
    statement_cache_size: int = 100
    """AUTHZ_DB_STATEMENT_CACHE_SIZE: prepared statements each pooled connection keeps by name;
    0 behind a transaction-mode pooler (PgBouncer before 1.21 cannot carry named statements)."""
    notify_check_seconds: float = 5.0
    """AUTHZ_NOTIFY_CHECK_SECONDS: how often a notification sent through the pool must come
    back on the listener (within store.notify.PROBE_TIMEOUT), or the cache is off."""

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        home = Path(env.get("AUTHZ_HOME") or Path.home() / ".authz").expanduser().resolve()
        database_url = env.get("AUTHZ_DATABASE_URL") or None
        secret_key = _secret(env, "AUTHZ_SECRET_KEY")
        operator_key = _secret(env, "AUTHZ_OPERATOR_KEY")
        if database_url is None:
            # Embedded (development) mode: generate what is missing, once.
            secret_key = secret_key or home_secret(home, "secret.key", 32)
            operator_key = operator_key or home_secret(home, "operator.key", 32)
        elif secret_key is None:
            raise ConfigError(
                "AUTHZ_SECRET_KEY (or AUTHZ_SECRET_KEY_FILE) is required with AUTHZ_DATABASE_URL"
            )
        if len(secret_key.encode()) < 32:
            raise ConfigError("AUTHZ_SECRET_KEY must be at least 32 bytes")
        if operator_key is not None and len(operator_key) < 24:
            raise ConfigError("AUTHZ_OPERATOR_KEY must be at least 24 characters")
        pool_min = _int(env, "AUTHZ_DB_POOL_MIN", 1, 1, 1000)
        if env.get("AUTHZ_LISTEN_DATABASE_URL") and database_url is None:
            raise ConfigError("AUTHZ_LISTEN_DATABASE_URL needs AUTHZ_DATABASE_URL")
        telemetry, metrics_listen, otlp_traces, otlp_metrics = _telemetry(env)
        return cls(
            home=home,
            database_url=database_url,
            listen=_listen(env, "AUTHZ_LISTEN") or "127.0.0.1:50051",
            secret_key=secret_key,
            operator_key=operator_key,
            pool_min=pool_min,
            pool_max=_int(env, "AUTHZ_DB_POOL_MAX", 10, pool_min, 1000),
            db_timeout=float(_int(env, "AUTHZ_DB_TIMEOUT_SECONDS", 5, 1, 300)),
            watch_fallback_seconds=float(_int(env, "AUTHZ_WATCH_FALLBACK_SECONDS", 15, 1, 3600)),
            readiness_interval_seconds=float(_int(env, "AUTHZ_READINESS_INTERVAL_SECONDS", 5, 1, 300)),
            tls=_server_tls(env),
            workers=_int(env, "AUTHZ_WORKERS", 1, 1, 64),
            reuseport="AUTHZ_WORKER_INDEX" in env,
            telemetry=telemetry,
            metrics_listen=metrics_listen,
            http_listen=_listen(env, "AUTHZ_HTTP_LISTEN"),
            console=_switch(env, "AUTHZ_CONSOLE", True),
            console_session_seconds=_int(env, "AUTHZ_CONSOLE_SESSION_SECONDS", 8 * 3600, 60, 7 * 86_400),
            console_secure_cookies=_switch(env, "AUTHZ_CONSOLE_SECURE_COOKIES", False),
            otlp_traces=otlp_traces,
            otlp_metrics=otlp_metrics,
            code_attempts_per_channel=_int(env, "AUTHZ_CODE_ATTEMPTS_PER_CHANNEL", 10, 1, 100_000),
            code_attempts_per_key=_int(env, "AUTHZ_CODE_ATTEMPTS_PER_KEY", 10, 1, 100_000),
            code_attempts_per_tenant=_int(env, "AUTHZ_CODE_ATTEMPTS_PER_TENANT", 50, 1, 1_000_000),
            code_attempt_window_seconds=_int(env, "AUTHZ_CODE_ATTEMPT_WINDOW_SECONDS", 600, 1, 86_400),
            auth_failure_burst=_int(env, "AUTHZ_AUTH_FAILURE_BURST", 30, 1, 1_000_000),
            auth_failures_per_minute=_int(env, "AUTHZ_AUTH_FAILURES_PER_MINUTE", 60, 1, 1_000_000),
            legacy_api_keys=_switch(env, "AUTHZ_LEGACY_API_KEYS", True),
            pending_tool_approvals_per_agent=_int(
                env, "AUTHZ_PENDING_TOOL_APPROVALS_PER_AGENT", 20, 1, 100_000
            ),
            denied_send_sweep_seconds=_int(env, "AUTHZ_DENIED_SEND_SWEEP_SECONDS", 60, 1, 3600),
            expiry_sweep_seconds=_int(env, "AUTHZ_EXPIRY_SWEEP_SECONDS", 5, 1, 3600),
            pending_tool_approvals_per_tenant=_int(
                env, "AUTHZ_PENDING_TOOL_APPROVALS_PER_TENANT", 200, 1, 1_000_000
            ),
            streams_per_key=_int(env, "AUTHZ_STREAMS_PER_KEY", 100, 1, 1_000_000),
            streams_per_tenant=_int(env, "AUTHZ_STREAMS_PER_TENANT", 1000, 1, 1_000_000),
            streams_per_process=_int(env, "AUTHZ_STREAMS_PER_PROCESS", 10_000, 1, 1_000_000),
            stream_max_seconds=float(_int(env, "AUTHZ_STREAM_MAX_SECONDS", 3600, 1, 86_400)),
            keepalive_seconds=_int(env, "AUTHZ_KEEPALIVE_SECONDS", 60, 10, 86_400),
            max_connection_age_seconds=_int(env, "AUTHZ_MAX_CONNECTION_AGE_SECONDS", 300, 0, 30 * 86_400),
            max_connection_age_grace_seconds=_int(
                env, "AUTHZ_MAX_CONNECTION_AGE_GRACE_SECONDS", 30, 1, 86_400
            ),
            listen_database_url=env.get("AUTHZ_LISTEN_DATABASE_URL") or None,
            statement_cache_size=_int(env, "AUTHZ_DB_STATEMENT_CACHE_SIZE", 100, 0, 10_000),
            notify_check_seconds=float(_int(env, "AUTHZ_NOTIFY_CHECK_SECONDS", 5, 1, 300)),
        )
