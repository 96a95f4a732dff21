"""The tenant isolation sweep's AdminService cases, registered in ``sweep.CASES`` on import."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .sweep import B, Run, case, show

# --- AdminService ---------------------------------------------------------------------------


@case("AdminService.CreateTenant")
async def _create_tenant(r: Run, b: B) -> None:
    for role, client in b.roles.items():
        await r.unary(role, client.admin.CreateTenant, adm.CreateTenantRequest(tenant_id=r.ids.tenant))


@case("AdminService.ListTenants")
async def _list_tenants(r: Run, b: B) -> None:
    for role, client in b.roles.items():
        await r.unary(role, client.admin.ListTenants, adm.ListTenantsRequest())


@case("AdminService.PruneAudit")
async def _prune_audit(r: Run, b: B) -> None:
    # Operator only; a date before any audit, so even a wrong answer drops nothing.
    for role, client in b.roles.items():
        await r.unary(role, client.admin.PruneAudit, adm.PruneAuditRequest(before="1900-01-01"))


@case("AdminService.GetTenantSettings")
async def _get_tenant_settings(r: Run, b: B) -> None:
    await r.unary("admin", b.tenant.admin.admin.GetTenantSettings, adm.GetTenantSettingsRequest())


@case("AdminService.SetTenantSettings")
async def _set_tenant_settings(r: Run, b: B) -> None:
    req = adm.TenantSettings(
        approvers=[r.ids.approver], agent_approvers={r.ids.agent: adm.ActorList(actors=[r.ids.approver])}
    )
    await r.unary("admin", b.tenant.admin.admin.SetTenantSettings, req)


@case("AdminService.CreateApiKey")
async def _create_api_key(r: Run, b: B) -> None:
    req = adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name=f"like {r.ids.key}")
    await r.unary(
        "admin", b.tenant.admin.admin.CreateApiKey, req,
        lambda resp: (resp.key.role, resp.key.name, len(resp.key.key_id), resp.secret.count(".")),
    )  # fmt: skip


@case("AdminService.ListApiKeys")
async def _list_api_keys(r: Run, b: B) -> None:
    await r.unary(
        "admin", b.tenant.admin.admin.ListApiKeys, adm.ListApiKeysRequest(),
        lambda resp: sorted((k.role, k.name, k.HasField("revoked_at")) for k in resp.keys),
    )  # fmt: skip


@case("AdminService.RevokeApiKey")
async def _revoke_api_key(r: Run, b: B) -> None:
    await r.unary("admin", b.tenant.admin.admin.RevokeApiKey, adm.RevokeApiKeyRequest(key_id=r.ids.key))


@case("AdminService.SetChannel")
async def _set_channel(r: Run, b: B) -> None:
    policy = cm.ChannelPolicy(owner_id=r.ids.owner, approvers=[r.ids.user], agent_id=r.ids.agent)
    req = adm.SetChannelRequest(channel_id=r.ids.channel, platform=cm.PLATFORM_TELEGRAM, policy=policy)
    await r.unary("admin", b.tenant.admin.admin.SetChannel, req)


@case("AdminService.GetChannel")
async def _get_channel(r: Run, b: B) -> None:
    await r.unary("admin", b.tenant.admin.admin.GetChannel, adm.GetChannelRequest(channel_id=r.ids.channel))


@case("AdminService.ListChannels")
async def _list_channels(r: Run, b: B) -> None:
    await r.unary("admin", b.tenant.admin.admin.ListChannels, adm.ListChannelsRequest())


@case("AdminService.DeleteChannel")
async def _delete_channel(r: Run, b: B) -> None:
    await r.unary(
        "admin", b.tenant.admin.admin.DeleteChannel, adm.DeleteChannelRequest(channel_id=r.ids.channel)
    )


@case("AdminService.AllowUser")
async def _allow_user(r: Run, b: B) -> None:
    for user in (r.ids.requester, r.ids.blocked):
        req = adm.AllowUserRequest(
            channel_id=r.ids.channel, user_id=user, display_name="x", permissions=["p"]
        )
        await r.unary("admin", b.tenant.admin.admin.AllowUser, req)


@case("AdminService.RemoveUser")
async def _remove_user(r: Run, b: B) -> None:
    for user in (r.ids.user, r.ids.paired):
        await r.unary(
            "admin", b.tenant.admin.admin.RemoveUser, adm.UserRef(channel_id=r.ids.channel, user_id=user)
        )


@case("AdminService.BlockUser")
async def _block_user(r: Run, b: B) -> None:
    for user in (r.ids.requester, r.ids.user):
        req = adm.BlockUserRequest(channel_id=r.ids.channel, user_id=user, reason="r")
        await r.unary("admin", b.tenant.admin.admin.BlockUser, req)


@case("AdminService.UnblockUser")
async def _unblock_user(r: Run, b: B) -> None:
    req = adm.UserRef(channel_id=r.ids.channel, user_id=r.ids.blocked)
    await r.unary("admin", b.tenant.admin.admin.UnblockUser, req)


@case("AdminService.UnpairUser")
async def _unpair_user(r: Run, b: B) -> None:
    req = adm.UserRef(channel_id=r.ids.channel, user_id=r.ids.paired)
    await r.unary("admin", b.tenant.admin.admin.UnpairUser, req)


@case("AdminService.ListUsers")
async def _list_users(r: Run, b: B) -> None:
    for which in adm.UserFilter.values():
        req = adm.ListUsersRequest(channel_id=r.ids.channel, filter=which)
        await r.unary("admin", b.tenant.admin.admin.ListUsers, req)


def _explained(resp: adm.ExplainUserResponse) -> object:
    return (show(resp.check), show(resp.subject) if resp.HasField("subject") else None,
            show(resp.binding) if resp.HasField("binding") else None, resp.in_group_allowlist,
            [show(a) for a in resp.pending])  # fmt: skip


@case("AdminService.ExplainUser")
async def _explain_user(r: Run, b: B) -> None:
    for user in (r.ids.user, r.ids.paired, r.ids.blocked, r.ids.requester, r.ids.owner):
        req = adm.ExplainUserRequest(channel_id=r.ids.channel, user_id=user)
        await r.unary("admin", b.tenant.admin.admin.ExplainUser, req, _explained)
        group = adm.ExplainUserRequest(
            channel_id=r.ids.channel, user_id=user, chat_kind=cm.CHAT_KIND_GROUP, group_id=r.ids.group
        )
        await r.unary("admin", b.tenant.admin.admin.ExplainUser, group, _explained)


def _export(resp: adm.UserExport) -> object:
    doc = json.loads(resp.json)
    del doc["exported_at"]
    return json.dumps(doc, sort_keys=True)


@case("AdminService.ExportUser")
async def _export_user(r: Run, b: B) -> None:
    for user in (r.ids.user, r.ids.requester, r.ids.owner):
        req = adm.UserRef(channel_id=r.ids.channel, user_id=user)
        await r.unary("admin", b.tenant.admin.admin.ExportUser, req, _export)


@case("AdminService.PurgeUser")
async def _purge_user(r: Run, b: B) -> None:
    for user in (r.ids.requester, r.ids.user, r.ids.owner):
        await r.unary(
            "admin", b.tenant.admin.admin.PurgeUser, adm.UserRef(channel_id=r.ids.channel, user_id=user),
            lambda resp: show(adm.PurgeUserResponse(
                subjects_deleted=resp.subjects_deleted, group_senders_deleted=resp.group_senders_deleted,
                approvals_deleted=resp.approvals_deleted, audit_events_anonymized=resp.audit_events_anonymized,
            )),
        )  # fmt: skip


@case("AdminService.AnonymizeUser")
async def _anonymize_user(r: Run, b: B) -> None:
    for user in (r.ids.user, r.ids.requester, r.ids.owner):
        req = adm.UserRef(channel_id=r.ids.channel, user_id=user)
        await r.unary("admin", b.tenant.admin.admin.AnonymizeUser, req)


@case("AdminService.AllowGroupSender")
async def _allow_group_sender(r: Run, b: B) -> None:
    req = adm.GroupSenderRef(channel_id=r.ids.channel, group_id=r.ids.group, user_id=r.ids.user)
    await r.unary("admin", b.tenant.admin.admin.AllowGroupSender, req)


@case("AdminService.RemoveGroupSender")
async def _remove_group_sender(r: Run, b: B) -> None:
    req = adm.GroupSenderRef(channel_id=r.ids.channel, group_id=r.ids.group, user_id=r.ids.user)
    await r.unary("admin", b.tenant.admin.admin.RemoveGroupSender, req)


@case("AdminService.ListGroupSenders")
async def _list_group_senders(r: Run, b: B) -> None:
    for group in (r.ids.group, ""):
        req = adm.ListGroupSendersRequest(channel_id=r.ids.channel, group_id=group)
        await r.unary("admin", b.tenant.admin.admin.ListGroupSenders, req)


@case("AdminService.ListApprovals")
async def _list_approvals(r: Run, b: B) -> None:
    for role in ("approver", "admin"):
        for status in (cm.APPROVAL_STATUS_PENDING, cm.APPROVAL_STATUS_APPROVED):
            for channel in (r.ids.channel, ""):
                req = adm.ListApprovalsRequest(channel_id=channel, status=status, limit=1000)
                await r.unary(role, b.roles[role].admin.ListApprovals, req)


@case("AdminService.GetApproval")
async def _get_approval(r: Run, b: B) -> None:
    for role in ("approver", "admin"):
        for approval_id in (r.ids.pairing, r.ids.tool, r.ids.approved_tool):
            req = adm.GetApprovalRequest(approval_id=approval_id)
            await r.unary(role, b.roles[role].admin.GetApproval, req)


@case("AdminService.WatchApprovals")
async def _watch_approvals(r: Run, b: B) -> None:
    """B watches its tenant's approvals. Notifications naming A's approvals are
    injected (with A's tenant, and forged with B's), then one for B's own
    approval as an end marker: B's stream must yield its own approval only."""
    own = (
        await b.agent.authz.RequestApproval(
            az.RequestApprovalRequest(tool_name="probe", arguments_json="{}", agent_id="b-agent")
        )
    ).approval.approval_id
    call = b.tenant.approver.admin.WatchApprovals(adm.WatchApprovalsRequest())
    seen: list[str] = []
    try:
        async with asyncio.timeout(10):
            stream = call.__aiter__()
            seen.append((await anext(stream)).approval_id)  # the pending list: B's own only
            for tenant_id, approval_id in (
                (r.ids.tenant, r.ids.tool), (r.ids.tenant, r.ids.pairing),
                (b.tenant.tenant_id, r.ids.tool), (b.tenant.tenant_id, r.ids.pairing),
                (b.tenant.tenant_id, r.ids.approved_tool), (b.tenant.tenant_id, own),
            ):  # fmt: skip
                await b.owner_conn.execute(
                    "SELECT pg_notify('authz_approvals', $1)", f"{tenant_id} {approval_id}"
                )
            while len(seen) < 2 or seen[-1] != own:
                seen.append((await anext(stream)).approval_id)
    finally:
        call.cancel()
    await b.tenant.admin.authz.ResolveApproval(
        az.ResolveApprovalRequest(approval_id=own, action=cm.APPROVAL_ACTION_DENY)
    )  # the next run starts with no pending approval
    r.record("approver", adm.WatchApprovalsRequest(), str(["<own>" if s == own else s for s in seen]))


