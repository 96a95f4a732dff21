"""Auto-approve rules over real gRPC and PostgreSQL (issue #5, pairing lifecycle).

A matching phone pattern or email domain approves a pairing request at once:
the approval is stored APPROVED by ``auto:<rule>``, the user is allowed (with
the channel's pairing expiry), ``pairing.auto_approved`` names the rule, and
the owner is not notified. The reported email and phone number are never
stored, logged or audited. The rules themselves: tests/domain/test_autoapprove.py.
"""

from __future__ import annotations

import json
import logging

import grpc
import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Dsns, Tenant, connect_as_tenant, rpc_error
from .pairing_helpers import OWNER, events

WA_USER = "+84981234567"
AUTO = cm.AutoApprove(phone_patterns=["+8498*"], email_domains=["@Company.com"])


async def request(
    t: Tenant, user: str, channel: str = "tg", *, email: str = "", phone: str = ""
) -> az.RequestPairingResponse:
    return await t.connector.authz.RequestPairing(
        az.RequestPairingRequest(
            channel_id=channel, user_id=user, display_name="Dana", first_message="hi",
            email=email, phone_number=phone,
        )
    )  # fmt: skip


async def decision(
    t: Tenant, user: str, channel: str = "tg", consistent: bool = False
) -> az.CheckUserResponse:
    return await t.connector.authz.CheckUser(
        az.CheckUserRequest(
            channel_id=channel, user_id=user, chat_kind=cm.CHAT_KIND_DIRECT, consistent=consistent
        )
    )


async def test_whatsapp_number_matching_a_pattern_is_approved_at_once(
    tenant: Tenant, dsns: Dsns, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await tenant.channel("wa", cm.PLATFORM_WHATSAPP, owner_id="+15550000001", auto_approve=AUTO,
                         pairing_ttl_seconds=3600)  # fmt: skip
    before = await decision(tenant, WA_USER, "wa")  # fills this process's cache
    assert before.decision == az.DECISION_PAIRING_REQUIRED

    resp = await request(tenant, WA_USER, "wa", email="dana@private.example")
    assert resp.outcome == az.PAIRING_OUTCOME_AUTO_APPROVED and not resp.created
    assert resp.text == "✅ You're approved. You can chat now."
    assert not resp.code and not resp.HasField("notification") and resp.approval_id
    # Read your own write: the cached "pairing required" is gone.
    after = await decision(tenant, WA_USER, "wa")
    assert (after.decision, after.reason) == (az.DECISION_ALLOW, "paired")

    actor = "auto:phone_pattern:+8498*"
    got = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=resp.approval_id))
    assert got.status == cm.APPROVAL_STATUS_APPROVED
    assert (got.resolved_by, list(got.approved_by), got.required_approvals) == (actor, [actor], 1)
    [user] = (await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="wa"))).users
    assert user.source == adm.SUBJECT_SOURCE_PAIRING and user.HasField("expires_at")

    trail = await events(tenant, "pairing.")
    assert [(e.event, e.actor, e.subject) for e in trail] == [("pairing.auto_approved", actor, WA_USER)]
    assert json.loads(trail[0].details_json) == {
        "rule": "phone_pattern:+8498*",
        "key": tenant.keys["connector"].split(".")[2],
    }
    # The reported email is nowhere: not in the audit trail, the logs or the tables.
    everything = " ".join(str(e) for e in await events(tenant))
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    conn = await connect_as_tenant(dsns.owner, tenant.tenant_id)
    try:
        rows = await conn.fetchval(
            "SELECT string_agg(t::text, '') FROM approvals t WHERE tenant_id = $1", tenant.tenant_id
        )
    finally:
        await conn.close()
    for text in (everything, logged, rows):
        assert "dana@private.example" not in text and "private.example" not in text
    # A repeat finds the user allowed.
    again = await request(tenant, WA_USER, "wa")
    assert again.outcome == az.PAIRING_OUTCOME_ALREADY_ALLOWED


