"""WhatsApp's 24-hour customer-service window: free-form messages only to people
who wrote in the last 24 hours. The owner's copy (from the notification outbox)
outside it goes out as the configured template; without one it is acknowledged
as undeliverable (audited, shown by ``authz doctor``) and the requester is told
that the owner must open the chat or use the CLI. Also the connector process
itself (``serve`` + ``run``)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time

import aiohttp
import httpx
import pytest
from pywa.errors import WhatsAppError

from authz_service.client import Client
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars.config import WhatsAppSettings
from sidecars.main import serve
from sidecars.runtime import OWNER_UNREACHABLE, ButtonAction, ButtonSpec, Connector, Transport
from sidecars.whatsapp import (
    WEBHOOK_PATH,
    ApproverUnreachable,
    CustomerWindow,
    OutsideWindow,
    WhatsAppTransport,
    build_client,
    notify_template,
    run,
)
from sidecars.whatsapp.transport import check_buttons, user_id_of, wa_id_of
from tests.conftest import Service, Tenant, eventually
from tests.connectors.conftest import ConfigFactory, PostSend
from tests.connectors.fake_whatsapp import (
    APP_SECRET,
    PHONE_ID,
    TOKEN,
    VERIFY_TOKEN,
    FakeWhatsApp,
    quick_reply,
    signature,
    text,
    text_of,
)
from tests.connectors.whatsapp.rig import ALICE, CHANNEL, OWNER, OpenRig, Rig, new_id, uid
from tests.policy_helpers import make_cli

TEMPLATE = "authz_pairing_request"
DAY = 24 * 3600


async def alice_asks(rig: Rig) -> cm.Approval:
    await rig.say(ALICE, "hello there", name="Alice")
    [approval] = await rig.pending()
    return approval


async def told_owner_unreachable(rig: Rig) -> None:
    """Wait (bounded) for the outbox to tell Alice: her request's only approver is out of reach."""
    await rig.sent(ALICE, lambda m: text_of(m) == OWNER_UNREACHABLE)


async def test_without_a_template_the_copy_is_undeliverable_and_the_requester_told(
    rig: Rig, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    approval = await alice_asks(rig)  # the owner never wrote to the bot
    await told_owner_unreachable(rig)
    code, unreachable = rig.fake.texts_to(ALICE)
    assert "Pairing code" in code and unreachable == OWNER_UNREACHABLE
    assert rig.fake.sent_to(OWNER) == []  # nothing attempted outside the window
    assert rig.fake.window_violations == []
    assert f"approver {uid(OWNER)} cannot be reached: outside_24h_window_no_template" in caplog.text
    # Acknowledged as undeliverable: audited, and reported by doctor.
    found = await rig.tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="notification."))
    [event] = found.events
    assert (event.event, event.subject, event.channel_id, event.approval_id) == (
        "notification.undeliverable",
        uid(OWNER),
        CHANNEL,
        approval.approval_id,
    )
    assert json.loads(event.details_json) == {"reason": "outside_24h_window_no_template"}
    done = await make_cli(service, rig.tenant)("doctor", "--json", "--fail-on", "never")
    assert done.code == 0, done.text
    [finding] = [f for f in json.loads(done.out)["findings"] if f["code"] == "approver_unreachable"]
    assert finding["channel_id"] == CHANNEL
    assert f"approver whatsapp:{uid(OWNER)} on channel {CHANNEL} has not written" in finding["message"]
    assert "whatsapp.notify_template" in finding["fix"]
    # The request stands: the owner opens the chat and finds it there (or uses the CLI).
    assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_PENDING
    await rig.say(OWNER, "/pending")
    assert uid(ALICE) in rig.fake.texts_to(OWNER)[-1]


async def test_an_owner_who_wrote_over_a_day_ago_is_outside_the_window(rig: Rig) -> None:
    stale = rig.fake.inbound(OWNER, text("/pending", new_id()), at=time.time() - DAY - 60)
    assert await rig.post(stale) == 200
    await alice_asks(rig)
    await told_owner_unreachable(rig)
    # The window runs from when the owner wrote, not from when Meta delivered it:
    # not even the answer to the stale command was attempted.
    assert rig.fake.sent_to(OWNER) == []
    assert rig.fake.window_violations == []


