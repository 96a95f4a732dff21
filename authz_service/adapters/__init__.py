"""Drop-in adapters for agent runtimes, on top of the client SDK.

Written to PraisonAI's protocols (``praisonaiagents`` 1.7.17), which is never
required: its types are imported where they are returned, and the module
imports without it. Every adapter fails closed.

* ``ServiceSendPolicy``: PraisonAI's ``SendPolicyProtocol``
  (``evaluate(target, *, agent_id, session_id, origin) -> SendDecision``),
  answered by ``EvaluateSend`` for the agent its key is bound to, from the
  chat of PraisonAI's session context. Any error denies with
  ``"send_policy evaluation error"``.
* ``ApprovalBackend``: PraisonAI's ``ApprovalProtocol``; asks a human before a
  tool runs. RequestApproval (with a request key, so retries are safe), wait
  through WatchApproval, then RedeemApproval with the same arguments;
  approved only if the redeem allows. ``gated(backend, tool_name)`` wraps an
  async tool with it.
* ``IngressGuard``: CheckUser for an inbound message; any error is a deny
  with reason ``"authz_unavailable"`` and no reply text.
* ``ServicePairingStore`` (``adapters.pairing``): PraisonAI's
  ``PairingProtocol`` for praisonai-bot's Telegram, Slack and Discord bots
  (``store.install(bot)``), with ``PairingCallbackHandler`` for the owner's
  buttons.
* ``ServiceApprovalStore`` (``adapters.approval_store``): PraisonAI's
  ``ApprovalStoreProtocol``, so ``PresentationApprovalBackend`` keeps its
  pending approvals in the service; ``ServicePresentationBackend``, its
  subclass, waits for the service's decision (a tool runs only if the service
  approved it).

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
import re
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from ..client import Client, SyncClient
from ..client.results import ApprovalInfo, ApprovalRequested, CheckResult
from ..gen.authz.v1 import common_pb2 as cm
from ._common import describe, refusal

__all__ = [
    "AUTHZ_UNAVAILABLE",
    "SEND_EVALUATION_ERROR",
    "ApprovalBackend",
    "ApprovalDecision",
    "ApprovalRefused",
    "IngressGuard",
    "OnRequest",
    "PairingCallbackHandler",
    "PendingApproval",
    "SendDecision",
    "ServiceApprovalStore",
    "ServicePairingStore",
    "ServicePresentationBackend",
    "ServiceSendPolicy",
    "gated",
    "send_decision",
]

log = logging.getLogger(__name__)

SEND_EVALUATION_ERROR = "send_policy evaluation error"
AUTHZ_UNAVAILABLE = "authz_unavailable"
MAX_TIMEOUT_SECONDS = 86400
# Extra time to hear the service's own expiry before giving up locally.
_EXPIRY_GRACE = 2.0
# The local wait ends this long before the runtime's own cap on the whole call
# (PraisonAI's ``_timeout``), so the refusal is returned rather than cancelled.
_LOCAL_MARGIN = 0.25
_REQUEST_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


# --- send policy ---------------------------------------------------------------------


@dataclass(frozen=True)
class SendDecision:
    """The seed's ``SendDecision``, used only where PraisonAI is not installed
    (``send_decision`` returns PraisonAI's own class when it is, because its
    ``send_message`` tool checks ``isinstance``)."""

    allow: bool
    reason: str = ""


def send_decision(allow: bool, reason: str = "") -> Any:
    """PraisonAI's ``SendDecision`` when the package is installed, else ours."""
    try:
        from praisonaiagents.gateway.protocols import SendDecision as Decision
    except ImportError:
        return SendDecision(allow, reason)
    return Decision(allow=allow, reason=reason)


def _session_origin() -> str:
    """The conversation the turn came from, ``<platform>:<chat id>``, read from
    PraisonAI's session context ("" outside one: ``origin`` is then never
    allowed). PraisonAI's own ``origin=`` keyword is a platform name, which
    would let a target named after the platform pass as the conversation."""
    try:
        from praisonaiagents.session.context import get_session_context
    except ImportError:
        return ""
    ctx = get_session_context()
    platform, chat = str(ctx.platform or ""), str(ctx.chat_id or "")
    return f"{platform}:{chat}" if platform and chat else ""


