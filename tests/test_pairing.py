"""RequestPairing and ResolveApproval over real gRPC on real PostgreSQL,
including the anchors' known failures (DESIGN §9)."""

from __future__ import annotations

import asyncio

import grpc

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Dsns, Tenant, connect_as_tenant, rpc_error
from .pairing_helpers import OWNER, button, check, events, expire_now, pair, press


async def test_owner_approves_with_the_button_and_the_user_may_chat(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER)
    resp = await pair(tenant)
    assert resp.outcome == az.PAIRING_OUTCOME_CREATED and resp.created
    assert len(resp.code) == 8 and resp.code in resp.text
    assert resp.notification.owner_id == OWNER
    assert "Alice (42)" in resp.notification.text and "“hi”" in resp.notification.text
    assert [b.action for b in resp.notification.buttons] == [
        cm.APPROVAL_ACTION_APPROVE, cm.APPROVAL_ACTION_DENY, cm.APPROVAL_ACTION_BLOCK]  # fmt: skip
    assert all(len(b.callback_payload.encode()) <= 64 for b in resp.notification.buttons)

    done = await press(tenant, button(resp, cm.APPROVAL_ACTION_APPROVE))
    assert done.approval.status == cm.APPROVAL_STATUS_APPROVED
    assert done.requester_text == "✅ Paired! You can chat now."
    assert done.approval.resolved_by == f"telegram:{OWNER}"
    after = await check(tenant)
    assert (after.decision, after.reason) == (az.DECISION_ALLOW, "paired")
    names = [e.event for e in await events(tenant, "pairing.")]
    assert names == ["pairing.requested", "pairing.approved"]


async def test_repeat_request_returns_same_code_without_new_notification(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER)
    first = await pair(tenant)
    second = await pair(tenant)
    assert second.outcome == az.PAIRING_OUTCOME_EXISTING and not second.created
    assert (second.code, second.approval_id) == (first.code, first.approval_id)
    assert not second.HasField("notification") and second.text == ""
    assert len(await events(tenant, "pairing.requested")) == 1


async def test_without_owner_the_requester_is_told_the_cli_command(tenant: Tenant) -> None:
    await tenant.channel()
    resp = await pair(tenant)
    assert not resp.HasField("notification")
    assert f"authz pairing approve tg {resp.code}" in resp.text
    done = await tenant.admin.authz.ResolveApproval(
        az.ResolveApprovalRequest(
            code=az.CodeRef(channel_id="tg", code=resp.code.lower()), action=cm.APPROVAL_ACTION_APPROVE
        )
    )
    assert done.approval.status == cm.APPROVAL_STATUS_APPROVED
    assert (await check(tenant)).decision == az.DECISION_ALLOW


async def test_code_redeems_only_on_its_own_channel(tenant: Tenant) -> None:
    """PraisonAI: a Telegram code redeemed as Slack."""
    await tenant.channel("tg")
    await tenant.channel("sl", platform=cm.PLATFORM_SLACK)
    resp = await pair(tenant)
    err = await rpc_error(tenant.admin.authz.ResolveApproval(
        az.ResolveApprovalRequest(code=az.CodeRef(channel_id="sl", code=resp.code), action=cm.APPROVAL_ACTION_APPROVE)))  # fmt: skip
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert (await check(tenant)).decision == az.DECISION_PAIRING_REQUIRED