async def test_the_template_notifies_the_owner_and_its_quick_reply_approves(open_rig: OpenRig) -> None:
    async with open_rig(template=TEMPLATE) as rig:
        approval = await alice_asks(rig)
        sent = await rig.sent(OWNER)  # the outbox's copy, outside the window: the template
        assert [sent] == rig.fake.sent_to(OWNER) and sent["type"] == "template"
        [code] = rig.fake.texts_to(ALICE)  # delivered: nothing more to tell her
        assert "Pairing code" in code
        template = sent["template"]
        assert (template["name"], template["language"]["code"]) == (TEMPLATE, "en_US")
        [body] = [c for c in template["components"] if c["type"].lower() == "body"]
        line = body["parameters"][0]["text"]
        assert uid(ALICE) in line and "hello there" in line and "\n" not in line
        quick = [c for c in template["components"] if c["type"] == "button"]
        assert [(c["sub_type"].lower(), c["index"]) for c in quick] == [("quick_reply", i) for i in range(3)]
        payloads = [c["parameters"][0]["payload"] for c in quick]

        # The owner taps "Approve" on the template: a quick-reply press (no context).
        press = rig.fake.inbound(OWNER, quick_reply(payloads[0], "Approve", new_id()))
        assert await rig.post(press) == 200
        assert await rig.status(approval.approval_id) == cm.APPROVAL_STATUS_APPROVED
        assert "Paired" in rig.fake.texts_to(ALICE)[-1]
        # The copy's new version is a new message, free-form: the press opened the owner's window.
        outcome = await rig.shown(OWNER, f"✅ Approved by whatsapp:{uid(OWNER)}")
        assert outcome["type"] == "text"
        assert rig.fake.window_violations == []


async def test_a_tool_call_outside_the_window_is_never_sent_as_the_pairing_template(
    open_rig: OpenRig, agents: dict[str, Client]
) -> None:
    """The template's quick replies say Approve / Deny / Block and take a copy's payloads by
    position: a tool call's third is Always allow, so "Block" would allow the tool for good.
    The copy is acknowledged undeliverable instead; pairing requests still use the template."""
    async with open_rig(template=TEMPLATE) as rig:
        await rig.tenant.admin.admin.SetTenantSettings(
            adm.TenantSettings(approvers=[f"whatsapp:{uid(OWNER)}"])
        )
        asked = await agents[rig.tenant.tenant_id].authz.RequestApproval(
            az.RequestApprovalRequest(
                tool_name="shell", arguments_json='{"cmd": "ls  -la"}', agent_id="ops", channel_id=CHANNEL
            )
        )
        approval_id = asked.approval.approval_id

        async def audited() -> list[adm.AuditEvent]:
            found = await rig.tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="notification."))
            return [e for e in found.events if e.approval_id == approval_id]

        async def acknowledged() -> bool:
            return bool(await audited())

        await eventually(acknowledged)
        [event] = await audited()
        assert (event.event, event.subject) == ("notification.undeliverable", uid(OWNER))
        assert json.loads(event.details_json) == {"reason": "outside_24h_window_no_template"}
        assert rig.fake.sent_to(OWNER) == []
        assert await rig.status(approval_id) == cm.APPROVAL_STATUS_PENDING

        await rig.say(ALICE, "hello there")  # a pairing request: the template's own buttons
        sent = await rig.sent(OWNER)
        assert [sent] == rig.fake.sent_to(OWNER) and sent["type"] == "template"


async def test_inside_the_window_the_template_is_not_used(open_rig: OpenRig) -> None:
    async with open_rig(template=TEMPLATE) as rig:
        await rig.say(OWNER, "/pending")
        await alice_asks(rig)
        await rig.notified(OWNER, uid(ALICE))
        assert [m["type"] for m in rig.fake.sent_to(OWNER)] == ["text", "interactive"]  # /pending's answer


