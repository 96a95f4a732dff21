"""Drop-in adapters for agent runtimes, on top of the client SDK.

No agent framework is imported: each adapter has the shape a runtime already
expects (duck typing), and every one of them fails closed.

* ``ServiceSendPolicy`` / ``AsyncServiceSendPolicy``: the seed's
  ``SendPolicyProtocol`` (``evaluate(target, *, agent_id, session_id, origin)
  -> SendDecision``), answered by ``EvaluateSend``. Any error denies with
  ``"send_policy evaluation error"``.
* ``ApprovalBackend``: ask a human before a tool runs. RequestApproval (with a
  request key, so retries are safe), wait through WatchApproval, then
  RedeemApproval with the same arguments; approved only if the redeem allows.
  ``gated(backend, tool_name)`` wraps an async tool with it.
* ``IngressGuard``: CheckUser for an inbound message; any error is a deny
  with reason ``"authz_unavailable"`` and no reply text.

Errors are logged (status code and details, or the exception type) and never
raised to the caller; API keys are never logged.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import grpc

from .client import Client, SyncClient
from .client.results import ApprovalInfo, CheckResult, SendResult, approval_info
from .gen.authz.v1 import authz_pb2
from .gen.authz.v1 import common_pb2 as cm

__all__ = [
    "AUTHZ_UNAVAILABLE",
    "SEND_EVALUATION_ERROR",
    "ApprovalBackend",
    "ApprovalDecision",
    "ApprovalRefused",
    "AsyncServiceSendPolicy",
    "IngressGuard",
    "OnRequest",
    "PendingApproval",
    "SendDecision",
    "ServiceSendPolicy",
    "gated",
]

log = logging.getLogger(__name__)

SEND_EVALUATION_ERROR = "send_policy evaluation error"
AUTHZ_UNAVAILABLE = "authz_unavailable"
MAX_TIMEOUT_SECONDS = 86400
# Extra time to hear the service's own expiry before giving up locally.
_EXPIRY_GRACE = 2.0


def _describe(exc: BaseException) -> str:
    """The error without anything secret: a gRPC status, or the exception type."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details() or ''}"
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        return f"{exc.code().name}: {exc.details() or ''}"
    return type(exc).__name__


# --- send policy ---------------------------------------------------------------------


@dataclass(frozen=True)
class SendDecision:
    """The seed's ``SendDecision``: immutable; ``reason`` is shown to the model."""

    allow: bool
    reason: str | None = None


def _denial(target: str) -> str:
    return f"Failed to send to {target}: target '{target}' is not permitted by send_policy"


def _send_decision(result: SendResult, target: str) -> SendDecision:
    if result.allow is True:
        return SendDecision(True)
    return SendDecision(False, result.reason or _denial(target))


def _send_error(exc: Exception, channel_id: str, agent_id: str) -> SendDecision:
    log.warning(
        "send_policy evaluation failed (channel %s, agent %s): %s; denying",
        channel_id,
        agent_id or "-",
        _describe(exc),
    )
    return SendDecision(False, SEND_EVALUATION_ERROR)


class ServiceSendPolicy:
    """``SendPolicyProtocol`` backed by the service, for runtimes that call
    ``evaluate`` synchronously. Blocks for one RPC (the client's deadline,
    ``connect_sync(timeout=...)``, bounds it); never raises.

    ``agent_id`` falls back to ``default_agent_id``; the service requires one.
    ``origin`` is the conversation the turn came from (policy token "origin").
    """

    def __init__(self, client: SyncClient, channel_id: str, *, default_agent_id: str = "") -> None:
        self.client = client
        self.channel_id = channel_id
        self.default_agent_id = default_agent_id

    def evaluate(
        self, target: str, *, agent_id: str = "", session_id: str = "", origin: str | None = None
    ) -> SendDecision:
        agent = agent_id or self.default_agent_id
        try:
            result = self.client.evaluate_send(
                self.channel_id, target, agent_id=agent, session_id=session_id, origin=origin or ""
            )
            return _send_decision(result, target)
        except Exception as exc:  # fail closed on anything, by the seed's contract
            return _send_error(exc, self.channel_id, agent)


class AsyncServiceSendPolicy:
    """The same policy for async runtimes: ``await policy.aevaluate(...)``."""

    def __init__(self, client: Client, channel_id: str, *, default_agent_id: str = "") -> None:
        self.client = client
        self.channel_id = channel_id
        self.default_agent_id = default_agent_id

    async def aevaluate(
        self, target: str, *, agent_id: str = "", session_id: str = "", origin: str | None = None
    ) -> SendDecision:
        agent = agent_id or self.default_agent_id
        try:
            result = await self.client.evaluate_send(
                self.channel_id, target, agent_id=agent, session_id=session_id, origin=origin or ""
            )
            return _send_decision(result, target)
        except Exception as exc:
            return _send_error(exc, self.channel_id, agent)


