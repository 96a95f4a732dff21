"""``ServicePairingStore`` inside praisonai-bot's real Telegram, Slack and
Discord bots (the ``praisonai`` extra), with no network: the bots are made as
a user makes them, ``store.install(bot)`` plugs the store in, and PraisonAI's
own pairing path runs (its inbound pipeline for Telegram; for Slack and
Discord the ``UnknownUserHandler`` call their message handlers make, with the
``BotContext`` their ``start()`` builds). Only the transport is replaced:
``reply`` and ``send_approval_dm`` record instead of calling the platform."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
import telegram
from praisonai_bot.bots._pairing_ui import PairingUIBuilder
from praisonai_bot.bots._unknown_user import BotContext, UnknownUserHandler
from praisonai_bot.bots.discord import DiscordBot
from praisonai_bot.bots.slack import SlackBot
from praisonai_bot.bots.telegram import TelegramBot, process_inbound_telegram_message
from praisonaiagents.bots import BotChannel, BotConfig, BotMessage, BotUser
from praisonaiagents.gateway.protocols import PairingProtocol

from authz_service.adapters import PairingCallbackHandler, ServicePairingStore
from authz_service.client import Client, EdgeSettings, connect
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Service, Tenant
from .pairing_helpers import OWNER, check
from .replicas import free_port

STRANGER = "555"
T = TypeVar("T")


@pytest.fixture(autouse=True)
def _praisonai_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    # PraisonAI's own stores would otherwise write a secret under ~/.praisonai.
    monkeypatch.setenv("PRAISONAI_GATEWAY_SECRET", "g" * 64)
    monkeypatch.setenv("PRAISONAI_CALLBACK_SECRET", "c" * 64)


@pytest.fixture
async def connector(service: Service, tenant: Tenant) -> AsyncIterator[Client]:
    """A connector key bound to the bot's channel, as the bot should hold."""
    key = await tenant.admin.admin.CreateApiKey(
        adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="praisonai-bot", channels=["tg"])
    )
    client = connect(service.address, key.secret, edge=EdgeSettings())
    yield client
    await client.close()


@pytest.fixture
def store(connector: Client) -> Iterator[ServicePairingStore]:
    with ServicePairingStore(connector, "tg", platform="telegram") as s:
        yield s


class Recorder:
    """The platform side of a bot: what it would have sent."""

    def __init__(self) -> None:
        self.replies: list[tuple[str, str]] = []
        self.prompts: list[dict[str, str]] = []

    async def reply(self, chat_id: str, text: str) -> None:
        self.replies.append((str(chat_id), text))

    async def send_approval_dm(
        self, owner_user_id: str, user_name: str, code: str, channel: str, user_id: str
    ) -> str:
        self.prompts.append(
            {"owner": owner_user_id, "name": user_name, "code": code, "channel": channel, "user": user_id}
        )
        return "msg-1"


