"""PraisonAI's ``ApprovalStoreProtocol`` backed by the service, and the
``PresentationApprovalBackend`` that lets the service decide.

praisonai-bot's ``PresentationApprovalBackend(store=...)`` persists each
pending tool approval, lists the outstanding ones when it starts again
(``rehydrate``) and records every decision. With ``ServiceApprovalStore`` those
are rows in the service: they survive a restart of the bot or of the service,
every replica of the bot sees them, and every decision is in the audit trail.

PraisonAI's own backend only *records* in its store: its live waiter ends with
the button that was pressed whatever the store answered, a failed ``persist``
is logged and the wait goes on in memory, and a decision made elsewhere never
reaches it. ``ServicePresentationBackend`` (its subclass) makes the service's
decision the one that counts:

* ``persist`` failing (the service down) refuses the call at once: no prompt
  is posted, nothing waits, the tool does not run.
* a press ends the wait only when the service recorded it (the presser is one
  of its approvers and the request was still pending); otherwise PraisonAI
  answers the presser "could not be processed" and the request stays pending.
* the backend watches the approval (WatchApproval, watched again across
  restarts of the service), so a decision made in the console, the CLI or the
  admin API, or the service's expiry, ends the wait with that decision.

The store's calls:

* ``persist`` is RequestApproval with ``request_key = "praisonai:<approval id>"``
  (idempotent: persisting the same request twice stores it once), expiring
  when PraisonAI's wait ends (rounded down to the second, never after it).
* ``list_pending`` is ListApprovals (pending tool approvals of the channel
  whose request key is PraisonAI's), rebuilt as PraisonAI's ``ApprovalRequest``.
* ``resolve`` is ResolveApproval as the person who pressed the button
  (``decision.approver``), whom the service checks against the tool
  approvers. True only if the service recorded that decision; a timeout
  (``metadata["terminal"] == "expired"``) is left to the service's own
  expiry, which lands no later.

Keys: a **connector** key (bound to ``channel_id``) persists, resolves and
watches; ``list_pending`` needs ListApprovals, an **approver** key
(``lister=``), so the bot's connector key never reads other requests. Without
``lister``, ``list_pending`` returns nothing (nothing is rehydrated; a tap
after a bot restart is then ignored by PraisonAI, the safe direction). An
admin key may serve as both. With ``redeemer=``, an **agent** key's client,
an approved call is redeemed once (RedeemApproval) before PraisonAI runs it:
the approval is then used up, and a refused redeem runs nothing. Without it
the approval stays redeemable by that agent's key after PraisonAI ran the tool.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import math
import time
import uuid
from collections.abc import Iterable
from typing import Any

from ..client import Client
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import authz_pb2 as az
from ..gen.authz.v1 import common_pb2 as cm
from ._common import describe, list_approvals, refusal

__all__ = ["ServiceApprovalStore", "ServicePresentationBackend"]

log = logging.getLogger("authz_service.adapters")

KEY_PREFIX = "praisonai:"
MAX_TIMEOUT_SECONDS = 86400
_RISK = {"low": cm.RISK_LOW, "medium": cm.RISK_MEDIUM, "high": cm.RISK_HIGH, "critical": cm.RISK_CRITICAL}
_RISK_NAME = {v: k for k, v in _RISK.items()}


def _request(approval: cm.Approval, approval_id: str) -> Any:
    from praisonaiagents.approval import ApprovalRequest

    tool = approval.tool
    return ApprovalRequest(
        tool_name=tool.tool_name,
        arguments=json.loads(tool.arguments_json or "{}"),
        risk_level=_RISK_NAME.get(tool.risk, "medium"),
        agent_name=tool.agent_id or None,
        session_id=tool.session_id or None,
        context={},
        approval_id=approval_id,
    )


class ServiceApprovalStore:
    """``praisonaiagents.approval.ApprovalStoreProtocol`` in the service. Pass
    it to ``PresentationApprovalBackend(store=...)``.

    ``client``: a connector key's client (``connect(address, key)``; it serves
    any event loop). ``channel_id``: the bot's channel (approvers' presses are
    checked against its platform). ``agent_id``: recorded as the asking agent
    (the per-agent approver lists apply to it); empty: the tenant's
    approvers. ``lister``: an approver key's client for ``list_pending``.
    ``redeemer``: an agent key's client (the agent's own, as the send policy
    uses): ``ServicePresentationBackend`` then redeems an approved call once
    (RedeemApproval, the arguments the approver saw) before PraisonAI runs it,
    so the approval cannot be used again; a refused redeem runs nothing.
    """

    def __init__(
        self,
        client: Client,
        *,
        channel_id: str,
        agent_id: str = "",
        lister: Client | None = None,
        redeemer: Client | None = None,
    ) -> None:
        if not channel_id:
            raise ValueError("channel_id is required: the bot's channel, whose approvers may decide")
        self.client = client
        self.channel_id = channel_id
        self.agent_id = agent_id
        self.lister = lister
        self.redeemer = redeemer
        self._ids: dict[str, str] = {}  # PraisonAI's approval id -> the service's

    async def redeem(self, approval_id: str, tool_name: str, arguments: Any) -> tuple[bool, str]:
        """RedeemApproval of PraisonAI's approved ``approval_id`` with the
        ``redeemer`` key: (True, "") when the service allows the call once;
        (False, a model-readable reason) otherwise, the service unreachable
        included. Never raises."""
        ours = self._ids.get(approval_id)
        if self.redeemer is None or ours is None:
            return False, f"tool call '{tool_name}' was not run: the approval cannot be redeemed here"
        try:
            # The text persisted, not a new serialisation: the service compares the call's digest.
            resp = await self.redeemer.redeem_approval(ours, tool_name, _arguments_json(arguments))
        except Exception as exc:
            log.warning("redeem: approval %s not redeemed: %s", ours, describe(exc))
            return False, f"tool call '{tool_name}' was not run: the approval service is unavailable"
        if resp.allow is True:
            return True, ""
        return False, resp.reason or f"tool call '{tool_name}' was refused"

    async def persist(self, approval_id: str, request: Any, *, expires_at: float) -> None:
        """Store a pending approval (RequestApproval). Raises on failure
        (``ServicePresentationBackend`` then refuses the call; PraisonAI's own
        backend logs it and waits on in memory). The service's expiry is never
        later than ``expires_at`` (whole seconds, at least one)."""
        seconds = min(MAX_TIMEOUT_SECONDS, max(1, math.floor(expires_at - time.time())))
        resp = await self.client.authz.RequestApproval(
            az.RequestApprovalRequest(
                tool_name=request.tool_name,
                arguments_json=_arguments_json(request.arguments),
                agent_id=self.agent_id,
                session_id=str(request.session_id or ""),
                channel_id=self.channel_id,
                risk=_RISK.get(str(request.risk_level), cm.RISK_MEDIUM),
                timeout_seconds=seconds,
                request_key=KEY_PREFIX + approval_id,
            )
        )
        self._ids[approval_id] = resp.approval.approval_id

    async def list_pending(self) -> list[tuple[str, Any]]:
        """Outstanding approvals PraisonAI persisted here, oldest first, as
        (PraisonAI's approval id, ``ApprovalRequest``). Empty without
        ``lister`` or on any error."""
        if self.lister is None:
            log.warning(
                "list_pending on channel %s: no approver key (lister=...), nothing to rehydrate",
                self.channel_id,
            )
            return []
        try:
            approvals = await list_approvals(
                self.lister,
                adm.ListApprovalsRequest(
                    channel_id=self.channel_id, kind=cm.APPROVAL_KIND_TOOL, status=cm.APPROVAL_STATUS_PENDING
                ),
            )
        except Exception as exc:
            log.warning("list_pending on channel %s failed: %s", self.channel_id, describe(exc))
            return []
        now = time.time()
        out: list[tuple[str, Any]] = []
        for a in sorted(approvals, key=lambda a: (a.created_at.seconds, a.created_at.nanos)):
            key = a.tool.request_key
            if not key.startswith(KEY_PREFIX) or (self.agent_id and a.tool.agent_id != self.agent_id):
                continue
            if a.HasField("expires_at") and a.expires_at.ToDatetime().timestamp() <= now:
                continue  # lapsed: the service marks it expired
            approval_id = key.removeprefix(KEY_PREFIX)
            self._ids[approval_id] = a.approval_id
            out.append((approval_id, _request(a, approval_id)))
        return out

    def service_id(self, approval_id: str) -> str | None:
        """The service's id of PraisonAI's approval ``approval_id`` (known once
        persisted or listed here)."""
        return self._ids.get(approval_id)

    async def load_pending(self) -> list[tuple[str, Any]]:
        """Older name of ``list_pending`` (PraisonAI accepts either)."""
        return await self.list_pending()

    async def resolve(self, approval_id: str, decision: Any) -> bool:
        """Record the decision (ResolveApproval as ``decision.approver``).
        True only when the service recorded it; never raises."""
        terminal = (getattr(decision, "metadata", None) or {}).get("terminal")
        if terminal == "expired":
            return False  # the service expires the request on its own clock
        ours = self._ids.get(approval_id)
        actor = str(getattr(decision, "approver", "") or "")
        if ours is None:
            log.warning("resolve: approval %s is not known to this store", approval_id)
            return False
        if not actor or actor == "system":
            log.warning("resolve: approval %s has no approver to record", ours)
            return False
        approve = terminal == "approved" or (terminal != "denied" and bool(decision.approved))
        action = cm.APPROVAL_ACTION_APPROVE if approve else cm.APPROVAL_ACTION_DENY
        try:
            resp = await self.client.authz.ResolveApproval(
                az.ResolveApprovalRequest(
                    approval_id=ours,
                    action=action,
                    actor_id=actor,
                    reason=str(getattr(decision, "reason", "") or "")[:1024],
                )
            )
        except Exception as exc:
            log.warning("resolve: approval %s not recorded: %s", ours, describe(exc))
            return False
        want = cm.APPROVAL_STATUS_APPROVED if approve else cm.APPROVAL_STATUS_DENIED
        return bool(resp.approval.status == want)


def _arguments_json(arguments: Any) -> str:
    """A call's arguments as persisted and as redeemed: the same text for both."""
    return json.dumps(arguments or {}, default=str)


def _praisonai_base(module: str, name: str) -> type:
    """praisonai-bot's class, or ``object`` where it is not installed (the
    module still imports; the subclass refuses to be made)."""
    try:
        imported = importlib.import_module(module)
    except ImportError:
        return object
    base: type = getattr(imported, name)
    return base


def _outcome(approved: bool, reason: str) -> dict[str, Any]:
    return {"approved": approved, "reason": reason, "modified_args": {}}


_HANDLER = ("praisonai_bot.bots._presentation_approval", "PresentationApprovalHandler")
_BACKEND = ("praisonai_bot.bots._presentation_approval_backend", "PresentationApprovalBackend")


class _ServiceHandler(_praisonai_base(*_HANDLER)):  # type: ignore[misc]
    """PraisonAI's ``PresentationApprovalHandler`` whose waiters end with the
    service's decision only.

    A live waiter's future is kept out of PraisonAI's ``_approval_futures``
    (in ``_live``), so PraisonAI treats every press as it treats one after a
    restart: the store (the service) is the source of truth, and a press it did
    not record ends nothing. The future is completed here, once, in its own
    event loop: PraisonAI runs a tool's approval in a loop of its own while the
    bot's presses arrive on the bot's."""

    def __init__(self, store: ServiceApprovalStore) -> None:
        super().__init__(store=store)
        self.service_store = store
        self._live: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def _complete(self, approval_id: str, outcome: dict[str, Any] | None) -> None:
        """End the live wait for ``approval_id`` with ``outcome`` (None:
        cancel it), if it is still waiting; thread-safe."""
        future = self._live.pop(approval_id, None)
        if future is None:
            return

        def complete() -> None:
            if future.done():
                return
            if outcome is None:
                future.cancel()
            else:
                future.set_result(outcome)

        loop = future.get_loop()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is running:
            complete()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(complete)

    async def request_approval(
        self,
        tool_name: str,
        arguments: dict[str, Any],
        risk_level: str = "medium",
        channel_send_func: Any = None,
        target: str | None = None,
        timeout: float = 60.0,
        allowed_actors: Iterable[str] | None = None,
        approval_id: str | None = None,
        agent_name: str | None = None,
        session_id: str | None = None,
    ) -> dict[str, Any]:
        from praisonaiagents.approval import ApprovalRequest

        approval_id = approval_id or uuid.uuid4().hex
        request = ApprovalRequest(
            tool_name=tool_name,
            arguments=arguments,
            risk_level=risk_level,
            agent_name=agent_name,
            session_id=session_id,
            context={"target": target} if target else {},
            approval_id=approval_id,
        )
        try:
            await self.service_store.persist(approval_id, request, expires_at=time.time() + timeout)
        except Exception as exc:
            # Nothing stored: no human can decide it, so nothing is posted and nothing waits.
            log.warning("approval for tool %s not stored: %s; not running it", tool_name, describe(exc))
            return _outcome(
                False, f"tool call '{tool_name}' was not run: the approval service is unavailable"
            )
        watcher = asyncio.create_task(self._follow(approval_id, tool_name), name="authz-approval-watch")
        try:
            result: dict[str, Any] = await super().request_approval(
                tool_name,
                arguments,
                risk_level=risk_level,
                channel_send_func=channel_send_func,
                target=target,
                timeout=timeout,
                allowed_actors=allowed_actors,
                approval_id=approval_id,
                agent_name=agent_name,
                session_id=session_id,
            )
        finally:
            watcher.cancel()
            self._live.pop(approval_id, None)  # ended, whichever way (PraisonAI's own timeout too)
        if result.get("approved") and self.service_store.redeemer is not None:
            redeemed, reason = await self.service_store.redeem(approval_id, tool_name, arguments)
            if not redeemed:
                return _outcome(False, reason)
        return result

    async def _persist_pending(self, approval_id: str, *args: Any, **kwargs: Any) -> None:
        # Stored already by request_approval (which refuses when it fails). PraisonAI
        # has just made the waiter's future: it is ours to complete.
        future = self._approval_futures.pop(approval_id, None)
        if future is not None:
            self._live[approval_id] = future

    async def handle_approval_command(
        self,
        approval_id: str,
        decision: str,
        modified_args: dict[str, Any] | None = None,
        actor: str | None = None,
        approver: str | None = None,
    ) -> bool:
        # PraisonAI sees no live future, so it ends nothing unless the service
        # recorded the press (a presser who is not its approver, a request decided
        # or expired there, the service down: False). Approvers cannot change the
        # call: the service approved these arguments.
        handled: bool = await super().handle_approval_command(
            approval_id, decision, modified_args=None, actor=actor, approver=approver
        )
        if handled:
            approved = decision in ("allow", "always")
            reason = (
                "User granted permanent approval for this tool"
                if decision == "always"
                else f"User clicked {decision} button"
            )
            self._complete(approval_id, _outcome(approved, reason))
        return handled

    def cleanup(self) -> None:
        for approval_id in list(self._live):
            self._complete(approval_id, None)
        super().cleanup()

    async def _follow(self, approval_id: str, tool_name: str) -> None:
        """End the wait with a decision the service made by any path."""
        ours = self.service_store.service_id(approval_id)
        if ours is None:
            return
        try:
            async for info in self.service_store.client.follow_approval(ours):
                if not info.pending:
                    break
            else:
                return
        except Exception as exc:
            # The wait goes on: a press the service records, or the timeout, ends it.
            log.warning("watching approval %s failed: %s", ours, describe(exc))
            return
        self._pending_approvals.pop(approval_id, None)
        self._mark_resolved(approval_id)
        if info.approved:
            by = "a standing grant" if info.grant_id else info.resolved_by or "an approver"
            self._complete(approval_id, _outcome(True, f"tool call '{tool_name}' was approved by {by}"))
        else:
            self._complete(approval_id, _outcome(False, refusal(tool_name, info)))


class ServicePresentationBackend(_praisonai_base(*_BACKEND)):  # type: ignore[misc]
    """praisonai-bot's ``PresentationApprovalBackend`` (an ``ApprovalProtocol``
    for ``Agent(approval=...)``, wired to a bot by its
    ``register_approval_backend``) on a ``ServiceApprovalStore``, where the
    service's decision is the one that counts: a tool runs only if the service
    approved it, whoever decided and however. See the module's doc.

    The arguments are PraisonAI's, with the store required.
    ``allowed_actors``: PraisonAI's own check of who may press, before the
    service's (give it the platform ids of the service's approvers).
    """

    def __init__(
        self,
        store: ServiceApprovalStore,
        allowed_actors: Iterable[str] | None = None,
        channel_send_func: Any = None,
        target: str | None = None,
        timeout: float = 300.0,
    ) -> None:
        if ServicePresentationBackend.__bases__ == (object,):
            raise ImportError(
                "ServicePresentationBackend needs praisonai-bot: pip install 'authz-service[praisonai]'"
            )
        if not isinstance(store, ServiceApprovalStore):
            raise TypeError("store must be a ServiceApprovalStore")
        super().__init__(
            store=store,
            allowed_actors=allowed_actors,
            channel_send_func=channel_send_func,
            target=target,
            timeout=timeout,
        )
        self._handler = _ServiceHandler(store)
