"""Decisions at the edge: repeat checks answered from answers the server marked
reusable (issue #21).

The client never runs decision code. The server marks an answer (a
``CheckUser`` ALLOW, an allowed ``EvaluateSend``) reusable only when it depends
on nothing but state whose every change it announces on ``WatchChanges``; the
client keeps such answers in a bounded LRU and repeats them for the same
request (same channel, user, chat kind and group; or the same channel, agent,
origin, target), until:

* an invalidation for the answer's channel (and user) arrives on the stream;
* the answer's ``max_age_seconds`` passes (a time-limited pairing's expiry);
* the stream is unhealthy: no message for ``heartbeat_timeout`` (1.5 s by
  default; the server sends one every 0.5 s), an error, or a new stream (a
  reconnect). Any of those drops every answer, and every check goes to the
  server until a stream is back. So no ALLOW is answered here later than
  ``heartbeat_timeout`` after the last message from the server.

Fills race with invalidations: an answer is kept only if no invalidation
arrived while it was asked for, and only if it was marked by the server process
that serves the stream (its notifications reach the stream after its cache, so
an answer it gives after announcing a change reflects the change).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from ..gen.authz.v1 import authz_pb2
from . import changes_http

log = logging.getLogger(__name__)

Resp = TypeVar("Resp", bound=Message)


@dataclass(frozen=True)
class EdgeSettings:
    """How a client reuses answers. ``connect(..., edge=EdgeSettings())`` turns it on."""

    max_entries: int = 10_000
    """Answers kept (least recently used dropped first)."""
    heartbeat_timeout: float = 1.5
    """Stop reusing answers this long after the last message of the change stream."""
    reconnect_delay: float = 0.2
    """First pause before opening the stream again (doubling up to ``max_reconnect_delay``)."""
    max_reconnect_delay: float = 5.0
    changes_url: str = ""
    """The service's HTTP listener (``AUTHZ_HTTP_LISTEN``), e.g. ``http://authz:8081``
    or ``https://…``: the change stream is read there (Connect over HTTP/1.1, about
    half of gRPC's CPU per message: client.changes_http). Empty: over gRPC, on
    the client's channel. Either way the same server answers and the same
    bound holds."""

    def __post_init__(self) -> None:
        if self.max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if not 0 < self.heartbeat_timeout <= 60:
            raise ValueError("heartbeat_timeout must be within (0, 60] seconds")


@dataclass(slots=True)
class _Entry:
    response: Message
    channel_id: str
    user_id: str
    expires: float  # time.monotonic()


class EdgeCache:
    """The reusable answers of one client (one event loop), and whether they
    may be used now."""

    def __init__(self, settings: EdgeSettings | None = None) -> None:
        self.settings = settings or EdgeSettings()
        self.generation = 0
        """Bumped by every invalidation and flush: a fill asked before it is dropped."""
        self.server_id = ""
        """The process serving the change stream; "" while there is none."""
        self.hits = 0
        self.misses = 0
        self.flushes = 0
        self.received = 0
        """Messages heard on change streams."""
        self.kept = 0
        """Answers kept (``put``) since the start."""
        self._other_process: asyncio.Future[None] | None = None
        self._last_message = float("-inf")
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        # channel → user ("" for channel-wide answers) → keys
        self._index: dict[str, dict[str, set[Hashable]]] = {}

    @property
    def healthy(self) -> bool:
        """A stream is open and heard from within the bound."""
        return (
            bool(self.server_id) and time.monotonic() - self._last_message <= self.settings.heartbeat_timeout
        )

    def __len__(self) -> int:
        return len(self._entries)

    # --- answers ----------------------------------------------------------------------

    def get(self, key: Hashable) -> Message | None:
        """The reusable answer for ``key``, or None: ask the server."""
        if not self._entries:
            self.misses += 1
            return None
        now = time.monotonic()
        if now - self._last_message > self.settings.heartbeat_timeout:
            self.flush("no message from the change stream within the bound")
            self.misses += 1
            return None
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry.expires <= now:
            self._drop(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.response

    def put(self, key: Hashable, response: Message, reuse: authz_pb2.Reuse, generation: int) -> None:
        """Keep ``response`` if the server marked it reusable, the stream is
        healthy and served by the process that marked it, and nothing was
        invalidated since the request left (``generation``)."""
        if reuse.server_id != self.server_id:
            other = self._other_process
            if reuse.cacheable and self.server_id and other is not None and not other.done():
                other.set_result(None)
            return
        if not reuse.cacheable or generation != self.generation or not self.healthy:
            return
        self.kept += 1
        if key in self._entries:
            self._drop(key)
        self._entries[key] = _Entry(
            response, reuse.channel_id, reuse.user_id, time.monotonic() + reuse.max_age_seconds
        )
        self._index.setdefault(reuse.channel_id, {}).setdefault(reuse.user_id, set()).add(key)
        while len(self._entries) > self.settings.max_entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        users = self._index.get(entry.channel_id)
        if users is not None:
            keys = users.get(entry.user_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del users[entry.user_id]
            if not users:
                del self._index[entry.channel_id]

    # --- the change stream ----------------------------------------------------------

    def other_process(self) -> asyncio.Future[None]:
        """Resolved once a reusable answer comes from another process than the
        one serving the stream: its answers cannot be kept (``put``)."""
        self._other_process = asyncio.get_running_loop().create_future()
        return self._other_process

    def stream_opened(self) -> None:
        """A new stream: what happened since the last one was not heard."""
        self.flush("change stream (re)opened")
        self.server_id = ""

    def on_message(self, message: authz_pb2.WatchChangesResponse) -> None:
        """A heartbeat, with any invalidations."""
        self.received += 1
        if message.server_id != self.server_id:
            self.flush("change stream served by another process")
            self.server_id = message.server_id
        self.invalidate(message.invalidations)
        self._last_message = time.monotonic()

    def invalidate(self, items: Iterable[authz_pb2.Invalidation]) -> None:
        for item in items:
            self.generation += 1
            if item.all:
                self.flush("")
                continue
            users = self._index.get(item.channel_id)
            if not users:
                continue
            # A user's change ends that user's answers; a channel's, every answer on it.
            targets = [item.user_id] if item.user_id else list(users)
            for user in targets:
                for key in list(users.get(user, ())):
                    self._drop(key)

    def lost(self, reason: str) -> None:
        """The stream broke or went silent: nothing is reused until a new one."""
        self.server_id = ""
        self._last_message = float("-inf")
        self.flush(reason)

    def flush(self, reason: str) -> None:
        self.generation += 1
        if self._entries:
            self.flushes += 1
            if reason:
                log.info("edge answers dropped: %s", reason)
        self._entries.clear()
        self._index.clear()


# --- which requests an answer covers ------------------------------------------------------


def check_key(request: authz_pb2.CheckUserRequest) -> Hashable | None:
    """None: this request always goes to the server."""
    if request.consistent:
        return None
    return ("check", request.channel_id, request.user_id, request.chat_kind, request.group_id)


def send_key(request: authz_pb2.EvaluateSendRequest) -> Hashable | None:
    if request.action == authz_pb2.SEND_ACTION_LIST:
        return None
    return ("send", request.channel_id, request.agent_id, request.origin, request.target)


class EdgeMethod:
    """A stub method answered from the edge when it can: ``await method(request,
    **call_options)`` returns the response, as awaiting the generated stub's call
    does (the call object itself is not exposed)."""

    def __init__(self, method: Any, cache: EdgeCache, key_of: Callable[[Any], Hashable | None]) -> None:
        self._method = method
        self._cache = cache
        self._key_of = key_of

    async def __call__(self, request: Any, **kwargs: Any) -> Any:
        cache = self._cache
        key = self._key_of(request)
        if key is not None:
            found = cache.get(key)
            if found is not None:
                return found
        generation = cache.generation
        response = await self._method(request, **kwargs)
        if key is not None and response.HasField("reuse"):
            cache.put(key, response, response.reuse, generation)
        return response


class EdgeStub:
    """The AuthzService stub with CheckUser and EvaluateSend answered at the edge
    when the server allowed it; every other method is the stub's own."""

    def __init__(self, stub: Any, cache: EdgeCache) -> None:
        self._stub = stub
        self.edge = cache
        self.CheckUser = EdgeMethod(stub.CheckUser, cache, check_key)
        self.EvaluateSend = EdgeMethod(stub.EvaluateSend, cache, send_key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)


