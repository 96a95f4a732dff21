"""Client SDK for the authorization service.

``connect`` returns an async client (grpc.aio) for connectors and agent
runtimes; ``connect_sync`` a thin blocking one for scripts and the CLI. Both:

* send the API key as ``authorization: Bearer <key>`` on every call;
* give every call a deadline (``timeout``, default 5 s) unless it sets one;
* retry UNAVAILABLE, with exponential backoff and jitter within the call's
  deadline, only for the calls the proto declares safe to repeat (its
  ``idempotency_level``; see ``retry``). ResolveApproval, RedeemApproval,
  key, tenant and invite creation and RedeemInvite are never retried: a
  retry could act twice. Every RequestApproval carries a ``request_key``
  (a random one if the caller gave none), so its retry finds the same request;
* speak TLS when given a ``TlsConfig`` (mutual TLS with a client certificate).

Raw generated stubs stay available as ``client.authz`` and ``client.admin``
(every RPC, protobuf-typed). The typed helpers on ``Client`` wrap the calls an
agent runtime makes and return frozen dataclasses (see ``results``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from ..domain.invites import invite_code_in_message
from ..gen.authz.v1 import admin_pb2_grpc, authz_pb2, authz_pb2_grpc
from ..gen.authz.v1 import common_pb2 as cm
from . import edge as edge_answers
from .changes_http import HttpTarget
from .edge import EdgeCache, EdgeSettings
from .plaintext import is_loopback, plaintext_warning
from .results import (
    ApprovalInfo,
    ApprovalRequested,
    CheckResult,
    InviteResult,
    RedeemResult,
    ResolveResult,
    SendResult,
    approval_info,
    approval_requested,
    check_result,
    invite_result,
    resolve_result,
)
from .retry import (
    DEFAULT_RETRY,
    IDEMPOTENT_METHODS,
    NO_RETRY,
    REWATCH_CODES,
    CallRetry,
    RetryPolicy,
    is_idempotent,
    with_request_key,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_RETRY",
    "IDEMPOTENT_METHODS",
    "NO_RETRY",
    "ApprovalInfo",
    "ApprovalRequested",
    "CheckResult",
    "Client",
    "EdgeCache",
    "EdgeSettings",
    "InviteResult",
    "RedeemResult",
    "ResolveResult",
    "RetryPolicy",
    "SendResult",
    "SyncClient",
    "TlsConfig",
    "connect",
    "connect_sync",
    "invite_code_to_redeem",
    "is_idempotent",
    "is_loopback",
    "plaintext_warning",
]

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 5.0

log = logging.getLogger(__name__)


def invite_code_to_redeem(check: authz_pb2.CheckUserResponse, *, direct: bool, text: str) -> str | None:
    """The invite code a connector should pass to RedeemInvite instead of
    answering the message as usual: a direct message from a user who is not
    admitted (PAIRING_REQUIRED, or DENY ``not_allowlisted``) whose text is a
    code, optionally after ``/start``. None: handle the message as usual."""
    if not direct:
        return None
    not_admitted = check.decision == authz_pb2.DECISION_PAIRING_REQUIRED or (
        check.decision == authz_pb2.DECISION_DENY and check.reason == "not_allowlisted"
    )
    return invite_code_in_message(text) if not_admitted else None


@dataclass(frozen=True)
class TlsConfig:
    """Server verification (``root_certificates``; None: the system's roots),
    plus a client certificate and key for mutual TLS."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    # Where the certificate and key were read from (``from_files``): HTTPS loads them
    # from there (the ssl module reads them only from files).
    certificate_file: str | None = field(default=None, compare=False)
    private_key_file: str | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_files(cls, ca: str | None = None, cert: str | None = None, key: str | None = None) -> TlsConfig:
        def read(p: str | None) -> bytes | None:
            return Path(p).read_bytes() if p else None

        return cls(read(ca), read(cert), read(key), cert or None, key or None)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TlsConfig | None:
        """TLS for the CLI, connectors and scripts: on when AUTHZ_TLS is true or
        AUTHZ_CA_FILE is set; AUTHZ_CLIENT_CERT_FILE / AUTHZ_CLIENT_KEY_FILE add a
        client certificate (mutual TLS)."""
        ca, cert, key = (
            env.get("AUTHZ_CA_FILE"),
            env.get("AUTHZ_CLIENT_CERT_FILE"),
            env.get("AUTHZ_CLIENT_KEY_FILE"),
        )
        if bool(cert) != bool(key):
            raise ValueError("AUTHZ_CLIENT_CERT_FILE and AUTHZ_CLIENT_KEY_FILE must be set together")
        if not (ca or cert or env.get("AUTHZ_TLS", "").lower() in ("1", "true", "yes", "on")):
            return None
        return cls.from_files(ca, cert, key)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)

    def ssl_context(self) -> ssl.SSLContext:
        """The same verification and client certificate for HTTPS (the edge's
        change stream over the service's HTTP listener)."""
        roots = None
        if self.root_certificates is not None:
            # The PEM blocks only: a bundle's comments may be UTF-8, which gRPC
            # ignores and the ssl module refuses.
            roots = "".join(m.decode("ascii") for m in _PEM_CERTIFICATE.findall(self.root_certificates))
            if not roots:
                raise ValueError("the CA file holds no PEM certificate")
        context = ssl.create_default_context(cadata=roots)
        if self.certificate_chain is None or self.private_key is None:
            return context
        if self.certificate_file and self.private_key_file:
            context.load_cert_chain(self.certificate_file, self.private_key_file)
            return context
        # Given as bytes only: a private directory for the moment the ssl module reads them.
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert.write_bytes(self.certificate_chain)
            key.touch(mode=0o600)
            key.write_bytes(self.private_key)
            context.load_cert_chain(cert, key)
        return context


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----\s*")


