"""Telegram connector end to end: python-telegram-bot against a local fake Bot
API, the real authz service and PostgreSQL.

Updates are fed with ``Application.process_update`` (handlers run inline, so
once it returns every call the bot made is recorded); one test runs the whole
``authz-connector`` path with polling.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from telegram import Update

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars import main as sidecar_main
from sidecars import telegram as tg
from sidecars.config import ConnectorConfig, TelegramSettings
from sidecars.http import SendEndpoint
from sidecars.runtime import (
    ALREADY_RESOLVED,
    INVALID_BUTTON,
    NOT_ALLOWED,
    START_REPLY,
    UNAVAILABLE,
    ButtonSpec,
    Connector,
)
from tests.conftest import Service, Tenant
from tests.connectors.conftest import ConfigFactory, PostSend, RecordingAgent
from tests.connectors.fake_telegram import (
    BOT_USERNAME,
    TOKEN,
    FakeTelegram,
    callback_update,
    message_update,
)

OWNER = 1001
ALICE = 2002
MALLORY = 3003
GROUP = -100500
SEND_POLICY = cm.SendPolicy(default=cm.SEND_DEFAULT_DENY, allow=["origin"])


@dataclass
class Bot:
    fake: FakeTelegram
    app: tg.TelegramApp
    connector: Connector
    agent: RecordingAgent

    async def feed(self, update: dict[str, Any]) -> None:
        await self.app.process_update(Update.de_json(update, self.app.bot))

    async def say(self, user_id: int, text: str, **kw: Any) -> None:
        await self.feed(message_update(user_id, text, **kw))

    def owner_request(self) -> dict[str, Any]:
        """The latest owner notification (a message with buttons)."""
        with_buttons = [m for m in self.fake.messages_to(OWNER) if m.get("reply_markup")]
        assert with_buttons, "the owner was not notified"
        return with_buttons[-1]

    async def press(self, presser: int, action: str, message: dict[str, Any] | None = None) -> None:
        message = message or self.owner_request()
        await self.feed(callback_update(presser, message, payload(message, action)))


def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[list[dict[str, Any]]] = message["reply_markup"]["inline_keyboard"]
    return [button for row in rows for button in row]


def payload(message: dict[str, Any], action: str) -> str:
    """The callback_data of the button whose label names ``action``."""
    matches = [b["callback_data"] for b in buttons(message) if action.lower() in b["text"].lower()]
    assert len(matches) == 1, buttons(message)
    data: str = matches[0]
    return data


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram()
    await server.start()
    yield server
    await server.stop()


MakeBot = Callable[..., Awaitable[Bot]]


@pytest.fixture
async def make_bot(
    fake: FakeTelegram, tenant: Tenant, connector_config: ConfigFactory, agent: RecordingAgent
) -> AsyncIterator[MakeBot]:
    apps: list[tg.TelegramApp] = []

    async def make(**policy: Any) -> Bot:
        await tenant.channel("tg", cm.PLATFORM_TELEGRAM, **policy)
        config = telegram_config(connector_config, fake)
        app = tg.build_application(config.telegram)  # type: ignore[arg-type]
        await app.initialize()
        apps.append(app)
        connector = Connector(config, tg.TelegramTransport(app.bot), tenant.connector, agent)
        tg.install_handlers(app, connector)
        return Bot(fake, app, connector, agent)

    yield make
    for app in apps:
        await app.shutdown()


def telegram_config(connector_config: ConfigFactory, fake: FakeTelegram, **overrides: Any) -> ConnectorConfig:
    return connector_config("telegram", "tg", telegram=TelegramSettings(TOKEN, fake.base_url), **overrides)


async def pending(tenant: Tenant) -> list[cm.Approval]:
    resp = await tenant.admin.admin.ListApprovals(adm.ListApprovalsRequest(channel_id="tg"))
    return list(resp.approvals)


def alerts(fake: FakeTelegram) -> list[str]:
    return [
        c.params["text"] for c in fake.log.of("answerCallbackQuery") if c.params.get("show_alert") == "true"
    ]


async def test_pairing_approve_then_chat(make_bot: MakeBot, tenant: Tenant) -> None:
    bot = await make_bot(owner_id=str(OWNER), send_policy=SEND_POLICY)
    await bot.say(ALICE, "hello bot")

    [code_text] = bot.fake.texts(ALICE)
    assert code_text.startswith("🔑 Pairing code:")
    request = bot.owner_request()
    assert "hello bot" in request["text"] and str(ALICE) in request["text"]
    assert sorted(b["text"] for b in buttons(request)) == ["⛔ Block", "✅ Approve", "❌ Deny"]
    assert bot.agent.turns == []

    await bot.press(OWNER, "approve")
    [edit] = bot.fake.log.of("editMessageText")
    assert edit.params["text"].startswith(request["text"])
    assert edit.params["text"].endswith(f"Approved by telegram:{OWNER}")
    assert "reply_markup" not in edit.params  # buttons removed
    assert bot.fake.texts(ALICE)[-1] == "✅ Paired! You can chat now."
    assert alerts(bot.fake) == []

    await bot.say(ALICE, "what's up?")
    assert [t.text for t in bot.agent.turns] == ["what's up?"]
    assert bot.connector.origin_of(bot.agent.turns[0].session_id) == str(ALICE)
    assert bot.fake.texts(ALICE)[-1] == "echo: what's up?"
    assert await pending(tenant) == []


async def test_owner_sees_hidden_characters_of_a_stranger_escaped(make_bot: MakeBot, tenant: Tenant) -> None:
    # A right-to-left override in the display name would show "Alice\u202etxt.exe" as "Aliceexe.txt".
    bot = await make_bot(owner_id=str(OWNER), send_policy=SEND_POLICY)
    await bot.say(ALICE, "hi\u2066 there", name="Alice\u202etxt.exe", username="alice_w")
    text = bot.owner_request()["text"]
    assert not any(c in text for c in "\u202e\u2066")
    assert f"From: Alice\\u202etxt.exe (@alice_w, {ALICE})" in text and "hi\\u2066 there" in text
    assert "Platform: telegram" in text  # the username is stored with the request, for `pairing list`
    [approval] = (await tenant.admin.admin.ListApprovals(adm.ListApprovalsRequest())).approvals
    assert (approval.handle, approval.first_message) == ("alice_w", "hi\\u2066 there")


async def test_callback_payloads_fit_telegram_limit(make_bot: MakeBot) -> None:
    bot = await make_bot(owner_id=str(OWNER))
    await bot.say(ALICE, "hi")
    datas = [b["callback_data"] for b in buttons(bot.owner_request())]
    assert len(datas) == 3 and len(set(datas)) == 3
    assert all(len(d.encode()) <= 64 for d in datas)

    with pytest.raises(ValueError, match="64 bytes"):
        tg.keyboard([ButtonSpec("approve", "ok", "x" * 65)])
    assert tg.keyboard([ButtonSpec("approve", "ok", "é" * 32)]).inline_keyboard[0][0].callback_data


def test_long_texts_are_split_for_telegram() -> None:
    assert tg.split_text("") == [""]
    assert tg.split_text("a" * 4096) == ["a" * 4096]
    assert tg.split_text("a" * 4097) == ["a" * 4096, "a"]
    # Telegram counts UTF-16 code units: an emoji takes two.
    assert tg.split_text("😀" * 2049) == ["😀" * 2048, "😀"]
    assert tg.split_text("a" + "😀" * 2048) == ["a" + "😀" * 2047, "😀"]


async def test_repeat_message_while_pending_is_silent(make_bot: MakeBot) -> None:
    bot = await make_bot(owner_id=str(OWNER))
    await bot.say(ALICE, "hello")
    await bot.say(ALICE, "hello?")
    assert len(bot.fake.texts(ALICE)) == 1
    assert len(bot.fake.messages_to(OWNER)) == 1
    assert bot.agent.turns == []


async def test_deny(make_bot: MakeBot, tenant: Tenant) -> None:
    bot = await make_bot(owner_id=str(OWNER), send_policy=SEND_POLICY)
    await bot.say(ALICE, "let me in")
    await bot.press(OWNER, "deny")
    [edit] = bot.fake.log.of("editMessageText")
    assert edit.params["text"].endswith(f"Denied by telegram:{OWNER}")
    assert bot.fake.texts(ALICE)[-1] == "❌ Your pairing request was denied."
    assert await pending(tenant) == []
    assert bot.agent.turns == []


async def test_block_silences_user(make_bot: MakeBot) -> None:
    bot = await make_bot(owner_id=str(OWNER), send_policy=SEND_POLICY)
    await bot.say(ALICE, "let me in")
    await bot.press(OWNER, "block")
    [edit] = bot.fake.log.of("editMessageText")
    assert edit.params["text"].endswith(f"Blocked by telegram:{OWNER}")
    assert len(bot.fake.texts(ALICE)) == 1  # the code only: a blocked user is told nothing

    await bot.say(ALICE, "please?")
    assert len(bot.fake.texts(ALICE)) == 1
    assert len(bot.fake.messages_to(OWNER)) == 1  # no new pairing request
    assert bot.agent.turns == []


async def test_replayed_press_is_refused(make_bot: MakeBot) -> None:
    bot = await make_bot(owner_id=str(OWNER))
    await bot.say(ALICE, "hi")
    request = bot.owner_request()
    await bot.press(OWNER, "approve", request)
    await bot.press(OWNER, "approve", request)
    await bot.press(OWNER, "deny", request)
    assert alerts(bot.fake) == [ALREADY_RESOLVED, ALREADY_RESOLVED]
    assert len(bot.fake.log.of("editMessageText")) == 1
    assert bot.fake.texts(ALICE)[-1] == "✅ Paired! You can chat now."


async def test_tampered_payload_is_refused(make_bot: MakeBot, tenant: Tenant) -> None:
    bot = await make_bot(owner_id=str(OWNER))
    await bot.say(ALICE, "hi")
    request = bot.owner_request()
    genuine = payload(request, "approve")
    tampered = genuine[:-2] + ("AA" if genuine[-2:] != "AA" else "BB")
    await bot.feed(callback_update(OWNER, request, tampered))
    await bot.feed(callback_update(OWNER, request, "garbage"))
    assert alerts(bot.fake) == [INVALID_BUTTON, INVALID_BUTTON]
    assert bot.fake.log.of("editMessageText") == []
    [approval] = await pending(tenant)
    assert approval.status == cm.APPROVAL_STATUS_PENDING


async def test_non_owner_press_changes_nothing(make_bot: MakeBot, tenant: Tenant) -> None:
    bot = await make_bot(owner_id=str(OWNER))
    await bot.say(ALICE, "hi")
    await bot.press(MALLORY, "approve")
    assert alerts(bot.fake) == [NOT_ALLOWED]
    assert bot.fake.log.of("editMessageText") == []
    [approval] = await pending(tenant)
    got = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=approval.approval_id))
    assert got.status == cm.APPROVAL_STATUS_PENDING
    assert len(bot.fake.texts(ALICE)) == 1

    await bot.press(OWNER, "approve")  # the owner still can
    assert bot.fake.texts(ALICE)[-1] == "✅ Paired! You can chat now."


async def test_start_and_pair_commands(make_bot: MakeBot, tenant: Tenant) -> None:
    bot = await make_bot(owner_id=str(OWNER), send_policy=SEND_POLICY)
    await bot.say(ALICE, "/start")  # unknown user: like any message
    assert bot.fake.texts(ALICE)[0].startswith("🔑 Pairing code:")
    assert "/start" in bot.owner_request()["text"]

    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id=str(MALLORY)))
    await bot.say(MALLORY, "/start")
    await bot.say(MALLORY, f"/pair@{BOT_USERNAME}")
    assert bot.fake.texts(MALLORY) == [START_REPLY, START_REPLY]
    assert bot.agent.turns == []


async def test_group_messages_need_a_mention(make_bot: MakeBot) -> None:
    bot = await make_bot(group_policy=cm.GROUP_POLICY_OPEN, send_policy=SEND_POLICY)
    await bot.say(ALICE, "just chatting", chat_id=GROUP, chat_type="supergroup")
    assert bot.fake.texts(GROUP) == []

    mention = f"@{BOT_USERNAME} ping"
    entity = {"type": "mention", "offset": 0, "length": len(BOT_USERNAME) + 1}
    await bot.say(ALICE, mention, chat_id=GROUP, chat_type="supergroup", entities=[entity])
    await bot.say(ALICE, "pong?", chat_id=GROUP, chat_type="group", reply_to_bot=True)
    assert bot.fake.texts(GROUP) == [f"echo: {mention}", "echo: pong?"]
    assert bot.connector.origin_of(bot.agent.turns[0].session_id) == str(GROUP)


async def test_agent_send_is_gated(
    make_bot: MakeBot, send_endpoint: Callable[[Connector], Awaitable[SendEndpoint]], post_send: PostSend
) -> None:
    bot = await make_bot(dm_policy=cm.DM_POLICY_OPEN, send_policy=SEND_POLICY)
    endpoint = await send_endpoint(bot.connector)
    guessed = f"telegram:{ALICE}"  # the chat's name is no session id

    status, body = await post_send(endpoint.url, {"target": "5555", "text": "leak", "origin": str(ALICE)})
    assert status == 403
    assert body["allow"] is False
    assert body["reason"].startswith("Failed to send to 5555")
    # A forged origin is ignored: the target does not become "the origin".
    status, body = await post_send(endpoint.url, {"target": "5555", "text": "leak", "origin": "5555"})
    assert status == 403 and body["reason"].startswith("Failed to send to 5555")
    # No session handed out yet: there is no origin to send to.
    status, body = await post_send(endpoint.url, {"target": "origin", "text": "leak", "session_id": guessed})
    assert status == 403 and body["reason"].startswith("Failed to send to origin")
    assert bot.fake.log.of("sendMessage") == []

    await bot.say(ALICE, "hello")  # allowed and handed to the agent: the session's origin is Alice's chat
    session = bot.agent.turns[-1].session_id
    status, _ = await post_send(endpoint.url, {"target": "origin", "text": "leak", "session_id": guessed})
    assert status == 403  # still: only the id the agent was handed names the session
    status, body = await post_send(
        endpoint.url, {"target": "origin", "text": "hello from the agent", "session_id": session}
    )
    assert (status, body) == (200, {"allow": True, "resolved_target": str(ALICE)})
    assert bot.fake.texts(ALICE) == ["echo: hello", "hello from the agent"]
    assert bot.fake.texts(5555) == []


# Second review: Telegram reads a chat id as a number, and int() takes "-0100123" and
# "-١٠٠١٢٣" (Arabic-Indic digits) for -100123, so another spelling of a denied chat reached it.
DENIED_CHAT = cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW, deny=["telegram:-100123", "telegram:100123"])
OTHER_SPELLINGS = {
    # (target, status): 403 denied by the service; 502 allowed, but the transport refuses it.
    "leading-zero": ("-0100123", 403),
    "prefixed-leading-zero": ("telegram:-0100123", 403),
    "arabic-indic-digits": ("-١٠٠١٢٣", 403),
    "full-width-digits": ("１００１２３", 403),
    "plus-sign": ("+100123", 502),
    "underscore": ("100_123", 502),
}


@pytest.mark.parametrize(("target", "status"), OTHER_SPELLINGS.values(), ids=OTHER_SPELLINGS.keys())
async def test_other_spellings_of_a_denied_chat_are_not_delivered(
    make_bot: MakeBot,
    send_endpoint: Callable[[Connector], Awaitable[SendEndpoint]],
    post_send: PostSend,
    target: str,
    status: int,
) -> None:
    bot = await make_bot(dm_policy=cm.DM_POLICY_OPEN, send_policy=DENIED_CHAT)
    endpoint = await send_endpoint(bot.connector)
    got, body = await post_send(endpoint.url, {"target": target, "text": "leak"})
    assert got == status, body
    assert body["allow"] is (status == 502)
    assert bot.fake.log.of("sendMessage") == []


NOT_CANONICAL = [
    "-0100123", "0100123", "-١٠٠١٢٣", "１２３", "+100123", "100_123", " 100123", "100123\n", "0", "-0",
    "", "-", "@", "@1board", "@bo ard", "board", "#board", "-100123-",
]  # fmt: skip


@pytest.mark.parametrize("chat_id", NOT_CANONICAL)
async def test_the_transport_sends_only_to_canonical_chat_ids(make_bot: MakeBot, chat_id: str) -> None:
    """Whatever reaches the transport, only the service's spelling of a chat goes to Telegram."""
    bot = await make_bot()
    transport = tg.TelegramTransport(bot.app.bot)
    with pytest.raises(ValueError, match="not a canonical Telegram chat id"):
        await transport.send_text(chat_id, "x")
    with pytest.raises(ValueError, match="not a canonical Telegram chat id"):
        await transport.send_direct(chat_id, "x")
    assert bot.fake.log.of("sendMessage") == []
    await transport.send_text("-100123", "canonical")
    assert bot.fake.texts(-100123) == ["canonical"]


