"""CheckUser and EvaluateSend over real gRPC, and the admin user commands."""

from __future__ import annotations

import grpc

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Dsns, Tenant, connect_as_tenant, rpc_error


async def dm(
    t: Tenant, user: str = "42", channel: str = "tg", *, consistent: bool = False
) -> az.CheckUserResponse:
    return await t.connector.authz.CheckUser(
        az.CheckUserRequest(
            channel_id=channel, user_id=user, chat_kind=cm.CHAT_KIND_DIRECT, consistent=consistent
        )
    )


async def grp(
    t: Tenant, user: str = "42", group: str = "-100", mentioned: bool = True
) -> az.CheckUserResponse:
    return await t.connector.authz.CheckUser(
        az.CheckUserRequest(
            channel_id="tg", user_id=user, chat_kind=cm.CHAT_KIND_GROUP, group_id=group, mentioned=mentioned
        )
    )


async def test_unknown_channel_denies(tenant: Tenant) -> None:
    resp = await dm(tenant, channel="never-configured")
    assert (resp.decision, resp.reason, resp.text) == (az.DECISION_DENY, "channel_not_configured", "")


async def test_allowlist_user_lifecycle(tenant: Tenant) -> None:
    await tenant.channel(dm_policy=cm.DM_POLICY_ALLOWLIST, agent_id="support")
    assert (await dm(tenant)).reason == "not_allowlisted"
    await tenant.admin.admin.AllowUser(
        adm.AllowUserRequest(channel_id="tg", user_id="42", permissions=["read"])
    )
    resp = await dm(tenant)
    assert (resp.decision, resp.reason, resp.agent_id, list(resp.permissions)) == (
        az.DECISION_ALLOW, "allowlisted", "support", ["read"])  # fmt: skip
    await tenant.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id="42", reason="spam"))
    assert (await dm(tenant)).decision == az.DECISION_BLOCKED
    assert (await tenant.admin.admin.UnblockUser(adm.UserRef(channel_id="tg", user_id="42"))).removed
    assert (await dm(tenant)).reason == "not_allowlisted"  # unblocked users start again as unknown
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="42"))
    assert (await tenant.admin.admin.RemoveUser(adm.UserRef(channel_id="tg", user_id="42"))).removed
    assert (await dm(tenant)).decision == az.DECISION_DENY
    names = [
        e.event for e in (await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="user."))).events
    ]
    assert names == ["user.allowed", "user.blocked", "user.unblocked", "user.allowed", "user.removed"]


async def test_unpair_revokes_only_pairings(tenant: Tenant) -> None:
    await tenant.channel()
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="42"))
    assert not (await tenant.admin.admin.UnpairUser(adm.UserRef(channel_id="tg", user_id="42"))).removed
    assert (await dm(tenant)).decision == az.DECISION_ALLOW


async def test_open_dm_must_be_explicit(tenant: Tenant) -> None:
    await tenant.channel()  # empty policy
    assert (await dm(tenant)).decision == az.DECISION_PAIRING_REQUIRED
    await tenant.channel(dm_policy=cm.DM_POLICY_OPEN)
    assert (await dm(tenant)).reason == "dm_open"
    await tenant.channel(dm_policy=cm.DM_POLICY_DISABLED)
    assert (await dm(tenant)).reason == "dm_disabled"


async def test_group_allowlist_is_separate_from_dm_pairing(tenant: Tenant) -> None:
    await tenant.channel()
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="42"))
    assert (await grp(tenant)).reason == "group_sender_not_allowed"
    await tenant.admin.admin.AllowGroupSender(
        adm.GroupSenderRef(channel_id="tg", group_id="-100", user_id="42")
    )
    assert (await grp(tenant)).decision == az.DECISION_ALLOW
    assert (await grp(tenant, group="-200")).decision == az.DECISION_DENY
    assert (await grp(tenant, mentioned=False)).reason == "mention_required"
    await tenant.admin.admin.AllowGroupSender(adm.GroupSenderRef(channel_id="tg", group_id="*", user_id="43"))
    assert (await grp(tenant, user="43", group="-200")).decision == az.DECISION_ALLOW
    # ...and a group sender is not a DM user.
    assert (await dm(tenant, user="43")).decision == az.DECISION_PAIRING_REQUIRED


