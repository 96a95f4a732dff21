"""Connection pool, tenant-scoped transactions and database error mapping.

Every unit of work runs in one transaction whose first statement sets the
transaction-local ``authz.tenant``; row-level security does the rest. asyncpg
errors become domain errors here and nowhere else.

Round trips are the cost of a cold read, so a transaction opens with one
simple-protocol message (``BEGIN; SELECT set_config(...)``) and a pooled
connection is not reset on release: every setting is transaction-local, the
pool's connections never LISTEN (the listener has its own) and never take
session-level locks, so there is nothing to reset. asyncpg still rolls back a
transaction left open on release. Because the transaction is opened by hand, a
unit of work must not call ``conn.transaction()`` (asyncpg refuses savepoints
in a transaction it did not start) nor change session-level settings.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext, suppress
from datetime import datetime
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, urlsplit

import asyncpg

from ..domain.errors import Conflict, Unavailable
from .migrate import LATEST_VERSION, current_version

log = logging.getLogger(__name__)

# The connection type flows pass between store calls: flows and api name it
# through here and never import asyncpg (rows come back as dataclasses).
Connection = asyncpg.Connection

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.QueryCanceledError,  # the server's statement_timeout, or an operator's cancel
)
_CONFLICT = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)


_NO_SPAN: nullcontext[None] = nullcontext()
# Values that may be inlined into the opening message as SQL literals. Tenant
# ids are slugs; anything else takes the parameterised path.
_LITERAL_SAFE = re.compile(r"[A-Za-z0-9_.:-]{0,128}")


def _opening(settings: dict[str, str]) -> str | None:
    """'BEGIN; SELECT set_config(...), ...' as one message, if every value is safe to inline."""
    if not all(_LITERAL_SAFE.fullmatch(k) and _LITERAL_SAFE.fullmatch(v) for k, v in settings.items()):
        return None
    configs = ", ".join(f"set_config('{k}', '{v}', true)" for k, v in settings.items())
    return f"BEGIN; SELECT {configs}" if configs else "BEGIN"


async def _no_reset(conn: asyncpg.Connection) -> None:
    """See the module docstring: pooled connections carry no session state."""


class TransactionObserver(Protocol):
    """Watches each transaction (telemetry's spans); the store knows no more of it."""

    def transaction(self, settings: Mapping[str, str]) -> AbstractContextManager[None]:
        """Entered around one transaction; ``settings`` are its ``set_config`` values."""
        ...


class SchemaTooOld(RuntimeError):
    pass


def schema_message(version: int) -> str:
    return f"database schema is at version {version}, this build needs {LATEST_VERSION}: run `authz migrate`"


class UnsafeDatabaseRole(RuntimeError):
    pass


class CannotConnect(RuntimeError):
    """The pool could not be opened: what PostgreSQL said, never the password."""


def _dsn_host(dsn: str) -> str:
    """host:port (or the socket folder) of a DSN, never its password."""
    try:
        parts = urlsplit(dsn)
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        return socket_dir or f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    except ValueError:
        return "the configured address"


class Database:
    """A pool of connections as the service role, bound by row-level security."""

    def __init__(self, pool: asyncpg.Pool, dsn: str = "") -> None:
        self.pool = pool
        # Kept for dedicated connections outside the pool (LISTEN).
        self.dsn = dsn
        # Set by Telemetry.attach: a span per transaction. None: telemetry off.
        self.observer: TransactionObserver | None = None
        # Also set by Telemetry.attach: seconds each transaction waited for a connection.
        self.on_acquired: Callable[[float], None] | None = None

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 5.0,
        require_schema: bool = True,
        statement_cache_size: int = 100,
    ) -> Database:
        """A pool as the service role. Refuses a role that bypasses row-level
        security, always; and an old schema unless ``require_schema`` is off
        (the server then reports NOT_SERVING until `authz migrate` has run).
        ``statement_cache_size=0``: no named prepared statements, for a
        transaction-mode pooler that would hand them to another session."""
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            command_timeout=timeout,
            timeout=timeout,
            reset=_no_reset,
            statement_cache_size=statement_cache_size,
        )
        db = cls(pool, dsn)
        try:
            await db.verify_role()
            if require_schema:
                version = await db.schema_version()
                if version < LATEST_VERSION:
                    raise SchemaTooOld(schema_message(version))
        except BaseException:
            await pool.close()
            raise
        return db

    @classmethod
    async def connect_or_explain(cls, dsn: str, **options: Any) -> Database:
        """``connect``, with every failure an operator fixes in the DSN as one
        ``CannotConnect`` saying what PostgreSQL said (start-up errors)."""
        where = _dsn_host(dsn)
        try:
            return await cls.connect(dsn, **options)
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
            problem = f"the database at {where} refused the login ({exc})"
        except asyncpg.InvalidCatalogNameError as exc:
            problem = f"the database at {where} has no such database ({exc})"
        except UnsafeDatabaseRole as exc:
            problem = str(exc)
        except (TimeoutError, OSError) as exc:
            why = getattr(exc, "strerror", None) or str(exc) or "timed out"
            problem = f"cannot reach the database at {where} ({why})"
        raise CannotConnect(problem)

    async def verify_role(self) -> None:
        """Refuse a role that row-level security does not bind."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT current_user AS name, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
            )
            assert row is not None
            if row["rolsuper"] or row["rolbypassrls"]:
                raise UnsafeDatabaseRole(
                    f"the service connects as {row['name']!r}, which bypasses row-level security; "
                    "connect as the service role that `authz migrate` creates "
                    "('authz_service', or its --service-role / AUTHZ_SERVICE_ROLE)"
                )

    async def schema_version(self) -> int:
        """The applied schema version; Unavailable if the database does not answer."""
        try:
            async with self.pool.acquire() as conn:
                return await current_version(cast(asyncpg.Connection, conn))
        except _UNAVAILABLE as exc:
            raise Unavailable("the authorization store is unavailable") from exc

    async def notify(self, channel: str, payload: str) -> None:
        """Send a notification through the pool (the listener's self-check):
        the path every trigger's NOTIFY takes, pooler included."""
        try:
            async with self.pool.acquire() as conn:
                await conn.execute("SELECT pg_notify($1, $2)", channel, payload)
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def _tx(self, settings: dict[str, str]) -> AsyncIterator[asyncpg.Connection]:
        span = _NO_SPAN if self.observer is None else self.observer.transaction(settings)
        try:
            with span:  # includes the wait for a pooled connection
                asked = time.perf_counter()
                async with self.pool.acquire() as pooled:
                    if self.on_acquired is not None:
                        self.on_acquired(time.perf_counter() - asked)
                    conn = cast(asyncpg.Connection, pooled)
                    try:
                        await _begin(conn, settings)
                        yield conn
                    except BaseException:
                        # Best effort: if this fails, the pool's release rolls back
                        # or drops the connection; the original error is what matters.
                        with suppress(Exception):
                            if not conn.is_closed() and conn.is_in_transaction():
                                await conn.execute("ROLLBACK")
                        raise
                    await conn.execute("COMMIT")
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        except _CONFLICT as exc:
            raise Conflict("a concurrent change won; retry") from exc

    async def fetchrow_as(self, tenant_id: str, sql: str, *args: object) -> asyncpg.Record | None:
        """One statement in its own (implicit) transaction: for functions that
        set the tenant themselves, such as ``authz_check_state`` (migration
        0009). One round trip instead of three or more."""
        span = _NO_SPAN if self.observer is None else self.observer.transaction({"authz.tenant": tenant_id})
        try:
            with span:
                asked = time.perf_counter()
                async with self.pool.acquire() as conn:
                    if self.on_acquired is not None:
                        self.on_acquired(time.perf_counter() - asked)
                    return await conn.fetchrow(sql, *args)
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        except _CONFLICT as exc:
            raise Conflict("a concurrent change won; retry") from exc

    @asynccontextmanager
    async def tenant(self, tenant_id: str) -> AsyncIterator[asyncpg.Connection]:
        async with self._tx({"authz.tenant": tenant_id}) as conn:
            yield conn

    @asynccontextmanager
    async def operator(self, tenant_id: str = "") -> AsyncIterator[asyncpg.Connection]:
        """Cross-tenant access to the tenants table only (the operator key);
        with ``tenant_id``, also that tenant's rows (to create a tenant and its
        first key in one transaction)."""
        settings = {"authz.operator": "on"}
        if tenant_id:
            settings["authz.tenant"] = tenant_id
        async with self._tx(settings) as conn:
            yield conn


def _unavailable(exc: BaseException) -> Unavailable:
    log.warning("database unavailable: %s", type(exc).__name__)
    return Unavailable("the authorization store is unavailable")


async def _begin(conn: asyncpg.Connection, settings: dict[str, str]) -> None:
    opening = _opening(settings)
    if opening is not None:
        await conn.execute(opening)  # one round trip
        return
    await conn.execute("BEGIN")
    for name, value in settings.items():
        # is_local = true: the setting dies with the transaction, so a
        # pooled connection never carries it into the next request.
        await conn.execute("SELECT set_config($1, $2, true)", name, value)


async def now(conn: Connection) -> datetime:
    """The database's clock, which judges every expiry."""
    value: datetime = await conn.fetchval("SELECT now()")
    return value


def row_count(status: str) -> int:
    """The row count of a command tag such as ``DELETE 3`` or ``UPDATE 0``."""
    return int(status.rsplit(" ", 1)[-1])