async def test_service_outage_drops_message(
    fake: FakeTelegram,
    tenant: Tenant,
    connector_config: ConfigFactory,
    agent: RecordingAgent,
    dead_address: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = telegram_config(connector_config, fake, address=dead_address)
    client = sidecar_main.make_client(config)
    app = tg.build_application(config.telegram)  # type: ignore[arg-type]
    await app.initialize()
    try:
        connector = Connector(config, tg.TelegramTransport(app.bot), client, agent)
        tg.install_handlers(app, connector)
        bot = Bot(fake, app, connector, agent)
        owner_message = {"message_id": 1, "date": 0, "chat": {"id": OWNER, "type": "private"}, "text": "req"}
        with (
            caplog.at_level(logging.WARNING, logger="sidecars"),
            caplog.at_level(logging.INFO, logger="authz_service.client"),
        ):
            await bot.say(ALICE, "anyone there?")
            await bot.feed(callback_update(OWNER, owner_message, "x" * 40))
    finally:
        await app.shutdown()
        await client.close()
    assert agent.turns == []
    assert fake.log.of("sendMessage") == []
    assert alerts(fake) == [UNAVAILABLE]
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == config.retry.attempts - 1  # the press is not retried
    assert any("dropped message from 2002" in r.getMessage() for r in caplog.records)


async def test_authz_connector_polls_and_replies(
    fake: FakeTelegram, tenant: Tenant, connector_config: ConfigFactory
) -> None:
    """The real entry point: serve() + telegram.run with long polling against the fake."""
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM, dm_policy=cm.DM_POLICY_OPEN, send_policy=SEND_POLICY)
    config = telegram_config(connector_config, fake)
    task = asyncio.create_task(sidecar_main.serve(config, sidecar_main.load_platform("telegram")))
    try:
        await fake.log.wait_for("getUpdates")
        fake.push_update(message_update(ALICE, "over polling"))
        await fake.log.wait_for("sendMessage", lambda c: c.params["chat_id"] == str(ALICE))
        assert fake.texts(ALICE) == ["echo: over polling"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_authz_connector_process_stops_on_sigterm(
    fake: FakeTelegram, tenant: Tenant, service: Service, tmp_path: Path
) -> None:
    """The installed command starts against the fake, then exits 0 on SIGTERM."""
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM)
    config = tmp_path / "telegram.yaml"
    config.write_text(
        f"channel_id: tg\naddress: {service.address}\nsend_listen: 127.0.0.1:0\n"
        f"telegram:\n  base_url: {fake.base_url}\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "AUTHZ_CONNECTOR_API_KEY": tenant.keys["connector"],
    }
    cli = Path(sys.executable).parent / "authz-connector"
    proc = await asyncio.create_subprocess_exec(
        str(cli), "telegram", "--config", str(config), env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        await fake.log.wait_for("getUpdates", timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert TOKEN not in stderr.decode()
    assert "telegram connector running as @authz_test_bot for channel tg" in stderr.decode()


async def test_a_rejected_token_exits_1_without_printing_it(
    fake: FakeTelegram, tenant: Tenant, service: Service, tmp_path: Path
) -> None:
    """python-telegram-bot puts the rejected token in its error; the connector must not print it."""
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM)
    config = tmp_path / "telegram.yaml"
    config.write_text(
        f"channel_id: tg\naddress: {service.address}\nsend_listen: 127.0.0.1:0\n"
        f"telegram:\n  base_url: {fake.base_url}\n"
    )
    wrong = "999999:WRONG-secret-token"
    env = {
        "PATH": "/usr/bin:/bin",
        "TELEGRAM_BOT_TOKEN": wrong,
        "AUTHZ_CONNECTOR_API_KEY": tenant.keys["connector"],
    }
    cli = Path(sys.executable).parent / "authz-connector"
    proc = await asyncio.create_subprocess_exec(
        str(cli), "telegram", "--config", str(config), "--log-level", "DEBUG", env=env,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        _, stderr = await proc.communicate()
    text = stderr.decode()
    assert proc.returncode == 1, text
    assert "authz-connector: stopped: telegram.error.InvalidToken" in text
    *logged, stopped = text.splitlines()
    assert stopped.startswith("authz-connector: stopped:")
    assert logged and all(json.loads(line)["level"] for line in logged)  # the log: JSON lines
    assert wrong not in text and tenant.keys["connector"] not in text


# --- approvers' chat commands (issue #17) ------------------------------------

SECOND = 4004  # a channel approver besides the owner


def code_of(bot: Bot, user: int) -> str:
    found = re.search(r"Pairing code: (\S+)", bot.fake.texts(user)[0])
    assert found, bot.fake.texts(user)
    return found.group(1)


async def statuses(tenant: Tenant) -> dict[str, int]:
    """Every pairing request's status, by requester."""
    found: dict[str, int] = {}
    for status in (cm.APPROVAL_STATUS_PENDING, cm.APPROVAL_STATUS_APPROVED, cm.APPROVAL_STATUS_DENIED,
                   cm.APPROVAL_STATUS_BLOCKED):  # fmt: skip
        resp = await tenant.admin.admin.ListApprovals(
            adm.ListApprovalsRequest(channel_id="tg", status=status)
        )
        found.update({a.user_id: a.status for a in resp.approvals})
    return found


async def blocked(tenant: Tenant) -> list[str]:
    resp = await tenant.admin.admin.ListUsers(
        adm.ListUsersRequest(channel_id="tg", filter=adm.USER_FILTER_BLOCKED)
    )
    return [u.user_id for u in resp.users]


async def test_approve_by_code_from_the_owner(make_bot: MakeBot, tenant: Tenant) -> None:
    bot = await make_bot(owner_id=str(OWNER))
    await bot.say(ALICE, "hello")
    await bot.say(OWNER, f"/approve {code_of(bot, ALICE)}")
    assert bot.fake.texts(OWNER)[-1] == f"✅ Approved by telegram:{OWNER} ({ALICE})."
    assert bot.fake.texts(ALICE)[-1] == "✅ Paired! You can chat now."
    assert await statuses(tenant) == {str(ALICE): cm.APPROVAL_STATUS_APPROVED}
    assert bot.agent.turns == []  # the command never reached the agent
    await bot.say(ALICE, "hi again")
    assert [t.text for t in bot.agent.turns] == ["hi again"]
    events = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="pairing.approved"))
    assert [e.actor for e in events.events] == [f"telegram:{OWNER}"]