async def test_deny_consumes_the_code_and_records_no_pairing(tenant: Tenant) -> None:
    """PraisonAI: deny inserted a junk paired record."""
    await tenant.channel(owner_id=OWNER)
    resp = await pair(tenant)
    done = await press(tenant, button(resp, cm.APPROVAL_ACTION_DENY))
    assert done.approval.status == cm.APPROVAL_STATUS_DENIED
    assert done.requester_text == "❌ Your pairing request was denied."
    users = await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))
    assert list(users.users) == []
    err = await rpc_error(press(tenant, button(resp, cm.APPROVAL_ACTION_APPROVE)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "denied" in (err.details() or "")
    err = await rpc_error(tenant.admin.authz.ResolveApproval(
        az.ResolveApprovalRequest(code=az.CodeRef(channel_id="tg", code=resp.code), action=cm.APPROVAL_ACTION_APPROVE)))  # fmt: skip
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    # A new message starts a fresh request with a fresh code.
    again = await pair(tenant)
    assert again.created and again.code != resp.code


async def test_block_blocks_and_the_user_cannot_pair_again(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER)
    resp = await pair(tenant)
    done = await press(tenant, button(resp, cm.APPROVAL_ACTION_BLOCK))
    assert done.approval.status == cm.APPROVAL_STATUS_BLOCKED and done.requester_text == ""
    assert (await check(tenant)).decision == az.DECISION_BLOCKED
    assert (await pair(tenant)).outcome == az.PAIRING_OUTCOME_BLOCKED
    blocked = await tenant.admin.admin.ListUsers(
        adm.ListUsersRequest(channel_id="tg", filter=adm.USER_FILTER_BLOCKED)
    )
    assert [u.user_id for u in blocked.users] == ["42"]


async def test_non_approver_press_changes_nothing_and_is_audited(tenant: Tenant) -> None:
    """PraisonAI: the clicker was not checked against the owner."""
    await tenant.channel(owner_id=OWNER)
    resp = await pair(tenant)
    err = await rpc_error(press(tenant, button(resp, cm.APPROVAL_ACTION_APPROVE), actor="999"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await check(tenant)).decision == az.DECISION_PAIRING_REQUIRED
    approval = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=resp.approval_id))
    assert approval.status == cm.APPROVAL_STATUS_PENDING
    [ev] = await events(tenant, "approval.unauthorized")
    assert ev.actor == "telegram:999" and ev.approval_id == resp.approval_id


async def test_with_approvers_but_no_owner_the_requester_is_told_they_were_asked(tenant: Tenant) -> None:
    """The outbox posts the request to every chat approver, the owner or not:
    the requester is not sent to a CLI that someone in chat has no need of."""
    await tenant.channel(approvers=["200"])
    resp = await pair(tenant)
    assert "has been asked to approve you" in resp.text and "authz pairing approve" not in resp.text
    await tenant.channel(approvers=[])  # the same channel, now with nobody to ask in chat
    assert "authz pairing approve tg" in (await pair(tenant, "43")).text
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=["telegram:300"]))
    assert "has been asked to approve you" in (await pair(tenant, "44")).text
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=["discord:300000000"]))
    assert "authz pairing approve tg" in (await pair(tenant, "45")).text


async def test_channel_and_tenant_approvers_may_resolve(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER, approvers=["200"])
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=["telegram:300"]))
    for actor, user in (("200", "42"), ("300", "43")):
        resp = await pair(tenant, user)
        done = await press(tenant, button(resp, cm.APPROVAL_ACTION_APPROVE), actor=actor)
        assert done.approval.resolved_by == f"telegram:{actor}"
    # A tenant approver on another platform is not a Telegram approver.
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=["discord:300000000"]))
    resp = await pair(tenant, "44")
    err = await rpc_error(press(tenant, button(resp, cm.APPROVAL_ACTION_APPROVE), actor="300000000"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_button_action_cannot_be_overridden(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER)
    resp = await pair(tenant)
    err = await rpc_error(tenant.connector.authz.ResolveApproval(az.ResolveApprovalRequest(
        callback_payload=button(resp, cm.APPROVAL_ACTION_DENY), action=cm.APPROVAL_ACTION_APPROVE, actor_id=OWNER)))  # fmt: skip
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "action" in (err.details() or "")


async def test_tampered_and_truncated_payloads_are_refused(tenant: Tenant) -> None:
    """PraisonAI signed buttons with 32 bits; ours carry a 128-bit MAC."""
    await tenant.channel(owner_id=OWNER)
    resp = await pair(tenant)
    payload = button(resp, cm.APPROVAL_ACTION_APPROVE)
    flipped = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    for forged in (flipped, payload[:-4], payload[:20], "az1a" + "A" * 44):
        err = await rpc_error(press(tenant, forged))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await check(tenant)).decision == az.DECISION_PAIRING_REQUIRED


async def test_late_tap_on_expired_request_is_refused_and_audited_once(tenant: Tenant, dsns: Dsns) -> None:
    """PraisonAI approved expired rows after a restart; Evonic compared expiry as text."""
    await tenant.channel(owner_id=OWNER)
    resp = await pair(tenant)
    await expire_now(dsns, tenant.tenant_id, resp.approval_id)
    for _ in range(2):
        err = await rpc_error(press(tenant, button(resp, cm.APPROVAL_ACTION_APPROVE)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await check(tenant)).decision == az.DECISION_PAIRING_REQUIRED
    assert len(await events(tenant, "pairing.expired")) == 1
    approval = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=resp.approval_id))
    assert approval.status == cm.APPROVAL_STATUS_EXPIRED
    # The user's next message starts a new request.
    assert (await pair(tenant)).created