def on_bot_loop(coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
    """Run a bot coroutine on a loop of its own, as the bot's process does: the
    store's calls may wait for the service, which here runs on the test's loop."""
    return asyncio.to_thread(asyncio.run, coro)


def config() -> BotConfig:
    return BotConfig(unknown_user_policy="pair", owner_user_id=OWNER)


def telegram_bot(store: ServicePairingStore) -> tuple[TelegramBot, Recorder]:
    bot = TelegramBot(token="123456:TEST", config=config())
    store.install(bot)  # what the user writes, before bot.start()
    sent = Recorder()
    bot.reply = sent.reply
    bot.send_approval_dm = sent.send_approval_dm
    return bot, sent


def update(user_id: int, text: str = "hello") -> telegram.Update:
    user = telegram.User(id=user_id, first_name="Eve", is_bot=False)
    chat = telegram.Chat(id=user_id, type="private")
    message = telegram.Message(message_id=1, date=datetime.now(UTC), chat=chat, from_user=user, text=text)
    return telegram.Update(update_id=1, message=message)


def pair_button(prompt: dict[str, str], action: str) -> str:
    """PraisonAI's own signed button payload for the prompt it posted (the
    same format on every platform)."""
    keyboard: dict[str, Any] = PairingUIBuilder.create_telegram_keyboard(
        user_name=prompt["name"], code=prompt["code"], channel=prompt["channel"], user_id=prompt["user"]
    )
    return next(
        str(b["callback_data"])
        for row in keyboard["inline_keyboard"]
        for b in row
        if f":{action}:" in b["callback_data"]
    )


def test_the_store_is_a_praisonai_pairing_store(store: ServicePairingStore) -> None:
    assert isinstance(store, PairingProtocol)
    with pytest.raises(ValueError, match="platform"):
        ServicePairingStore(store.client, "tg", platform="")


async def test_telegram_pairing_goes_through_the_service(tenant: Tenant, store: ServicePairingStore) -> None:
    await tenant.channel("tg", owner_id=OWNER)
    bot, sent = telegram_bot(store)
    assert (
        await on_bot_loop(process_inbound_telegram_message(update(555), bot)) is None
    )  # not paired: dropped
    assert bot._bot_context.pairing_store is store
    [prompt] = sent.prompts
    assert (prompt["owner"], prompt["channel"], prompt["user"]) == (OWNER, "telegram", STRANGER)
    assert sent.replies == [(STRANGER, "Your request has been sent to the owner for approval.")]
    # The code is the service's: one pending pairing request for the user.
    pending = await tenant.approver.admin.ListApprovals(
        adm.ListApprovalsRequest(channel_id="tg", kind=cm.APPROVAL_KIND_PAIRING)
    )
    assert [a.user_id for a in pending.approvals] == [STRANGER]
    # A second message finds the same live request (one request, same code).
    await on_bot_loop(process_inbound_telegram_message(update(555, "again?"), bot))
    assert [p["code"] for p in sent.prompts] == [prompt["code"]] * 2

    # The owner presses PraisonAI's Approve button; the bot relays it as it does.
    result = await on_bot_loop(
        bot._pairing_callback_handler.handle_approval_callback(
            callback_data=pair_button(prompt, "approve"), owner_user_id=OWNER, bot_adapter=bot
        )
    )
    assert result.success is True
    assert (result.user_id, result.channel) == (STRANGER, "telegram")
    assert (await check(tenant, STRANGER)).decision == az.DECISION_ALLOW
    assert sent.replies[-1][0] == STRANGER  # the requester is told
    assert await asyncio.to_thread(store.is_paired, STRANGER, "telegram") is True
    passed = await on_bot_loop(process_inbound_telegram_message(update(555, "now?"), bot))
    assert passed is not None and passed.content == "now?"


async def test_only_an_approver_may_press(tenant: Tenant, store: ServicePairingStore) -> None:
    await tenant.channel("tg", owner_id=OWNER)
    bot, sent = telegram_bot(store)
    await on_bot_loop(process_inbound_telegram_message(update(555), bot))
    [prompt] = sent.prompts
    # PraisonAI would pair on anyone's press; the service checks the presser.
    intruder = await on_bot_loop(
        bot._pairing_callback_handler.handle_approval_callback(
            callback_data=pair_button(prompt, "approve"), owner_user_id="666", bot_adapter=bot
        )
    )
    assert intruder.success is False
    assert await asyncio.to_thread(store.is_paired, STRANGER, "telegram") is False
    denied = await on_bot_loop(
        bot._pairing_callback_handler.handle_approval_callback(
            callback_data=pair_button(prompt, "deny"), owner_user_id=OWNER, bot_adapter=bot
        )
    )
    assert denied.success is True
    # A deny pairs nobody (PraisonAI's own store wrote a junk "__denied__" record).
    assert await asyncio.to_thread(store.is_paired, STRANGER, "telegram") is False
    late = await on_bot_loop(
        bot._pairing_callback_handler.handle_approval_callback(
            callback_data=pair_button(prompt, "approve"), owner_user_id=OWNER, bot_adapter=bot
        )
    )
    assert late.success is False  # the denied code was consumed


@pytest.mark.parametrize(
    ("bot_class", "platform", "service_platform", "user"),
    [
        (SlackBot, "slack", cm.PLATFORM_SLACK, "U0STRANGER"),
        (DiscordBot, "discord", cm.PLATFORM_DISCORD, "123456789012345678"),
    ],
)
async def test_slack_and_discord_bots_pair_through_the_service(
    tenant: Tenant,
    service: Service,
    bot_class: type,
    platform: str,
    service_platform: int,
    user: str,
) -> None:
    owner = "UOWNER" if platform == "slack" else "1" * 18
    team = "T0TEAM" if platform == "slack" else ""
    await tenant.channel("chat", platform=service_platform, owner_id=f"{team}:{owner}" if team else owner)
    key = await tenant.admin.admin.CreateApiKey(
        adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="bot", channels=["chat"])
    )
    client = connect(service.address, key.secret)
    with ServicePairingStore(client, "chat", platform=platform, slack_team=team) as store:
        bot = bot_class(token="xoxb-test", config=BotConfig(unknown_user_policy="pair", owner_user_id=owner))
        store.install(bot)
        sent = Recorder()
        # The context their start() builds for the message handlers.
        ctx = BotContext(config=bot.config, pairing_store=bot._pairing_store, adapter=sent)
        message = BotMessage(
            content="hi",
            sender=BotUser(user_id=user, username="eve", display_name="Eve"),
            channel=BotChannel(channel_id=user, channel_type="dm"),
        )
        message._channel_type = platform  # as their handlers set it
        assert await on_bot_loop(UnknownUserHandler.handle(message, ctx)) is False
        [prompt] = sent.prompts
        assert (prompt["channel"], prompt["user"]) == (platform, user)
        assert isinstance(bot._pairing_callback_handler, PairingCallbackHandler)
        result = await on_bot_loop(
            bot._pairing_callback_handler.handle_approval_callback(
                callback_data=pair_button(prompt, "approve"), owner_user_id=owner, bot_adapter=sent
            )
        )
        assert result.success is True
        assert await on_bot_loop(UnknownUserHandler.handle(message, ctx)) is True


