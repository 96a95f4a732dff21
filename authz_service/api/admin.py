"""AdminService: validate, call the flow, build the response."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from google.protobuf.message import Message

from .. import names, policy_proto
from ..domain import ids
from ..domain.errors import InvalidArgument
from ..domain.invites import INVITE_ID, MAX_NOTE, MAX_PERMISSIONS
from ..domain.model import Approval, Role, SubjectSource, SubjectStatus
from ..flows import Context, access, data_rights, invites, tools
from ..flows import admin as flows
from ..flows.admin import (
    ApprovalPage,
    AuditQuery,
    GroupSender,
    IssuedKey,
    StoredChannel,
    TenantRow,
    TenantSettings,
)
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import admin_pb2_grpc
from ..gen.authz.v1 import common_pb2 as cm
from . import convert
from .rpc import Runtime, rpc, rpc_stream

_EVENT = re.compile(r"[a-z_]+(\.[a-z_]+)*\.?")
_GRANT_ID = re.compile(r"grt_[A-Za-z0-9_-]{22}")
_USER_FILTER = {adm.USER_FILTER_UNSPECIFIED: "all", **names.USER_FILTER.label_map()}


def _limit(value: int) -> int:
    if value > 1000:
        raise InvalidArgument("limit", "must be at most 1000")
    return value or 100


# As CheckUser's message text (api/authz.py).
MAX_EXPLAIN_TEXT = 16_384
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# A page stops before this many bytes (clients receive 4 MiB by default).
MAX_PAGE_BYTES = 2 * 1024 * 1024

_Message = TypeVar("_Message", bound=Message)


def _bounded(items: list[_Message]) -> list[_Message]:
    """The longest prefix within MAX_PAGE_BYTES; at least one item."""
    total = 0
    for i, item in enumerate(items):
        total += item.ByteSize() + 8  # field tag and length
        if total > MAX_PAGE_BYTES and i > 0:
            return items[:i]
    return items


def _approval_token(a: Approval) -> str:
    at = a.created_at
    raw = f"{int(at.timestamp())}.{at.microsecond:06d}.{a.approval_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _approval_cursor(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        seconds, micros, approval_id = raw.split(".", 2)
        at = datetime.fromtimestamp(int(seconds), UTC).replace(microsecond=int(micros))
        return at, ids.approval_id(approval_id)
    except (ValueError, UnicodeDecodeError, InvalidArgument, OverflowError):
        raise InvalidArgument("page_token", "is not a token from a previous page") from None


def _user_token(user_id: str) -> str:
    return base64.urlsafe_b64encode(f"u.{user_id}".encode()).decode().rstrip("=")


def _user_cursor(token: str) -> str:
    if not token:
        return ""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raw = ""
    if not raw.startswith("u.") or len(raw) < 3:
        raise InvalidArgument("page_token", "is not a token from a previous page")
    return raw[2:]


def _key(k: IssuedKey) -> adm.ApiKey:
    return adm.ApiKey(
        key_id=k.key_id,
        role=convert.enum_out(convert.ROLE, k.role),
        name=k.name,
        created_at=convert.ts(k.created_at),
        revoked_at=convert.ts(k.revoked_at),
        channels=list(k.channels),
        agents=list(k.agents),
    )


def _channel(s: StoredChannel) -> adm.Channel:
    return adm.Channel(
        channel_id=s.channel.channel_id,
        platform=convert.enum_out(convert.PLATFORM, s.channel.platform),
        policy=convert.policy_out(s.channel.policy),
        updated_at=convert.ts(s.updated_at),
    )


def _settings(s: TenantSettings) -> adm.TenantSettings:
    return adm.TenantSettings(
        approvers=list(s.approvers),
        agent_approvers={a: adm.ActorList(actors=list(v)) for a, v in s.agent_approvers.items()},
        timezone=s.timezone,
    )


def _tenant(t: TenantRow) -> adm.Tenant:
    return adm.Tenant(tenant_id=t.tenant_id, display_name=t.display_name, created_at=convert.ts(t.created_at))


def _group_sender(g: GroupSender) -> adm.GroupSender:
    return adm.GroupSender(
        channel_id=g.channel_id, group_id=g.group_id, user_id=g.user_id, created_at=convert.ts(g.created_at)
    )


def _user(ref: Any) -> tuple[str, str]:
    return ids.channel_id(ref.channel_id), ids.user_id_shape(ref.user_id)


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    # --- tenants (operator) -----------------------------------------------------

    @rpc(Role.OPERATOR)
    async def CreateTenant(self, request: adm.CreateTenantRequest, ctx: Context) -> adm.CreateTenantResponse:
        tenant_id = ids.tenant_id(request.tenant_id)
        name = ids.one_line(request.display_name, "display_name", 256)
        row, key = await flows.create_tenant(ctx, tenant_id, name)
        if ctx.cache is not None:
            # The operator has no tenant of its own for @rpc to forget: forget the
            # new one here, keys included (other processes learn through NOTIFY).
            ctx.cache.forget_tenant(tenant_id, keys=True)
        return adm.CreateTenantResponse(tenant=_tenant(row), admin_key=_key(key), secret=key.secret)

    @rpc(Role.OPERATOR, read_only=True)
    async def ListTenants(self, request: adm.ListTenantsRequest, ctx: Context) -> adm.ListTenantsResponse:
        return adm.ListTenantsResponse(tenants=[_tenant(r) for r in await flows.list_tenants(ctx)])

    @rpc(Role.ADMIN, read_only=True)
    async def GetTenantSettings(
        self, request: adm.GetTenantSettingsRequest, ctx: Context
    ) -> adm.TenantSettings:
        return _settings(await flows.get_settings(ctx))

    @rpc(Role.ADMIN)
    async def SetTenantSettings(self, request: adm.TenantSettings, ctx: Context) -> adm.TenantSettings:
        if len(request.approvers) > 256:
            raise InvalidArgument("approvers", "at most 256 entries")
        if len(request.agent_approvers) > 256:
            raise InvalidArgument("agent_approvers", "at most 256 agents")
        for agent, actors in request.agent_approvers.items():
            if len(actors.actors) > 256:
                raise InvalidArgument(f"agent_approvers[{agent}]", "at most 256 entries")
        approvers = list(request.approvers)
        agent_approvers = {agent: list(actors.actors) for agent, actors in request.agent_approvers.items()}
        timezone = convert.text(request.timezone, "timezone", 64)
        if request.validate_only:
            approvers, agent_approvers, timezone = flows.normalise_settings(
                approvers, agent_approvers, timezone
            )
            return adm.TenantSettings(
                approvers=approvers,
                agent_approvers={a: adm.ActorList(actors=v) for a, v in agent_approvers.items()},
                timezone=timezone,
            )
        return _settings(await flows.set_settings(ctx, approvers, agent_approvers, timezone))

    # --- keys --------------------------------------------------------------------

    @rpc(Role.ADMIN, changes_keys=True)
    async def CreateApiKey(self, request: adm.CreateApiKeyRequest, ctx: Context) -> adm.CreateApiKeyResponse:
        role = convert.enum_in(convert.ROLE, request.role, "role")
        key = await flows.create_key(
            ctx, role, convert.text(request.name, "name", 128), list(request.channels), list(request.agents)
        )
        return adm.CreateApiKeyResponse(key=_key(key), secret=key.secret)

    @rpc(Role.ADMIN, read_only=True)
    async def ListApiKeys(self, request: adm.ListApiKeysRequest, ctx: Context) -> adm.ListApiKeysResponse:
        return adm.ListApiKeysResponse(keys=[_key(k) for k in await flows.list_keys(ctx)])

    @rpc(Role.ADMIN, changes_keys=True)
    async def RevokeApiKey(self, request: adm.RevokeApiKeyRequest, ctx: Context) -> adm.RevokeApiKeyResponse:
        key_id = ids.require(ids.KEY_ID, request.key_id, "key_id", "a key id (12 characters [a-z0-9])")
        return adm.RevokeApiKeyResponse(key=_key(await flows.revoke_key(ctx, key_id)))

    # --- channels ------------------------------------------------------------------

    @rpc(Role.ADMIN)
    async def SetChannel(self, request: adm.SetChannelRequest, ctx: Context) -> adm.Channel:
        channel_id = ids.channel_id(request.channel_id)
        platform = convert.enum_in(convert.PLATFORM, request.platform, "platform")
        if not request.HasField("policy"):
            raise InvalidArgument(
                "policy", "is required (an empty policy means: pairing, groups by allowlist)"
            )
        policy = convert.policy_in(request.policy)
        if request.validate_only:
            policy = flows.normalise_channel(platform, policy)
            return adm.Channel(
                channel_id=channel_id, platform=request.platform, policy=convert.policy_out(policy)
            )
        return _channel(await flows.set_channel(ctx, channel_id, platform, policy))

    @rpc(Role.ADMIN, read_only=True)
    async def GetChannel(self, request: adm.GetChannelRequest, ctx: Context) -> adm.Channel:
        return _channel(await flows.get_channel(ctx, ids.channel_id(request.channel_id)))

    @rpc(Role.ADMIN, read_only=True)
    async def ListChannels(self, request: adm.ListChannelsRequest, ctx: Context) -> adm.ListChannelsResponse:
        return adm.ListChannelsResponse(channels=[_channel(c) for c in await flows.list_channels(ctx)])

    @rpc(Role.ADMIN)
    async def DeleteChannel(
        self, request: adm.DeleteChannelRequest, ctx: Context
    ) -> adm.DeleteChannelResponse:
        return adm.DeleteChannelResponse(
            deleted=await flows.delete_channel(ctx, ids.channel_id(request.channel_id))
        )

    # --- users -----------------------------------------------------------------------

    @rpc(Role.ADMIN)
    async def AllowUser(self, request: adm.AllowUserRequest, ctx: Context) -> adm.Subject:
        channel_id, user_id = _user(request)
        if len(request.permissions) > 64:
            raise InvalidArgument("permissions", "at most 64 entries")
        for p in request.permissions:
            ids.permission(p)
        name = ids.one_line(request.display_name, "display_name", 256)
        return convert.subject_out(
            await flows.allow_user(ctx, channel_id, user_id, name, list(request.permissions))
        )

    @rpc(Role.ADMIN)
    async def RemoveUser(self, request: adm.UserRef, ctx: Context) -> adm.RemoveUserResponse:
        channel_id, user_id = _user(request)
        removed = await flows.remove_subject(
            ctx, channel_id, user_id, status=SubjectStatus.ALLOWED, source=None, event="user.removed"
        )
        return adm.RemoveUserResponse(removed=removed)

    @rpc(Role.ADMIN)
    async def BlockUser(self, request: adm.BlockUserRequest, ctx: Context) -> adm.Subject:
        channel_id, user_id = _user(request)
        reason = convert.text(request.reason, "reason", 1024)
        return convert.subject_out(await flows.block_user(ctx, channel_id, user_id, reason))

    @rpc(Role.ADMIN)
    async def UnblockUser(self, request: adm.UserRef, ctx: Context) -> adm.RemoveUserResponse:
        channel_id, user_id = _user(request)
        removed = await flows.remove_subject(
            ctx, channel_id, user_id, status=SubjectStatus.BLOCKED, source=None, event="user.unblocked"
        )
        return adm.RemoveUserResponse(removed=removed)

    @rpc(Role.ADMIN)
    async def UnpairUser(self, request: adm.UserRef, ctx: Context) -> adm.RemoveUserResponse:
        channel_id, user_id = _user(request)
        removed = await flows.remove_subject(
            ctx,
            channel_id,
            user_id,
            status=SubjectStatus.ALLOWED,
            source=SubjectSource.PAIRING,
            event="user.unpaired",
        )
        return adm.RemoveUserResponse(removed=removed)

    @rpc(Role.ADMIN, read_only=True)
    async def ListUsers(self, request: adm.ListUsersRequest, ctx: Context) -> adm.ListUsersResponse:
        which = convert.enum_in(_USER_FILTER, request.filter, "filter")
        channel_id = ids.channel_id(request.channel_id)
        await flows.get_channel(ctx, channel_id)  # NOT_FOUND, not an empty list, for a mistyped one
        if request.page_size > MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be at most {MAX_PAGE_SIZE}")
        if len(request.query) > 128 or not request.query.isprintable():
            raise InvalidArgument("query", "must be at most 128 printable characters")
        after = _user_cursor(request.page_token)
        size = request.page_size or None
        # One more than the page: whether a next page exists, without a count.
        found = await flows.list_users(
            ctx, channel_id, which, after=after, limit=None if size is None else size + 1, query=request.query
        )
        page = found if size is None else found[:size]
        out = _bounded([convert.subject_out(s) for s in page])
        more = len(out) < len(found)
        token = _user_token(page[len(out) - 1].user_id) if out and more else ""
        return adm.ListUsersResponse(users=out, next_page_token=token)

    @rpc(Role.ADMIN, read_only=True)
    async def ExplainUser(self, request: adm.ExplainUserRequest, ctx: Context) -> adm.ExplainUserResponse:
        channel_id = ids.channel_id(request.channel_id)
        message = convert.inbound_in(request, MAX_EXPLAIN_TEXT, chat_kind_default=True)
        found = await access.explain(ctx, channel_id, message)
        resp = adm.ExplainUserResponse(
            check=convert.verdict_out(found.verdict, ctx.trace_id),
            in_group_allowlist=found.in_group,
            pending=[convert.approval_out(a) for a in found.pending],
            trace_id=ctx.trace_id,
        )
        if found.subject is not None:
            resp.subject.CopyFrom(convert.subject_out(found.subject))
        if found.binding is not None:
            resp.binding.CopyFrom(policy_proto.binding_out(found.binding))
        return resp

    # --- data rights -------------------------------------------------------------------

    @rpc(Role.ADMIN, read_only=True)
    async def ExportUser(self, request: adm.UserRef, ctx: Context) -> adm.UserExport:
        channel_id, user_id = _user(request)
        document = await data_rights.export_user(ctx, channel_id, user_id)
        return adm.UserExport(json=json.dumps(document, ensure_ascii=False))

    @rpc(Role.ADMIN)
    async def PurgeUser(self, request: adm.UserRef, ctx: Context) -> adm.PurgeUserResponse:
        channel_id, user_id = _user(request)
        r = await data_rights.purge_user(ctx, channel_id, user_id)
        return adm.PurgeUserResponse(
            subjects_deleted=r.subjects,
            group_senders_deleted=r.group_senders,
            approvals_deleted=r.approvals,
            audit_events_anonymized=r.audit_events,
            pseudonym=r.pseudonym,
        )

    @rpc(Role.ADMIN)
    async def AnonymizeUser(self, request: adm.UserRef, ctx: Context) -> adm.AnonymizeUserResponse:
        channel_id, user_id = _user(request)
        r = await data_rights.anonymize_user(ctx, channel_id, user_id)
        return adm.AnonymizeUserResponse(
            subjects_updated=r.subjects, approvals_updated=r.approvals, audit_events_anonymized=r.audit_events
        )

    @rpc(Role.ADMIN)
    async def AllowGroupSender(self, request: adm.GroupSenderRef, ctx: Context) -> adm.GroupSender:
        channel_id, user_id = _user(request)
        row = await flows.add_group_sender(ctx, channel_id, ids.group_id(request.group_id), user_id)
        return _group_sender(row)

    @rpc(Role.ADMIN)
    async def RemoveGroupSender(self, request: adm.GroupSenderRef, ctx: Context) -> adm.RemoveUserResponse:
        channel_id, user_id = _user(request)
        removed = await flows.remove_group_sender(ctx, channel_id, ids.group_id(request.group_id), user_id)
        return adm.RemoveUserResponse(removed=removed)

    @rpc(Role.ADMIN, read_only=True)
    async def ListGroupSenders(
        self, request: adm.ListGroupSendersRequest, ctx: Context
    ) -> adm.ListGroupSendersResponse:
        group_id = ids.group_id(request.group_id) if request.group_id else ""
        rows = await flows.list_group_senders(ctx, ids.channel_id(request.channel_id), group_id)
        return adm.ListGroupSendersResponse(senders=[_group_sender(r) for r in rows])

    # --- approvals and audit -----------------------------------------------------------

    @rpc(Role.APPROVER, read_only=True)
    async def ListApprovals(
        self, request: adm.ListApprovalsRequest, ctx: Context
    ) -> adm.ListApprovalsResponse:
        channel_id = ids.channel_id(request.channel_id) if request.channel_id else ""
        if channel_id:
            await flows.get_channel(ctx, channel_id)  # NOT_FOUND, not an empty list, for a mistyped one
        status = (
            convert.APPROVAL_STATUS[cm.APPROVAL_STATUS_PENDING]
            if request.status == cm.APPROVAL_STATUS_UNSPECIFIED
            else convert.enum_in(convert.APPROVAL_STATUS, request.status, "status")
        )
        kind = convert.enum_in(convert.KIND, request.kind, "kind")
        if request.page_size > MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be at most {MAX_PAGE_SIZE}")
        size = request.page_size or (_limit(request.limit) if request.limit else DEFAULT_PAGE_SIZE)
        page = ApprovalPage(
            ctx.tenant_id, channel_id, status, kind, size, _approval_cursor(request.page_token)
        )
        found, more = await flows.list_approvals(ctx, page)
        out = _bounded([convert.approval_out(a) for a in found])
        last = found[len(out) - 1] if out else None
        token = _approval_token(last) if last is not None and (more or len(out) < len(found)) else ""
        return adm.ListApprovalsResponse(approvals=out, next_page_token=token)

    @rpc(Role.APPROVER, read_only=True)
    async def GetApproval(self, request: adm.GetApprovalRequest, ctx: Context) -> cm.Approval:
        return convert.approval_out(await flows.get_approval(ctx, ids.approval_id(request.approval_id)))

    @rpc_stream(Role.APPROVER)
    async def WatchApprovals(
        self, request: adm.WatchApprovalsRequest, ctx: Context
    ) -> AsyncIterator[cm.Approval]:
        kind = convert.enum_in(convert.KIND, request.kind, "kind")
        async for approval in tools.watch_tenant(ctx, self.runtime.feed, kind):
            yield convert.approval_out(approval)

    @rpc(Role.APPROVER, read_only=True)
    async def ListGrants(self, request: adm.ListGrantsRequest, ctx: Context) -> adm.ListGrantsResponse:
        agent_id = ids.agent_id(request.agent_id) if request.agent_id else ""
        grants = await tools.list_grants(ctx, agent_id, request.include_revoked)
        return adm.ListGrantsResponse(grants=[convert.grant_out(g) for g in grants])

    @rpc(Role.ADMIN)
    async def RevokeGrant(self, request: adm.RevokeGrantRequest, ctx: Context) -> adm.Grant:
        if not _GRANT_ID.fullmatch(request.grant_id):
            raise InvalidArgument("grant_id", "must be a grant id (grt_...)")
        return convert.grant_out(await tools.revoke_grant(ctx, request.grant_id))

    @rpc(Role.OPERATOR)
    async def PruneAudit(self, request: adm.PruneAuditRequest, ctx: Context) -> adm.PruneAuditResponse:
        try:
            before = date.fromisoformat(request.before)
        except ValueError:
            raise InvalidArgument("before", "must be a date, YYYY-MM-DD") from None
        pruned = await flows.prune_audit(ctx, before)
        return adm.PruneAuditResponse(
            partitions=[
                adm.PrunedPartition(
                    partition=p.partition,
                    range_from=convert.ts(p.range_from),
                    range_to=convert.ts(p.range_to),
                    events=p.events,
                )
                for p in pruned
            ]
        )

    # --- invites ----------------------------------------------------------------------

    @rpc(Role.ADMIN)
    async def CreateInvite(self, request: adm.CreateInviteRequest, ctx: Context) -> adm.CreateInviteResponse:
        if len(request.permissions) > MAX_PERMISSIONS:
            raise InvalidArgument("permissions", f"at most {MAX_PERMISSIONS} entries")
        for p in request.permissions:
            ids.permission(p)
        created = await invites.create_invite(
            ctx,
            ids.channel_id(request.channel_id),
            max_uses=request.max_uses,
            ttl_seconds=request.ttl_seconds,
            permissions=list(dict.fromkeys(request.permissions)),
            note=convert.text(request.note, "note", MAX_NOTE),
        )
        return adm.CreateInviteResponse(invite=convert.invite_out(created.invite), code=created.code)

    @rpc(Role.ADMIN, read_only=True)
    async def ListInvites(self, request: adm.ListInvitesRequest, ctx: Context) -> adm.ListInvitesResponse:
        channel_id = ids.channel_id(request.channel_id) if request.channel_id else ""
        if channel_id:
            await flows.get_channel(ctx, channel_id)
        found = await invites.list_invites(ctx, channel_id, request.include_inactive)
        return adm.ListInvitesResponse(invites=[convert.invite_out(i) for i in found])

    @rpc(Role.ADMIN)
    async def RevokeInvite(self, request: adm.RevokeInviteRequest, ctx: Context) -> adm.Invite:
        invite_id = ids.require(INVITE_ID, request.invite_id, "invite_id", "an invite id (inv_...)")
        return convert.invite_out(await invites.revoke_invite(ctx, invite_id))

    @rpc(Role.ADMIN, read_only=True)
    async def QueryAudit(self, request: adm.QueryAuditRequest, ctx: Context) -> adm.QueryAuditResponse:
        if request.after_event_id < 0:
            raise InvalidArgument("after_event_id", "must not be negative")
        event = request.event
        if event and (len(event) > 64 or not _EVENT.fullmatch(event)):
            raise InvalidArgument(
                "event", "must be an event name like 'pairing.approved' or a prefix like 'pairing.'"
            )
        limit = _limit(request.limit)
        found = await flows.query_audit(
            ctx,
            AuditQuery(
                since=convert.from_ts(request.since, request.HasField("since")),
                until=convert.from_ts(request.until, request.HasField("until")),
                channel_id=ids.channel_id(request.channel_id) if request.channel_id else "",
                user_id=ids.user_id_shape(request.user_id) if request.user_id else "",
                event=event,
                after_event_id=request.after_event_id,
                limit=limit,
            ),
        )
        events = [
            adm.AuditEvent(
                event_id=e.event_id,
                at=convert.ts(e.at),
                event=e.event,
                actor=e.actor,
                channel_id=e.channel_id,
                subject=e.subject,
                approval_id=e.approval_id,
                trace_id=e.trace_id,
                details_json=e.details_json,
            )
            for e in found
        ]
        page = _bounded(events)
        next_after = page[-1].event_id if len(events) == limit or len(page) < len(events) else 0
        events = page
        return adm.QueryAuditResponse(events=events, next_after_event_id=next_after)