def _method_name(details: Any) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


@dataclass(frozen=True)
class _CallPolicy:
    api_key: str
    timeout: float
    retry: RetryPolicy

    def details(self, details: Any, deadline: float | None) -> Any:
        """The call's details with the key, and the time left to ``deadline``
        (None: keep the call's own timeout, which may be None for a stream)."""
        metadata = [("authorization", f"Bearer {self.api_key}")]
        metadata.extend(details.metadata or ())
        timeout = details.timeout if deadline is None else max(0.0, deadline - time.monotonic())
        return details._replace(metadata=metadata, timeout=timeout)

    def unary(self, details: Any, request: Any) -> tuple[CallRetry, Any]:
        """The schedule of a unary call (its deadline covers every attempt),
        and the request to send on each attempt."""
        method = _method_name(details)
        timeout = details.timeout if details.timeout is not None else self.timeout
        return CallRetry(method, time.monotonic() + timeout, self.retry), with_request_key(method, request)


class _AioUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, policy: _CallPolicy) -> None:
        self.policy = policy

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        retry, request = self.policy.unary(details, request)
        while True:
            call = await continuation(self.policy.details(details, retry.deadline), request)
            try:
                return await call
            except grpc.aio.AioRpcError as exc:
                pause = retry.pause_after(exc)
                if pause is None:
                    raise
                await asyncio.sleep(pause)


