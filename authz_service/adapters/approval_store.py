"""PraisonAI's ``ApprovalStoreProtocol`` backed by the service.

praisonai-bot's ``PresentationApprovalBackend(store=...)`` persists each
pending tool approval, lists the outstanding ones when it starts again
(``rehydrate``) and records every decision. With this store those are rows in
the service: they survive a restart of the bot or of the service, every
replica of the bot sees them, and every decision is in the audit trail.

* ``persist`` is RequestApproval with ``request_key = "praisonai:<approval id>"``
  (idempotent: persisting the same request twice stores it once), expiring
  when PraisonAI's wait ends.
* ``list_pending`` is ListApprovals (pending tool approvals of the channel
  whose request key is PraisonAI's), rebuilt as PraisonAI's ``ApprovalRequest``.
* ``resolve`` is ResolveApproval as the person who pressed the button
  (``decision.approver``), whom the service checks against the tool
  approvers. True only if the service recorded that decision; a timeout
  (``metadata["terminal"] == "expired"``) is left to the service's own
  expiry, which lands at the same moment.

Keys: a **connector** key (bound to ``channel_id``) persists and resolves;
``list_pending`` needs ListApprovals, an **approver** key (``lister=``), so the
bot's connector key never reads other requests. Without ``lister``,
``list_pending`` returns nothing (nothing is rehydrated; a tap after a bot
restart is then ignored by PraisonAI, the safe direction). An admin key may
serve as both.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from ..client import Client
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import authz_pb2 as az
from ..gen.authz.v1 import common_pb2 as cm
from ._common import describe

__all__ = ["ServiceApprovalStore"]

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
    """

    def __init__(
        self,
        client: Client,
        *,
        channel_id: str,
        agent_id: str = "",
        lister: Client | None = None,
    ) -> None:
        if not channel_id:
            raise ValueError("channel_id is required: the bot's channel, whose approvers may decide")
        self.client = client
        self.channel_id = channel_id
        self.agent_id = agent_id
        self.lister = lister
        self._ids: dict[str, str] = {}  # PraisonAI's approval id -> the service's

    async def persist(self, approval_id: str, request: Any, *, expires_at: float) -> None:
        """Store a pending approval (RequestApproval). Raises on failure, which
        PraisonAI logs; its wait goes on in memory."""
        seconds = min(MAX_TIMEOUT_SECONDS, max(1, math.ceil(expires_at - time.time())))
        resp = await self.client.authz.RequestApproval(
            az.RequestApprovalRequest(
                tool_name=request.tool_name,
                arguments_json=json.dumps(request.arguments or {}, default=str),
                agent_id=self.agent_id,
                session_id=str(request.session_id or ""),
                channel_id=self.channel_id,
                risk=_RISK.get(str(request.risk_level), cm.RISK_MEDIUM),
                timeout_seconds=seconds,
                request_key=KEY_PREFIX + approval_id,
            )
        )
        self._ids[approval_id] = resp.approval.approval_id

    async def _pending(self, lister: Client) -> list[cm.Approval]:
        found: list[cm.Approval] = []
        token = ""
        while True:
            resp = await lister.admin.ListApprovals(
                adm.ListApprovalsRequest(
                    channel_id=self.channel_id,
                    kind=cm.APPROVAL_KIND_TOOL,
                    status=cm.APPROVAL_STATUS_PENDING,
                    page_token=token,
                )
            )
            found.extend(resp.approvals)
            token = resp.next_page_token
            if not token:
                return found

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
            approvals = await self._pending(self.lister)
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
