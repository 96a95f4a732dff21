"""The Slack connector's test rig: the real slack-bolt AsyncApp served over HTTP with
signature verification, the real authz service on PostgreSQL, and a fake Slack Web API
that records what the bot sent (``open_rig`` and ``rig``, shared by the Slack tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars.config import SlackSettings
from sidecars.http import SendEndpoint
from sidecars.runtime import (
    Connector,
    Inbound,
)
from sidecars.slack import EVENTS_PATH, SlackBot, SlackTransport, web_client
from sidecars.slack.blocks import ACTION_PREFIX
from tests.conftest import Tenant
from tests.connectors.conftest import Call, ConfigFactory, RecordingAgent
from tests.connectors.fake_slack import (
    BOT_USER_ID,
    TEAM_ID,
    FakeSlack,
    block_actions,
    dm_channel,
    message,
    sign,
)

TOKEN = "xoxb-test-bot-token"
SECRET = "test-signing-secret"
CHANNEL = "sl"
OWNER, ALICE, MALLORY = "U0OWNER01", "U0ALICE01", "U0MALLORY"
FORM = "application/x-www-form-urlencoded"


def uid(user: str) -> str:
    """The authz identity of a Slack user of the fake workspace."""
    return f"{TEAM_ID}:{user}"


class ObservedConnector(Connector):
    """The real flow, counting finished messages: Slack messages are handled
    after the HTTP response, so silence is only meaningful once they are done."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.received: list[Inbound] = []
        self.handled = 0
        self._done = asyncio.Condition()

    async def handle_message(self, msg: Inbound) -> None:
        self.received.append(msg)
        try:
            await super().handle_message(msg)
        finally:
            async with self._done:
                self.handled += 1
                self._done.notify_all()

    async def wait_handled(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self._done:
            await self._done.wait_for(lambda: self.handled >= count)


@dataclass
class Rig:
    tenant: Tenant
    fake: FakeSlack
    connector: ObservedConnector
    agent: RecordingAgent
    endpoint: SendEndpoint
    events_url: str
    session: aiohttp.ClientSession

    async def post(
        self,
        body: str,
        content_type: str = "application/json",
        *,
        secret: str = SECRET,
        ts: int | None = None,
        signed: str | None = None,
    ) -> int:
        """POST ``body`` to /slack/events, signed (over ``signed`` if given) like Slack does."""
        headers = {"Content-Type": content_type, **sign(secret, body if signed is None else signed, ts)}
        async with self.session.post(self.events_url, data=body.encode(), headers=headers) as resp:
            return resp.status

    async def say(self, user: str, text: str) -> None:
        """``user`` DMs the bot; returns once the connector has handled it."""
        before = self.connector.handled
        assert await self.post(message(user, text)) == 200
        await self.connector.wait_handled(before + 1)

    async def press(
        self, presser: str, action: str, posted: dict[str, Any] | None = None, **change: str
    ) -> int:
        """``presser`` clicks the ``action`` button on the owner's notification."""
        posted = posted or self.fake.last_message(dm_channel(OWNER))
        button = dict(find_button(posted, action), **change)
        return await self.post(block_actions(presser, posted, button), FORM)

    def sent_to(self, user: str) -> list[str]:
        return [c.params["text"] for c in self.fake.log.of("chat.postMessage", to(dm_channel(user)))]

    async def pending(self) -> list[cm.Approval]:
        found = await self.tenant.admin.admin.ListApprovals(adm.ListApprovalsRequest(channel_id=CHANNEL))
        return list(found.approvals)

    async def status(self, approval_id: str) -> int:
        got = await self.tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=approval_id))
        return got.status


def to(channel: str) -> Callable[[Call], bool]:
    return lambda c: c.params.get("channel") == channel


def find_button(posted: dict[str, Any], action: str) -> dict[str, Any]:
    return next(
        e
        for b in posted["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == ACTION_PREFIX + action
    )


OpenRig = Callable[..., AbstractAsyncContextManager[Rig]]


@pytest.fixture
def open_rig(
    tenant: Tenant,
    connector_config: ConfigFactory,
    agent: RecordingAgent,
    send_endpoint: Callable[[Connector], Awaitable[SendEndpoint]],
) -> OpenRig:
    """``async with open_rig(lookup_email=..., contact_timeout=..., **policy) as rig``: the
    channel (owner, open groups, plus ``policy``), the fake Slack and the bot serving it.
    ``prepare(fake)`` runs before the bot starts."""

    @asynccontextmanager
    async def open_(
        *,
        lookup_email: bool = False,
        contact_timeout: float = 3.0,
        prepare: Callable[[FakeSlack], None] = lambda fake: None,
        **policy: Any,
    ) -> AsyncIterator[Rig]:
        await tenant.channel(
            CHANNEL, cm.PLATFORM_SLACK, owner_id=uid(OWNER), group_policy=cm.GROUP_POLICY_OPEN, **policy
        )
        fake = FakeSlack(TOKEN)
        prepare(fake)
        await fake.start()
        settings = SlackSettings(TOKEN, SECRET, "127.0.0.1:0", fake.base_url, lookup_email=lookup_email)
        config = connector_config("slack", CHANNEL, slack=settings, contact_timeout=contact_timeout)
        client = web_client(settings)
        transport = SlackTransport(client, TEAM_ID, lookup_email=settings.lookup_email)
        connector = ObservedConnector(config, transport, tenant.connector, agent)
        endpoint = await send_endpoint(connector)
        bot = SlackBot(connector, client, SECRET, BOT_USER_ID)
        port = await bot.start(settings.listen)
        try:
            async with aiohttp.ClientSession() as session:
                events_url = f"http://127.0.0.1:{port}{EVENTS_PATH}"
                yield Rig(tenant, fake, connector, agent, endpoint, events_url, session)
        finally:
            await bot.close()
            await fake.close()

    return open_


@pytest.fixture
async def rig(open_rig: OpenRig) -> AsyncIterator[Rig]:
    async with open_rig() as opened:
        yield opened


async def start_pairing(rig: Rig) -> cm.Approval:
    """Alice, a stranger, DMs the bot: she gets a code, the owner gets the buttons."""
    await rig.say(ALICE, "hello there")
    assert len(rig.sent_to(ALICE)) == 1 and "Pairing code" in rig.sent_to(ALICE)[0]
    await rig.fake.log.wait_for("chat.postMessage", to(dm_channel(OWNER)))
    [approval] = await rig.pending()
    return approval