async def test_an_agent_send_after_the_window_closed_is_not_attempted(
    open_rig: OpenRig, post_send: PostSend
) -> None:
    now = [time.time()]
    async with open_rig(clock=lambda: now[0], auto_approve=cm.AutoApprove(phone_patterns=["+8498*"])) as rig:
        await rig.say(ALICE, "hello")  # auto-approved
        await rig.say(ALICE, "remind me tomorrow")
        session = rig.agent.turns[-1].session_id
        request = {"target": "origin", "text": "your reminder", "session_id": session}
        assert (await post_send(rig.endpoint.url, request))[0] == 200  # within the window
        now[0] += DAY
        status, body = await post_send(rig.endpoint.url, request)
        assert status == 502 and "has not written in the last 24 hours" in body["reason"]
        assert rig.fake.texts_to(ALICE).count("your reminder") == 1
        assert rig.fake.window_violations == []


async def test_the_transport_refuses_free_form_outside_the_window() -> None:
    fake = FakeWhatsApp()
    await fake.start()
    now = [1_000_000.0]
    window = CustomerWindow(max_users=2, clock=lambda: now[0])
    settings = WhatsAppSettings(PHONE_ID, TOKEN, APP_SECRET, VERIFY_TOKEN, "127.0.0.1:0", fake.base_url)
    try:
        async with httpx.AsyncClient() as http:
            transport = WhatsAppTransport(build_client(settings, http), window)
            with pytest.raises(OutsideWindow):
                await transport.send_text(uid(ALICE), "hi")
            buttons = [ButtonSpec("approve", "✅ Approve", "p" * 40)]
            with pytest.raises(ApproverUnreachable, match="outside_24h_window_no_template"):
                await transport.post_direct(uid(OWNER), "decide", buttons)

            window.wrote(uid(ALICE), at=now[0] + 3600)  # a timestamp from the future counts as now
            await transport.send_text(uid(ALICE), "x" * 5000)  # cut to the 4096-character limit
            assert [len(t) for t in fake.texts_to(ALICE)] == [4096, 904]
            first = await transport.post_direct(uid(ALICE), "decide", buttons)
            # WhatsApp cannot edit: edit_direct posts anew and returns the new id.
            second = await transport.edit_direct(uid(ALICE), first, "decided", ())
            assert first != second and fake.texts_to(ALICE)[-2:] == ["decide", "decided"]

            now[0] += DAY - 60  # inside the margin before the window closes: not attempted
            with pytest.raises(OutsideWindow):
                await transport.send_text(uid(ALICE), "late")
            now[0] -= DAY - 60
            window.wrote(uid(OWNER))
            window.wrote("+15550003333")  # the third writer: the oldest is forgotten
            with pytest.raises(OutsideWindow):
                await transport.send_text(uid(ALICE), "forgotten")
            with pytest.raises(ValueError, match=r"E\.164"):
                await transport.send_text("84981234567", "no plus: not a WhatsApp user id")
            assert len(fake.log.of("messages")) == 4  # the two parts, "decide" and "decided"
    finally:
        await fake.close()


@pytest.mark.parametrize(
    "actions",
    [("approve", "deny", "always_allow"), ("approve", "deny"), ("deny", "approve", "block"), ("approve",)],
)
async def test_only_the_pairing_buttons_in_order_go_out_as_the_template(
    actions: tuple[ButtonAction, ...],
) -> None:
    fake = FakeWhatsApp()
    await fake.start()
    settings = WhatsAppSettings(
        PHONE_ID, TOKEN, APP_SECRET, VERIFY_TOKEN, "127.0.0.1:0", fake.base_url, notify_template=TEMPLATE
    )
    try:
        async with httpx.AsyncClient() as http:
            transport = WhatsAppTransport(
                build_client(settings, http), CustomerWindow(), notify_template(settings)
            )
            buttons = [ButtonSpec(a, a.title(), f"payload-{a}") for a in actions]
            with pytest.raises(ApproverUnreachable, match="outside_24h_window_no_template"):
                await transport.post_direct(uid(OWNER), "Approval needed: shell", buttons)
            assert fake.log.of("messages") == []
            pairing = [ButtonSpec(a, a.title(), f"payload-{a}") for a in ("approve", "deny", "block")]
            await transport.post_direct(uid(OWNER), "New request", pairing)
            [sent] = fake.sent_to(OWNER)
            assert sent["type"] == "template"
    finally:
        await fake.close()