async def test_approve_and_deny_by_user_from_a_second_approver(make_bot: MakeBot, tenant: Tenant) -> None:
    bot = await make_bot(owner_id=str(OWNER), approvers=[str(SECOND)])
    await bot.say(ALICE, "hello")
    await bot.say(MALLORY, "me too")
    await bot.say(SECOND, f"/approve {ALICE}")
    await bot.say(SECOND, f"/deny {MALLORY}")
    assert bot.fake.texts(SECOND)[-2:] == [
        f"✅ Approved by telegram:{SECOND} ({ALICE}).",
        f"❌ Denied by telegram:{SECOND} ({MALLORY}).",
    ]
    assert bot.fake.texts(MALLORY)[-1] == "❌ Your pairing request was denied."
    assert await statuses(tenant) == {
        str(ALICE): cm.APPROVAL_STATUS_APPROVED,
        str(MALLORY): cm.APPROVAL_STATUS_DENIED,
    }
    await bot.say(SECOND, f"/deny {ALICE}")  # nothing pending any more
    assert bot.fake.texts(SECOND)[-1] == f"No pending request for “{ALICE}”."


async def test_block_pending_and_help(make_bot: MakeBot, tenant: Tenant) -> None:
    bot = await make_bot(owner_id=str(OWNER))
    await bot.say(ALICE, "hello")
    await bot.say(OWNER, "/pending")
    listed = bot.fake.texts(OWNER)[-1]
    assert listed.startswith("Pending pairing requests (1):") and f"• {ALICE}" in listed
    await bot.say(OWNER, f"/block {ALICE}")
    assert bot.fake.texts(OWNER)[-1] == f"⛔ Blocked by telegram:{OWNER} ({ALICE})."
    await bot.say(OWNER, f"/block {MALLORY}")  # no request: blocked all the same
    assert bot.fake.texts(OWNER)[-1] == f"⛔ Blocked {MALLORY}."
    assert sorted(await blocked(tenant)) == sorted([str(ALICE), str(MALLORY)])
    await bot.say(OWNER, "/pending")
    assert bot.fake.texts(OWNER)[-1] == "No pending pairing requests."
    await bot.say(OWNER, f"/unblock {MALLORY}")
    assert bot.fake.texts(OWNER)[-1] == f"Unblocked {MALLORY}."
    assert await blocked(tenant) == [str(ALICE)]
    await bot.say(OWNER, "/users")
    assert bot.fake.texts(OWNER)[-1] == f"• {ALICE} (Alice): blocked"
    await bot.say(OWNER, "/help")
    assert "/approve <code|user>" in bot.fake.texts(OWNER)[-1]
    events = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="user.blocked"))
    assert [e.actor for e in events.events] == [f"telegram:{OWNER}"]


