"""What every approver's copy of an approval notification shows (issue #17):
who receives one, its text, and whether it carries live buttons. Pure: a
function of the approval, the channel and the clock.

A copy shows the request and one status line: while pending the quorum's
progress ("👍 1 of 2 approvals"), then the outcome and who decided
("✅ Approved by telegram:42", "❌ Denied by …", "⛔ Blocked by …",
"⌛ Expired"). Buttons only while pending, and for a tool call only when the
whole call is shown (``messages.tool_notification``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from . import messages
from .model import Approval, ApprovalAction, ApprovalStatus, Channel
from .pairing import chat_approvers
from .tools import tool_approvers

PAIRING_ACTIONS = (ApprovalAction.APPROVE, ApprovalAction.DENY, ApprovalAction.BLOCK)
TOOL_ACTIONS = (ApprovalAction.APPROVE, ApprovalAction.DENY, ApprovalAction.ALWAYS_ALLOW)


@dataclass(frozen=True, slots=True)
class CopyView:
    """One copy's text and the actions of its buttons (none once decided)."""

    text: str
    actions: tuple[ApprovalAction, ...]


def recipients(
    channel: Channel,
    approval: Approval,
    tenant_approvers: Iterable[str],
    agent_approvers: Mapping[str, tuple[str, ...]],
) -> tuple[str, ...]:
    """The platform user ids who get a copy: whoever the service accepts as an
    approver of it from this channel's chat. A pairing request: the owner, the
    channel's approvers and the tenant's approvers on its platform. A tool call:
    its agent's approvers (or the tenant's) on the channel's platform."""
    prefix = f"{channel.platform.value}:"
    if approval.kind == "tool":
        agent = approval.tool.agent_id if approval.tool is not None else ""
        qualified: Iterable[str] = tool_approvers(tuple(tenant_approvers), agent_approvers, agent)
    else:
        qualified = chat_approvers(channel, tenant_approvers)
    return tuple(
        sorted({a[len(prefix) :] for a in qualified if a.startswith(prefix) and len(a) > len(prefix)})
    )


def status_line(approval: Approval) -> str:
    """The outcome and who decided, or the quorum's progress; "" for a pending
    request that needs one approval."""
    status, by = approval.status, approval.resolved_by
    if status is ApprovalStatus.PENDING:
        if approval.required_approvals > 1:
            return f"👍 {len(approval.approved_by)} of {approval.required_approvals} approvals"
        return ""
    if status is ApprovalStatus.EXPIRED:
        return "⌛ Expired"
    if status is ApprovalStatus.APPROVED:
        voters = approval.approved_by or ((by,) if by else ())
        return messages.owner_outcome(ApprovalAction.APPROVE, ", ".join(voters))
    action = {ApprovalStatus.DENIED: ApprovalAction.DENY, ApprovalStatus.BLOCKED: ApprovalAction.BLOCK}
    return messages.owner_outcome(action[status], by) if status in action else status.value


def _with_status(text: str, approval: Approval) -> str:
    line = status_line(approval)
    return f"{text}\n\n{line}" if line else text


def pairing_copy(channel_id: str, approval: Approval, code: str, now: datetime) -> CopyView:
    """A pairing request's copy. Pending: the owner's notification (with the
    code) and its three buttons. Decided: the request without its code line."""
    minutes = max(1, -(-int((approval.expires_at - now).total_seconds()) // 60))
    text = messages.owner_notification(
        channel_id,
        approval.user_id,
        approval.display_name,
        approval.first_message,
        code,
        minutes,
        renewal=approval.renewal,
        handle=approval.handle,
        platform=approval.platform,
    )
    if approval.status is not ApprovalStatus.PENDING:
        text = "\n".join(line for line in text.split("\n") if not line.startswith("Code: "))
        return CopyView(_with_status(text, approval), ())
    return CopyView(_with_status(text, approval), PAIRING_ACTIONS)


def tool_copy(approval: Approval, now: datetime) -> CopyView:
    """A tool call's copy: the call exactly as it will run; buttons only while
    pending and only when the whole call fits (otherwise the text says where
    to read it and decide)."""
    call = approval.tool
    assert call is not None
    seconds = int((approval.expires_at - now).total_seconds())
    notice = messages.tool_notification(call, approval.approval_id, approval.user_id, seconds)
    live = approval.status is ApprovalStatus.PENDING and notice.in_full
    text = notice.text
    if approval.status is not ApprovalStatus.PENDING:
        text = "\n".join(line for line in text.split("\n") if not line.startswith("Expires in "))
    return CopyView(_with_status(text, approval), TOOL_ACTIONS if live else ())
