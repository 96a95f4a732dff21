"""The WhatsApp connector end to end: signed webhooks into the real pywa client,
the real authz service on PostgreSQL, and a fake Cloud API recording what the
bot sent. The owner's window is opened by the owner writing first (``/pending``).
Approvers' copies come from the notification outbox, as ``sidecars.main`` runs it:
the tests wait (bounded) for the fake to record them."""

from __future__ import annotations

import json
import logging

import pytest

from authz_service.domain.pairing import CALLBACK_LENGTH
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars.runtime import NOT_ALLOWED
from tests.connectors.fake_whatsapp import (
    VERIFY_TOKEN,
    button_reply,
    buttons_of,
    signature,
    status,
    text,
)
from tests.connectors.whatsapp.rig import ALICE, CHANNEL, MALLORY, OWNER, OpenRig, Rig, new_id, uid

APPROVED = "✅ You're approved. You can chat now."


async def allowed(rig: Rig, wa_id: str) -> bool:
    check = await rig.tenant.connector.authz.CheckUser(
        az.CheckUserRequest(channel_id=CHANNEL, user_id=uid(wa_id), chat_kind=cm.CHAT_KIND_DIRECT)
    )
    return check.decision == az.DECISION_ALLOW


async def start_pairing(rig: Rig) -> cm.Approval:
    """The owner opens the chat; Alice, a stranger, writes: she gets a code, the owner the buttons."""
    await rig.say(OWNER, "/pending")
    await rig.say(ALICE, "hello there", name="Alice")
    [code] = rig.fake.texts_to(ALICE)
    assert "Pairing code" in code
    [approval] = await rig.pending()
    await rig.notified(OWNER, uid(ALICE))  # the outbox's copy
    return approval


async def test_a_stranger_pairs_when_the_owner_taps_approve(rig: Rig) -> None:
    approval = await start_pairing(rig)
    assert approval.user_id == uid(ALICE)  # the wa_id, stored as E.164
    notification = await rig.notified(OWNER)
    assert notification == rig.fake.sent_to(OWNER)[-1]
    body = notification["interactive"]["body"]["text"]
    assert uid(ALICE) in body and "Alice" in body and "hello there" in body  # the number shows
    buttons = buttons_of(notification)
    assert [b["reply"]["title"] for b in buttons] == ["✅ Approve", "❌ Deny", "⛔ Block"]
    # The service's payload is the button id verbatim, and fits WhatsApp's 256 characters.
    assert all(len(b["reply"]["id"]) == CALLBACK_LENGTH <= 256 for b in buttons)
    assert rig.agent.turns == []

    await rig.press(OWNER, "approve")
    assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_APPROVED
    assert await allowed(rig, ALICE)
    assert "Paired" in rig.fake.texts_to(ALICE)[-1]
    # The outbox shows the outcome as a new message (WhatsApp cannot edit), without buttons;
    # the press itself adds no second one.
    outcome = await rig.shown(OWNER, f"✅ Approved by whatsapp:{uid(OWNER)}")
    assert outcome["type"] == "text" and uid(ALICE) in outcome["text"]["body"]
    assert "Code: " not in outcome["text"]["body"]
    assert len([t for t in rig.fake.texts_to(OWNER) if "Approved" in t]) == 1

    # Alice now reaches the agent, and its reply passes EvaluateSend back to her.
    await rig.say(ALICE, "what is 2+2?")
    assert [t.text for t in rig.agent.turns] == ["what is 2+2?"]
    assert rig.agent.turns[0].user_id == uid(ALICE)
    assert rig.fake.texts_to(ALICE)[-1] == "echo: what is 2+2?"
    assert rig.fake.window_violations == []


async def test_deny_and_block_from_the_buttons(rig: Rig) -> None:
    approval = await start_pairing(rig)
    await rig.press(OWNER, "deny")
    assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_DENIED
    assert "denied" in rig.fake.texts_to(ALICE)[-1]
    assert not await allowed(rig, ALICE)
    denied = await rig.shown(OWNER, "❌ Denied by")
    assert denied["type"] == "text" and uid(ALICE) in denied["text"]["body"]

    # Mallory asks next; the owner blocks her from her own copy's buttons.
    await rig.say(MALLORY, "let me in")
    [request] = await rig.pending()
    posted = await rig.notified(OWNER, uid(MALLORY))
    await rig.press(OWNER, "block", posted)
    assert await rig.status(request.approval_id) == cm.APPROVAL_STATUS_BLOCKED
    assert uid(MALLORY) in (await rig.shown(OWNER, "⛔ Blocked by"))["text"]["body"]
    assert not await allowed(rig, MALLORY)
    await rig.say(MALLORY, "please")  # blocked: no new request
    assert await rig.pending() == []


async def test_only_an_approver_can_press(rig: Rig) -> None:
    approval = await start_pairing(rig)
    posted = await rig.notified(OWNER)
    await rig.say(MALLORY, "hi")  # Mallory is a stranger who got hold of the button ids
    await rig.press(MALLORY, "approve", posted)
    assert rig.fake.texts_to(MALLORY)[-1] == NOT_ALLOWED
    assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_PENDING
    assert not await allowed(rig, ALICE)


async def test_a_phone_pattern_auto_approves_the_number(open_rig: OpenRig) -> None:
    rule = cm.AutoApprove(phone_patterns=["+8498*"])
    async with open_rig(auto_approve=rule) as rig:
        await rig.say(ALICE, "hello there")
        assert rig.fake.texts_to(ALICE) == [APPROVED]
        assert rig.fake.sent_to(OWNER) == []  # nothing for the owner
        assert await rig.pending() == []
        assert await allowed(rig, ALICE)
        found = await rig.tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="pairing."))
        [event] = found.events
        assert (event.event, event.actor, event.subject) == (
            "pairing.auto_approved",
            "auto:phone_pattern:+8498*",
            uid(ALICE),
        )
        # Another country's number does not match: it pairs the ordinary way.
        await rig.say(MALLORY, "hello")
        assert "Pairing code" in rig.fake.texts_to(MALLORY)[0]
        assert not await allowed(rig, MALLORY)