def test_buttons_are_checked_against_whatsapp_limits() -> None:
    ok = ButtonSpec("approve", "✅ Approve", "p" * 256)
    check_buttons([ok, ok, ok])
    cases = {
        "allows 3 reply buttons": [ok] * 4,
        "title": [ButtonSpec("deny", "x" * 21, "p")],
        "exceeds 256": [ButtonSpec("block", "⛔", "p" * 257)],
    }
    for why, bad in cases.items():
        with pytest.raises(ValueError, match=why):
            check_buttons(bad)


# ---- the process: authz-connector whatsapp --------------------------------------------------


class Listening(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.ready = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("whatsapp webhook listening"):
            self.ready.set()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_authz_connector_whatsapp_serves_until_sigterm(
    tenant: Tenant, connector_config: ConfigFactory
) -> None:
    await tenant.channel(CHANNEL, cm.PLATFORM_WHATSAPP, owner_id=uid(OWNER))
    fake = FakeWhatsApp()
    await fake.start()
    port = free_port()
    settings = WhatsAppSettings(
        PHONE_ID,
        TOKEN,
        APP_SECRET,
        VERIFY_TOKEN,
        f"127.0.0.1:{port}",
        fake.base_url,
        notify_template=TEMPLATE,
    )
    listening = Listening()
    logger = logging.getLogger("sidecars.whatsapp")
    logger.addHandler(listening)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    task = asyncio.create_task(serve(connector_config("whatsapp", CHANNEL, whatsapp=settings), run))
    try:
        async with asyncio.timeout(5):
            await listening.ready.wait()
        assert [c.method for c in fake.log.calls] == ["phone_number"]  # the token was checked first
        body = fake.inbound(ALICE, text("hi", new_id()))
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature(body)}
        url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=body, headers=headers) as resp:
                assert resp.status == 200
            await fake.log.wait_for("messages", lambda c: c.params["to"] == OWNER)  # the template
            assert "Pairing code" in fake.texts_to(ALICE)[0]
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(task, 15)
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.post(url, data=body, headers=headers)
    finally:
        task.cancel()
        logger.removeHandler(listening)
        logger.setLevel(old_level)
        await fake.close()


async def test_a_rejected_access_token_stops_run_before_the_connector_starts(
    connector_config: ConfigFactory,
) -> None:
    fake = FakeWhatsApp()
    await fake.start()
    settings = WhatsAppSettings(
        PHONE_ID, "EAAG-revoked", APP_SECRET, VERIFY_TOKEN, "127.0.0.1:0", fake.base_url
    )

    async def start(transport: Transport) -> Connector:
        raise AssertionError("start() must not be called with a rejected token")

    try:
        with pytest.raises(WhatsAppError):
            await run(connector_config("whatsapp", CHANNEL, whatsapp=settings), start)
    finally:
        await fake.close()


def test_wa_ids_become_the_ids_the_service_stores() -> None:
    assert user_id_of("84981234567") == "+84981234567"
    assert user_id_of(" +84981234567 ") == "+84981234567"
    assert wa_id_of("+84981234567") == "84981234567"
    # Not a number the service would store: refused, never guessed at.
    for bad in (None, "", "0981234567", "123", "8" * 16, "٨٤٩٨١٢٣٤٥٦٧", "US.13491208655302741918"):
        with pytest.raises(ValueError, match=r"not an E\.164"):
            user_id_of(bad)
    for bad_id in ("84981234567", "+٨٤٩٨١٢٣٤٥٦٧", "whatsapp:+84981234567", "+84981234567\n"):
        with pytest.raises(ValueError, match=r"not an E\.164"):
            wa_id_of(bad_id)
