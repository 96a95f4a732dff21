"""What every RPC shares: authentication, role checks, a trace id, and the one
mapping from domain errors to gRPC status codes."""

from __future__ import annotations

import functools
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc

from ..cache import StateCache
from ..domain import errors
from ..domain.model import Principal, Role
from ..domain.pairing import Keyring
from ..flows import CodeAttemptLimits, Context, ToolApprovalLimits
from ..flows.auth import Credentials, FailureThrottle, authenticate
from ..flows.changes import ChangeFeed
from ..flows.sessions import session_principal
from ..flows.watch import ApprovalFeed
from ..store.db import Database
from .streams import Streams

if TYPE_CHECKING:
    from ..telemetry import RpcCall, Telemetry

log = logging.getLogger(__name__)

STATUS: dict[type[errors.AuthzError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Conflict: grpc.StatusCode.ABORTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


@dataclass
class Gate:
    """Why calls are refused right now; empty means open (see server.Readiness)."""

    reason: str = ""


@dataclass(frozen=True)
class Runtime:
    """Shared by every servicer of one process."""

    db: Database
    keyring: Keyring
    operator_key_hash: bytes | None
    feed: ApprovalFeed
    cache: StateCache | None = None
    gate: Gate = field(default_factory=Gate)
    telemetry: Telemetry | None = None  # None: telemetry off
    code_limits: CodeAttemptLimits = field(default_factory=CodeAttemptLimits)
    auth_throttle: FailureThrottle = field(default_factory=FailureThrottle)
    legacy_keys: bool = True
    """AUTHZ_LEGACY_API_KEYS: accept API keys made before they carried a check."""
    tool_limits: ToolApprovalLimits = field(default_factory=ToolApprovalLimits)
    streams: Streams | None = None  # None: streaming RPCs answer UNAVAILABLE
    changes: ChangeFeed | None = None  # None: no WatchChanges, no answer marked reusable


PEER = ":peer"
"""The caller's address (``peer_of``) in the metadata dict: a pseudo-header
name, which no client metadata can carry."""


SESSION = ":console-session"
"""A web console session (flows.sessions) in the metadata dict, set only by the
console (api.console) from its cookie: like ``PEER`` a pseudo-header name, which
neither gRPC metadata nor the HTTP API's copied headers can carry."""


def peer_of(peer: str) -> str:
    """``ipv4:10.0.0.7:51234`` → ``ipv4:10.0.0.7``: failures count per address,
    not per connection (a new connection must not reset a peer's allowance)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return f"{kind}:{rest.rpartition(':')[0]}"
    return peer


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str) and not key.startswith(":"):
            out[key.lower()] = value
    out[PEER] = peer_of(context.peer() or "")
    session = getattr(context, "console_session", None)  # only api.console's call object has one
    if isinstance(session, str):
        out[SESSION] = session
    return out


def trace_id_of(md: dict[str, str]) -> str:
    """The W3C trace id of the caller's traceparent, or a fresh one."""
    m = _TRACEPARENT.fullmatch(md.get("traceparent", ""))
    return m.group(1) if m else secrets.token_hex(16)


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, Context], Awaitable[Resp]]
Method = Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]
StreamHandler = Callable[[Any, Req, Context], AsyncIterator[Resp]]
StreamMethod = Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]


async def _authorize(
    runtime: Runtime, md: dict[str, str], allowed: set[Role], name: str, trace_id: str, call: RpcCall | None
) -> Context:
    if runtime.gate.reason:  # e.g. the schema is behind this build: no decision at all
        raise errors.Unavailable(runtime.gate.reason)
    principal = await _principal(runtime, md)
    if call is not None:
        call.authorized(principal)
    if principal.role not in allowed and not (principal.role is Role.ADMIN and Role.OPERATOR not in allowed):
        raise errors.PermissionDenied(f"{name} is not allowed for the {principal.role.value} role")
    return Context(
        runtime.db,
        runtime.keyring,
        principal,
        trace_id,
        runtime.cache,
        runtime.code_limits,
        runtime.tool_limits,
    )


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any],
    exc: Exception,
    name: str,
    trace_id: str,
    call: RpcCall | None,
) -> NoReturn:
    if isinstance(exc, errors.AuthzError):
        code = next(STATUS[c] for c in type(exc).__mro__ if c in STATUS)
        if call is not None:
            call.failed(code)
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            log.info("%s refused: %s", name, exc.message, extra={"trace_id": trace_id})
        await context.abort(code, exc.message)
    # A bug, not the caller's fault. Fail closed; never leak details.
    if call is not None:
        call.failed(grpc.StatusCode.INTERNAL)
    log.error("%s failed", name, exc_info=exc, extra={"trace_id": trace_id})
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (trace {trace_id})")