class _AioStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Key and default deadline; streams are not retried (resume by calling again)."""

    def __init__(self, policy: _CallPolicy, stream_timeout: float | None) -> None:
        self.policy = policy
        self.stream_timeout = stream_timeout

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.timeout is None:
            details = details._replace(timeout=self.stream_timeout)
        return await continuation(self.policy.details(details, None), request)


class _SyncInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, policy: _CallPolicy, stream_timeout: float | None) -> None:
        self.policy = policy
        self.stream_timeout = stream_timeout

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        retry, request = self.policy.unary(details, request)
        while True:
            outcome = continuation(self.policy.details(details, retry.deadline), request)
            pause = retry.pause_after(outcome.exception())
            if pause is None:
                return outcome
            time.sleep(pause)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.timeout is None:
            details = details._replace(timeout=self.stream_timeout)
        return continuation(self.policy.details(details, None), request)


def _arguments_json(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _approval_request(
    tool_name: str,
    arguments: Any,
    *,
    agent_id: str,
    session_id: str,
    channel_id: str,
    requester_id: str,
    risk: int,
    timeout_seconds: int,
    request_key: str | None,
    summary: str,
) -> authz_pb2.RequestApprovalRequest:
    return authz_pb2.RequestApprovalRequest(
        tool_name=tool_name,
        arguments_json=_arguments_json(arguments),
        agent_id=agent_id,
        session_id=session_id,
        channel_id=channel_id,
        requester_id=requester_id,
        risk=risk,  # type: ignore[arg-type]
        timeout_seconds=timeout_seconds,
        # None: the interceptor gives it a random key, so a retry finds the same request.
        request_key=request_key or "",
        summary=summary,
    )


@dataclass(frozen=True)
class _Stubs:
    channel: grpc.aio.Channel
    authz: authz_pb2_grpc.AuthzServiceAsyncStub
    admin: admin_pb2_grpc.AdminServiceAsyncStub
    edge: EdgeCache | None = None
    edge_task: asyncio.Task[None] | None = None


class Client:
    """Async client. ``authz`` and ``admin`` are the raw stubs; ``retry`` is
    the policy its calls were connected with (``follow_approval`` uses it too).

    A grpc.aio channel belongs to the event loop it was made on, so the
    client opens one channel per running loop, on first use there: one client
    serves a runtime that runs each call in a new loop (``asyncio.run``, as
    PraisonAI does for tools and approvals). Channels of loops that have
    closed are dropped; ``close`` closes the current loop's channel.

    With ``edge`` settings, each loop's channel also keeps a WatchChanges
    stream and answers repeats of CheckUser and EvaluateSend that the server
    marked reusable from its own ``EdgeCache`` (``edge_cache``), through
    ``authz`` and the typed helpers alike (see ``client.edge``)."""

    def __init__(
        self,
        open_channel: Callable[[], grpc.aio.Channel],
        retry: RetryPolicy = DEFAULT_RETRY,
        edge: EdgeSettings | None = None,
        changes: HttpTarget | None = None,
    ) -> None:
        self._open_channel = open_channel
        self.retry = retry
        self.edge = edge
        self._changes = changes
        self._lock = threading.Lock()
        self._by_loop: dict[asyncio.AbstractEventLoop | None, _Stubs] = {}

    def _stubs(self) -> _Stubs:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            for gone in [other for other in self._by_loop if other is not None and other.is_closed()]:
                del self._by_loop[gone]
            stubs = self._by_loop.get(loop)
            if stubs is None:
                channel = self._open_channel()
                authz: Any = authz_pb2_grpc.AuthzServiceStub(channel)
                cache, task = None, None
                if self.edge is not None and loop is not None:
                    authz, task = edge_answers.start(authz, self.edge, self._changes)
                    cache = authz.edge
                stubs = _Stubs(channel, authz, admin_pb2_grpc.AdminServiceStub(channel), cache, task)
                self._by_loop[loop] = stubs
            return stubs

    @property
    def edge_cache(self) -> EdgeCache | None:
        """This loop's reusable answers (None: the edge is off)."""
        return self._stubs().edge

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._stubs().channel

    @property
    def authz(self) -> authz_pb2_grpc.AuthzServiceAsyncStub:
        return self._stubs().authz

    @property
    def admin(self) -> admin_pb2_grpc.AdminServiceAsyncStub:
        return self._stubs().admin

    async def close(self) -> None:
        with self._lock:
            stubs = self._by_loop.pop(asyncio.get_running_loop(), None)
        if stubs is not None:
            if stubs.edge_task is not None:
                await edge_answers.stop(stubs.edge_task)
            await stubs.channel.close(None)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def check_user(
        self,
        channel_id: str,
        user_id: str,
        *,
        group_id: str = "",
        mentioned: bool = False,
        text: str = "",
        display_name: str = "",
    ) -> CheckResult:
        resp = await self.authz.CheckUser(
            authz_pb2.CheckUserRequest(
                channel_id=channel_id,
                user_id=user_id,
                chat_kind=cm.CHAT_KIND_GROUP if group_id else cm.CHAT_KIND_DIRECT,
                group_id=group_id,
                mentioned=mentioned,
                text=text,
                display_name=display_name,
            )
        )
        return check_result(resp)

    async def evaluate_send(
        self, channel_id: str, target: str, *, agent_id: str, session_id: str = "", origin: str = ""
    ) -> SendResult:
        resp = await self.authz.EvaluateSend(
            authz_pb2.EvaluateSendRequest(
                channel_id=channel_id, agent_id=agent_id, session_id=session_id, origin=origin, target=target
            )
        )
        return SendResult(resp.allow, resp.reason, resp.resolved_target)

    async def request_approval(
        self,
        tool_name: str,
        arguments: Any,
        *,
        agent_id: str = "",
        session_id: str = "",
        channel_id: str = "",
        requester_id: str = "",
        risk: int = cm.RISK_MEDIUM,
        timeout_seconds: int = 300,
        request_key: str | None = None,
        summary: str = "",
    ) -> ApprovalRequested:
        """Store a request for a human decision. ``arguments``: a JSON string,
        or any JSON-serialisable value. A fresh ``request_key`` is generated
        when none is given, so retries never create a second request. Returns
        the approval, whether this call created it, the approvers and the
        notification text for them."""
        resp = await self.authz.RequestApproval(
            _approval_request(
                tool_name,
                arguments,
                agent_id=agent_id,
                session_id=session_id,
                channel_id=channel_id,
                requester_id=requester_id,
                risk=risk,
                timeout_seconds=timeout_seconds,
                request_key=request_key,
                summary=summary,
            )
        )
        return approval_requested(resp)

    async def watch_approval(self, approval_id: str) -> AsyncIterator[ApprovalInfo]:
        """The current state, then the decision or expiry; ends there."""
        async for msg in self.authz.WatchApproval(authz_pb2.WatchApprovalRequest(approval_id=approval_id)):
            yield approval_info(msg)

    async def follow_approval(self, approval_id: str) -> AsyncIterator[ApprovalInfo]:
        """``watch_approval`` until the decision or expiry, across broken streams.

        When the stream breaks (UNAVAILABLE, DEADLINE_EXCEEDED: e.g. the service
        restarted) or ends without a decision, it is opened again after the
        retry policy's backoff (restarting after any news), for as long as the
        caller waits: the request is a stored row, so nothing is lost meanwhile,
        and each new stream starts with the current state. Bound it with a
        timeout (``wait_for_decision`` does). With ``NO_RETRY`` a break raises.
        """
        waits = self.retry.backoff()
        while True:
            try:
                async for info in self.watch_approval(approval_id):
                    waits = self.retry.backoff()
                    yield info
                    if not info.pending:
                        return
                cause = "the stream ended before a decision"
                if self.retry.attempts <= 1:
                    raise ConnectionError(f"approval {approval_id}: {cause}")
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in REWATCH_CODES or self.retry.attempts <= 1:
                    raise
                cause = exc.code().name
            pause = next(waits)
            log.info("approval %s: %s; watching again in %.2fs", approval_id, cause, pause)
            await asyncio.sleep(pause)

    async def wait_for_decision(self, approval_id: str, timeout: float | None = None) -> ApprovalInfo:
        """Block until the approval leaves ``pending`` (``follow_approval``: a
        broken stream is watched again). Raises TimeoutError after ``timeout``
        seconds (the service expires it on its own clock)."""

        async def last() -> ApprovalInfo:
            async for info in self.follow_approval(approval_id):
                if not info.pending:
                    return info
            raise ConnectionError(f"approval {approval_id}: the stream ended before a decision")

        return await asyncio.wait_for(last(), timeout)

    async def redeem_approval(self, approval_id: str, tool_name: str, arguments: Any) -> RedeemResult:
        resp = await self.authz.RedeemApproval(
            authz_pb2.RedeemApprovalRequest(
                approval_id=approval_id, tool_name=tool_name, arguments_json=_arguments_json(arguments)
            )
        )
        return RedeemResult(resp.allow, resp.reason, approval_info(resp.approval))

    async def resolve_approval(
        self, approval_id: str, action: int, *, actor_id: str = "", reason: str = ""
    ) -> ResolveResult:
        resp = await self.authz.ResolveApproval(
            authz_pb2.ResolveApprovalRequest(
                approval_id=approval_id,
                action=action,  # type: ignore[arg-type]
                actor_id=actor_id,
                reason=reason,
            )
        )
        return resolve_result(resp)

    async def redeem_invite(
        self, channel_id: str, user_id: str, code: str, *, display_name: str = ""
    ) -> InviteResult:
        """A user sent an invite code (connector keys). Never retried
        automatically: a failed attempt counts against the user's limit."""
        resp = await self.authz.RedeemInvite(
            authz_pb2.RedeemInviteRequest(
                channel_id=channel_id, user_id=user_id, code=code, display_name=display_name
            )
        )
        return invite_result(resp)


