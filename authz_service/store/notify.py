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

A connection that answers its heartbeat can still miss notifications: LISTEN
sent through a transaction-mode pooler lands on whichever server session the
pooler picked, and the notifications go there. So the listener checks the
whole path (``probe``): at start-up and every ``probe_interval`` a
notification sent through the pool must come back on ``authz_probe`` within
``probe_timeout``. Until it does, the state handlers hear "down" (the cache
stops serving) and ``problem`` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

APPROVALS = "authz_approvals"
CHANGES = "authz_changes"
PROBE = "authz_probe"
APPLICATION_NAME = "authz-listener"

# The cache turns off within 3 s of a silent listener, whatever the other
# settings: a heartbeat every second, each answered within 1.5 s.
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TIMEOUT = 1.5
# A probe sent through the pool must come back within this long. So cached state
# is trusted at most probe_interval + PROBE_TIMEOUT after notifications stop.
PROBE_TIMEOUT = 2.0
PROBE_SEND_TIMEOUT = 30.0

# Sends ``pg_notify(channel, payload)`` through the service's pool (Database.notify).
ProbeSender = Callable[[str, str], Awaitable[None]]


class Listener:
    """One dedicated LISTEN connection for the process, reconnecting with backoff."""

    def __init__(
        self,
        dsn: str,
        *,
        reconnect_delay: float = 0.2,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
        probe: ProbeSender | None = None,
        probe_interval: float = 5.0,
        probe_timeout: float = PROBE_TIMEOUT,
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
        # The self-check (module docstring). Without ``probe``, a connection
        # that answers its heartbeat is trusted (tests of the listener alone).
        self._probe = probe
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self._probe_token = secrets.token_hex(8)
        self._probe_seq = itertools.count()
        self._probe_waiting: dict[str, asyncio.Future[None]] = {}
        self._probe_task: asyncio.Task[None] | None = None
        self._probe_lock = asyncio.Lock()
        self._state: bool | None = None
        self.problem = "change listener not started"
        """Why notifications are not trusted now; "" while they are."""
        self._handlers[PROBE] = [self._on_probe]

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
        if self._probe is not None:
            self._probe_task = asyncio.create_task(self._probe_loop(), name="pg-listener-probe")

    async def close(self) -> None:
        self._closed = True
        for task in (self._task, self._probe_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)
        self._set_state(False)

    async def _connect(self) -> None:
        # Named, so operators (and tests) can tell it from pooled connections.
        # No named statements: a listener misrouted through a transaction-mode
        # pooler must reach its self-check, not fail on a duplicate statement.
        conn = await asyncpg.connect(
            self._dsn,
            timeout=5,
            server_settings={"application_name": APPLICATION_NAME},
            statement_cache_size=0,
        )
        for channel in self._handlers:
            await conn.add_listener(channel, self._dispatch)
        conn.add_termination_listener(self._on_terminated)
        self._conn = conn
        self._lost.clear()
        if self._probe is None:
            self.problem = ""
            self._set_state(True)
        else:
            await self.check()

    async def check(self) -> bool:
        """Send one probe through the pool and wait for it here; trust the
        notifications (state handlers hear "up") only if it comes back in time."""
        if self._probe is None:
            return self.listening
        async with self._probe_lock:
            if not self.listening:
                return False
            payload = f"{self._probe_token} {next(self._probe_seq)}"
            arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._probe_waiting[payload] = arrived
            try:
                problem = await self._round_trip(payload, arrived)
            finally:
                self._probe_waiting.pop(payload, None)
            if problem is None:  # not sent: no evidence either way
                return bool(self._state)
            if problem and problem != self.problem:
                log.warning("change notifications not trusted: %s", problem)
            elif not problem and self.problem:
                log.info("change notifications arrive: the cache is on")
            self.problem = problem
            self._set_state(not problem and self.listening)
            return not problem

    async def _round_trip(self, payload: str, arrived: asyncio.Future[None]) -> str | None:
        """ "" if the probe came back in time, else why not; None if it could not
        be sent while notifications were trusted (a busy pool is no evidence)."""
        assert self._probe is not None
        try:
            async with asyncio.timeout(PROBE_SEND_TIMEOUT):
                await self._probe(PROBE, payload)
        except Exception as exc:  # the pool's database is down: its own errors say so
            if self._state:
                log.info("change listener self-check not sent (%s)", type(exc).__name__)
                return None
            return f"the change listener's self-check could not send a notification ({type(exc).__name__})"
        try:
            # The clock starts once the NOTIFY is committed.
            async with asyncio.timeout(self.probe_timeout):
                await arrived
        except TimeoutError:
            return (
                f"a notification sent through the pool did not reach the change listener within "
                f"{self.probe_timeout:g} s: the cache is off, every check reads the database. "
                "Point AUTHZ_LISTEN_DATABASE_URL straight at PostgreSQL, not at a pooler"
            )
        return ""

    async def _probe_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.probe_interval)
            if self.listening:
                await self.check()

    def _on_probe(self, payload: str) -> None:
        arrived = self._probe_waiting.get(payload)
        if arrived is not None and not arrived.done():
            arrived.set_result(None)

    def _dispatch(self, _conn: Any, _pid: int, channel: str, payload: object) -> None:
        for handler in self._handlers.get(channel, ()):
            handler(str(payload))

    def _on_terminated(self, _conn: Any) -> None:
        self._lost.set()

    def _set_state(self, connected: bool) -> None:
        if connected == self._state:
            return
        self._state = connected
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
            self.problem = "change listener lost; reconnecting"
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