def _denial_reason(reason: str, target: str) -> str:
    # The runtime writes "Failed to send to <target>: " before the reason itself.
    prefix = f"Failed to send to {target}: "
    return reason.removeprefix(prefix) if reason else f"target '{target}' is not permitted by send_policy"


class ServiceSendPolicy:
    """PraisonAI's ``SendPolicyProtocol`` backed by ``EvaluateSend``. Register
    it with ``praisonaiagents.session.context.register_send_policy``.

    ``evaluate`` is synchronous (PraisonAI's ``send_message`` calls it so):
    one RPC, bounded by the client's deadline (``connect_sync(timeout=...)``);
    it never raises, and any error denies with "send_policy evaluation error".

    The agent is ``agent_id`` given here, the id the agent key is bound to
    (``authz key create agent --agent ID``): the ``agent_id`` keyword
    PraisonAI passes is the end user's id and is ignored. The origin is the
    chat of PraisonAI's session context, not the ``origin`` keyword (a
    platform name); a runtime without that context gives ``origin``, a
    function returning the turn's conversation (``"<platform>:<chat id>"``)
    from its own state, never from the model's tool arguments.
    ``session_id`` is passed through.
    """

    def __init__(
        self,
        client: SyncClient,
        channel_id: str,
        *,
        agent_id: str,
        origin: Callable[[], str] | None = None,
    ) -> None:
        if not agent_id:
            raise ValueError("agent_id is required: the agent id the agent key is bound to")
        self.client = client
        self.channel_id = channel_id
        self.agent_id = agent_id
        self.origin = origin or _session_origin

    def evaluate(
        self, target: str, *, agent_id: str = "", session_id: str = "", origin: str | None = None
    ) -> Any:
        try:
            result = self.client.evaluate_send(
                self.channel_id,
                target,
                agent_id=self.agent_id,
                session_id=session_id,
                origin=self.origin(),
            )
            if result.allow is True:
                return send_decision(True)
            return send_decision(False, _denial_reason(result.reason, target))
        except Exception as exc:  # fail closed on anything, by the seed's contract
            log.warning(
                "send_policy evaluation failed (channel %s, agent %s): %s; denying",
                self.channel_id,
                self.agent_id,
                describe(exc),
            )
            return send_decision(False, SEND_EVALUATION_ERROR)


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


def _runtime_decision(decision: ApprovalDecision) -> Any:
    """PraisonAI's ``ApprovalDecision`` when the package is installed, else ours."""
    try:
        from praisonaiagents.approval.protocols import ApprovalDecision as Decision
    except ImportError:
        return decision
    return Decision(
        approved=decision.approved,
        reason=decision.reason,
        approver=decision.resolved_by or None,
        metadata={"approval_id": decision.approval_id} if decision.approval_id else {},
    )