# --- tool approvals ------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovalDecision:
    """``approved`` is True only when the service let this exact call run
    (the approval was redeemed). ``reason`` is model-readable."""

    approved: bool
    reason: str
    approval_id: str = ""
    resolved_by: str = ""


@dataclass(frozen=True)
class PendingApproval:
    """What ``on_request`` receives while an approval waits for a human."""

    approval_id: str
    tool_name: str
    arguments_json: str  # canonical JSON, what the decision binds to
    agent_id: str
    approvers: tuple[str, ...]  # "<platform>:<user id>" entries who may decide
    notification_text: str  # the service's text for approvers ("" when not created by this call)
    expires_at: datetime | None
    created: bool  # False when a retry (same request key) found the request


OnRequest = Callable[[PendingApproval], Awaitable[None] | None]


def _arguments_json(arguments: Mapping[str, Any] | str) -> str:
    if isinstance(arguments, str):
        return arguments
    return json.dumps(dict(arguments), allow_nan=False)


def _new_request_key() -> str:
    return "req_" + secrets.token_urlsafe(24)


def _refusal(tool_name: str, info: ApprovalInfo) -> str:
    if info.status in ("denied", "blocked"):
        reason = f"tool call '{tool_name}' was denied by {info.resolved_by or 'an approver'}"
        return f"{reason}: {info.reason}" if info.reason else reason
    if info.status in ("pending", "expired"):
        return f"tool call '{tool_name}' was not approved in time"
    return f"tool call '{tool_name}' was not approved ({info.status})"


class ApprovalBackend:
    """Ask a human before an agent's tool call runs, through the service.

    ``request_approval`` returns an ``ApprovalDecision`` and never raises
    (except on cancellation): every error and timeout is ``approved=False``.
    The request is durable on the service; waiting survives a broken stream
    (the client watches again, with its retry backoff, until ``timeout``).

    ``timeout``: seconds to wait for a decision (the service expires the
    request after ``ceil(timeout)`` seconds; expiry never approves).
    ``on_request``: called (sync or async) once a request is pending, e.g. to
    show its id to someone or post the notification text; its errors are
    logged and the wait goes on.
    ``session_id`` / ``requester_id``: defaults for calls that give none (one
    backend per session is cheap: it holds no connection of its own).
    ``requester_id`` is the platform user id of the person the agent acts
    for (checked against the platform of ``channel_id`` when one is set).
    """

    def __init__(
        self,
        client: Client,
        *,
        agent_id: str,
        channel_id: str = "",
        timeout: float = 300.0,
        risk: cm.Risk.ValueType = cm.RISK_MEDIUM,
        on_request: OnRequest | None = None,
        session_id: str = "",
        requester_id: str = "",
    ) -> None:
        if not (0 < timeout <= MAX_TIMEOUT_SECONDS):
            raise ValueError(f"timeout must be in (0, {MAX_TIMEOUT_SECONDS}] seconds")
        self.client = client
        self.agent_id = agent_id
        self.channel_id = channel_id
        self.timeout = float(timeout)
        self.risk = risk
        self.on_request = on_request
        self.session_id = session_id
        self.requester_id = requester_id

    async def request_approval(
        self,
        tool_name: str,
        arguments: Mapping[str, Any] | str,
        *,
        session_id: str = "",
        requester_id: str = "",
        summary: str = "",
        request_key: str | None = None,
    ) -> ApprovalDecision:
        """``arguments``: a mapping (serialised to JSON) or a JSON string. They
        are serialised again for the redeem, so a call whose arguments changed
        while it waited is refused. ``request_key``: give the same key when
        replaying the same turn (e.g. after a crash) to find the same request."""
        approval_id = ""
        try:
            resp = await self.client.authz.RequestApproval(
                authz_pb2.RequestApprovalRequest(
                    tool_name=tool_name,
                    arguments_json=_arguments_json(arguments),
                    agent_id=self.agent_id,
                    session_id=session_id or self.session_id,
                    channel_id=self.channel_id,
                    requester_id=requester_id or self.requester_id,
                    risk=self.risk,
                    timeout_seconds=max(1, math.ceil(self.timeout)),
                    request_key=request_key or _new_request_key(),
                    summary=summary,
                )
            )
            info = approval_info(resp.approval)
            approval_id = info.approval_id
            if info.pending:
                await self._notify(resp, info)
                info = await self._wait(info)
            if not info.approved:
                return ApprovalDecision(False, _refusal(tool_name, info), approval_id, info.resolved_by)
            redeemed = await self.client.redeem_approval(approval_id, tool_name, _arguments_json(arguments))
            if redeemed.allow is not True:
                reason = redeemed.reason or f"tool call '{tool_name}' was refused"
                return ApprovalDecision(False, reason, approval_id, info.resolved_by)
            by = "a standing grant" if info.grant_id else info.resolved_by or "an approver"
            return ApprovalDecision(
                True, f"tool call '{tool_name}' was approved by {by}", approval_id, info.resolved_by
            )
        except Exception as exc:
            log.warning(
                "approval for tool %s (agent %s, approval %s) failed: %s; not running it",
                tool_name,
                self.agent_id or "-",
                approval_id or "-",
                _describe(exc),
            )
            return ApprovalDecision(
                False,
                f"tool call '{tool_name}' was not run: the approval service is unavailable",
                approval_id,
            )

    async def _notify(self, resp: authz_pb2.RequestApprovalResponse, info: ApprovalInfo) -> None:
        if self.on_request is None:
            return
        pending = PendingApproval(
            approval_id=info.approval_id,
            tool_name=info.tool_name,
            arguments_json=info.arguments_json,
            agent_id=info.agent_id,
            approvers=tuple(resp.approvers),
            notification_text=resp.notification.text if resp.HasField("notification") else "",
            expires_at=info.expires_at,
            created=resp.created,
        )
        try:
            result = self.on_request(pending)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            log.warning("on_request for approval %s failed: %s", info.approval_id, _describe(exc))

    async def _wait(self, info: ApprovalInfo) -> ApprovalInfo:
        """The decision, or the last state seen when time ran out. A broken
        stream is watched again by the client (``Client.follow_approval``)."""
        last = info
        try:
            async with asyncio.timeout(self.timeout + _EXPIRY_GRACE):
                async for update in self.client.follow_approval(info.approval_id):
                    last = update
                    if not update.pending:
                        return update
        except TimeoutError:
            pass
        return last


