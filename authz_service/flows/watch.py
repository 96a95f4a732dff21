"""Watch reads: one database read per change, for every watcher of this process.

Before, each ``WatchApprovals`` stream re-read every change in a transaction of
its own: 2,000 streams of one tenant turned one approval change into 2,000
transactions and starved other tenants' decisions of connections (issue #15).
Now a tenant's changes are read once, by one task per tenant with watchers
here (``ApprovalFeed``), and handed to each of them. Every watch read (that
one, a stream's first backlog, a ``WatchApproval`` re-read) takes one of
``read_slots`` places first, at most half of the pool, so decisions always
find a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from ..domain.errors import AuthzError, Unavailable
from ..domain.model import Approval
from ..store import approvals
from ..store.db import Database
from ..store.notify import ApprovalNotifier, Subscription

log = logging.getLogger(__name__)

# A watcher this many batches behind (a client not reading) is ended, so one
# stalled stream cannot hold the changes of a busy tenant in memory.
INBOX_BATCHES = 1000
# Watchers woken per turn of the event loop, and the pause between turns.
FANOUT_SLICE = 10
FANOUT_PAUSE = 0.005


@dataclass(eq=False)
class Inbox:
    """What the feed hands one watcher: batches of changed approvals, or the
    error that ends the watch."""

    queue: asyncio.Queue[list[Approval] | AuthzError] = field(
        default_factory=lambda: asyncio.Queue(INBOX_BATCHES)
    )

    behind: bool = False

    def put(self, item: list[Approval] | AuthzError) -> None:
        if self.behind:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.behind = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(Unavailable("the watch fell behind; open it again"))

    async def changes(self) -> AsyncIterator[Approval]:
        while True:
            item = await self.queue.get()
            if isinstance(item, AuthzError):
                raise item
            for approval in item:
                yield approval


@dataclass(eq=False)
class _Tenant:
    subscription: contextlib.ExitStack
    sub: Subscription
    inboxes: set[Inbox] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class ApprovalFeed:
    """This process's watchers of whole tenants, fed by one reader per tenant."""

    def __init__(self, db: Database, notifier: ApprovalNotifier, read_slots: int | None = None) -> None:
        self.db = db
        self.notifier = notifier
        if read_slots is None:
            read_slots = max(1, db.pool.get_max_size() // 2)
        self.reads = asyncio.Semaphore(read_slots)
        self._tenants: dict[str, _Tenant] = {}
        self.reads_done = 0  # change reads, for tests and the benchmark

    @contextlib.contextmanager
    def join(self, tenant_id: str) -> Iterator[Inbox]:
        """Receive every change of ``tenant_id`` from now on (subscribed before
        this returns, so a change after it is never missed)."""
        feed = self._tenants.get(tenant_id)
        if feed is None:
            stack = contextlib.ExitStack()
            sub = stack.enter_context(self.notifier.subscribe(tenant_id))
            feed = self._tenants[tenant_id] = _Tenant(stack, sub)
            feed.task = asyncio.get_running_loop().create_task(
                self._read(tenant_id, feed), name="approval-feed"
            )
        inbox = Inbox()
        feed.inboxes.add(inbox)
        try:
            yield inbox
        finally:
            feed.inboxes.discard(inbox)
            if not feed.inboxes:
                del self._tenants[tenant_id]
                if feed.task is not None:
                    feed.task.cancel()
                feed.subscription.close()

    async def _read(self, tenant_id: str, feed: _Tenant) -> None:
        while True:
            await feed.sub.wait(self.notifier.fallback_interval)
            changed = feed.sub.drain()
            if not changed:
                continue
            batch: list[Approval] | AuthzError
            try:
                async with self.reads, self.db.tenant(tenant_id) as conn:
                    found = [await approvals.get(conn, tenant_id, a) for a in sorted(changed)]
                self.reads_done += 1
                batch = [a for a in found if a is not None]
            except AuthzError as exc:  # e.g. the database is gone: the watchers end with it
                batch = exc
            except Exception:
                log.exception("approval feed read failed")
                batch = Unavailable("cannot read approvals")
            # Wake the watchers a slice at a time: each then serialises and sends
            # its message on this one event loop, and other calls (another
            # tenant's decisions) get their turn between slices.
            for i, inbox in enumerate(list(feed.inboxes), 1):
                inbox.put(batch)
                if i % FANOUT_SLICE == 0:
                    await asyncio.sleep(FANOUT_PAUSE)
