"""This process's open server streams: capped, re-checked, ended.

A stream outlives the authentication that opened it, so (issue #15):

* before every message its API key is checked again (``authenticate``, from
  the cache), and the message is not sent unless the key is still what opened
  the stream;
* a change to a key's row (a revoke, a new role), announced on
  ``authz_changes`` by any replica or made through this process, wakes the
  key's streams at once: the key is re-read and, if it changed, they end;
* while the change listener is down nothing is announced, so keys with open
  streams are re-read from the database every ``RECHECK_SECONDS`` instead;
* a stream ends after ``max_seconds`` (``UNAVAILABLE``: clients open it again,
  and authenticate again);
* open streams are capped per key, per tenant and per process
  (``RESOURCE_EXHAUSTED``), so one key cannot hold the process's watchers.

``rpc.rpc_stream`` runs every streaming handler through ``Streams.open`` and
``Stream.guard``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..cache import StateCache
from ..domain import errors
from ..domain.model import Principal
from ..domain.pairing import Keyring
from ..flows.auth import Credentials, authenticate
from ..store.db import Database

log = logging.getLogger(__name__)

T = TypeVar("T")

# While the change listener is down, keys with open streams are re-read this
# often, so a revoke ends its streams within 1 s even when nobody announces it.
RECHECK_SECONDS = 0.5


@dataclass(frozen=True)
class StreamLimits:
    """AUTHZ_STREAMS_PER_KEY, _PER_TENANT, _PER_PROCESS and AUTHZ_STREAM_MAX_SECONDS."""

    per_key: int = 100
    per_tenant: int = 1000
    per_process: int = 10_000
    max_seconds: float = 3600.0


class Stream:
    """One open stream. ``guard`` ends it when its key changes or its time is up.

    Ending interrupts the handler only while it waits for its next item: the
    stream's own task is cancelled there (and the cancellation taken back), so
    a stream costs no extra task per message, only one timer for its lifetime.
    """

    def __init__(self, key: _KeyStreams, max_seconds: float) -> None:
        self._key = key
        self._max_seconds = max_seconds
        self._error: errors.AuthzError | None = None
        self._task: asyncio.Task[Any] | None = None
        self._waiting = False  # the handler is producing the next item
        self._interrupted = False

    @property
    def principal(self) -> Principal:
        return self._key.principal

    def end(self, error: errors.AuthzError) -> None:
        if self._error is not None:
            return
        self._error = error
        if self._waiting and self._task is not None and not self._interrupted:
            self._interrupted = True
            self._task.cancel()

    def _expire(self) -> None:
        self.end(
            errors.Unavailable(
                f"stream reached its maximum lifetime of {self._max_seconds:g} s; open it again"
            )
        )

    async def guard(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """``items``, until the stream must end: then the reason is raised."""
        self._task = asyncio.current_task()
        timer = asyncio.get_running_loop().call_later(self._max_seconds, self._expire)
        try:
            while True:
                if self._error is not None:
                    raise self._error
                self._waiting = True
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if not self._interrupted or self._task is None:
                        raise
                    self._task.uncancel()  # ours, not the server's: end with the reason instead
                    assert self._error is not None
                    raise self._error from None
                finally:
                    self._waiting = False
                # Before every message: is the key still what opened the stream?
                await self._key.verify_for_message()
                if self._error is not None:
                    raise self._error
                yield item
        finally:
            timer.cancel()
            with contextlib.suppress(Exception):
                await items.aclose()  # type: ignore[attr-defined]


@dataclass(eq=False)
class _KeyStreams:
    """The open streams of one API key, and its re-check."""

    owner: Streams
    token: str = field(repr=False)
    principal: Principal
    streams: set[Stream] = field(default_factory=set)
    dirty: bool = False
    task: asyncio.Task[None] | None = None
    verified_at: float = float("-inf")  # loop time of the last successful check
    # The cache's generation when the last successful check began, if nothing
    # changed in the cache while it ran: -1 when there is none.
    verified_generation: int = -1
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def verify_for_message(self) -> None:
        """``verify`` from the cache; with the cache off (listener down), the
        key's streams share one database read per ``RECHECK_SECONDS`` instead
        of one per message (the timer re-checks that often anyway).

        While the cache is on, a check would give the answer of the last one as
        long as the cache has not changed since (every change, clear and
        listener transition bumps its generation): then the key's streams share
        that answer instead of each judging the key again for each message. A
        change fanned out to 1,000 streams of one key costs one check, not 1,000."""
        cache = self.owner.cache
        if cache is not None and cache.usable:
            if cache.generation != self.verified_generation:
                await self.verify()
            return
        async with self.lock:
            if asyncio.get_running_loop().time() - self.verified_at >= RECHECK_SECONDS:
                await self.verify()

    async def verify(self) -> None:
        """Authenticate the key again (the cache, else the database); end every
        stream of the key if it is revoked, gone or changed."""
        owner = self.owner
        cache = owner.cache
        generation = cache.generation if cache is not None and cache.usable else -1
        self.verified_generation = -1
        try:
            now = await authenticate(owner.db, owner.credentials(self.token), cache)
        except errors.AuthzError as exc:  # revoked or gone (UNAUTHENTICATED), or no database
            self.end(exc)
            return
        except Exception:  # fail closed
            log.exception("stream key re-check failed")
            self.end(errors.Unavailable("cannot re-check the API key"))
            return
        if now != self.principal:
            self.end(errors.PermissionDenied("the API key changed; open the stream again"))
            return
        self.verified_at = asyncio.get_running_loop().time()
        if cache is not None and cache.usable and cache.generation == generation:
            self.verified_generation = generation

    def end(self, error: errors.AuthzError) -> None:
        for stream in list(self.streams):
            stream.end(error)

    def recheck(self) -> None:
        """Re-check soon, once for however many wake-ups arrive meanwhile."""
        self.dirty = True
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="stream-key-check")

    async def _run(self) -> None:
        while self.dirty and self.streams:
            self.dirty = False
            await self.verify()


class Streams:
    """Every open stream of this process, by tenant and key."""

    def __init__(
        self,
        db: Database,
        cache: StateCache | None,
        keyring: Keyring,
        operator_key_hash: bytes | None,
        limits: StreamLimits | None = None,
        *,
        legacy_keys: bool = True,
    ) -> None:
        self.db = db
        self.cache = cache
        self.keyring = keyring
        self.operator_key_hash = operator_key_hash
        self.legacy_keys = legacy_keys
        self.limits = limits or StreamLimits()
        self._keys: dict[tuple[str, str], _KeyStreams] = {}
        self._per_tenant: dict[str, int] = {}
        self._total = 0
        self._poll: asyncio.Task[None] | None = None

    def credentials(self, token: str) -> Credentials:
        """How a stream's key is judged again: as on every call, but without the
        per-peer failure throttle (the key was accepted when the stream opened)."""
        return Credentials(token, self.keyring, self.operator_key_hash, legacy_keys=self.legacy_keys)

    @property
    def open_count(self) -> int:
        return self._total

    @contextlib.contextmanager
    def open(self, principal: Principal, token: str) -> Iterator[Stream]:
        """Register a stream of an authenticated key, or refuse it over a cap."""
        limits = self.limits
        key_id = (principal.tenant_id, principal.key_id)
        entry = self._keys.get(key_id)
        if self._total >= limits.per_process:
            raise errors.ResourceExhausted(
                f"this server holds its limit of {limits.per_process} open streams"
            )
        if self._per_tenant.get(principal.tenant_id, 0) >= limits.per_tenant:
            raise errors.ResourceExhausted(f"the tenant has its limit of {limits.per_tenant} open streams")
        if entry is not None and len(entry.streams) >= limits.per_key:
            raise errors.ResourceExhausted(f"this API key has its limit of {limits.per_key} open streams")
        if entry is None or entry.principal != principal:
            if entry is not None:  # the key changed under its open streams
                entry.end(errors.PermissionDenied("the API key changed; open the stream again"))
            entry = self._keys[key_id] = _KeyStreams(self, token, principal)
        stream = Stream(entry, limits.max_seconds)
        entry.streams.add(stream)
        self._per_tenant[principal.tenant_id] = self._per_tenant.get(principal.tenant_id, 0) + 1
        self._total += 1
        try:
            yield stream
        finally:
            entry.streams.discard(stream)
            self._total -= 1
            left = self._per_tenant[principal.tenant_id] - 1
            if left:
                self._per_tenant[principal.tenant_id] = left
            else:
                del self._per_tenant[principal.tenant_id]
            if not entry.streams and self._keys.get(key_id) is entry:
                del self._keys[key_id]

    # --- what wakes the re-check -------------------------------------------------------

    def recheck_tenant(self, tenant_id: str) -> None:
        """Keys of ``tenant_id`` were changed through this process."""
        for (tenant, _), entry in list(self._keys.items()):
            if tenant == tenant_id:
                entry.recheck()

    def recheck_all(self) -> None:
        for entry in list(self._keys.values()):
            entry.recheck()

    def on_change(self, payload: str) -> None:
        """An ``authz_changes`` notification (see store.notify)."""
        table, _, rest = payload.partition(" ")
        parts = rest.split(" ")
        if table == "api_keys" and len(parts) == 2:
            entry = self._keys.get((parts[0], parts[1]))
            if entry is not None:
                entry.recheck()
        elif table not in ("channels", "subjects", "group_senders", "tenants"):
            self.recheck_all()  # unknown shape: be safe

    def on_listener(self, connected: bool) -> None:
        """Lost or back: changes may have gone unannounced. Re-check every key,
        and while the listener is down keep re-checking on a timer."""
        self.recheck_all()
        if connected:
            if self._poll is not None:
                self._poll.cancel()
                self._poll = None
        elif self._poll is None or self._poll.done():
            with contextlib.suppress(RuntimeError):  # no running loop: closing down
                self._poll = asyncio.get_running_loop().create_task(self._poll_keys(), name="stream-key-poll")

    async def _poll_keys(self) -> None:
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            self.recheck_all()

    async def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