class _Watchdog:
    """Cancels the task that reads a stream once no message came for ``timeout``
    seconds. One timer, moved only when it fires (to the last message's time
    plus the bound), rather than a timer set and cancelled for every message:
    with many streams in one process that was a good part of each message's
    cost. The answers' bound does not depend on it (``EdgeCache.get`` judges
    the last message's age itself); it only makes a silent stream reconnect."""

    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._cancelling = task.cancelling()
        self._timeout = timeout
        self._last = self._loop.time()
        self._expired = False
        self._handle = self._loop.call_at(self._last + timeout, self._check)

    def heard(self) -> None:
        self._last = self._loop.time()

    def _check(self) -> None:
        due = self._last + self._timeout
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._check)
            return
        self._expired = True
        self._task.cancel()

    def timed_out(self) -> bool:
        """After a CancelledError: was it this watchdog's, and only its? Then
        the cancellation is taken back (as ``asyncio.timeout`` does)."""
        if not self._expired:
            return False
        self._expired = False
        return self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        self._handle.cancel()


async def follow_changes(stub: Any, cache: EdgeCache) -> None:
    """Keep a WatchChanges stream open for ``cache`` on the gRPC ``stub``, for
    ever (cancel to stop). See ``_follow``."""

    async def one(watchdog: _Watchdog) -> changes_http.Ended:
        call = stub.WatchChanges(authz_pb2.WatchChangesRequest())
        try:
            messages = aiter(call)
            while True:
                message = await anext(messages, None)
                if message is None:
                    return changes_http.Ended("change stream ended")
                watchdog.heard()
                cache.on_message(message)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            return changes_http.Ended(f"change stream failed: {code.name}", code in _LONG_PAUSE_CODES)
        finally:
            call.cancel()

    await _follow(cache, one)


