"""The Slack connector's auto-approve by email domain (``slack.lookup_email``), end to end."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from tests.connectors.fake_slack import (
    FakeSlack,
    dm_channel,
)
from tests.connectors.slack.rig import ALICE, CHANNEL, OWNER, OpenRig, Rig, start_pairing, to, uid

# ---- auto-approve by email domain (slack.lookup_email) ---------------------------------

COMPANY = cm.AutoApprove(email_domains=["company.com"])
APPROVED = "✅ You're approved. You can chat now."


async def audit(rig: Rig, prefix: str = "") -> list[adm.AuditEvent]:
    found = await rig.tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event=prefix))
    return list(found.events)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)


def company_alice(fake: FakeSlack) -> None:
    fake.add_user(ALICE, "alice@Company.com")  # domains match case-insensitively


async def test_requester_with_a_company_email_is_auto_approved(
    open_rig: OpenRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # slack_sdk logs whole responses at DEBUG: not this one
    async with open_rig(lookup_email=True, prepare=company_alice, auto_approve=COMPANY) as rig:
        await rig.say(ALICE, "hello there")

        # users.info was asked about the bare member id, once, before pairing.
        assert [c.params["user"] for c in rig.fake.log.of("users.info")] == [ALICE]
        # Alice is told she is in; the owner hears nothing and nothing is pending.
        assert rig.sent_to(ALICE) == [APPROVED]
        assert rig.fake.log.of("conversations.open") == []
        assert rig.fake.log.of("chat.postMessage", to(dm_channel(OWNER))) == []
        assert await rig.pending() == []

        check = await rig.tenant.connector.authz.CheckUser(
            az.CheckUserRequest(channel_id=CHANNEL, user_id=uid(ALICE), chat_kind=cm.CHAT_KIND_DIRECT)
        )
        assert (check.decision, check.reason) == (az.DECISION_ALLOW, "paired")
        await rig.say(ALICE, "what is 2+2?")
        assert rig.sent_to(ALICE)[-1] == "echo: what is 2+2?"
        assert len(rig.fake.log.of("users.info")) == 1  # an allowed user is not looked up

        [event] = await audit(rig, "pairing.")
        assert (event.event, event.actor, event.subject) == (
            "pairing.auto_approved",
            "auto:email_domain:company.com",
            uid(ALICE),
        )
        connector_key = rig.tenant.keys["connector"].split(".")[2]
        assert json.loads(event.details_json) == {"rule": "email_domain:company.com", "key": connector_key}
        # The address went to the service for the match only: not audited, not logged.
        assert "alice@" not in " ".join(str(e) for e in await audit(rig)).lower()
        assert "alice@" not in logged(caplog).lower()


def other_domain(fake: FakeSlack) -> None:
    fake.add_user(ALICE, "alice@other.com")


def no_email_scope(fake: FakeSlack) -> None:
    fake.add_user(ALICE, "alice@company.com")
    fake.email_scope = False


def unconfirmed(fake: FakeSlack) -> None:
    fake.add_user(ALICE, "alice@company.com", is_email_confirmed=False)


def deactivated(fake: FakeSlack) -> None:
    fake.add_user(ALICE, "alice@company.com", deleted=True)


def malformed(fake: FakeSlack) -> None:
    fake.add_user(ALICE, "alice@@company.com")  # the service would refuse the whole request


def failing(fake: FakeSlack) -> None:
    fake.add_user(ALICE, "alice@company.com")
    fake.fail("users.info", "ratelimited")


def hanging(fake: FakeSlack) -> None:
    fake.add_user(ALICE, "alice@company.com")
    fake.stall("users.info")


@pytest.mark.parametrize(
    ("prepare", "warning"),
    [
        pytest.param(other_domain, "", id="other-domain"),
        pytest.param(no_email_scope, "", id="no-users-read-email-scope"),
        pytest.param(unconfirmed, "", id="email-not-confirmed"),
        pytest.param(deactivated, "", id="deactivated-member"),
        pytest.param(malformed, "email field malformed", id="malformed-email"),
        pytest.param(failing, "(users.info: ratelimited)", id="users-info-fails"),
        pytest.param(hanging, "(TimeoutError)", id="users-info-times-out"),
    ],
)
async def test_requester_without_a_matching_confirmed_email_pairs_normally(
    open_rig: OpenRig,
    caplog: pytest.LogCaptureFixture,
    prepare: Callable[[FakeSlack], None],
    warning: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with open_rig(lookup_email=True, contact_timeout=0.2, prepare=prepare, auto_approve=COMPANY) as rig:
        approval = await start_pairing(rig)  # the code for Alice, the buttons for the owner
        assert [c.params["user"] for c in rig.fake.log.of("users.info")] == [ALICE]
        assert approval.user_id == uid(ALICE) and approval.status == cm.APPROVAL_STATUS_PENDING
        assert await audit(rig, "pairing.auto_approved") == []
        lookups = [r.getMessage() for r in caplog.records if "contact lookup" in r.getMessage()]
        if warning:  # the failure is logged, naming the user and the cause
            assert len(lookups) == 1 and uid(ALICE) in lookups[0] and warning in lookups[0]
        else:  # a lookup that worked but found nothing to report is not a failure
            assert lookups == []
        assert "alice@" not in logged(caplog).lower()
        # Her next message (the request is live: the bot stays quiet) is not another lookup.
        await rig.say(ALICE, "hello again?")
        assert len(rig.fake.log.of("users.info")) == 1


async def test_without_lookup_email_users_info_gives_the_name_only(open_rig: OpenRig) -> None:
    async with open_rig(prepare=company_alice, auto_approve=COMPANY) as rig:
        approval = await start_pairing(rig)
        assert approval.status == cm.APPROVAL_STATUS_PENDING
        # Slack's events carry no name: users.info fills in the name and handle the
        # owner reads, and the email is not used (no auto-approve).
        assert (approval.display_name, approval.handle) == (ALICE.lower(), ALICE.lower())
        [note] = rig.fake.log.of("chat.postMessage", to(dm_channel(OWNER)))
        assert f"From: {ALICE.lower()} (@{ALICE.lower()}, {uid(ALICE)})" in note.params["text"]
        await rig.say(ALICE, "hello again?")
        assert len(rig.fake.log.of("users.info")) == 1  # looked up once, kept for a while
        assert await audit(rig, "pairing.auto_approved") == []
