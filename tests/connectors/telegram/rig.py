"""The Telegram connector's test rig: python-telegram-bot against a local fake Bot
API (tests/connectors/fake_telegram.py), the real authz service and PostgreSQL
(``fake`` and ``make_bot``, shared by the Telegram tests).

Updates are fed with ``Application.process_update`` (handlers run inline, so
once it returns every call the bot made is recorded).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from telegram import Update

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars import telegram as tg
from sidecars.config import ConnectorConfig, TelegramSettings
from sidecars.runtime import Connector
from tests.conftest import Tenant
from tests.connectors.conftest import ConfigFactory, RecordingAgent
from tests.connectors.fake_telegram import TOKEN, FakeTelegram, callback_update, message_update

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
