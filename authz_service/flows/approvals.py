"""What pairing requests and tool-call approvals share: the owner's
notification, how a ResolveApproval call names its target and what it returns,
and the steps every decision takes on a locked approval row (load its channel,
expire it, refuse it unless it is still pending).

``flows.pairing`` and ``flows.tools`` build on this module; it imports neither.
The ResolveApproval dispatcher, which calls both, is ``flows.resolve``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..domain import scope
from ..domain.errors import AuthzError, FailedPrecondition, NotFound
from ..domain.model import Approval, ApprovalAction, ApprovalStatus, Channel
from ..domain.policy import CorruptPolicy
from ..store import approvals, audit, channels, db
from ..store.approvals import FinishInput
from ..store.db import Connection
from . import Context


@dataclass(frozen=True)
class Button:
    action: ApprovalAction
    label: str
    callback_payload: str


@dataclass(frozen=True)
class OwnerNotification:
    owner_id: str
    text: str
    buttons: tuple[Button, ...]


@dataclass(frozen=True)
class ResolveTarget:
    """One of: ``approval_id``; ``callback_payload`` (a button); ``channel_id``
    with ``code`` (a pairing code typed by the approver) or with ``user_id``
    (that user's pending pairing request, when the code was lost)."""

    approval_id: str = ""
    callback_payload: str = ""
    channel_id: str = ""
    code: str = ""
    user_id: str = ""


@dataclass(frozen=True)
class ResolveResult:
    approval: Approval
    requester_text: str
    owner_text: str
    extra: dict[str, str] = field(default_factory=dict)


async def load_channel(conn: Connection, tenant_id: str, channel_id: str, *, for_update: bool) -> Channel:
    try:
        channel = await channels.get(conn, tenant_id, channel_id, for_update=for_update)
    except CorruptPolicy:
        raise FailedPrecondition(f"channel {channel_id!r} has an unreadable policy; set it again") from None
    if channel is None:
        raise unknown_channel(channel_id)
    return channel


def unknown_channel(channel_id: str) -> NotFound:
    return NotFound(f"channel {channel_id!r} not found")


async def load_channel_for(ctx: Context, conn: Connection, channel_id: str, *, for_update: bool) -> Channel:
    """``load_channel`` for the caller: a channel outside a bound key's channels
    is answered exactly as one that does not exist (domain.scope)."""
    if not scope.channel_in_scope(ctx.principal, channel_id):
        raise unknown_channel(channel_id)
    return await load_channel(conn, ctx.tenant_id, channel_id, for_update=for_update)


async def expire(ctx: Context, conn: Connection, approval: Approval) -> Approval | None:
    """Move a pending approval whose time is up to ``expired`` (compare-and-set,
    so it is audited once); None if it was not pending and past its expiry."""
    done = await approvals.finish(
        conn, FinishInput(ctx.tenant_id, approval.approval_id, ApprovalStatus.EXPIRED, "system", live=False)
    )
    if done is not None:
        kind, subject = ("tool", approval.tool.tool_name) if approval.tool else ("pairing", approval.user_id)
        await audit.record(
            conn, ctx.tenant_id, f"{kind}.expired", actor="system", channel_id=approval.channel_id,
            subject=subject, approval_id=approval.approval_id, trace_id=ctx.trace_id,
        )  # fmt: skip
    return done


async def refuse_unless_pending(ctx: Context, conn: Connection, approval: Approval) -> AuthzError | None:
    """Why ``approval`` can no longer be decided (expiring it first if its time is
    up), or None. The expiry must be committed, so it is returned, not raised."""
    if approval.status is not ApprovalStatus.PENDING:
        return FailedPrecondition(f"approval is already {approval.status.value}")
    if approval.expires_at <= await db.now(conn):
        await expire(ctx, conn, approval)
        return FailedPrecondition("approval expired")
    return None