@dataclass
class SyncClient:
    """Blocking client: raw stubs plus the calls a synchronous adapter needs."""

    channel: grpc.Channel
    authz: authz_pb2_grpc.AuthzServiceStub
    admin: admin_pb2_grpc.AdminServiceStub

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_user(self, channel_id: str, user_id: str, *, group_id: str = "", text: str = "") -> CheckResult:
        resp = self.authz.CheckUser(
            authz_pb2.CheckUserRequest(
                channel_id=channel_id,
                user_id=user_id,
                chat_kind=cm.CHAT_KIND_GROUP if group_id else cm.CHAT_KIND_DIRECT,
                group_id=group_id,
                text=text,
            )
        )
        return check_result(resp)

    def evaluate_send(
        self, channel_id: str, target: str, *, agent_id: str, session_id: str = "", origin: str = ""
    ) -> SendResult:
        resp = self.authz.EvaluateSend(
            authz_pb2.EvaluateSendRequest(
                channel_id=channel_id, agent_id=agent_id, session_id=session_id, origin=origin, target=target
            )
        )
        return SendResult(resp.allow, resp.reason, resp.resolved_target)


def _check_plaintext(address: str, tls: TlsConfig | None, warn: bool) -> None:
    if warn and tls is None and not is_loopback(address):
        log.warning("%s", plaintext_warning(address), extra={"address": address})