@case("AdminService.ListGrants")
async def _list_grants(r: Run, b: B) -> None:
    for role in ("approver", "admin"):
        for agent in (r.ids.agent, ""):
            for include_revoked in (False, True):
                req = adm.ListGrantsRequest(agent_id=agent, include_revoked=include_revoked)
                await r.unary(role, b.roles[role].admin.ListGrants, req)


@case("AdminService.RevokeGrant")
async def _revoke_grant(r: Run, b: B) -> None:
    await r.unary("admin", b.tenant.admin.admin.RevokeGrant, adm.RevokeGrantRequest(grant_id=r.ids.grant))


def _invite(resp: adm.CreateInviteResponse) -> object:
    i = resp.invite
    return (i.channel_id, i.max_uses, i.uses, list(i.permissions), i.note, bool(resp.code), bool(i.invite_id))


@case("AdminService.CreateInvite")
async def _create_invite(r: Run, b: B) -> None:
    req = adm.CreateInviteRequest(channel_id=r.ids.channel, max_uses=2, permissions=["p"], note="n")
    await r.unary("admin", b.tenant.admin.admin.CreateInvite, req, _invite)


@case("AdminService.ListInvites")
async def _list_invites(r: Run, b: B) -> None:
    for channel in (r.ids.channel, ""):
        for include_inactive in (False, True):
            req = adm.ListInvitesRequest(channel_id=channel, include_inactive=include_inactive)
            await r.unary("admin", b.tenant.admin.admin.ListInvites, req)


@case("AdminService.RevokeInvite")
async def _revoke_invite(r: Run, b: B) -> None:
    req = adm.RevokeInviteRequest(invite_id=r.ids.invite)
    await r.unary("admin", b.tenant.admin.admin.RevokeInvite, req)


@case("AdminService.QueryAudit")
async def _query_audit(r: Run, b: B) -> None:
    def events(resp: adm.QueryAuditResponse) -> object:
        return [(e.event, e.actor, e.channel_id, e.subject, e.approval_id) for e in resp.events]

    queries: tuple[dict[str, Any], ...] = (
        {"channel_id": r.ids.channel},
        {"user_id": r.ids.user},
        {"user_id": r.ids.requester, "event": "pairing."},
        {"channel_id": r.ids.channel, "user_id": r.ids.blocked},
        {},
    )
    for filters in queries:
        await r.unary(
            "admin", b.tenant.admin.admin.QueryAudit, adm.QueryAuditRequest(limit=1000, **filters), events
        )


# --- the sweep ------------------------------------------------------------------------------
