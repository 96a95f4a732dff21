"""Approval change notifications across replicas: Postgres LISTEN/NOTIFY.

A trigger on ``approvals`` sends ``"<tenant> <approval id>"`` on channel
``authz_approvals`` when a change commits. Each process holds one dedicated
listening connection and wakes the local watchers of that approval (or of the
whole tenant).

A notification only says "look again": watchers always re-read the row under
their tenant. If the listening connection drops, notifications may be missed,
so every watcher is woken to re-read, and the listener reconnects with backoff.
Watchers also re-read on a slow timer (``fallback_interval``), so a lost
notification can delay a decision but never lose it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

CHANNEL = "authz_approvals"


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
    def __init__(self, dsn: str, *, fallback_interval: float = 15.0) -> None:
        self._dsn = dsn
        self.fallback_interval = fallback_interval
        self._subs: dict[tuple[str, str], set[Subscription]] = {}
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._closed = False

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        """Connect once (so a bad DSN fails start-up), then keep reconnecting."""
        await self._connect()
        self._task = asyncio.create_task(self._keep_alive(), name="approval-notifier")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)

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

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=5)
        await conn.add_listener(CHANNEL, self._on_notify)
        conn.add_termination_listener(self._on_terminated)
        self._conn = conn
        self._lost.clear()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        tenant_id, _, approval_id = str(payload).partition(" ")
        for key in ((tenant_id, approval_id), (tenant_id, "")):
            for sub in self._subs.get(key, ()):
                sub._wake(approval_id)

    def _on_terminated(self, _conn: Any) -> None:
        self._lost.set()

    def _wake_all(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub._wake(None)

    async def _keep_alive(self) -> None:
        delay = 0.2
        while not self._closed:
            await self._lost.wait()
            log.warning("approval notification listener lost; reconnecting")
            self._conn = None
            self._wake_all()  # re-read: something may have changed unseen
            while not self._closed:
                try:
                    await self._connect()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                    log.warning("listener reconnect failed: %s", type(exc).__name__)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                delay = 0.2
                log.info("approval notification listener back")
                self._wake_all()
                break
