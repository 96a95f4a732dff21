"""When the SDK repeats a call: the one retry rule, derived from the proto.

Every rpc in ``proto/authz/v1`` declares whether it is safe to repeat with
``option idempotency_level`` (``NO_SIDE_EFFECTS`` or ``IDEMPOTENT``); an rpc
without one may act twice if repeated (a second approval decision, a second
key, one more failed invite attempt) and is never retried.

* A unary call that is safe to repeat is retried after ``UNAVAILABLE``, with
  exponential backoff and jitter (``RetryPolicy``), within the call's own
  deadline: the deadline covers every attempt, so ``DEADLINE_EXCEEDED`` is
  final. No other status is retried: ``RESOURCE_EXHAUSTED`` (too many failed
  code lookups) would only add failures, and the rest are answers.
* A stream is never repeated by the interceptors (part of it may have been
  read). ``Client.follow_approval`` re-opens WatchApproval, which starts
  with the current state, after it breaks.
* ``RequestApproval`` is idempotent per ``request_key``; the SDK gives a
  random key to every such call that has none, so a retry finds the request
  the first attempt stored instead of making a second.

Both clients (async and blocking) use the same ``CallRetry`` schedule.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.descriptor_pb2 import MethodOptions

from ..gen.authz.v1 import admin_pb2, authz_pb2

__all__ = [
    "DEFAULT_RETRY",
    "IDEMPOTENT_METHODS",
    "NO_RETRY",
    "REWATCH_CODES",
    "CallRetry",
    "RetryPolicy",
    "is_idempotent",
    "with_request_key",
]

log = logging.getLogger("authz_service.client")

_REQUEST_APPROVAL = f"/{authz_pb2.DESCRIPTOR.services_by_name['AuthzService'].full_name}/RequestApproval"


def _idempotent_methods() -> frozenset[str]:
    return frozenset(
        f"/{service.full_name}/{method.name}"
        for module in (authz_pb2, admin_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if method.GetOptions().idempotency_level != MethodOptions.IDEMPOTENCY_UNKNOWN
    )


IDEMPOTENT_METHODS = _idempotent_methods()
"""Full method paths (``/authz.v1.AuthzService/CheckUser``) whose rpc declares an
``idempotency_level``: the calls the SDK may repeat."""


def is_idempotent(method: str, request: object = None) -> bool:
    """Whether the proto declares ``method`` (a full path, as gRPC names it) safe
    to repeat after UNAVAILABLE. ``request`` is not consulted; it is accepted for
    callers written when RequestApproval's answer depended on its key (the SDK
    now gives every RequestApproval a key)."""
    return method in IDEMPOTENT_METHODS


def with_request_key(method: str, request: Any) -> Any:
    """``request``, with a random ``request_key`` if it is a RequestApproval
    without one: the key is what makes a repeat find the stored request."""
    if method != _REQUEST_APPROVAL or not isinstance(request, authz_pb2.RequestApprovalRequest):
        return request
    if request.request_key:
        return request
    keyed = authz_pb2.RequestApprovalRequest()
    keyed.CopyFrom(request)
    keyed.request_key = secrets.token_urlsafe(24)
    return keyed


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how fast a call that is safe to repeat is repeated.

    ``attempts`` counts the first try (1: never repeat). The n-th retry waits
    ``initial_backoff * multiplier**(n-1)`` seconds, at most ``max_backoff``,
    times a random factor in [0.5, 1] so that many clients do not retry in step.
    """

    attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def backoff(self) -> Iterator[float]:
        """The jittered waits before each repeat, without end (callers bound it)."""
        delay = self.initial_backoff
        while True:
            yield delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter so replicas do not retry in step
            delay = min(delay * self.multiplier, self.max_backoff)

    def delays(self) -> Iterator[float]:
        """The waits before each of the ``attempts - 1`` repeats of a unary call."""
        waits = self.backoff()
        for _ in range(self.attempts - 1):
            yield next(waits)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)

# A WatchApproval (declared IDEMPOTENT) that breaks with these is opened again by
# ``Client.follow_approval``. A stream's deadline is its own (``stream_timeout``),
# so running out of it only means "watch again"; a unary deadline is final. A server
# shutting down ends its open streams CANCELLED (the caller's own cancellation is
# asyncio's CancelledError, never this status), so that is watched again too.
REWATCH_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


@dataclass
class CallRetry:
    """The retry schedule of one unary call, for both clients' interceptors."""

    method: str
    deadline: float  # time.monotonic() by which every attempt must be over
    policy: RetryPolicy
    _delays: list[float] = field(init=False)
    _attempt: int = field(init=False, default=1)

    def __post_init__(self) -> None:
        self._delays = list(self.policy.delays()) if is_idempotent(self.method) else []

    def pause_after(self, error: BaseException | None) -> float | None:
        """Seconds to wait before the next attempt after ``error``; None: the
        outcome stands (success, an answer, not repeatable, out of attempts, or
        the wait would outlast the deadline)."""
        code = _status(error)
        if code is not grpc.StatusCode.UNAVAILABLE or not self._delays:
            return None
        delay = self._delays.pop(0)
        if time.monotonic() + delay >= self.deadline:
            return None
        self._attempt += 1
        log.info(
            "%s: %s; retrying in %.2fs (attempt %d of %d)",
            self.method.rsplit("/", 1)[-1],
            code.name,
            delay,
            self._attempt,
            self.policy.attempts,
        )
        return delay


def _status(error: BaseException | None) -> grpc.StatusCode | None:
    """The status of a failed call, from either client (None: not an RPC error)."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code()
    if isinstance(error, grpc.RpcError) and isinstance(error, grpc.Call):
        return error.code()
    return None
