"""Client SDK for the authorization service.

``connect`` returns an async client (grpc.aio) for connectors and agent
runtimes; ``connect_sync`` a thin blocking one for scripts and the CLI. Both:

* send the API key as ``authorization: Bearer <key>`` on every call;
* give every call a deadline (``timeout``, default 5 s) unless it sets one;
* retry UNAVAILABLE, with exponential backoff and jitter, only for calls that
  are safe to repeat (``is_idempotent``). ResolveApproval, RedeemApproval,
  key, tenant and invite creation, RedeemInvite, and RequestApproval without
  a ``request_key`` are never retried: a retry could act twice;
* speak TLS when given a ``TlsConfig`` (mutual TLS with a client certificate).

Raw generated stubs stay available as ``client.authz`` and ``client.admin``
(every RPC, protobuf-typed). The typed helpers on ``Client`` wrap the calls an
agent runtime makes and return frozen dataclasses (see ``results``).
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from ..domain.invites import invite_code_in_message
from ..gen.authz.v1 import admin_pb2_grpc, authz_pb2, authz_pb2_grpc
from ..gen.authz.v1 import common_pb2 as cm
from .results import (
    ApprovalInfo,
    CheckResult,
    InviteResult,
    RedeemResult,
    ResolveResult,
    SendResult,
    approval_info,
    check_result,
    invite_result,
    resolve_result,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "NO_RETRY",
    "ApprovalInfo",
    "CheckResult",
    "Client",
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
]

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 5.0


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


# Safe to repeat: reads, puts that converge, and calls the service makes
# idempotent itself (RequestPairing returns the live request).
_IDEMPOTENT = frozenset(
    {
        "CheckUser",
        "EvaluateSend",
        "RequestPairing",
        "WatchApproval",
        "ListTenants",
        "GetTenantSettings",
        "SetTenantSettings",
        "ListApiKeys",
        "RevokeApiKey",
        "SetChannel",
        "GetChannel",
        "ListChannels",
        "DeleteChannel",
        "AllowUser",
        "RemoveUser",
        "BlockUser",
        "UnblockUser",
        "UnpairUser",
        "ListUsers",
        "AllowGroupSender",
        "RemoveGroupSender",
        "ListGroupSenders",
        "ListApprovals",
        "GetApproval",
        "WatchApprovals",
        "ListGrants",
        "RevokeGrant",
        "QueryAudit",
        "ExportUser",
        "PurgeUser",  # a second purge finds nothing left to delete
        "AnonymizeUser",
        "ListInvites",
        "RevokeInvite",  # revoking a revoked invite changes nothing
    }
)


def is_idempotent(method: str, request: Any) -> bool:
    """Whether a call may be repeated after UNAVAILABLE without acting twice."""
    name = method.rsplit("/", 1)[-1]
    if name == "RequestApproval":
        return bool(getattr(request, "request_key", ""))
    return name in _IDEMPOTENT


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.initial_backoff
        for _ in range(self.attempts - 1):
            yield delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter so replicas do not retry in step
            delay = min(delay * self.multiplier, self.max_backoff)


NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class TlsConfig:
    """Server verification (``root_certificates``; None: the system's roots),
    plus a client certificate and key for mutual TLS."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None

    @classmethod
    def from_files(cls, ca: str | None = None, cert: str | None = None, key: str | None = None) -> TlsConfig:
        def read(p: str | None) -> bytes | None:
            return Path(p).read_bytes() if p else None

        return cls(read(ca), read(cert), read(key))

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

    def retry_delays(self, details: Any, request: Any) -> list[float]:
        return list(self.retry.delays()) if is_idempotent(_method_name(details), request) else []


def _deadline(details: Any, policy: _CallPolicy) -> float:
    return time.monotonic() + (details.timeout if details.timeout is not None else policy.timeout)


class _AioUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, policy: _CallPolicy) -> None:
        self.policy = policy

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        deadline = _deadline(details, self.policy)
        delays = self.policy.retry_delays(details, request)
        while True:
            call = await continuation(self.policy.details(details, deadline), request)
            try:
                return await call
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAVAILABLE or not delays:
                    raise
                delay = delays.pop(0)
                if time.monotonic() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)


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
        deadline = _deadline(details, self.policy)
        delays = self.policy.retry_delays(details, request)
        while True:
            outcome = continuation(self.policy.details(details, deadline), request)
            exc = outcome.exception()
            if (
                not isinstance(exc, grpc.RpcError)
                or exc.code() is not grpc.StatusCode.UNAVAILABLE
                or not delays
            ):
                return outcome
            delay = delays.pop(0)
            if time.monotonic() + delay >= deadline:
                return outcome
            time.sleep(delay)

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
        # A key makes the call idempotent, so it can be retried safely.
        request_key=secrets.token_urlsafe(24) if request_key is None else request_key,
        summary=summary,
    )


@dataclass
class Client:
    """Async client. ``authz`` and ``admin`` are the raw stubs."""

    channel: grpc.aio.Channel
    authz: authz_pb2_grpc.AuthzServiceAsyncStub
    admin: admin_pb2_grpc.AdminServiceAsyncStub

    async def close(self) -> None:
        await self.channel.close(None)

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
    ) -> ApprovalInfo:
        """Store a request for a human decision. ``arguments``: a JSON string,
        or any JSON-serialisable value. A fresh ``request_key`` is generated
        when none is given, so retries never create a second request."""
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
        return approval_info(resp.approval)

    async def watch_approval(self, approval_id: str) -> AsyncIterator[ApprovalInfo]:
        """The current state, then the decision or expiry; ends there."""
        async for msg in self.authz.WatchApproval(authz_pb2.WatchApprovalRequest(approval_id=approval_id)):
            yield approval_info(msg)

    async def wait_for_decision(self, approval_id: str, timeout: float | None = None) -> ApprovalInfo:
        """Block until the approval leaves ``pending``. Raises TimeoutError
        after ``timeout`` seconds (the service expires it on its own clock)."""

        async def last() -> ApprovalInfo:
            info: ApprovalInfo | None = None
            async for info in self.watch_approval(approval_id):
                if not info.pending:
                    return info
            raise ConnectionError("the approval stream ended before a decision")

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


def _options() -> list[tuple[str, Any]]:
    return [("grpc.max_receive_message_length", 4 * 1024 * 1024)]


def connect(
    address: str,
    api_key: str,
    *,
    tls: TlsConfig | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retry: RetryPolicy = RetryPolicy(),
    stream_timeout: float | None = None,
) -> Client:
    """An async client. ``timeout``: default deadline per unary call;
    ``stream_timeout``: default deadline of streams (None: none)."""
    policy = _CallPolicy(api_key, timeout, retry)
    interceptors: list[Any] = [_AioUnary(policy), _AioStream(policy, stream_timeout)]
    if tls is None:
        channel = grpc.aio.insecure_channel(address, options=_options(), interceptors=interceptors)
    else:
        channel = grpc.aio.secure_channel(
            address, tls.credentials(), options=_options(), interceptors=interceptors
        )
    return Client(channel, authz_pb2_grpc.AuthzServiceStub(channel), admin_pb2_grpc.AdminServiceStub(channel))


def connect_sync(
    address: str,
    api_key: str,
    *,
    tls: TlsConfig | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retry: RetryPolicy = RetryPolicy(),
    stream_timeout: float | None = None,
) -> SyncClient:
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