async def test_group_policies(tenant: Tenant) -> None:
    await tenant.channel(group_policy=cm.GROUP_POLICY_OPEN, require_mention=False)
    assert (await grp(tenant, mentioned=False)).reason == "group_open"
    await tenant.channel(group_policy=cm.GROUP_POLICY_DISABLED)
    assert (await grp(tenant)).reason == "group_disabled"


async def test_unreadable_policy_denies(tenant: Tenant, dsns: Dsns) -> None:
    """Evonic: a channel went open when `mode` went missing. Ours goes closed."""
    await tenant.channel(dm_policy=cm.DM_POLICY_OPEN)
    assert (await dm(tenant)).decision == az.DECISION_ALLOW
    conn = await connect_as_tenant(dsns.owner, tenant.tenant_id)
    try:
        await conn.execute(
            "UPDATE channels SET policy = policy - 'dm_policy' WHERE tenant_id = $1", tenant.tenant_id
        )
    finally:
        await conn.close()
    # Written behind the service's back: read the database, not the cache (which
    # learns of the change through NOTIFY, a moment later).
    resp = await dm(tenant, consistent=True)
    assert (resp.decision, resp.reason) == (az.DECISION_DENY, "channel_policy_invalid")
    send = await tenant.connector.authz.EvaluateSend(
        az.EvaluateSendRequest(channel_id="tg", agent_id="a", origin="telegram:42", target="origin"))  # fmt: skip
    assert not send.allow and send.reason == "send_policy evaluation error"


async def send(
    t: Tenant, target: str, agent: str = "support", origin: str = "telegram:42"
) -> az.EvaluateSendResponse:
    return await t.connector.authz.EvaluateSend(
        az.EvaluateSendRequest(channel_id="tg", agent_id=agent, session_id="s1", origin=origin, target=target)
    )


async def test_send_policy_end_to_end(tenant: Tenant) -> None:
    await tenant.channel(
        send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW, deny=["slack:C0EXEC1"]),
        agent_send_policies={
            "ops": cm.SendPolicy(default=cm.SEND_DEFAULT_DENY, allow=["origin", "incidents"])
        },
        aliases={"exec": "slack:C0EXEC1", "incidents": "slack:C0INC01"},
    )
    assert (await send(tenant, "slack:#random")).allow
    denied = await send(tenant, "exec")
    assert not denied.allow
    assert denied.reason == "Failed to send to exec: target 'exec' is not permitted by send_policy"
    assert denied.resolved_target == "slack:C0EXEC1"
    assert (await send(tenant, "slack:C0INC01", agent="ops")).allow
    assert not (await send(tenant, "slack:#random", agent="ops")).allow
    listing = await tenant.connector.authz.EvaluateSend(
        az.EvaluateSendRequest(channel_id="tg", agent_id="ops", target="slack:#random", action=az.SEND_ACTION_LIST))  # fmt: skip
    assert listing.allow
    audit = (await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="send.denied"))).events
    assert [(e.subject, e.actor) for e in audit] == [
        ("exec", "agent:support"),
        ("slack:#random", "agent:ops"),
    ]


async def test_no_send_policy_allows_only_origin(tenant: Tenant) -> None:
    await tenant.channel()
    assert (await send(tenant, "origin")).allow
    assert (await send(tenant, "telegram:42")).allow
    assert not (await send(tenant, "telegram:43")).allow


async def test_delete_channel_denies_afterwards(tenant: Tenant) -> None:
    await tenant.channel(dm_policy=cm.DM_POLICY_OPEN)
    assert (await tenant.admin.admin.DeleteChannel(adm.DeleteChannelRequest(channel_id="tg"))).deleted
    assert (await dm(tenant)).reason == "channel_not_configured"
    err = await rpc_error(tenant.admin.admin.GetChannel(adm.GetChannelRequest(channel_id="tg")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_policy_round_trips_with_defaults(tenant: Tenant) -> None:
    saved = await tenant.channel(owner_id="100")
    p = saved.policy
    assert (p.dm_policy, p.group_policy, p.require_mention) == (
        cm.DM_POLICY_PAIRING,
        cm.GROUP_POLICY_ALLOWLIST,
        True,
    )
    assert (p.pairing_code_ttl_seconds, p.max_pending, p.agent_id, p.owner_id) == (300, 20, "default", "100")
    err = await rpc_error(tenant.channel(pairing_code_ttl_seconds=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "pairing_code_ttl_seconds" in (
        err.details() or ""
    )
    err = await rpc_error(tenant.channel(owner_id="@alice"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "owner_id" in (err.details() or "")
