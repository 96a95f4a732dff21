"""AuthzService: validate, call the flow, build the response."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from .. import names
from ..domain import ids, scope
from ..domain import tools as dt
from ..domain.autoapprove import reported_email, reported_phone
from ..domain.errors import InvalidArgument, Unavailable
from ..domain.invites import normalize_invite_code
from ..domain.model import Role
from ..domain.pairing import MAX_HANDLE
from ..domain.reuse import Invalidation, ReuseHint
from ..flows import Context, access, commands, invites, notices, pairing, resolve, tools
from ..flows.admin import get_channel
from ..flows.approvals import ResolveTarget
from ..gen.authz.v1 import authz_pb2 as az
from ..gen.authz.v1 import authz_pb2_grpc
from ..gen.authz.v1 import common_pb2 as cm
from . import convert
from .rpc import Runtime, rpc, rpc_stream

MAX_MESSAGE_TEXT = 16_384
MAX_DISPLAY_NAME = 256
MAX_TARGET = 256
MAX_REASON = 1024
MAX_MESSAGE_REF = 256
_FAILURE = re.compile(r"[a-z0-9_]{1,64}")

_OUTCOME = {o: az.PairingOutcome.ValueType(n) for n, o in names.PAIRING_OUTCOME.domain_map().items()}
_INVITE_OUTCOME = {o: az.InviteOutcome.ValueType(n) for n, o in names.INVITE_OUTCOME.domain_map().items()}


# notification_copies.version is an int4.
MAX_COPY_VERSION = 2**31 - 1


class AuthzServicer(authz_pb2_grpc.AuthzServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @rpc(Role.CONNECTOR, Role.AGENT, read_only=True)
    async def CheckUser(self, request: az.CheckUserRequest, ctx: Context) -> az.CheckUserResponse:
        channel_id = ids.channel_id(request.channel_id)
        message = convert.inbound_in(request, MAX_MESSAGE_TEXT)
        ids.one_line(request.display_name, "display_name", MAX_DISPLAY_NAME)
        checked = await access.check(ctx, channel_id, message, consistent=request.consistent)
        resp = convert.verdict_out(checked.verdict, ctx.trace_id)
        reuse = self._reuse(checked.reuse)
        if reuse is not None:
            resp.reuse.CopyFrom(reuse)
        return resp

    def _reuse(self, hint: ReuseHint | None) -> az.Reuse | None:
        """The hint, if this process serves WatchChanges and hears every change."""
        feed = self.runtime.changes
        if hint is None or feed is None or not feed.live:
            return None
        return az.Reuse(
            cacheable=True,
            channel_id=hint.channel_id,
            user_id=hint.user_id,
            max_age_seconds=hint.max_age_seconds,
            server_id=feed.server_id,
        )

    @rpc(Role.CONNECTOR, read_only=True)
    async def RequestPairing(
        self, request: az.RequestPairingRequest, ctx: Context
    ) -> az.RequestPairingResponse:
        result = await pairing.request_pairing(
            ctx,
            ids.channel_id(request.channel_id),
            ids.user_id_shape(request.user_id),
            ids.one_line(request.display_name, "display_name", MAX_DISPLAY_NAME),
            convert.text(request.first_message, "first_message", MAX_MESSAGE_TEXT),
            email=reported_email(request.email),
            phone_number=reported_phone(request.phone_number),
            handle=ids.one_line(request.handle, "handle", MAX_HANDLE).removeprefix("@"),
        )
        resp = az.RequestPairingResponse(
            outcome=_OUTCOME[result.outcome],
            created=result.created,
            code=result.code,
            expires_at=convert.ts(result.expires_at),
            text=result.text,
            approval_id=result.approval_id,
            trace_id=ctx.trace_id,
        )
        if result.notification is not None:
            resp.notification.CopyFrom(convert.notification_out(result.notification))
        return resp

    @rpc(Role.CONNECTOR, Role.APPROVER)
    async def ResolveApproval(
        self, request: az.ResolveApprovalRequest, ctx: Context
    ) -> az.ResolveApprovalResponse:
        which = request.WhichOneof("target")
        if which == "approval_id":
            target = ResolveTarget(approval_id=ids.approval_id(request.approval_id))
        elif which == "callback_payload":
            if not request.callback_payload or len(request.callback_payload) > 64:
                raise InvalidArgument("callback_payload", "is not a valid approval button payload")
            target = ResolveTarget(callback_payload=request.callback_payload)
        elif which == "code":
            target = ResolveTarget(
                channel_id=ids.channel_id(request.code.channel_id, "code.channel_id"),
                code=convert.text(request.code.code, "code.code", 32),
            )
        elif which == "user":
            target = ResolveTarget(
                channel_id=ids.channel_id(request.user.channel_id, "user.channel_id"),
                user_id=ids.user_id_shape(request.user.user_id, "user.user_id"),
            )
        else:
            raise InvalidArgument("target", "set one of approval_id, callback_payload, code or user")
        action = (
            None
            if request.action == cm.APPROVAL_ACTION_UNSPECIFIED
            else convert.enum_in(convert.ACTION, request.action, "action")
        )
        actor_id = ids.user_id_shape(request.actor_id, "actor_id") if request.actor_id else ""
        if ctx.principal.role is Role.CONNECTOR and not actor_id:
            raise InvalidArgument(
                "actor_id", "is required for connector keys: the platform id of who pressed"
            )
        reason = convert.text(request.reason, "reason", MAX_REASON)
        if target.channel_id and ctx.principal.role is not Role.CONNECTOR:
            # An operator's mistyped channel (`authz pairing approve`): NOT_FOUND naming it,
            # not "no such approval", and not counted as a failed code.
            await get_channel(ctx, target.channel_id)
        result = await resolve.resolve(ctx, target, action, actor_id, reason)
        return az.ResolveApprovalResponse(
            approval=convert.approval_out(result.approval),
            requester_text=result.requester_text,
            owner_text=result.owner_text,
            trace_id=ctx.trace_id,
        )

    @rpc(Role.CONNECTOR)
    async def RunChatCommand(
        self, request: az.RunChatCommandRequest, ctx: Context
    ) -> az.RunChatCommandResponse:
        channel_id = ids.channel_id(request.channel_id)
        actor_id = ids.user_id_shape(request.actor_id, "actor_id")
        convert.text(request.text, "text", MAX_MESSAGE_TEXT)
        result = await commands.run(ctx, channel_id, actor_id, request.text)
        return az.RunChatCommandResponse(
            handled=result.handled,
            text=result.text,
            notices=[az.ChatNotice(user_id=u, text=t) for u, t in result.notices],
            trace_id=ctx.trace_id,
        )

    # Writes only when it admits the user, and then forgets the tenant's cache itself.
    @rpc(Role.CONNECTOR, read_only=True)
    async def RedeemInvite(self, request: az.RedeemInviteRequest, ctx: Context) -> az.RedeemInviteResponse:
        result = await invites.redeem_invite(
            ctx,
            ids.channel_id(request.channel_id),
            ids.user_id_shape(request.user_id),
            normalize_invite_code(convert.text(request.code, "code", 64)),
            ids.one_line(request.display_name, "display_name", MAX_DISPLAY_NAME),
        )
        return az.RedeemInviteResponse(
            outcome=_INVITE_OUTCOME[result.outcome],
            text=result.text,
            retry_after_seconds=result.retry_after_seconds,
            trace_id=ctx.trace_id,
        )

    @rpc(Role.CONNECTOR, Role.AGENT, read_only=True)
    async def EvaluateSend(self, request: az.EvaluateSendRequest, ctx: Context) -> az.EvaluateSendResponse:
        channel_id = ids.channel_id(request.channel_id)
        agent_id = ids.agent_id(request.agent_id)
        session_id = ids.one_line(request.session_id, "session_id", 256)
        origin = ids.one_line(request.origin, "origin", MAX_TARGET)
        target = ids.one_line(request.target, "target", MAX_TARGET)
        if not target.strip():
            raise InvalidArgument("target", "is required")
        if request.action not in (az.SEND_ACTION_UNSPECIFIED, az.SEND_ACTION_SEND, az.SEND_ACTION_LIST):
            raise InvalidArgument("action", f"unknown value {request.action}")
        sent = await access.evaluate_send(
            ctx,
            channel_id,
            agent_id,
            session_id,
            origin,
            target,
            listing=request.action == az.SEND_ACTION_LIST,
        )
        decision = sent.decision
        return az.EvaluateSendResponse(
            allow=decision.allow,
            reason=decision.reason,
            resolved_target=decision.resolved_target,
            trace_id=ctx.trace_id,
            reuse=self._reuse(sent.reuse),
        )

    @rpc(Role.CONNECTOR, Role.AGENT, read_only=True)
    async def RequestApproval(
        self, request: az.RequestApprovalRequest, ctx: Context
    ) -> az.RequestApprovalResponse:
        timeout = request.timeout_seconds or dt.DEFAULT_TIMEOUT_SECONDS
        if timeout > dt.MAX_TIMEOUT_SECONDS:
            raise InvalidArgument("timeout_seconds", f"must be at most {dt.MAX_TIMEOUT_SECONDS}")
        if request.request_key and not dt.REQUEST_KEY.fullmatch(request.request_key):
            raise InvalidArgument("request_key", "must be 1-128 characters [A-Za-z0-9_.:-]")
        agent_id = ids.agent_id(request.agent_id) if request.agent_id else ""
        scope.require_agent(ctx.principal, agent_id)
        req = tools.ToolRequest(
            tool_name=dt.tool_name(request.tool_name),
            arguments_json=request.arguments_json,
            agent_id=agent_id,
            session_id=ids.one_line(request.session_id, "session_id", 256),
            channel_id=ids.channel_id(request.channel_id) if request.channel_id else "",
            requester_id=ids.user_id_shape(request.requester_id, "requester_id")
            if request.requester_id
            else "",
            risk=convert.enum_in(convert.RISK, request.risk, "risk"),
            timeout_seconds=timeout,
            request_key=request.request_key,
            summary=convert.text(request.summary, "summary", MAX_REASON),
        )
        result = await tools.request_approval(ctx, req)
        resp = az.RequestApprovalResponse(
            approval=convert.approval_out(result.approval),
            created=result.created,
            trace_id=ctx.trace_id,
        )
        if result.notification is not None:
            resp.notification.CopyFrom(convert.notification_out(result.notification))
        if scope.sees_approvers(ctx.principal):
            resp.approvers.extend(result.approvers)
        elif resp.HasField("notification"):  # agent keys: who approves is not theirs to know
            resp.notification.ClearField("owner_id")
        return resp

    @rpc_stream(Role.CONNECTOR, Role.AGENT, Role.APPROVER)
    async def WatchApproval(
        self, request: az.WatchApprovalRequest, ctx: Context
    ) -> AsyncIterator[cm.Approval]:
        approval_id = ids.approval_id(request.approval_id)
        async for approval in tools.watch(ctx, self.runtime.feed, approval_id):
            yield convert.approval_out(approval)

    @rpc(Role.CONNECTOR, Role.AGENT, read_only=True)
    async def RedeemApproval(
        self, request: az.RedeemApprovalRequest, ctx: Context
    ) -> az.RedeemApprovalResponse:
        result = await tools.redeem(
            ctx,
            ids.approval_id(request.approval_id),
            dt.tool_name(request.tool_name),
            request.arguments_json,
        )
        return az.RedeemApprovalResponse(
            allow=result.allow,
            reason=result.reason,
            approval=convert.approval_out(result.approval),
            trace_id=ctx.trace_id,
        )

    @rpc_stream(Role.CONNECTOR)
    async def WatchNotifications(
        self, request: az.WatchNotificationsRequest, ctx: Context
    ) -> AsyncIterator[az.NotificationCopy]:
        channel_id = ids.channel_id(request.channel_id)
        async for item in notices.watch(ctx, self.runtime.feed, channel_id):
            yield convert.copy_out(item)

    # Writes only notification copies, which the hot path's cache does not hold.
    @rpc(Role.CONNECTOR, read_only=True)
    async def AckNotification(
        self, request: az.AckNotificationRequest, ctx: Context
    ) -> az.AckNotificationResponse:
        channel_id = ids.channel_id(request.channel_id)
        approval_id = ids.approval_id(request.approval_id)
        approver_id = ids.user_id_shape(request.approver_id, "approver_id")
        if not 1 <= request.version <= MAX_COPY_VERSION:
            raise InvalidArgument("version", "must be the version of the copy handed out (1 or more)")
        which = request.WhichOneof("result")
        if which == "message_ref":
            ref = ids.one_line(request.message_ref, "message_ref", MAX_MESSAGE_REF)
            if not ref:
                raise InvalidArgument("message_ref", "must not be empty")
            done = notices.Ack(channel_id, approval_id, approver_id, request.version, message_ref=ref)
        elif which == "failure":
            if not _FAILURE.fullmatch(request.failure):
                raise InvalidArgument("failure", "must be a reason class, [a-z0-9_]{1,64}")
            done = notices.Ack(channel_id, approval_id, approver_id, request.version, failure=request.failure)
        else:
            raise InvalidArgument("result", "set message_ref or failure")
        acked = await notices.ack(ctx, done)
        resp = az.AckNotificationResponse(
            trace_id=ctx.trace_id, unnotified_requester_id=acked.unnotified_requester_id
        )
        if acked.next is not None:
            resp.next.CopyFrom(convert.copy_out(acked.next))
        return resp

    @rpc_stream(Role.CONNECTOR, Role.AGENT)
    async def WatchChanges(
        self, request: az.WatchChangesRequest, ctx: Context
    ) -> AsyncIterator[az.WatchChangesResponse]:
        feed = self.runtime.changes
        if feed is None:
            raise Unavailable("change streams are not served here")
        heartbeat_ms = round(feed.heartbeat_seconds * 1000)
        async for batch in feed.watch(ctx.principal):
            yield _changes_response(feed.server_id, heartbeat_ms, batch)


class _LastChanges:
    """The last WatchChanges message built: a change (or a heartbeat tick) sends
    the same message to every stream it reaches, so it is built once, not once
    per stream. gRPC only serialises the messages it is handed, never changes them."""

    def __init__(self) -> None:
        # (key, message) in one tuple, replaced whole: a reader never pairs one
        # batch's key with another's message.
        self._last: tuple[tuple[str, int, tuple[Invalidation, ...]], az.WatchChangesResponse] | None = None

    def get(
        self, server_id: str, heartbeat_ms: int, batch: tuple[Invalidation, ...]
    ) -> az.WatchChangesResponse:
        key = (server_id, heartbeat_ms, batch)
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        resp = az.WatchChangesResponse(
            server_id=server_id,
            heartbeat_ms=heartbeat_ms,
            invalidations=[
                az.Invalidation(channel_id=i.channel_id, user_id=i.user_id, all=i.everything) for i in batch
            ],
        )
        self._last = (key, resp)
        return resp


_changes_response = _LastChanges().get
