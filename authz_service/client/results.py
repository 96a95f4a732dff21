"""Typed results of the client's helpers: frozen, plain Python values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from ..gen.authz.v1 import authz_pb2
from ..gen.authz.v1 import common_pb2 as cm
from ..names import APPROVAL_KIND, APPROVAL_STATUS, DECISION, INVITE_OUTCOME

# Labels come from the proto (``names``); a value this build does not know is
# "unknown", which no caller treats as allowing anything.
UNKNOWN = "unknown"


def _time(msg: cm.Approval, name: str) -> datetime | None:
    if not msg.HasField(name):  # type: ignore[arg-type]
        return None
    value: datetime = getattr(msg, name).ToDatetime()
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class CheckResult:
    decision: str  # allow | deny | pairing_required | blocked | rate_limited ("unknown": fail closed)
    reason: str
    text: str
    agent_id: str
    permissions: tuple[str, ...]
    trace_id: str
    # ALLOW: the binding's tool lists (empty: no restriction from the binding).
    tools_allowed: tuple[str, ...] = ()
    tools_denied: tuple[str, ...] = ()
    # RATE_LIMITED: when the next message would be admitted.
    retry_after_seconds: int = 0

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"


@dataclass(frozen=True)
class ApprovalRequested:
    """What ``request_approval`` stored: the approval, whether this call
    created it (False: the request key found an earlier one, or a standing
    grant approved it), who may decide (``"<platform>:<user id>"``), and the
    text to show them ("" unless created by this call and pending)."""

    approval: ApprovalInfo
    created: bool
    approvers: tuple[str, ...]
    notification_text: str


def approval_requested(resp: authz_pb2.RequestApprovalResponse) -> ApprovalRequested:
    return ApprovalRequested(
        approval_info(resp.approval),
        resp.created,
        tuple(resp.approvers),
        resp.notification.text if resp.HasField("notification") else "",
    )


@dataclass(frozen=True)
class SendResult:
    allow: bool
    reason: str = ""
    resolved_target: str = ""


@dataclass(frozen=True)
class ApprovalInfo:
    approval_id: str
    kind: str
    status: str  # pending | approved | denied | blocked | expired
    expires_at: datetime | None
    resolved_by: str = ""
    reason: str = ""
    tool_name: str = ""
    arguments_json: str = ""
    arguments_digest: str = ""
    agent_id: str = ""
    grant_id: str = ""
    channel_id: str = ""
    user_id: str = ""
    required_approvals: int = 1
    approved_by: tuple[str, ...] = ()

    @property
    def pending(self) -> bool:
        return self.status == "pending"

    @property
    def approved(self) -> bool:
        return self.status == "approved"


@dataclass(frozen=True)
class RedeemResult:
    allow: bool
    reason: str
    approval: ApprovalInfo


@dataclass(frozen=True)
class ResolveResult:
    approval: ApprovalInfo
    requester_text: str
    owner_text: str


def check_result(resp: authz_pb2.CheckUserResponse) -> CheckResult:
    return CheckResult(
        decision=DECISION.label(resp.decision, UNKNOWN),
        reason=resp.reason,
        text=resp.text,
        agent_id=resp.agent_id,
        permissions=tuple(resp.permissions),
        trace_id=resp.trace_id,
        tools_allowed=tuple(resp.tools.allowed),
        tools_denied=tuple(resp.tools.denied),
        retry_after_seconds=resp.retry_after_seconds,
    )


def approval_info(msg: cm.Approval) -> ApprovalInfo:
    return ApprovalInfo(
        approval_id=msg.approval_id,
        kind=APPROVAL_KIND.label(msg.kind, UNKNOWN),
        status=APPROVAL_STATUS.label(msg.status, UNKNOWN),
        expires_at=_time(msg, "expires_at"),
        resolved_by=msg.resolved_by,
        reason=msg.reason,
        tool_name=msg.tool.tool_name,
        arguments_json=msg.tool.arguments_json,
        arguments_digest=msg.tool.arguments_digest,
        agent_id=msg.tool.agent_id,
        grant_id=msg.grant_id,
        channel_id=msg.channel_id,
        user_id=msg.user_id,
        required_approvals=msg.required_approvals or 1,
        approved_by=tuple(msg.approved_by),
    )


def resolve_result(resp: authz_pb2.ResolveApprovalResponse) -> ResolveResult:
    return ResolveResult(approval_info(resp.approval), resp.requester_text, resp.owner_text)


@dataclass(frozen=True)
class InviteResult:
    """RedeemInvite's answer. ``text``: what to send the user ("" = nothing)."""

    outcome: (
        str  # accepted | already_allowed | invalid | too_many_attempts | refused ("unknown": fail closed)
    )
    text: str
    retry_after_seconds: int
    trace_id: str

    @property
    def allowed(self) -> bool:
        """The user may chat now (just admitted, or already was)."""
        return self.outcome in ("accepted", "already_allowed")


def invite_result(resp: authz_pb2.RedeemInviteResponse) -> InviteResult:
    return InviteResult(
        outcome=INVITE_OUTCOME.label(resp.outcome, UNKNOWN),
        text=resp.text,
        retry_after_seconds=resp.retry_after_seconds,
        trace_id=resp.trace_id,
    )
