"""Changes across replicas: Postgres LISTEN/NOTIFY.

Triggers announce committed changes:

* ``authz_approvals``: ``"<tenant> <approval id>"`` for every approval change;
  watchers re-read the row under their tenant.
* ``authz_changes``: ``"<table> <tenant> <key...>"`` for channels, subjects,
  group senders and API keys, and ``"tenants <tenant>"`` when a tenant's time
  zone changes; the in-process cache (``authz_service.cache``) drops what
  changed (for ``tenants``: every entry of that tenant).

Each process holds one dedicated listening connection (``Listener``). A
notification only says "look again". If the connection drops, or stops
answering its heartbeat (a silent network closes nothing), notifications may be
missed: every state handler is told (the cache stops serving, watchers
re-read), and the listener reconnects with backoff. Watchers also re-read on a
slow timer (``fallback_interval``), so a lost notification can delay a decision
but never lose it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

APPROVALS = "authz_approvals"
CHANGES = "authz_changes"
APPLICATION_NAME = "authz-listener"

# The cache turns off within 3 s of a silent listener, whatever the other
# settings: a heartbeat every second, each answered within 1.5 s.
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TIMEOUT = 1.5


class Listener:
    """One dedicated LISTEN connection for the process, reconnecting with backoff."""

    def __init__(
        self,
        dsn: str,
        *,
        reconnect_delay: float = 0.2,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
    ) -> None:
        self._dsn = dsn
        # Wait this long before the first reconnect attempt (doubling up to 5 s
        # while attempts fail): a database that just dropped us gets a breath.
        self.reconnect_delay = reconnect_delay
        # A silent network (no FIN, no RST) never closes the connection, and an
        # idle LISTEN connection would not notice it for hours: every
        # ``heartbeat_interval`` a query must answer within ``heartbeat_timeout``,
        # or the connection counts as lost. So notifications are trusted for at
        # most interval + timeout after the path to the database goes silent.
        # The timeout is its own, not AUTHZ_DB_TIMEOUT_SECONDS (up to 300 s):
        # a query that long on a healthy database is a pool's problem, while the
        # cache must stop within 3 s of a stalled listener (issue #15).
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self._handlers: dict[str, list[Callable[[str], None]]] = {}
        self._state_handlers: list[Callable[[bool], None]] = []
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._closed = False

    def on(self, channel: str, handler: Callable[[str], None]) -> None:
        """Call ``handler(payload)`` for each notification on ``channel`` (before start)."""
        self._handlers.setdefault(channel, []).append(handler)

    def on_state(self, handler: Callable[[bool], None]) -> None:
        """Call ``handler(connected)`` whenever the connection is lost or back."""
        self._state_handlers.append(handler)

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        """Connect once (so a bad DSN fails start-up), then keep reconnecting."""
        await self._connect()
        self._task = asyncio.create_task(self._keep_alive(), name="pg-listener")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)
        self._set_state(False)

    async def _connect(self) -> None:
        # Named, so operators (and tests) can tell it from pooled connections.
        conn = await asyncpg.connect(
            self._dsn, timeout=5, server_settings={"application_name": APPLICATION_NAME}
        )
        for channel in self._handlers:
            await conn.add_listener(channel, self._dispatch)
        conn.add_termination_listener(self._on_terminated)
        self._conn = conn
        self._lost.clear()
        self._set_state(True)

    def _dispatch(self, _conn: Any, _pid: int, channel: str, payload: object) -> None:
        for handler in self._handlers.get(channel, ()):
            handler(str(payload))

    def _on_terminated(self, _conn: Any) -> None:
        self._lost.set()

    def _set_state(self, connected: bool) -> None:
        for handler in self._state_handlers:
            handler(connected)

    async def _until_lost(self) -> None:
        """Return when the connection is closed, or stops answering heartbeats."""
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), self.heartbeat_interval)
                return
            except TimeoutError:
                pass
            conn = self._conn
            if conn is None:
                return
            try:
                # asyncio's bound too: asyncpg's own timeout then sends a cancel
                # request, which a stalled network can hold up.
                async with asyncio.timeout(self.heartbeat_timeout):
                    await conn.fetchval("SELECT 1", timeout=self.heartbeat_timeout)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("change listener heartbeat failed: %s", type(exc).__name__)
                conn.terminate()
                return

    async def _keep_alive(self) -> None:
        while not self._closed:
            await self._until_lost()
            log.warning("change listener lost; reconnecting")
            self._conn = None
            self._set_state(False)
            delay = self.reconnect_delay
            while not self._closed:
                await asyncio.sleep(delay)
                try:
                    await self._connect()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                    log.warning("listener reconnect failed: %s", type(exc).__name__)
                    delay = min(max(delay, 0.1) * 2, 5.0)
                    continue
                log.info("change listener back")
                break


class Subscription:
    """Wakes when an approval it covers may have changed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.changed: set[str] = set()

    def _wake(self, approval_id: str | None) -> None:
        if approval_id:
            self.changed.add(approval_id)
        self._event.set()

    async def wait(self, timeout: float) -> None:
        """Return when woken or after ``timeout`` seconds, whichever is first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()

    def drain(self) -> set[str]:
        out, self.changed = self.changed, set()
        return out


class ApprovalNotifier:
    """Local watchers of approvals, woken by ``authz_approvals`` notifications."""

    def __init__(self, listener: Listener, *, fallback_interval: float = 15.0) -> None:
        self.fallback_interval = fallback_interval
        self._subs: dict[tuple[str, str], set[Subscription]] = {}
        listener.on(APPROVALS, self._on_notify)
        # Lost or back: something may have changed unseen; everyone re-reads.
        listener.on_state(lambda _connected: self._wake_all())

    @contextlib.contextmanager
    def subscribe(self, tenant_id: str, approval_id: str = "") -> Iterator[Subscription]:
        """Watch one approval, or with no id every approval of the tenant."""
        sub = Subscription()
        key = (tenant_id, approval_id)
        self._subs.setdefault(key, set()).add(sub)
        try:
            yield sub
        finally:
            subs = self._subs.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[key]

    def _on_notify(self, payload: str) -> None:
        tenant_id, _, approval_id = payload.partition(" ")
        for key in ((tenant_id, approval_id), (tenant_id, "")):
            for sub in self._subs.get(key, ()):
                sub._wake(approval_id)

    def _wake_all(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub._wake(None)