async def test_the_same_commands_from_a_stranger_change_nothing(make_bot: MakeBot, tenant: Tenant) -> None:
    bot = await make_bot(owner_id=str(OWNER))
    await bot.say(ALICE, "hello")
    code = code_of(bot, ALICE)
    owner_messages = len(bot.fake.messages_to(OWNER))
    for text in (f"/approve {code}", f"/approve {ALICE}", f"/deny {ALICE}", f"/block {ALICE}", "/pending"):
        await bot.say(MALLORY, text)
    # The ordinary answer: Mallory's own pairing code once, then silence; nothing else.
    [answer] = bot.fake.texts(MALLORY)
    assert answer.startswith("🔑 Pairing code:")
    assert await statuses(tenant) == {
        str(ALICE): cm.APPROVAL_STATUS_PENDING,
        str(MALLORY): cm.APPROVAL_STATUS_PENDING,
    }
    assert await blocked(tenant) == []
    assert len(bot.fake.texts(ALICE)) == 1
    refused = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="approval.unauthorized"))
    assert [(e.actor, json.loads(e.details_json)["command"]) for e in refused.events] == [
        (f"telegram:{MALLORY}", c) for c in ("approve", "approve", "deny", "block", "pending")
    ]
    assert len(bot.fake.messages_to(OWNER)) == owner_messages + 1  # Mallory's request, nothing more
    # The paired (not an approver) get theirs: the agent's answer.
    await bot.say(OWNER, f"/approve {code}")
    await bot.say(ALICE, "/pending")
    assert [t.text for t in bot.agent.turns] == ["/pending"]
    assert await statuses(tenant) == {
        str(ALICE): cm.APPROVAL_STATUS_APPROVED,
        str(MALLORY): cm.APPROVAL_STATUS_PENDING,
    }


async def test_approvers_reach_the_agent_without_pairing(make_bot: MakeBot, tenant: Tenant) -> None:
    bot = await make_bot(owner_id=str(OWNER), approvers=[str(SECOND)])
    await bot.say(OWNER, "hi")
    await bot.say(SECOND, "/start")
    assert [t.text for t in bot.agent.turns] == ["hi"]
    assert bot.fake.texts(OWNER) == ["echo: hi"]  # no pairing code, no request of their own
    assert bot.fake.texts(SECOND)[-1] == START_REPLY
    assert await statuses(tenant) == {}


async def test_approvers_pair_like_anyone_when_the_channel_says_so(make_bot: MakeBot, tenant: Tenant) -> None:
    bot = await make_bot(owner_id=str(OWNER), approvers=[str(SECOND)], approvers_trusted=False)
    await bot.say(SECOND, "hi")
    assert bot.fake.texts(SECOND)[0].startswith("🔑 Pairing code:")
    assert bot.agent.turns == []
    assert await statuses(tenant) == {str(SECOND): cm.APPROVAL_STATUS_PENDING}
