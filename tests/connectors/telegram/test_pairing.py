"""Telegram pairing end to end (python-telegram-bot against the fake Bot API, the
real authz service and PostgreSQL): the owner's notification and its buttons,
approve, deny, block, replayed, tampered and foreign presses, commands and
mentions in groups.
"""

from __future__ import annotations

import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars import telegram as tg
from sidecars.runtime import ALREADY_RESOLVED, INVALID_BUTTON, NOT_ALLOWED, START_REPLY, ButtonSpec
from tests.conftest import Tenant
from tests.connectors.fake_telegram import BOT_USERNAME, callback_update
from tests.connectors.telegram.rig import (
    ALICE,
    GROUP,
    MALLORY,
    OWNER,
    SEND_POLICY,
    MakeBot,
    alerts,
    buttons,
    payload,
    pending,
)


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
