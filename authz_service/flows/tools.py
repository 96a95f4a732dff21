"""Tool-call approvals: request, watch, resolve, redeem; and standing grants.

Durability: a request is a row, written (and committed) before the response
that lets anyone prompt a human, so a restart loses nothing and keeps the
original expiry. Decisions are compare-and-set from ``pending`` (see
``store.approvals.finish``); expiry is judged by the database clock and
turns a request ``expired``, never approved. Redeeming checks the exact call
against the approved digest and succeeds once.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..domain import ids, messages, scope
from ..domain import tools as dt
from ..domain.errors import (
    AuthzError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from ..domain.model import Approval, ApprovalAction, ApprovalStatus, Channel, Grant, Risk, Role, ToolCall
from ..domain.pairing import new_approval_id
from ..store import approvals, audit, db, grants, tenants
from ..store.approvals import FinishInput, ToolApprovalInput
from ..store.db import Connection
from . import Context
from .approvals import (
    Button,
    OwnerNotification,
    ResolveResult,
    expire,
    load_channel,
    load_channel_for,
    refuse_unless_pending,
)
from .watch import ApprovalFeed


def new_grant_id() -> str:
    return "grt_" + secrets.token_urlsafe(16)


@dataclass(frozen=True)
class ToolRequest:
    tool_name: str
    arguments_json: str
    agent_id: str = ""
    session_id: str = ""
    channel_id: str = ""
    requester_id: str = ""
    risk: Risk = Risk.MEDIUM
    timeout_seconds: int = dt.DEFAULT_TIMEOUT_SECONDS
    request_key: str = ""
    summary: str = ""


@dataclass(frozen=True)
class ToolRequestResult:
    approval: Approval
    created: bool
    approvers: tuple[str, ...]
    notification: OwnerNotification | None = None


@dataclass(frozen=True)
class RedeemResult:
    allow: bool
    reason: str
    approval: Approval


async def _approvers(conn: Connection, tenant_id: str, agent_id: str) -> tuple[str, ...]:
    return dt.tool_approvers(
        await tenants.approvers(conn, tenant_id), await tenants.agent_approvers(conn, tenant_id), agent_id
    )


def _same_call(approval: Approval, call: ToolCall) -> bool:
    tool = approval.tool
    return (
        tool is not None and tool.agent_id == call.agent_id and hmac.compare_digest(tool.digest, call.digest)
    )


async def request_approval(ctx: Context, req: ToolRequest) -> ToolRequestResult:
    t = ctx.tenant_id
    arguments = dt.canonical_arguments(req.arguments_json)
    call = ToolCall(
        tool_name=req.tool_name,
        arguments=arguments,
        digest=dt.call_digest(req.tool_name, arguments),
        agent_id=req.agent_id,
        session_id=req.session_id,
        risk=req.risk,
        summary=req.summary,
    )
    async with ctx.db.tenant(t) as conn:
        channel: Channel | None = None
        if req.channel_id:
            channel = await load_channel_for(ctx, conn, req.channel_id, for_update=False)
        elif not scope.channel_in_scope(ctx.principal, ""):
            raise InvalidArgument("channel_id", "is required for a key bound to channels")
        if channel is not None and req.requester_id:
            ids.user_id(channel.platform, req.requester_id, "requester_id")
        approvers = await _approvers(conn, t, req.agent_id)
        if req.request_key:
            existing = await approvals.tool_by_key(conn, t, req.request_key)
            if existing is not None:
                return _replay(ctx, existing, call, approvers)
        grant = await grants.live(conn, t, req.agent_id, call.digest)
        if grant is None:  # a standing grant approves at once: nothing pending to cap
            await approvals.lock_tool_requests(conn, t)
            agent_pending, tenant_pending = await approvals.count_pending_tools(conn, t, req.agent_id)
            limits = ctx.tool_limits
            refusal = dt.pending_cap_refusal(
                req.agent_id, agent_pending, tenant_pending, limits.per_agent, limits.per_tenant
            )
            if refusal:
                raise ResourceExhausted(refusal)
        new = ToolApprovalInput(
            t,
            new_approval_id(),
            req.channel_id,
            req.requester_id,
            call,
            req.request_key,
            req.timeout_seconds,
            grant_id=grant.grant_id if grant else "",
        )
        approval = await approvals.insert_tool(conn, new)
        if approval is None:  # a concurrent request with the same key committed first
            raced = await approvals.tool_by_key(conn, t, req.request_key)
            assert raced is not None
            return _replay(ctx, raced, call, approvers)
        await audit.record(
            conn, t, "tool.auto_approved" if grant else "tool.requested", actor=f"agent:{req.agent_id}",
            channel_id=req.channel_id, subject=req.tool_name, approval_id=approval.approval_id,
            trace_id=ctx.trace_id,
            details={
                **dt.audit_arguments(arguments), "session_id": req.session_id, "risk": req.risk.value,
                "requester_id": req.requester_id, "expires_at": approval.expires_at.isoformat(),
                **({"grant_id": grant.grant_id, "key": ctx.principal.key_id} if grant else {}),
            },
        )  # fmt: skip
        now = await db.now(conn)
    if grant is not None:
        return ToolRequestResult(approval, created=False, approvers=approvers)
    seconds = int((approval.expires_at - now).total_seconds())
    notice = messages.tool_notification(call, approval.approval_id, req.requester_id, seconds)
    # Buttons only when the approver can read the whole call: a call too long
    # for one message stays pending for `authz approvals` or the admin API.
    actions = (
        (ApprovalAction.APPROVE, ApprovalAction.DENY, ApprovalAction.ALWAYS_ALLOW) if notice.in_full else ()
    )
    notification = OwnerNotification(
        owner_id=channel.policy.owner_id if channel else "",
        text=notice.text,
        buttons=tuple(
            Button(a, messages.BUTTON_LABELS[a], ctx.keyring.callback_payload(t, approval.approval_id, a))
            for a in actions
        ),
    )
    return ToolRequestResult(approval, created=True, approvers=approvers, notification=notification)


def _replay(
    ctx: Context, approval: Approval, call: ToolCall, approvers: tuple[str, ...]
) -> ToolRequestResult:
    # Another key's request (outside this key's channels or agents) answers as a
    # different call would: its id and state are not this caller's to learn.
    if (
        approval.kind != "tool"
        or not scope.approval_in_scope(ctx.principal, approval)
        or not _same_call(approval, call)
    ):
        raise FailedPrecondition("request_key was already used for a different tool call")
    return ToolRequestResult(approval, created=False, approvers=approvers)


async def _current(ctx: Context, approval_id: str) -> tuple[Approval, float]:
    """The approval, expired first if its time is up; and its seconds left."""
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        found = await approvals.get(conn, ctx.tenant_id, approval_id, for_update=True)
        if found is None or found.kind != "tool" or not scope.approval_in_scope(ctx.principal, found):
            raise NotFound("no such tool approval")
        approval = found
        now = await db.now(conn)
        if approval.status is ApprovalStatus.PENDING and approval.expires_at <= now:
            approval = await expire(ctx, conn, approval) or approval
        return approval, (approval.expires_at - now).total_seconds()


async def watch(ctx: Context, feed: ApprovalFeed, approval_id: str) -> AsyncIterator[Approval]:
    """Current state at once; then the decision or the expiry; then stop."""
    notifier = feed.notifier
    # Subscribe before the first read, so a decision between the two is not missed.
    with notifier.subscribe(ctx.tenant_id, approval_id) as sub:
        async with feed.reads:
            approval, left = await _current(ctx, approval_id)
        yield approval
        while approval.status is ApprovalStatus.PENDING:
            # Wake on a notification, at the expiry, or on the fallback timer.
            await sub.wait(max(0.0, min(left, notifier.fallback_interval)) + 0.01)
            sub.drain()
            async with feed.reads:
                approval, left = await _current(ctx, approval_id)
            if approval.status is not ApprovalStatus.PENDING:
                yield approval


async def watch_tenant(ctx: Context, feed: ApprovalFeed, kind: str) -> AsyncIterator[Approval]:
    """Pending approvals first, then every change as it commits (read once for
    all of this process's watchers of the tenant: ``flows.watch``)."""
    with feed.join(ctx.tenant_id) as inbox:
        async with feed.reads, ctx.db.tenant(ctx.tenant_id) as conn:
            pending = await approvals.list_recent(conn, ctx.tenant_id, "", ApprovalStatus.PENDING, 1000, kind)
        for approval in reversed(pending):
            yield approval
        async for changed in inbox.changes():
            if not kind or changed.kind == kind:
                yield changed


async def decide(
    ctx: Context,
    conn: Connection,
    approval: Approval,
    action: ApprovalAction,
    actor_id: str,
    reason: str,
) -> tuple[AuthzError | None, ResolveResult | None]:
    """ResolveApproval for a tool approval (called from ``flows.resolve``
    inside its transaction, with the row locked). Errors that must be
    committed first (expiry, the audit of an unauthorized actor) are returned."""
    t = ctx.tenant_id
    tool = approval.tool
    assert tool is not None
    dt.check_action("tool", action)
    if ctx.principal.role is Role.CONNECTOR:
        channel = (
            await load_channel(conn, t, approval.channel_id, for_update=False)
            if approval.channel_id
            else None
        )
        actor = dt.qualify_actor(actor_id, channel.platform if channel else None)
        if not actor or actor not in await _approvers(conn, t, tool.agent_id):
            await audit.record(
                conn, t, "approval.unauthorized", actor=actor or actor_id, channel_id=approval.channel_id,
                subject=tool.tool_name, approval_id=approval.approval_id, trace_id=ctx.trace_id,
                details={"action": action.value, "key": ctx.principal.key_id},
            )  # fmt: skip
            return PermissionDenied("this actor may not approve tool calls of this agent"), None
    else:
        actor = ctx.principal.actor

    refusal = await refuse_unless_pending(ctx, conn, approval)
    if refusal is not None:
        return refusal, None
    done = await approvals.finish(
        conn, FinishInput(t, approval.approval_id, action.resulting_status, actor, reason, live=True)
    )
    if done is None:
        return FailedPrecondition("approval was resolved concurrently"), None
    details: dict[str, str] = {"reason": reason} if reason else {}
    details["key"] = ctx.principal.key_id  # which key carried the decision (issue #15)
    if action is ApprovalAction.ALWAYS_ALLOW:
        grant = await grants.insert(conn, t, new_grant_id(), tool, approval.approval_id, actor)
        details["grant_id"] = grant.grant_id
        await audit.record(
            conn, t, "grant.created", actor=actor, channel_id=approval.channel_id, subject=tool.tool_name,
            approval_id=approval.approval_id, trace_id=ctx.trace_id,
            details={"grant_id": grant.grant_id, "agent_id": tool.agent_id, **dt.audit_arguments(tool.arguments)},
        )  # fmt: skip
    await audit.record(
        conn, t, f"tool.{done.status.value}", actor=actor, channel_id=approval.channel_id,
        subject=tool.tool_name, approval_id=approval.approval_id, trace_id=ctx.trace_id, details=details,
    )  # fmt: skip
    return None, ResolveResult(done, "", messages.owner_outcome(action, actor))


async def redeem(ctx: Context, approval_id: str, tool_name: str, arguments_json: str) -> RedeemResult:
    t = ctx.tenant_id
    arguments = dt.canonical_arguments(arguments_json)
    digest = dt.call_digest(tool_name, arguments)
    async with ctx.db.tenant(t) as conn:
        found = await approvals.get(conn, t, approval_id, for_update=True)
        if found is None or found.kind != "tool" or not scope.approval_in_scope(ctx.principal, found):
            raise NotFound("no such tool approval")
        approval = found
        call = approval.tool
        assert call is not None
        now = await db.now(conn)
        if approval.status is ApprovalStatus.PENDING and approval.expires_at <= now:
            approval = await expire(ctx, conn, approval) or approval
        refusal = ""
        if approval.status is not ApprovalStatus.APPROVED:
            refusal = dt.redeem_refusal(approval.status, approval.resolved_by, call.tool_name)
        elif not hmac.compare_digest(call.digest, digest):
            refusal = dt.ARGUMENTS_MISMATCH
        elif approval.redeemed_at is not None:
            refusal = dt.ALREADY_REDEEMED
        else:
            done = await approvals.mark_redeemed(conn, t, approval_id)
            if done is None:
                refusal = dt.ALREADY_REDEEMED
            else:
                approval = done
        await audit.record(
            conn, t, "tool.redeem_refused" if refusal else "tool.redeemed",
            actor=f"agent:{call.agent_id}", channel_id=approval.channel_id, subject=tool_name,
            approval_id=approval_id, trace_id=ctx.trace_id,
            details={"reason": refusal, **dt.audit_arguments(arguments)} if refusal else {},
        )  # fmt: skip
    return RedeemResult(not refusal, refusal, approval)


async def list_grants(ctx: Context, agent_id: str, include_revoked: bool) -> list[Grant]:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        return await grants.list_for_agent(conn, ctx.tenant_id, agent_id, include_revoked)


async def revoke_grant(ctx: Context, grant_id: str) -> Grant:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        grant = await grants.revoke(conn, ctx.tenant_id, grant_id, ctx.principal.actor)
        if grant is None:
            raise NotFound("no such grant")
        await audit.record(
            conn, ctx.tenant_id, "grant.revoked", actor=ctx.principal.actor, subject=grant.tool.tool_name,
            approval_id=grant.approval_id, trace_id=ctx.trace_id,
            details={"grant_id": grant_id, "agent_id": grant.agent_id},
        )  # fmt: skip
    return grant