async def test_a_paired_user_is_answered_at_the_edge_until_blocked(tenant: Tenant, service: Service) -> None:
    await tenant.channel("tg")
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="7"))
    key = tenant.keys["connector"]
    with ServicePairingStore(
        connect(service.address, key, edge=EdgeSettings()), "tg", platform="telegram"
    ) as store:
        deadline = time.monotonic() + 10
        # Once the worker's change stream is up, a repeat is answered on the worker with no RPC.
        while True:
            assert await asyncio.to_thread(store.is_paired, "7", "telegram") is True
            cache = await asyncio.to_thread(lambda: store.edge_cache)
            assert cache is not None
            if cache.hits:
                break
            assert time.monotonic() < deadline, "no answer was reused"
        await tenant.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id="7"))
        # The block reaches the bot within the stream's bound (1.5 s), not a cache's lifetime.
        deadline = time.monotonic() + 3
        while await asyncio.to_thread(store.is_paired, "7", "telegram"):
            assert time.monotonic() < deadline, "still paired after the block"
        assert await asyncio.to_thread(store.is_paired, "7", "telegram") is False
        # Another platform is never this channel's user.
        assert store.is_paired("7", "slack") is False


async def test_an_unreachable_service_pairs_nobody() -> None:
    down = ServicePairingStore(
        connect(f"127.0.0.1:{free_port()}", "azk.x.y.z", warn_plaintext=False),
        "tg",
        platform="telegram",
        timeout=0.5,
    )
    with down:
        bot, sent = telegram_bot(down)
        assert await on_bot_loop(process_inbound_telegram_message(update(555), bot)) is None
        with pytest.raises(RuntimeError, match="unavailable"):
            await asyncio.to_thread(down.generate_code, "telegram", STRANGER)
    # PraisonAI answers a failed generate_code so, and posts no prompt.
    assert sent.prompts == []
    assert sent.replies == [(STRANGER, "Sorry, the system is busy. Please try again later.")]


async def test_operator_calls_need_an_operator_key(tenant: Tenant, service: Service) -> None:
    await tenant.channel("tg")
    keys = tenant.keys

    def operate() -> None:
        def store(operator: str | None = None) -> ServicePairingStore:
            return ServicePairingStore(
                connect(service.address, keys["connector"]),
                "tg",
                platform="telegram",
                operator=connect(service.address, keys[operator]) if operator else None,
            )

        with store() as bot, store("approver") as by_approver, store("admin") as by_admin:
            code = bot.generate_code("telegram", STRANGER)
            assert bot.generate_code("telegram", STRANGER) == code  # the live request again
            with pytest.raises(RuntimeError, match="slack"):
                bot.generate_code("slack", STRANGER)
            # The connector key alone: the operator calls refuse.
            assert bot.approve("telegram", code) is False
            assert bot.list_pending() == bot.list_paired() == []
            assert bot.revoke(STRANGER, "telegram") is False

            [pending] = by_approver.list_pending("telegram")
            assert (pending["user_id"], pending["channel_type"], pending["code"]) == (
                STRANGER,
                "telegram",
                None,
            )
            assert by_approver.approve("telegram", "WRONGCODE") is False
            assert by_approver.approve("telegram", code) is True
            assert by_approver.approve("telegram", code) is False  # single use
            assert by_approver.list_pending() == []
            assert by_approver.list_paired() == []  # ListUsers is the admin's
            [paired] = by_admin.list_paired()
            assert (paired.channel_id, paired.channel_type) == (STRANGER, "telegram")
            assert type(paired).__module__ == "praisonai_bot.gateway.pairing"
            assert by_admin.is_paired(STRANGER, "telegram") is True
            assert by_admin.revoke(STRANGER, "telegram") is True
            assert by_admin.is_paired(STRANGER, "telegram") is False
            assert by_admin.revoke(STRANGER, "telegram") is False

    await asyncio.to_thread(operate)