class ApprovalRefused(PermissionError):
    """Raised by a ``gated`` tool that may not run. ``str(exc)`` is the
    model-readable reason; ``exc.decision`` the full decision."""

    def __init__(self, decision: ApprovalDecision) -> None:
        super().__init__(decision.reason)
        self.decision = decision


P = ParamSpec("P")
R = TypeVar("R")


def gated(
    backend: ApprovalBackend, tool_name: str, *, summary: str = ""
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Wrap an async tool so each call asks for approval first.

    The tool must be called with keyword arguments only (they are what the
    approvers see and what the decision binds to; positional arguments raise
    TypeError). It runs only when the call was approved and redeemed;
    otherwise ``ApprovalRefused`` is raised and the tool does not run.
    The wrapper keeps the tool's name and signature (``functools.wraps``), so
    runtimes that derive tool schemas from signatures still can.
    """

    def wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if args:
                raise TypeError(f"gated tool {tool_name!r} takes keyword arguments only")
            decision = await backend.request_approval(tool_name, kwargs, summary=summary)
            if not decision.approved:
                raise ApprovalRefused(decision)
            return await fn(*args, **kwargs)

        return wrapper

    return wrap


# --- ingress -------------------------------------------------------------------------

_UNAVAILABLE = CheckResult(
    decision="deny", reason=AUTHZ_UNAVAILABLE, text="", agent_id="", permissions=(), trace_id=""
)


class IngressGuard:
    """CheckUser for one channel. Forward the message to the agent only when
    ``result.allowed``; reply with ``result.text`` when it is not empty. Any
    error is a silent deny (reason ``authz_unavailable``)."""

    def __init__(self, client: Client, channel_id: str) -> None:
        self.client = client
        self.channel_id = channel_id

    async def check(
        self,
        user_id: str,
        *,
        text: str = "",
        group_id: str = "",
        mentioned: bool = False,
        display_name: str = "",
    ) -> CheckResult:
        try:
            return await self.client.check_user(
                self.channel_id,
                user_id,
                group_id=group_id,
                mentioned=mentioned,
                text=text,
                display_name=display_name,
            )
        except Exception as exc:
            log.warning("CheckUser on channel %s failed: %s; denying", self.channel_id, _describe(exc))
            return _UNAVAILABLE