REPICKS = 5
"""Streams opened over HTTP in a row that land on another process than the calls,
before the client follows changes on its gRPC channel instead."""


async def follow_changes_http(target: changes_http.HttpTarget, cache: EdgeCache, stub: Any = None) -> None:
    """``follow_changes`` over the service's HTTP listener (client.changes_http).

    The HTTP connection and the client's gRPC channel are balanced apart: with
    replicas or ``--workers`` the stream may be served by another process than
    the calls, whose answers the edge then cannot keep (``EdgeCache.put``). On
    the first such answer the stream is opened again, to land elsewhere; after
    ``REPICKS`` misses in a row the client follows changes on ``stub`` (its gRPC
    channel, one connection to the process that answers) from then on."""
    misses = 0

    async def one(watchdog: _Watchdog) -> changes_http.Ended:
        nonlocal misses

        def on_message(message: authz_pb2.WatchChangesResponse) -> None:
            watchdog.heard()
            cache.on_message(message)

        other, kept = cache.other_process(), cache.kept
        stream = asyncio.ensure_future(changes_http.open_stream(target, on_message))
        try:
            await asyncio.wait((stream, other), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stream.cancel()
            # Waits without catching a cancellation of this task (close, the watchdog).
            await asyncio.wait((stream,))
        if cache.kept != kept:
            misses = 0  # answers were kept: the stream was on the calls' process
        if not other.done():
            return stream.result()
        misses += 1
        return changes_http.Ended(
            "change stream served by another process than the calls",
            give_up=misses >= REPICKS and stub is not None,
        )

    await _follow(cache, one)
    log.warning(
        "change stream over HTTP kept landing on another process than the calls; following it over gRPC"
    )
    await follow_changes(stub, cache)


_LONG_PAUSE_CODES = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED)


async def _follow(cache: EdgeCache, one: Callable[[_Watchdog], Awaitable[changes_http.Ended]]) -> None:
    """Open streams one after another, until one ends with ``give_up``; ``one``
    reads a stream until it ends. A message later than the bound cancels the
    stream and opens another; an error or the end of the stream drops every
    answer and opens another after a backoff (longer when the server does not
    offer the stream to this key)."""
    settings = cache.settings
    delay = settings.reconnect_delay
    while True:
        cache.stream_opened()
        heard = cache.received
        watchdog = _Watchdog(settings.heartbeat_timeout)
        ended = changes_http.Ended("change stream ended")
        try:
            ended = await one(watchdog)
        except asyncio.CancelledError:
            if not watchdog.timed_out():
                raise
            ended = changes_http.Ended(
                f"no message from the change stream within {settings.heartbeat_timeout:g} s"
            )
        except Exception as exc:  # a bug must not end the stream for good: log it, open another
            log.exception("change stream failed")
            ended = changes_http.Ended(f"change stream failed: {type(exc).__name__}")
        finally:
            watchdog.close()
            cache.lost(ended.reason)
        if ended.give_up:
            log.info("%s", ended.reason)
            return
        if cache.received != heard:
            delay = settings.reconnect_delay  # the stream worked: start the backoff again
        log.info("%s; opening it again", ended.reason)
        await asyncio.sleep(30.0 if ended.long_pause else delay)
        delay = min(delay * 2, settings.max_reconnect_delay)


def start(
    stub: Any, settings: EdgeSettings, http: changes_http.HttpTarget | None = None
) -> tuple[EdgeStub, asyncio.Task[None]]:
    """The edge stub and its stream's task, in the running loop: the stream over
    ``http`` when given, else over the stub's channel."""
    cache = EdgeCache(settings)
    follow = follow_changes(stub, cache) if http is None else follow_changes_http(http, cache, stub)
    task = asyncio.get_running_loop().create_task(follow, name="authz-edge-changes")
    return EdgeStub(stub, cache), task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