async def test_racing_resolves_have_exactly_one_winner(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER)
    resp = await pair(tenant)
    payloads = [button(resp, a) for a in (cm.APPROVAL_ACTION_APPROVE, cm.APPROVAL_ACTION_DENY)] * 10
    results = await asyncio.gather(*(press(tenant, p) for p in payloads), return_exceptions=True)
    winners = [r for r in results if isinstance(r, az.ResolveApprovalResponse)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1 and len(losers) == 19
    assert all(e.code() == grpc.StatusCode.FAILED_PRECONDITION for e in losers)
    decided = [e for e in await events(tenant, "pairing.") if e.event != "pairing.requested"]
    assert len(decided) == 1


async def test_concurrent_requests_for_one_user_create_one_request(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER)
    results = await asyncio.gather(*(pair(tenant) for _ in range(10)))
    assert sum(r.created for r in results) == 1
    assert len({r.code for r in results}) == 1


async def test_flood_of_unknown_users_stops_at_the_cap(tenant: Tenant, other_tenant: Tenant) -> None:
    """PraisonAI: one unknown user could flood max_pending. Here one user holds one
    slot, and many users stop at the per-channel cap without touching others."""
    await tenant.channel(max_pending=3)
    await tenant.channel("tg2", max_pending=3)
    await other_tenant.channel(max_pending=3)
    for _ in range(5):
        await pair(tenant, "42")
    outcomes = [(await pair(tenant, str(1000 + i))).outcome for i in range(5)]
    assert outcomes == [az.PAIRING_OUTCOME_CREATED] * 2 + [az.PAIRING_OUTCOME_CAPACITY] * 3
    assert (await pair(tenant, "42", channel="tg2")).created
    assert (await pair(other_tenant, "7")).created


async def test_block_during_pairing_wins(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER)
    resp = await pair(tenant)
    await tenant.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id="42"))
    err = await rpc_error(press(tenant, button(resp, cm.APPROVAL_ACTION_APPROVE)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await check(tenant)).decision == az.DECISION_BLOCKED


async def test_pairing_only_on_pairing_channels(tenant: Tenant) -> None:
    await tenant.channel(dm_policy=cm.DM_POLICY_ALLOWLIST)
    resp = await pair(tenant)
    assert resp.outcome == az.PAIRING_OUTCOME_NOT_ACCEPTED and resp.code == "" and resp.text == ""
    err = await rpc_error(pair(tenant, channel="nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_already_allowed_user_gets_no_new_request(tenant: Tenant) -> None:
    await tenant.channel()
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="42"))
    resp = await pair(tenant)
    assert resp.outcome == az.PAIRING_OUTCOME_ALREADY_ALLOWED and not resp.code


async def test_time_limited_pairing_expires(tenant: Tenant, dsns: Dsns) -> None:
    await tenant.channel(owner_id=OWNER, pairing_ttl_seconds=3600)
    resp = await pair(tenant)
    await press(tenant, button(resp, cm.APPROVAL_ACTION_APPROVE))
    [user] = (await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))).users
    assert user.HasField("expires_at")
    conn = await connect_as_tenant(dsns.owner, tenant.tenant_id)
    try:
        await conn.execute("UPDATE subjects SET expires_at = now() - interval '1 second' WHERE tenant_id = $1",
                           tenant.tenant_id)  # fmt: skip
    finally:
        await conn.close()
    after = await check(tenant, consistent=True)  # changed behind the cache's back
    assert (after.decision, after.reason) == (az.DECISION_PAIRING_REQUIRED, "renewal_required")
    assert (await pair(tenant)).created


