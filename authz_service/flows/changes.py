"""WatchChanges: the change notifications that end reusable answers, relayed
to the streams of this process (issue #21).

The same ``authz_changes`` notifications that clear this process's cache
(authz_service.cache) are handed, in the same dispatch and after the cache has
dropped the entry, to every WatchChanges stream of the tenant whose key may act
on the channel. So an answer computed here after a change reflects it, and a
client that reuses only answers of the process serving its stream
(``server_id``) never keeps one that a change it was told about altered.

Every ``HEARTBEAT_SECONDS`` each stream gets a message even without changes:
its client stops reusing answers when they stop. While this process does not
hear the notifications (its listener is down or fails its self-check) no
stream is served: the open ones end with UNAVAILABLE, new ones are refused,
and no answer is marked reusable (``live``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from ..domain import scope
from ..domain.errors import AuthzError, Unavailable
from ..domain.model import Principal
from ..domain.reuse import Invalidation, invalidation_of

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 0.5
# Heartbeats go out in this many slices per interval, each stream in its own
# slice, so 1,000 streams are not woken at once (a change would queue behind them).
HEARTBEAT_SLICES = 10
# A stream whose client reads nothing holds at most this many invalidations;
# past it they collapse into one "everything".
INBOX_LIMIT = 1000


@dataclass(eq=False)
class Inbox:
    """One stream's pending invalidations, or the error that ends it.

    Its stream waits on a bare future rather than an ``asyncio.Event``: a change
    wakes every stream of the tenant, and the event's per-wait bookkeeping was
    a measurable part of a 1,000-stream fan-out."""

    principal: Principal
    slice: int = 0
    pending: list[Invalidation] = field(default_factory=list)
    error: AuthzError | None = None
    ready: bool = False
    waiter: asyncio.Future[None] | None = None

    def push(self, item: Invalidation) -> None:
        if len(self.pending) >= INBOX_LIMIT:
            self.pending = [Invalidation(everything=True)]
        else:
            self.pending.append(item)
        self.wake()

    def end(self, error: AuthzError) -> None:
        self.error = error
        self.wake()

    def wake(self) -> None:
        self.ready = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Until the next ``wake`` (at once if one came since the last wait)."""
        if not self.ready:
            self.waiter = loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        self.ready = False


class ChangeFeed:
    """The WatchChanges streams of this process, by tenant."""

    def __init__(self, heartbeat_seconds: float = HEARTBEAT_SECONDS) -> None:
        self.server_id = secrets.token_hex(8)
        """Names this process to clients: they reuse only answers it marked."""
        self.heartbeat_seconds = heartbeat_seconds
        self.live = False
        """True while this process hears every change notification."""
        self._inboxes: dict[str, set[Inbox]] = {}
        # The same inboxes by heartbeat slice: a tick touches only its own.
        self._slices: list[set[Inbox]] = [set() for _ in range(HEARTBEAT_SLICES)]
        self._ticker: asyncio.Task[None] | None = None
        self._opened = 0

    @property
    def open_count(self) -> int:
        return sum(len(s) for s in self._inboxes.values())

    # --- fed by the listener (store.notify), after the cache ----------------------

    def on_change(self, payload: str) -> None:
        parsed = invalidation_of(payload)
        if parsed is None:  # unknown shape: anything may have changed
            log.warning("unknown change notification; ending every change stream")
            self._end_all(Unavailable("the server could not tell what changed; open the stream again"))
            return
        tenant_id, item = parsed
        if item is None:
            return
        for inbox in self._inboxes.get(tenant_id, ()):
            if item.everything or scope.channel_in_scope(inbox.principal, item.channel_id):
                inbox.push(item)

    def on_listener(self, connected: bool) -> None:
        self.live = connected
        if not connected:
            self._end_all(Unavailable("the server lost its change notifications; open the stream again"))

    def _end_all(self, error: AuthzError) -> None:
        for inboxes in self._inboxes.values():
            for inbox in inboxes:
                inbox.end(error)

    # --- streams ------------------------------------------------------------------

    @contextlib.contextmanager
    def subscribe(self, principal: Principal) -> Iterator[Inbox]:
        if not self.live:
            raise Unavailable("the server does not hear change notifications now; try again")
        self._opened += 1
        inbox = Inbox(principal, self._opened % HEARTBEAT_SLICES)
        self._inboxes.setdefault(principal.tenant_id, set()).add(inbox)
        self._slices[inbox.slice].add(inbox)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._beat(), name="change-heartbeat")
        try:
            yield inbox
        finally:
            self._slices[inbox.slice].discard(inbox)
            inboxes = self._inboxes.get(principal.tenant_id)
            if inboxes is not None:
                inboxes.discard(inbox)
                if not inboxes:
                    del self._inboxes[principal.tenant_id]

    async def watch(self, principal: Principal) -> AsyncIterator[tuple[Invalidation, ...]]:
        """A first, empty batch at once, then every batch of invalidations as it
        comes, and an empty one (a heartbeat) on every tick."""
        loop = asyncio.get_running_loop()
        with self.subscribe(principal) as inbox:
            yield ()
            while True:
                await inbox.wait(loop)
                if inbox.error is not None:
                    raise inbox.error
                batch, inbox.pending = tuple(inbox.pending), []
                yield batch

    async def _beat(self) -> None:
        tick = 0
        while self._inboxes:
            await asyncio.sleep(self.heartbeat_seconds / HEARTBEAT_SLICES)
            tick = (tick + 1) % HEARTBEAT_SLICES
            for inbox in list(self._slices[tick]):
                inbox.wake()

    async def close(self) -> None:
        self._end_all(Unavailable("the server is shutting down"))
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