# Client keepalive: a ping every 30 s, even between calls, finds a connection a
# load balancer or NAT dropped silently (and fails over) within 40 s instead of at
# the next call's deadline. The server permits pings this often (server.py).
KEEPALIVE_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000


def _options() -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def connect(
    address: str,
    api_key: str,
    *,
    tls: TlsConfig | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retry: RetryPolicy = DEFAULT_RETRY,
    stream_timeout: float | None = None,
    warn_plaintext: bool = True,
    edge: EdgeSettings | None = None,
) -> Client:
    """An async client. ``timeout``: default deadline per unary call;
    ``stream_timeout``: default deadline of streams (None: none); ``edge``:
    reuse the answers the server marks reusable (off unless given; see
    ``client.edge`` and docs/agent-runtimes.md).

    Without ``tls`` to an address that is not loopback or a unix socket, the key
    travels in the clear: one warning is logged (logger ``authz_service.client``)
    unless ``warn_plaintext`` is False (a caller that tells the user itself)."""
    _check_plaintext(address, tls, warn_plaintext)
    policy = _CallPolicy(api_key, timeout, retry)
    changes = None
    if edge is not None and edge.changes_url:
        changes = HttpTarget.of(edge.changes_url, api_key, tls.ssl_context() if tls is not None else None)
        if changes.ssl_context is None:
            if tls is not None:
                raise ValueError(
                    "changes_url must be https:// when the client uses TLS: the API key would travel in the clear"
                )
            _check_plaintext(changes.authority, None, warn_plaintext)

    def open_channel() -> grpc.aio.Channel:
        interceptors: list[Any] = [_AioUnary(policy), _AioStream(policy, stream_timeout)]
        if tls is None:
            return grpc.aio.insecure_channel(address, options=_options(), interceptors=interceptors)
        return grpc.aio.secure_channel(
            address, tls.credentials(), options=_options(), interceptors=interceptors
        )

    client = Client(open_channel, retry, edge, changes)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return client  # outside a loop: the first loop that uses it opens its channel
    client._stubs()  # the caller's loop gets its channel now
    return client


def connect_sync(
    address: str,
    api_key: str,
    *,
    tls: TlsConfig | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retry: RetryPolicy = DEFAULT_RETRY,
    stream_timeout: float | None = None,
    warn_plaintext: bool = True,
) -> SyncClient:
    """A blocking client; the arguments are :func:`connect`'s."""
    _check_plaintext(address, tls, warn_plaintext)
    policy = _CallPolicy(api_key, timeout, retry)
    base = (
        grpc.insecure_channel(address, options=_options())
        if tls is None
        else grpc.secure_channel(address, tls.credentials(), options=_options())
    )
    channel = grpc.intercept_channel(base, _SyncInterceptor(policy, stream_timeout))
    return SyncClient(
        channel, authz_pb2_grpc.AuthzServiceStub(channel), admin_pb2_grpc.AdminServiceStub(channel)
    )