async def test_email_domain_matches_exactly_and_is_not_logged(
    tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await tenant.channel(owner_id=OWNER, auto_approve=AUTO)
    sub = await request(tenant, "41", email="eve@sub.company.com")
    assert sub.outcome == az.PAIRING_OUTCOME_CREATED and sub.HasField("notification")
    resp = await request(tenant, "42", email="Bob.Smith@COMPANY.com", phone="+4420000000")
    assert resp.outcome == az.PAIRING_OUTCOME_AUTO_APPROVED
    assert (await decision(tenant, "42")).decision == az.DECISION_ALLOW
    [auto] = await events(tenant, "pairing.auto_approved")
    assert auto.actor == "auto:email_domain:company.com"
    assert json.loads(auto.details_json) == {
        "rule": "email_domain:company.com",
        "key": tenant.keys["connector"].split(".")[2],
    }
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    trail = " ".join(str(e) for e in await events(tenant))
    for secret in ("Bob.Smith", "bob.smith", "+4420000000", "eve@"):
        assert secret not in logged and secret not in trail


async def test_reported_phone_number_matches_on_other_platforms(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER, auto_approve=AUTO)
    resp = await request(tenant, "42", phone="+84987654321")
    assert resp.outcome == az.PAIRING_OUTCOME_AUTO_APPROVED
    miss = await request(tenant, "43", phone="+84971234567")
    assert miss.outcome == az.PAIRING_OUTCOME_CREATED


async def test_blocked_user_is_never_auto_approved(tenant: Tenant) -> None:
    await tenant.channel("wa", cm.PLATFORM_WHATSAPP, auto_approve=AUTO)
    await tenant.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="wa", user_id=WA_USER))
    resp = await request(tenant, WA_USER, "wa", email="x@company.com")
    assert resp.outcome == az.PAIRING_OUTCOME_BLOCKED and not resp.approval_id
    assert (await decision(tenant, WA_USER, "wa", consistent=True)).decision == az.DECISION_BLOCKED
    assert await events(tenant, "pairing.auto_approved") == []


@pytest.mark.parametrize(
    "auto",
    [None, cm.AutoApprove(phone_patterns=["+1555*"], email_domains=["other.org"])],
    ids=["no-rules", "no-match"],
)
async def test_without_a_matching_rule_pairing_is_as_usual(
    tenant: Tenant, auto: cm.AutoApprove | None
) -> None:
    if auto is None:
        await tenant.channel(owner_id=OWNER)
    else:
        await tenant.channel(owner_id=OWNER, auto_approve=auto)
    resp = await request(tenant, "42", email="bob@company.com", phone="+84981234567")
    assert resp.outcome == az.PAIRING_OUTCOME_CREATED and resp.code and resp.HasField("notification")
    assert (await decision(tenant, "42")).decision == az.DECISION_PAIRING_REQUIRED
    assert await events(tenant, "pairing.auto_approved") == []


async def test_only_pairing_channels_auto_approve(tenant: Tenant) -> None:
    await tenant.channel(dm_policy=cm.DM_POLICY_ALLOWLIST, auto_approve=AUTO)
    resp = await request(tenant, "42", email="bob@company.com")
    assert resp.outcome == az.PAIRING_OUTCOME_NOT_ACCEPTED
    assert (await decision(tenant, "42")).decision == az.DECISION_DENY


async def test_a_live_request_is_approved_in_place_and_the_cap_does_not_apply(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER, auto_approve=AUTO, max_pending=1, required_approvals=2)
    first = await request(tenant, "42")  # the connector did not report the email yet
    assert first.created
    full = await request(tenant, "43")
    assert full.outcome == az.PAIRING_OUTCOME_CAPACITY
    # The same user, now with a matching email: their live request is approved.
    auto = await request(tenant, "42", email="bob@company.com")
    assert auto.outcome == az.PAIRING_OUTCOME_AUTO_APPROVED and auto.approval_id == first.approval_id
    got = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=first.approval_id))
    assert got.status == cm.APPROVAL_STATUS_APPROVED and got.resolved_by == "auto:email_domain:company.com"
    # Another user on the full channel is approved too: no pending request is needed.
    other = await request(tenant, "44", email="carol@company.com")
    assert other.outcome == az.PAIRING_OUTCOME_AUTO_APPROVED
    assert (await decision(tenant, "44")).decision == az.DECISION_ALLOW


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("email", "not-an-email"),
        ("email", "a@b@c.com"),
        ("email", "x" * 250 + "@company.com"),
        ("phone_number", "84981234567"),
        ("phone_number", "+8498 1234567"),
    ],
)
async def test_reported_identities_are_validated(tenant: Tenant, field: str, value: str) -> None:
    await tenant.channel(auto_approve=AUTO)
    req = az.RequestPairingRequest(channel_id="tg", user_id="42", **{field: value})
    err = await rpc_error(tenant.connector.authz.RequestPairing(req))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (err.details() or "")


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("+*1*", "at least 4 digits after '+'"),  # every number with a 1 in it
        ("+1*", "at least 4 digits after '+'"),  # all of North America
        ("+*", "must contain digits"),
    ],
    ids=["star-digit-star", "country-code-only", "match-all"],
)
async def test_phone_patterns_that_admit_too_much_are_refused(tenant: Tenant, pattern: str, why: str) -> None:
    err = await rpc_error(tenant.channel(auto_approve=cm.AutoApprove(phone_patterns=["+8498*", pattern])))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.details() or ""
    assert "policy.auto_approve.phone_patterns" in details and why in details
    assert (await tenant.admin.admin.ListChannels(adm.ListChannelsRequest())).channels == []