async def test_forged_webhooks_change_nothing(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    await rig.say(OWNER, "/pending")
    before = len(rig.fake.log.calls)
    hello = rig.fake.inbound(ALICE, text("hello there", new_id()))
    assert await rig.post(hello, sign=None) == 401  # unsigned
    assert await rig.post(hello, sign="not-the-app-secret") == 403
    assert await rig.post(hello, headers={"X-Hub-Signature-256": "sha256=" + "0" * 64}) == 403
    assert await rig.post(hello, headers={"X-Hub-Signature-256": "sha256=é"}) == 403
    # Signed for another body: the signature covers the exact bytes.
    other = rig.fake.inbound(ALICE, text("other", new_id()))
    assert await rig.post(hello, headers={"X-Hub-Signature-256": signature(other)}) == 403
    assert len(rig.fake.log.calls) == before  # nothing sent to anyone
    assert await rig.pending() == []
    assert rig.agent.turns == []

    # A forged Approve for a real pending request does not approve it.
    approval = await start_pairing_after_owner(rig)
    button = buttons_of(await rig.notified(OWNER))[0]
    forged = rig.fake.inbound(OWNER, button_reply(button, new_id()))
    assert await rig.post(forged, sign="guessed") == 403
    assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_PENDING
    assert not await allowed(rig, ALICE)
    # And the refusal did not use up the message id: the genuine delivery still counts.
    assert await rig.post(forged) == 200
    assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_APPROVED
    await rig.shown(OWNER, "✅ Approved by")


async def start_pairing_after_owner(rig: Rig) -> cm.Approval:
    await rig.say(ALICE, "hello there")
    [approval] = await rig.pending()
    return approval


async def test_status_updates_are_ignored_quietly(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for state in ("sent", "delivered", "read"):
        assert await rig.post(status(ALICE, "wamid.out1", state)) == 200
        assert await rig.post(status(ALICE, "wamid.out1", state, contacts=False)) == 200
    assert rig.fake.log.calls == []
    assert rig.agent.turns == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert await rig.post(status(ALICE, "wamid.out1"), sign="forged") == 403  # still checked


async def test_a_redelivered_message_is_processed_once(rig: Rig) -> None:
    await rig.say(OWNER, "/pending")
    body = await rig.say(ALICE, "hello there", message_id="wamid.retry1")
    assert await rig.post(body) == 200  # the same delivery again
    # Meta's retry in another envelope (another timestamp, batched with nothing new).
    again = json.loads(rig.fake.inbound(ALICE, text("hello there", "wamid.retry1")))
    again["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = "1"
    assert await rig.post(json.dumps(again)) == 200
    assert len(rig.fake.texts_to(ALICE)) == 1  # one pairing code
    assert len(await rig.pending()) == 1  # one request: so one copy for the owner
    await rig.notified(OWNER, uid(ALICE))
    assert len([m for m in rig.fake.sent_to(OWNER) if m["type"] == "interactive"]) == 1


async def test_the_verification_handshake(rig: Rig) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    async with rig.session.get(rig.url, params=query) as resp:
        assert (resp.status, await resp.text()) == (200, "1158201444")
    for wrong in ({"hub.verify_token": "guess"}, {"hub.mode": "unsubscribe"}, {"hub.verify_token": ""}):
        async with rig.session.get(rig.url, params=query | wrong) as resp:
            assert resp.status == 403
            assert "1158201444" not in await resp.text()


async def test_a_sender_without_a_phone_number_is_not_routed(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    # A WhatsApp username hides the number: only the business-scoped id comes.
    body = json.loads(rig.fake.inbound(ALICE, text("hello", new_id())))
    value = body["entry"][0]["changes"][0]["value"]
    del value["contacts"][0]["wa_id"]
    value["messages"][0]["from_user_id"] = value["contacts"][0]["user_id"]
    del value["messages"][0]["from"]
    assert await rig.post(json.dumps(body)) == 200
    assert rig.fake.log.calls == []
    assert await rig.pending() == []
    assert "sender without a phone number" in caplog.text  # parsed, then refused


async def test_updates_for_another_phone_number_are_ignored(rig: Rig) -> None:
    body = rig.fake.inbound(ALICE, text("hello", new_id())).replace(
        '"phone_number_id": "1122334455667"', '"phone_number_id": "999"'
    )
    assert await rig.post(body) == 200
    assert rig.fake.log.calls == []
    assert await rig.pending() == []


async def test_the_owner_decides_with_chat_commands(rig: Rig) -> None:
    approval = await start_pairing(rig)
    await rig.say(OWNER, "/pending")
    assert uid(ALICE) in rig.fake.texts_to(OWNER)[-1]
    # The owner types the number as WhatsApp shows it, with the "+".
    await rig.say(OWNER, f"/approve {uid(ALICE)}")
    assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_APPROVED
    assert "Paired" in rig.fake.texts_to(ALICE)[-1]  # the requester's notice
    await rig.say(OWNER, f"/block {uid(ALICE)}")
    assert not await allowed(rig, ALICE)
    # A stranger's command is an ordinary message: no reply from the service's commands.
    await rig.say(MALLORY, f"/unblock {uid(ALICE)}")
    assert "Pairing code" in rig.fake.texts_to(MALLORY)[0]
    assert not await allowed(rig, ALICE)
    assert rig.agent.turns == []
