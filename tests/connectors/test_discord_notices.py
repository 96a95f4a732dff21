"""Every approver notified on Discord (issue #17): the notification outbox through
discord.py against the fake Discord. Each approver's copy is posted to their
DM and edited (PATCH message) on each vote and on the decision; an approver
whose DMs refuse the bot is audited; a tool call is approved from a DM; an
expiry is shown on every copy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from authz_service.client import Client
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars.config import DiscordSettings
from sidecars.discord_bot import DiscordBot, prepare
from sidecars.outbox import Outbox, follow_notifications
from sidecars.runtime import Connector, Transport
from tests.conftest import Dsns, Tenant, eventually
from tests.connectors.conftest import Call, ConfigFactory, RecordingAgent
from tests.connectors.fake_discord import FakeDiscord, SentMessage, message_create
from tests.pairing_helpers import expire_pending_and_sweep

CHANNEL = "dc"
OWNER, SECOND, USER = "210000000000000001", "210000000000000004", "210000000000000002"


@dataclass
class Bot:
    client: DiscordBot
    fake: FakeDiscord
    connector: Connector

    async def deliver(self, parse: Callable[[Any], None], payload: dict[str, Any]) -> None:
        before = asyncio.all_tasks()
        parse(payload)
        started = asyncio.all_tasks() - before
        await asyncio.wait_for(asyncio.gather(*started), 10)

    async def dm(self, user_id: str, text: str) -> None:
        event = message_create(author_id=user_id, channel_id=self.fake.dm_channel_of(user_id), content=text)
        await self.deliver(self.client._connection.parse_message_create, event)

    async def press(self, message: SentMessage, word: str, user_id: str) -> None:
        [custom_id] = [b["custom_id"] for b in message.buttons if word in b["label"]]
        event = self.fake.button_press(message, custom_id=custom_id, user_id=user_id)
        await self.deliver(self.client._connection.parse_interaction_create, event)

    async def copy_of(self, user_id: str) -> SentMessage:
        channel = self.fake.dm_channel_of(user_id)
        await self.fake.log.wait_for("createMessage", lambda c: f"/channels/{channel}/" in c.params["path"])
        [message] = [m for m in self.fake.sent_to(channel) if m.buttons]
        return message


def edit_of(fake: FakeDiscord, message: SentMessage, text: str) -> Callable[[Call], bool]:
    return lambda c: (
        f"/messages/{message.message_id}" in c.params["path"] and text in c.params.get("content", "")
    )


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    await server.start()
    monkeypatch.setattr("discord.http.Route.BASE", server.api_base)
    yield server
    await server.stop()


@pytest.fixture
async def bot(
    fake: FakeDiscord, tenant: Tenant, connector_config: ConfigFactory, agent: RecordingAgent
) -> AsyncIterator[Bot]:
    await tenant.channel(
        CHANNEL, cm.PLATFORM_DISCORD, owner_id=OWNER, approvers=[SECOND], required_approvals=2
    )
    config = connector_config("discord", CHANNEL, discord=DiscordSettings(token="test-token"))
    made: list[Outbox] = []
    connectors: list[Connector] = []

    async def start(transport: Transport) -> Connector:
        connector = Connector(config, transport, tenant.connector, agent)
        outbox = follow_notifications(connector)
        assert outbox is not None
        made.append(outbox)
        connectors.append(connector)
        return connector

    client = await prepare(config, start)
    try:
        yield Bot(client, fake, connectors[0])
    finally:
        await made[0].stop()
        await client.close()


async def test_owner_and_second_approver_complete_a_quorum_from_chat(bot: Bot, tenant: Tenant) -> None:
    await bot.dm(USER, "hello there")
    owner_copy, second_copy = await bot.copy_of(OWNER), await bot.copy_of(SECOND)
    for copy in (owner_copy, second_copy):
        assert "0 of 2 approvals" in copy.content and len(copy.buttons) == 3

    await bot.press(owner_copy, "Approve", OWNER)
    for copy in (owner_copy, second_copy):
        edit = await bot.fake.log.wait_for("editMessage", edit_of(bot.fake, copy, "1 of 2 approvals"))
        assert edit.params["components"]  # still open
    await bot.press(second_copy, "Approve", SECOND)
    for copy in (owner_copy, second_copy):
        edit = await bot.fake.log.wait_for("editMessage", edit_of(bot.fake, copy, "✅ Approved by"))
        assert edit.params["components"] == []  # buttons removed
    listed = await tenant.admin.admin.ListApprovals(adm.ListApprovalsRequest(channel_id=CHANNEL))
    assert list(listed.approvals) == []


async def test_an_approver_whose_dms_refuse_the_bot_is_audited(bot: Bot, tenant: Tenant) -> None:
    bot.fake.closed_dms.add(SECOND)
    await bot.dm(USER, "hello there")
    await bot.copy_of(OWNER)

    async def audited() -> list[adm.AuditEvent]:
        query = adm.QueryAuditRequest(event="notification.undeliverable")
        return list((await tenant.admin.admin.QueryAudit(query)).events)

    async def found() -> bool:
        return bool(await audited())

    await eventually(found)
    [event] = await audited()
    assert event.subject == SECOND and json.loads(event.details_json) == {"reason": "cannot_dm_user"}


async def test_a_tool_call_is_approved_from_a_dm_and_redeemed(
    bot: Bot, tenant: Tenant, agents: dict[str, Client]
) -> None:
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[f"discord:{OWNER}"]))
    agent = agents[tenant.tenant_id]
    args = json.dumps({"cmd": "uptime"})
    asked = await agent.authz.RequestApproval(
        az.RequestApprovalRequest(tool_name="shell", arguments_json=args, agent_id="ops", channel_id=CHANNEL)
    )
    copy = await bot.copy_of(OWNER)
    assert "Approval needed: shell" in copy.content and "uptime" in copy.content
    assert [b["label"] for b in copy.buttons] == ["✅ Approve", "❌ Deny", "♾️ Always allow"]

    await bot.press(copy, "Approve", USER)  # a stranger's press changes nothing
    listed = await tenant.admin.admin.ListApprovals(adm.ListApprovalsRequest(channel_id=CHANNEL))
    assert [a.status for a in listed.approvals] == [cm.APPROVAL_STATUS_PENDING]

    await bot.press(copy, "Approve", OWNER)
    edit = await bot.fake.log.wait_for("editMessage", edit_of(bot.fake, copy, f"Approved by discord:{OWNER}"))
    assert edit.params["components"] == []
    redeemed = await agent.authz.RedeemApproval(
        az.RedeemApprovalRequest(
            approval_id=asked.approval.approval_id, tool_name="shell", arguments_json=args
        )
    )
    assert redeemed.allow, redeemed.reason


async def test_expiry_is_shown_on_every_copy(bot: Bot, tenant: Tenant, dsns: Dsns) -> None:
    await bot.dm(USER, "hello there")
    copies = [await bot.copy_of(OWNER), await bot.copy_of(SECOND)]
    await expire_pending_and_sweep(dsns, tenant.tenant_id)
    for copy in copies:
        edit = await bot.fake.log.wait_for("editMessage", edit_of(bot.fake, copy, "⌛ Expired"))
        assert edit.params["components"] == [] and "Code:" not in edit.params["content"]