class ApprovalBackend:
    """PraisonAI's ``ApprovalProtocol`` backed by the service: pass it to
    ``Agent(approval=...)``. Ask a human before an agent's tool call runs.

    ``request_approval(request)`` takes PraisonAI's ``ApprovalRequest`` and
    returns its ``ApprovalDecision`` (``approver`` is who decided, the service's
    approval id is ``metadata["approval_id"]``, ``modified_args`` stays empty:
    approvers cannot change arguments). ``ask(tool_name, arguments)`` is the
    same without PraisonAI's types. Neither raises (except on cancellation):
    every error, refusal and timeout is ``approved=False`` with a
    model-readable reason, so PraisonAI does not retry the tool and ask again.
    The request key is PraisonAI's ``approval_id``, so a repeated call finds
    the stored request instead of making a second one.

    ``client``: any ``Client``; it opens a channel per event loop, so the
    new loop PraisonAI runs each approval on (``asyncio.run``) is served too.
    ``timeout``: seconds a human has to decide; the service expires the
    request after ``ceil(timeout)`` seconds (expiry never approves).
    ``_timeout``, which PraisonAI reads as its cap on the whole call, is
    ``timeout`` plus a grace to hear that expiry; the wait ends just before
    it. Leave ``ApprovalConfig(timeout=...)`` unset so that cap applies. ``on_request``: called (sync or async) once a request is
    pending, e.g. to post the notification text; its errors are logged.
    ``session_id`` / ``requester_id``: defaults for calls that give none.
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
        self._human_timeout = float(timeout)
        # PraisonAI caps the whole call at ``_timeout``: the human's time, plus
        # the grace to hear the service expire the request.
        self._timeout = self._human_timeout + _EXPIRY_GRACE
        self.risk = risk
        self.on_request = on_request
        self.session_id = session_id
        self.requester_id = requester_id

    @property
    def timeout(self) -> float:
        """Seconds a human has to decide (the service expires the request then)."""
        return self._human_timeout

    async def request_approval(self, request: Any) -> Any:
        """PraisonAI's ``ApprovalProtocol``: one ``ApprovalRequest`` in, its
        ``ApprovalDecision`` out."""
        tool_name = str(getattr(request, "tool_name", "") or "")
        try:
            arguments = dict(request.arguments or {})
        except (AttributeError, TypeError, ValueError):
            return _runtime_decision(
                ApprovalDecision(False, f"tool call '{tool_name}' has unreadable arguments")
            )
        correlation = str(getattr(request, "approval_id", "") or "")
        key = "praisonai:" + correlation if _REQUEST_KEY.fullmatch(correlation) else None
        decision = await self.ask(
            tool_name,
            arguments,
            session_id=str(getattr(request, "session_id", "") or ""),
            request_key=key,
        )
        return _runtime_decision(decision)

    async def ask(
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
        deadline = asyncio.get_running_loop().time() + self._timeout - _LOCAL_MARGIN
        try:
            requested = await self.client.request_approval(
                tool_name,
                _arguments_json(arguments),
                agent_id=self.agent_id,
                session_id=session_id or self.session_id,
                channel_id=self.channel_id,
                requester_id=requester_id or self.requester_id,
                risk=self.risk,
                timeout_seconds=max(1, math.ceil(self._human_timeout)),
                request_key=request_key or _new_request_key(),
                summary=summary,
            )
            info = requested.approval
            approval_id = info.approval_id
            if info.pending:
                await self._notify(requested)
                info = await self._wait(info, deadline)
            if not info.approved:
                return ApprovalDecision(False, refusal(tool_name, info), approval_id, info.resolved_by)
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
                describe(exc),
            )
            return ApprovalDecision(
                False,
                f"tool call '{tool_name}' was not run: the approval service is unavailable",
                approval_id,
            )

    async def _notify(self, requested: ApprovalRequested) -> None:
        if self.on_request is None:
            return
        info = requested.approval
        pending = PendingApproval(
            approval_id=info.approval_id,
            tool_name=info.tool_name,
            arguments_json=info.arguments_json,
            agent_id=info.agent_id,
            approvers=requested.approvers,
            notification_text=requested.notification_text,
            expires_at=info.expires_at,
            created=requested.created,
        )
        try:
            result = self.on_request(pending)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            log.warning("on_request for approval %s failed: %s", info.approval_id, describe(exc))

    async def _wait(self, info: ApprovalInfo, deadline: float) -> ApprovalInfo:
        """The decision, or the last state seen when time ran out. A broken
        stream is watched again by the client (``Client.follow_approval``)."""
        last = info
        try:
            async with asyncio.timeout_at(deadline):
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
            decision = await backend.ask(tool_name, kwargs, summary=summary)
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
            log.warning("CheckUser on channel %s failed: %s; denying", self.channel_id, describe(exc))
            return _UNAVAILABLE


# The bot-side stores, re-exported (they import nothing of the above).
from .approval_store import ServiceApprovalStore, ServicePresentationBackend  # noqa: E402
from .pairing import PairingCallbackHandler, ServicePairingStore  # noqa: E402
