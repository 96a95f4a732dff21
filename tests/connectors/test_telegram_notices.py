"""Every approver notified on Telegram (issue #17): the notification outbox
(WatchNotifications) through python-telegram-bot against the fake Bot API,
the real service and PostgreSQL. Copies are posted to each approver's DM,
edited on each vote, decision and expiry, and a restarted connector edits
what it posted before instead of posting again."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from telegram import Update

from authz_service.client import Client
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars import telegram as tg
from sidecars.config import TelegramSettings
from sidecars.outbox import Outbox, follow_notifications
from sidecars.runtime import NOT_ALLOWED, OWNER_UNREACHABLE, Connector
from tests.conftest import Dsns, Service, Tenant, eventually
from tests.connectors.conftest import CallLog, ConfigFactory, RecordingAgent
from tests.connectors.fake_telegram import TOKEN, FakeTelegram, callback_update, message_update
from tests.pairing_helpers import expire_pending_and_sweep
from tests.policy_helpers import make_cli

OWNER, SECOND, ALICE, MALLORY = 1001, 1002, 2002, 3003


@dataclass
class Bot:
    fake: FakeTelegram
    app: tg.TelegramApp
    connector: Connector
    outbox: Outbox

    async def feed(self, update: dict[str, Any]) -> None:
        await self.app.process_update(Update.de_json(update, self.app.bot))

    async def press(self, presser: int, message: dict[str, Any], label: str) -> None:
        [data] = [b["callback_data"] for row in message["reply_markup"]["inline_keyboard"] for b in row
                  if label in b["text"].lower()]  # fmt: skip
        await self.feed(callback_update(presser, message, data))


def edits_to(log: CallLog, user: int, text: str) -> Callable[[Any], bool]:
    return lambda c: c.params.get("chat_id") == str(user) and text in c.params.get("text", "")


MakeBot = Callable[..., Awaitable[Bot]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def make_bot(
    fake: FakeTelegram, tenant: Tenant, connector_config: ConfigFactory, agent: RecordingAgent
) -> AsyncIterator[MakeBot]:
    """``await make_bot(**policy)``: the channel set (on the first call), a connector
    following the outbox. A second call is a restarted connector."""
    made: list[tuple[tg.TelegramApp, Outbox]] = []

    async def make(**policy: Any) -> Bot:
        if not made:
            await tenant.channel("tg", cm.PLATFORM_TELEGRAM, **policy)
        config = connector_config("telegram", "tg", telegram=TelegramSettings(TOKEN, fake.base_url))
        app = tg.build_application(config.telegram)  # type: ignore[arg-type]
        await app.initialize()
        connector = Connector(config, tg.TelegramTransport(app.bot), tenant.connector, agent)
        tg.install_handlers(app, connector)
        outbox = follow_notifications(connector)  # what is pending when it opens is handed out first
        assert outbox is not None
        made.append((app, outbox))
        return Bot(fake, app, connector, outbox)

    yield make
    for app, outbox in made:
        await outbox.stop()
        await app.shutdown()


async def posted(fake: FakeTelegram, user: int, count: int = 1) -> dict[str, Any]:
    """The ``count``-th message with buttons posted to ``user``, as it reads now."""
    call = await fake.log.wait_for(
        "sendMessage",
        lambda c: c.params.get("chat_id") == str(user) and "reply_markup" in c.params,
        count=count,
    )
    return next(
        m for m in fake.messages_to(user) if m["text"] == call.params["text"] or m.get("reply_markup")
    )


async def test_owner_and_second_approver_complete_a_quorum_from_chat(
    make_bot: MakeBot, tenant: Tenant
) -> None:
    bot = await make_bot(owner_id=str(OWNER), approvers=[str(SECOND)], required_approvals=2)
    await bot.feed(message_update(ALICE, "hello bot"))
    owner_copy, second_copy = await posted(bot.fake, OWNER), await posted(bot.fake, SECOND)
    for copy in (owner_copy, second_copy):
        assert "Pairing request on tg" in copy["text"] and "0 of 2 approvals" in copy["text"]
    # The owner was not DMed a second time from the RequestPairing answer.
    assert len([m for m in bot.fake.messages_to(OWNER) if "Pairing request" in m["text"]]) == 1

    await bot.press(OWNER, owner_copy, "approve")
    for user in (OWNER, SECOND):
        edit = await bot.fake.log.wait_for(
            "editMessageText", edits_to(bot.fake.log, user, "1 of 2 approvals")
        )
        assert edit.params["reply_markup"]  # still open: the second vote is needed
    assert [t for t in bot.fake.texts(ALICE) if "Paired" in t] == []

    await bot.press(SECOND, second_copy, "approve")
    outcome = f"✅ Approved by telegram:{OWNER}, telegram:{SECOND}"
    for user in (OWNER, SECOND):
        edit = await bot.fake.log.wait_for("editMessageText", edits_to(bot.fake.log, user, outcome))
        assert "reply_markup" not in edit.params  # buttons gone
    assert bot.fake.texts(ALICE)[-1] == "✅ Paired! You can chat now."


async def test_expiry_is_shown_on_every_copy(make_bot: MakeBot, tenant: Tenant, dsns: Dsns) -> None:
    bot = await make_bot(owner_id=str(OWNER), approvers=[str(SECOND)])
    await bot.feed(message_update(ALICE, "hello"))
    await posted(bot.fake, OWNER)
    await posted(bot.fake, SECOND)
    await expire_pending_and_sweep(dsns, tenant.tenant_id)
    for user in (OWNER, SECOND):
        edit = await bot.fake.log.wait_for("editMessageText", edits_to(bot.fake.log, user, "⌛ Expired"))
        assert "reply_markup" not in edit.params and "Code:" not in edit.params["text"]


async def test_a_tool_call_is_approved_from_chat_and_redeemed(
    make_bot: MakeBot, tenant: Tenant, agents: dict[str, Client]
) -> None:
    bot = await make_bot(owner_id=str(OWNER))
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[f"telegram:{OWNER}"]))
    agent = agents[tenant.tenant_id]
    args = json.dumps({"cmd": "uptime"})
    asked = await agent.authz.RequestApproval(
        az.RequestApprovalRequest(tool_name="shell", arguments_json=args, agent_id="ops", channel_id="tg")
    )
    copy = await posted(bot.fake, OWNER)
    assert "Approval needed: shell" in copy["text"] and "uptime" in copy["text"]
    labels = [b["text"] for row in copy["reply_markup"]["inline_keyboard"] for b in row]
    assert labels == ["✅ Approve", "❌ Deny", "♾️ Always allow"]

    await bot.press(MALLORY, copy, "approve")  # a stranger's press changes nothing
    alert = await bot.fake.log.wait_for("answerCallbackQuery", lambda c: c.params.get("show_alert") == "true")
    assert alert.params["text"] == NOT_ALLOWED
    watch = agent.authz.WatchApproval(az.WatchApprovalRequest(approval_id=asked.approval.approval_id))
    assert (await anext(aiter(watch))).status == cm.APPROVAL_STATUS_PENDING
    watch.cancel()

    await bot.press(OWNER, copy, "approve")
    await bot.fake.log.wait_for(
        "editMessageText", edits_to(bot.fake.log, OWNER, f"Approved by telegram:{OWNER}")
    )
    redeemed = await agent.authz.RedeemApproval(
        az.RedeemApprovalRequest(
            approval_id=asked.approval.approval_id, tool_name="shell", arguments_json=args
        )
    )
    assert redeemed.allow, redeemed.reason


async def test_a_restarted_connector_edits_instead_of_posting_again(make_bot: MakeBot) -> None:
    bot = await make_bot(owner_id=str(OWNER))
    await bot.feed(message_update(ALICE, "hello"))
    copy = await posted(bot.fake, OWNER)
    await bot.outbox.stop()  # finishes the copy in hand: posted and acknowledged
    again = await make_bot()
    await again.feed(message_update(MALLORY, "me too"))  # a second request: posted once
    await posted(again.fake, OWNER, count=2)
    await again.press(OWNER, copy, "deny")
    edit = await again.fake.log.wait_for("editMessageText", edits_to(again.fake.log, OWNER, "❌ Denied by"))
    assert edit.params["message_id"] == str(copy["message_id"])
    first = [c for c in again.fake.log.of("sendMessage") if f"({ALICE})" in c.params.get("text", "")]
    assert len(first) == 1  # never posted twice


async def test_an_approver_who_never_messaged_the_bot_is_audited_and_shown_by_doctor(
    make_bot: MakeBot, tenant: Tenant, service: Service
) -> None:
    bot = await make_bot(owner_id=str(OWNER), approvers=[str(SECOND)])
    bot.fake.fail_send_to.add(str(SECOND))  # Telegram: "Bad Request: chat not found"
    await bot.feed(message_update(ALICE, "hello"))
    await posted(bot.fake, OWNER)

    async def audited() -> list[adm.AuditEvent]:
        resp = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="notification."))
        return list(resp.events)

    async def recorded() -> bool:
        return bool(await audited())

    await eventually(recorded)
    [event] = await audited()
    assert (event.event, event.subject, event.channel_id) == ("notification.undeliverable", str(SECOND), "tg")
    assert json.loads(event.details_json) == {"reason": "chat_not_found"}
    doctor = await make_cli(service, tenant)("doctor", "--fail-on", "never")
    assert f"approver telegram:{SECOND} on channel tg has never messaged the bot" in doctor.out, doctor.text


async def test_a_requester_whose_only_approver_cannot_be_reached_is_told(make_bot: MakeBot) -> None:
    bot = await make_bot(owner_id=str(OWNER))
    bot.fake.fail_send_to.add(str(OWNER))  # the owner never opened a DM with the bot
    await bot.feed(message_update(ALICE, "hello"))
    told = await bot.fake.log.wait_for(
        "sendMessage",
        lambda c: c.params.get("chat_id") == str(ALICE) and c.params["text"] == OWNER_UNREACHABLE,
    )
    assert "reply_markup" not in told.params
    [code, unreachable] = [m["text"] for m in bot.fake.messages_to(ALICE)]
    assert "Pairing code" in code and unreachable == OWNER_UNREACHABLE