async def test_codes_are_stored_hashed(tenant: Tenant, dsns: Dsns) -> None:
    await tenant.channel()
    resp = await pair(tenant)
    conn = await connect_as_tenant(dsns.owner, tenant.tenant_id)
    try:
        row = await conn.fetchrow("SELECT * FROM approvals WHERE tenant_id = $1", tenant.tenant_id)
        dump = await conn.fetchval(
            "SELECT string_agg(t::text, '') FROM approvals t WHERE tenant_id = $1", tenant.tenant_id
        )
    finally:
        await conn.close()
    assert row is not None and resp.code not in dump and resp.code.encode() not in bytes(row["code_hash"])


async def test_repeat_requests_unauthorized_presses_and_quorum_votes_answer_and_audit(tenant: Tenant) -> None:
    """A repeat request gets the same code, an unauthorized press is refused and
    audited, and a quorum vote is recorded before the deciding one."""
    await tenant.channel(owner_id=OWNER, required_approvals=2)
    request = az.RequestPairingRequest(
        channel_id="tg", user_id="42", display_name="Alice", first_message="hi"
    )
    first = await tenant.connector.authz.RequestPairing(request)
    again = await tenant.connector.authz.RequestPairing(request)
    assert (first.outcome, again.outcome) == (az.PAIRING_OUTCOME_CREATED, az.PAIRING_OUTCOME_EXISTING)
    assert again.code == first.code and again.approval_id == first.approval_id

    def approve(actor: str = "") -> az.ResolveApprovalRequest:
        return az.ResolveApprovalRequest(
            approval_id=first.approval_id, action=cm.APPROVAL_ACTION_APPROVE, actor_id=actor
        )

    err = await rpc_error(tenant.connector.authz.ResolveApproval(approve("666")))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    one = await tenant.connector.authz.ResolveApproval(approve(OWNER))
    assert one.approval.status == cm.APPROVAL_STATUS_PENDING and "1 of 2" in one.owner_text
    two = await tenant.approver.authz.ResolveApproval(approve())
    assert two.approval.status == cm.APPROVAL_STATUS_APPROVED
    audit = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest())
    events = [e.event for e in audit.events if e.event.startswith(("pairing.", "approval."))]
    assert events == ["pairing.requested", "approval.unauthorized", "pairing.vote", "pairing.approved"]


async def test_a_channel_moved_to_another_platform_qualifies_ids_and_approvers_anew(tenant: Tenant) -> None:
    """The platform qualifies user ids and approvers ("telegram:5000500"), and a
    channel can change platform with its policy unchanged."""
    await tenant.channel(owner_id="1000001")
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=["telegram:5000500"]))
    pending = await tenant.connector.authz.RequestPairing(
        az.RequestPairingRequest(channel_id="tg", user_id="42", display_name="B", first_message="hi")
    )
    await tenant.channel(platform=cm.PLATFORM_DISCORD, owner_id="1000001")
    err = await rpc_error(tenant.connector.authz.ResolveApproval(az.ResolveApprovalRequest(
        approval_id=pending.approval_id, action=cm.APPROVAL_ACTION_APPROVE, actor_id="5000500",
    )))  # fmt: skip
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED  # discord:5000500 is nobody's approver
    err = await rpc_error(tenant.connector.authz.RequestPairing(
        az.RequestPairingRequest(channel_id="tg", user_id="43", display_name="C", first_message="hi")
    ))  # fmt: skip
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # not a Discord user id
    still = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=pending.approval_id))
    assert still.status == cm.APPROVAL_STATUS_PENDING