def rpc(
    *roles: Role, read_only: bool = False, changes_keys: bool = False
) -> Callable[[Handler[Req, Resp]], Method[Req, Resp]]:
    """Authenticate, authorize by role, run, and map errors to status codes.

    ``Role.ADMIN`` may call any tenant RPC; the operator key only what lists
    ``Role.OPERATOR``. With telemetry on, the call runs inside its RPC span
    (telemetry.RpcCall), whose trace id becomes the call's trace id.

    Unless ``read_only``, a successful call forgets its tenant's entries in this
    process's cache before answering, so the caller's next call here sees what
    it just wrote (other processes learn through NOTIFY; see authz_service.cache).
    Cached API keys are forgotten only by calls marked ``changes_keys``.
    """
    allowed = set(roles)

    def wrap(handler: Handler[Req, Resp]) -> Method[Req, Resp]:
        name = handler.__name__

        async def run(
            self: Any,
            request: Req,
            context: grpc.aio.ServicerContext[Any, Any],
            md: dict[str, str],
            trace_id: str,
            call: RpcCall | None,
        ) -> Resp:
            try:
                ctx = await _authorize(self.runtime, md, allowed, name, trace_id, call)
                response = await handler(self, request, ctx)
            except Exception as exc:
                await _abort(context, exc, name, trace_id, call)
            cache: StateCache | None = self.runtime.cache
            if not read_only and cache is not None and ctx.tenant_id:
                cache.forget_tenant(ctx.tenant_id, keys=changes_keys)
            streams: Streams | None = self.runtime.streams
            if changes_keys and streams is not None and ctx.tenant_id:
                streams.recheck_tenant(ctx.tenant_id)  # a revoke here ends its streams now, not at NOTIFY
            return response

        @functools.wraps(handler)
        async def method(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
            md = _metadata(context)
            telemetry: Telemetry | None = self.runtime.telemetry
            if telemetry is None:  # off: nothing but this check
                return await run(self, request, context, md, trace_id_of(md), None)
            with telemetry.rpc(name, md) as call:
                return call.respond(await run(self, request, context, md, call.trace_id, call))

        return method

    return wrap


def rpc_stream(*roles: Role) -> Callable[[StreamHandler[Req, Resp]], StreamMethod[Req, Resp]]:
    """``rpc`` for server-streaming methods (the handler is an async generator).

    The stream counts against the caps of ``api.streams`` (``RESOURCE_EXHAUSTED``
    beyond), its key is checked again before every message, and it ends when the
    key is revoked or changed (``UNAUTHENTICATED``, ``PERMISSION_DENIED``) or its
    maximum lifetime is up (``UNAVAILABLE``: open it again).
    """
    allowed = set(roles)

    def wrap(handler: StreamHandler[Req, Resp]) -> StreamMethod[Req, Resp]:
        name = handler.__name__

        async def run(
            self: Any,
            request: Req,
            context: grpc.aio.ServicerContext[Any, Any],
            md: dict[str, str],
            trace_id: str,
            call: RpcCall | None,
        ) -> AsyncIterator[Resp]:
            try:
                ctx = await _authorize(self.runtime, md, allowed, name, trace_id, call)
                streams: Streams | None = self.runtime.streams
                if streams is None:
                    raise errors.Unavailable("streams are not served here")
                with streams.open(ctx.principal, _token(md)) as stream:
                    async for item in stream.guard(handler(self, request, ctx)):
                        yield item
            except Exception as exc:
                await _abort(context, exc, name, trace_id, call)

        @functools.wraps(handler)
        async def method(
            self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Resp]:
            md = _metadata(context)
            telemetry: Telemetry | None = self.runtime.telemetry
            if telemetry is None:  # off: nothing but this check
                async for item in run(self, request, context, md, trace_id_of(md), None):
                    yield item
                return
            with telemetry.rpc(name, md, stream=True) as call:
                async for item in run(self, request, context, md, call.trace_id, call):
                    yield item

        return method

    return wrap


def _token(md: dict[str, str]) -> str:
    auth = md.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthenticated("missing API key: send metadata 'authorization: Bearer <key>'")
    token = token.strip()
    if len(token) > 256:
        raise errors.Unauthenticated("invalid API key")
    return token


async def _principal(runtime: Runtime, md: dict[str, str]) -> Principal:
    session = md.get(SESSION)
    if session is not None:
        return await session_principal(runtime.db, runtime.cache, session)
    creds = Credentials(
        _token(md),
        runtime.keyring,
        runtime.operator_key_hash,
        peer=md.get(PEER, ""),
        throttle=runtime.auth_throttle,
        legacy_keys=runtime.legacy_keys,
    )
    return await authenticate(runtime.db, creds, runtime.cache)
