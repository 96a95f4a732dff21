"""The WhatsApp connector's test rig: the real pywa client behind the connector's
webhook (signature checks included), the real authz service on PostgreSQL, and
a fake Cloud API that records what the bot sent (``open_rig`` and ``rig``).

Updates are posted to ``/whatsapp/webhook`` over a real socket, signed with the
app secret exactly as Meta signs them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from itertools import count
from typing import Any

import aiohttp
import httpx
import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars.config import WhatsAppSettings
from sidecars.http import SendEndpoint
from sidecars.outbox import follow_notifications
from sidecars.runtime import Connector
from sidecars.whatsapp import (
    WEBHOOK_PATH,
    CustomerWindow,
    WhatsAppBot,
    WhatsAppTransport,
    build_client,
    notify_template,
)
from tests.conftest import Tenant
from tests.connectors.conftest import ConfigFactory, RecordingAgent
from tests.connectors.fake_whatsapp import (
    APP_SECRET,
    PHONE_ID,
    TOKEN,
    VERIFY_TOKEN,
    FakeWhatsApp,
    button_reply,
    buttons_of,
    signature,
    text,
    text_of,
)

CHANNEL = "wa"
# wa_ids as the Cloud API reports them; the service knows them as "+" + wa_id.
OWNER, ALICE, MALLORY = "15550002222", "84981234567", "447700900123"
_message_ids = count(1)


def uid(wa_id: str) -> str:
    return "+" + wa_id


def new_id() -> str:
    return f"wamid.in{next(_message_ids)}"


@dataclass
class Rig:
    tenant: Tenant
    fake: FakeWhatsApp
    bot: WhatsAppBot
    connector: Connector
    agent: RecordingAgent
    endpoint: SendEndpoint
    url: str
    session: aiohttp.ClientSession

    async def post(
        self, body: str, *, sign: str | None = APP_SECRET, headers: dict[str, str] | None = None
    ) -> int:
        """POST ``body`` to the webhook, signed with ``sign`` (None: unsigned); return the
        status once every update it carried has been handled."""
        sent = {"Content-Type": "application/json", **(headers or {})}
        if sign is not None:
            sent.setdefault("X-Hub-Signature-256", signature(body, sign))
        async with self.session.post(self.url, data=body.encode(), headers=sent) as resp:
            status = resp.status
        await self.bot.drain()
        return status

    async def say(self, wa_id: str, words: str, *, message_id: str = "", name: str = "") -> str:
        """``wa_id`` writes to the bot; returns the signed body that was posted."""
        body = self.fake.inbound(wa_id, text(words, message_id or new_id()), name=name)
        assert await self.post(body) == 200
        return body

    async def sent(
        self, wa_id: str, where: Callable[[dict[str, Any]], bool] = lambda m: True, *, count: int = 1
    ) -> dict[str, Any]:
        """The ``count``-th message to ``wa_id`` matching ``where``, waiting (bounded) for it:
        approvers' copies come from the notification outbox, after the webhook's answer."""
        call = await self.fake.log.wait_for(
            "messages", lambda c: c.params.get("to") == wa_id and where(c.params), count=count
        )
        return call.params

    async def notified(self, wa_id: str, words: str = "", *, count: int = 1) -> dict[str, Any]:
        """The ``count``-th notification copy to ``wa_id`` with reply buttons (and ``words``)."""
        return await self.sent(
            wa_id, lambda m: m["type"] == "interactive" and words in text_of(m), count=count
        )

    async def shown(self, wa_id: str, words: str) -> dict[str, Any]:
        """The first message to ``wa_id`` showing ``words`` (a copy's new version: WhatsApp cannot edit)."""
        return await self.sent(wa_id, lambda m: words in text_of(m))

    async def press(self, wa_id: str, action: str, posted: dict[str, Any] | None = None) -> None:
        """``wa_id`` taps the ``action`` reply button of ``posted`` (default: the owner's last message)."""
        posted = posted or self.fake.sent_to(OWNER)[-1]
        button = next(b for b in buttons_of(posted) if b["reply"]["title"].lower().endswith(action))
        assert await self.post(self.fake.inbound(wa_id, button_reply(button, new_id()))) == 200

    async def pending(self) -> list[cm.Approval]:
        found = await self.tenant.admin.admin.ListApprovals(adm.ListApprovalsRequest(channel_id=CHANNEL))
        return list(found.approvals)

    async def status(self, approval_id: str) -> int:
        got = await self.tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=approval_id))
        return got.status


OpenRig = Callable[..., AbstractAsyncContextManager[Rig]]


@pytest.fixture
def open_rig(
    tenant: Tenant,
    connector_config: ConfigFactory,
    agent: RecordingAgent,
    send_endpoint: Callable[[Connector], Awaitable[SendEndpoint]],
) -> OpenRig:
    """``async with open_rig(template="", clock=time.time, **policy) as rig``: the WhatsApp
    channel (owner ``OWNER``, plus ``policy``), the fake Cloud API and the bot serving its
    webhook; ``clock`` is the connector's clock for the 24-hour window."""

    @asynccontextmanager
    async def open_(
        *, template: str = "", clock: Callable[[], float] = time.time, **policy: Any
    ) -> AsyncIterator[Rig]:
        await tenant.channel(CHANNEL, cm.PLATFORM_WHATSAPP, owner_id=uid(OWNER), **policy)
        fake = FakeWhatsApp()
        await fake.start()
        settings = WhatsAppSettings(
            PHONE_ID, TOKEN, APP_SECRET, VERIFY_TOKEN, "127.0.0.1:0", fake.base_url, notify_template=template
        )
        config = connector_config("whatsapp", CHANNEL, whatsapp=settings)
        window = CustomerWindow(clock=clock)
        async with httpx.AsyncClient() as http:
            wa = build_client(settings, http)
            connector = Connector(
                config, WhatsAppTransport(wa, window, notify_template(settings)), tenant.connector, agent
            )
            endpoint = await send_endpoint(connector)
            # As sidecars.main runs it: approvers' notifications from the outbox.
            outbox = follow_notifications(connector)
            assert outbox is not None
            bot = WhatsAppBot(connector, wa, VERIFY_TOKEN, window)
            port = await bot.start(settings.listen)
            try:
                async with aiohttp.ClientSession() as session:
                    url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
                    yield Rig(tenant, fake, bot, connector, agent, endpoint, url, session)
            finally:
                await bot.close()
                await outbox.stop()
                await fake.close()

    return open_


@pytest.fixture
async def rig(open_rig: OpenRig) -> AsyncIterator[Rig]:
    async with open_rig() as opened:
        yield opened
