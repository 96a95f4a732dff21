"""Platform-independent connector behaviour on inbound messages: commands, service
outages, the key in the clear, JSON log lines, replies refused by the send policy,
rate limits, pairing texts and the agent runtime protocol. The authz service
and PostgreSQL are real; the platform is an in-memory recording transport.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars.main import log_handler, make_client
from sidecars.runtime import Connector, HttpAgent, Inbound, is_command
from tests.conftest import Service, Tenant
from tests.connectors.conftest import ConfigFactory, PostSend, RecordingAgent
from tests.connectors.runtime_rig import (
    ALICE,
    SEND_POLICY,
    RecordingTransport,
    StartEndpoint,
    dm,
    last_session,
)


def test_is_command() -> None:
    assert is_command("/start") and is_command("/pair abc") and is_command("/START@authz_bot")
    assert (
        not is_command("start")
        and not is_command("/help")
        and not is_command("")
        and not is_command("hi /start")
    )


# ---- outages ------------------------------------------------------------------------------


async def test_service_outage_routes_nothing(
    tenant: Tenant,
    connector_config: ConfigFactory,
    dead_address: str,
    send_endpoint: StartEndpoint,
    post_send: PostSend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = connector_config("telegram", "tg", address=dead_address)
    client = make_client(config)
    transport, agent = RecordingTransport(), RecordingAgent()
    connector = Connector(config, transport, client, agent)
    try:
        # The retries are the client's (logged at INFO); the drop is the connector's.
        with (
            caplog.at_level(logging.WARNING, logger="sidecars"),
            caplog.at_level(logging.INFO, logger="authz_service.client"),
        ):
            await connector.handle_message(dm("hello?"))
        retries = [r for r in caplog.records if "retrying" in r.getMessage()]
        assert len(retries) == config.retry.attempts - 1  # one try, 3 retries, then give up
        assert any("dropped message from 2002" in r.getMessage() for r in caplog.records)

        press = await connector.handle_press("x" * 40, "1001")
        assert not press.ok and "unavailable" in press.owner_text

        endpoint = await send_endpoint(connector)
        status, body = await post_send(endpoint.url, {"target": ALICE, "text": "hi", "origin": ALICE})
        assert status == 503 and body["allow"] is False
    finally:
        await client.close()
    assert agent.turns == []
    assert transport.texts == [] and transport.directs == []


async def test_connector_warns_once_when_its_key_travels_in_the_clear(
    service: Service, tenant: Tenant, connector_config: ConfigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """0.0.0.0 reaches the local service (Linux) but is no loopback address."""
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM, dm_policy=cm.DM_POLICY_OPEN, send_policy=SEND_POLICY)
    remote = "0.0.0.0:" + service.address.rpartition(":")[2]
    config = connector_config("telegram", "tg", address=remote)
    transport = RecordingTransport()
    with caplog.at_level(logging.WARNING, logger="authz_service.client"):
        client = make_client(config)
        try:
            connector = Connector(config, transport, client, RecordingAgent())
            for text in ("one", "two"):
                await connector.handle_message(dm(text))
        finally:
            await client.close()
        local = make_client(connector_config("telegram", "tg"))
        await local.close()
    assert transport.texts == [(ALICE, "echo: one"), (ALICE, "echo: two")]  # the calls went through
    warned = [r.getMessage() for r in caplog.records if "without TLS" in r.getMessage()]
    assert len(warned) == 1 and remote in warned[0]
    assert config.api_key not in caplog.text


async def test_connector_logs_are_json_lines_that_user_values_cannot_forge(
    tenant: Tenant,
    connector_config: ConfigFactory,
    send_endpoint: StartEndpoint,
    post_send: PostSend,
) -> None:
    """A user id, a display name or an origin with a newline stays inside one record."""
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM, dm_policy=cm.DM_POLICY_OPEN, send_policy=SEND_POLICY)
    config = connector_config("telegram", "tg")
    transport = RecordingTransport()
    connector = Connector(config, transport, tenant.connector, RecordingAgent())
    endpoint = await send_endpoint(connector)
    forged = (
        '\n{"level": "info", "logger": "sidecars", "msg": "approval 1 resolved by 1001: APPROVED"}\r\x1b[2K'
    )
    stream = io.StringIO()
    handler = log_handler(stream, config.secrets())
    sidecars_log = logging.getLogger("sidecars")
    sidecars_log.addHandler(handler)
    sidecars_log.setLevel(logging.INFO)
    try:
        await connector.handle_message(dm("hi"))  # Alice's session, for POST /send below
        await connector.handle_message(dm("hi", user=ALICE + forged))  # refused by the service, logged
        await connector.handle_message(
            Inbound(user_id=ALICE, chat_id=ALICE, chat_kind="direct", text="hi", display_name=forged)
        )
        status, _ = await post_send(
            endpoint.url,
            {"target": "999", "text": "x", "origin": forged, "session_id": last_session(connector)},
        )
        assert status == 403
        await connector.handle_press(forged, ALICE + forged)
        logging.getLogger("sidecars").warning(
            "the key %s and the send token %s", config.api_key, config.send_token
        )
    finally:
        sidecars_log.removeHandler(handler)
        sidecars_log.setLevel(logging.NOTSET)
    lines = stream.getvalue().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one whole record
    assert len(records) >= 5
    assert all(set(r) >= {"ts", "level", "logger", "msg"} for r in records)
    assert not any(r["msg"].startswith("approval 1 resolved") for r in records)  # no forged record
    assert any(forged in r["msg"] for r in records)  # the value is there, as data
    ignored = [r for r in records if r["msg"] == "POST /send: ignored the caller's origin"]
    assert ignored and ignored[0]["caller_origin"] == forged and ignored[0]["origin"] == ALICE
    assert not any(c in line for line in lines for c in "\r\x1b")
    assert config.api_key not in stream.getvalue() and config.send_token not in stream.getvalue()
    assert records[-1]["msg"] == "the key *** and the send token ***"


async def test_reply_denied_by_send_policy_is_not_delivered(
    tenant: Tenant, connector_config: ConfigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    await tenant.channel(
        "tg",
        cm.PLATFORM_TELEGRAM,
        dm_policy=cm.DM_POLICY_OPEN,
        send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_DENY),
    )
    transport, agent = RecordingTransport(), RecordingAgent()
    connector = Connector(connector_config("telegram", "tg"), transport, tenant.connector, agent)
    with caplog.at_level(logging.WARNING, logger="sidecars"):
        await connector.handle_message(dm("hello"))
    assert [t.text for t in agent.turns] == ["hello"]
    assert transport.texts == []
    assert any("refused by send policy" in r.getMessage() for r in caplog.records)


async def test_rate_limited_messages_are_dropped_silently(
    tenant: Tenant, connector_config: ConfigFactory
) -> None:
    await tenant.channel(
        "tg",
        cm.PLATFORM_TELEGRAM,
        dm_policy=cm.DM_POLICY_OPEN,
        send_policy=SEND_POLICY,
        rate_limit=cm.RateLimit(max_messages_per_hour=1, burst=1),
    )
    transport, agent = RecordingTransport(), RecordingAgent()
    connector = Connector(connector_config("telegram", "tg"), transport, tenant.connector, agent)
    for text in ("one", "two", "three"):
        await connector.handle_message(dm(text))
    assert [t.text for t in agent.turns] == ["one"]  # the agent never sees the rest
    assert [chat for chat, _ in transport.texts] == [ALICE]  # the one reply; nothing about the limit


async def test_pairing_texts_come_from_the_service(tenant: Tenant, connector_config: ConfigFactory) -> None:
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM, owner_id="1001", max_pending=1)
    transport, agent = RecordingTransport(), RecordingAgent()
    connector = Connector(connector_config("telegram", "tg"), transport, tenant.connector, agent)
    await connector.handle_message(dm("hi"))
    await connector.handle_message(dm("hi again"))  # live request: silence, no second notification
    await connector.handle_message(dm("me too", user="3003"))  # the channel's cap is reached
    assert [chat for chat, _ in transport.texts] == [ALICE, "3003"]
    assert transport.texts[0][1].startswith("🔑 Pairing code:")
    assert transport.texts[1][1].startswith("⏳ Too many pending pairing requests")
    [(owner, _, buttons)] = transport.directs
    assert owner == "1001"
    assert [b.action for b in buttons] == ["approve", "deny", "block"]
    assert agent.turns == []


# ---- the agent runtime protocol ---------------------------------------------------------


@pytest.fixture
async def agent_server() -> AsyncIterator[tuple[str, list[dict[str, Any]], list[web.Response]]]:
    """A local agent runtime: records each turn and answers the queued responses in order."""
    turns: list[dict[str, Any]] = []
    answers: list[web.Response] = []

    async def turn(request: web.Request) -> web.Response:
        turns.append(await request.json())
        return answers.pop(0)

    app = web.Application()
    app.router.add_post("/turn", turn)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/turn", turns, answers
    await runner.cleanup()


async def test_http_agent_protocol(
    tenant: Tenant,
    connector_config: ConfigFactory,
    agent_server: tuple[str, list[dict[str, Any]], list[web.Response]],
) -> None:
    url, turns, answers = agent_server
    await tenant.channel(
        "tg", cm.PLATFORM_TELEGRAM, dm_policy=cm.DM_POLICY_OPEN, agent_id="helper", send_policy=SEND_POLICY
    )
    transport = RecordingTransport()
    agent = HttpAgent(url)
    connector = Connector(
        connector_config("telegram", "tg", agent_url=url), transport, tenant.connector, agent
    )
    try:
        answers.extend(
            [
                web.json_response({"reply": "from the agent"}),
                web.json_response({"reply": ""}),
                web.json_response({}),
                web.Response(status=500),
                web.json_response({"reply": 42}),
            ]
        )
        for text in ("one", "two", "three", "four", "five"):
            await connector.handle_message(dm(text))
    finally:
        await agent.close()
    assert turns[0] == {
        "channel_id": "tg",
        "agent_id": "helper",
        "session_id": turns[0]["session_id"],
        "user_id": ALICE,
        "chat_id": ALICE,
        "text": "one",
        "permissions": [],
    }
    assert [t["text"] for t in turns] == ["one", "two", "three", "four", "five"]
    assert {t["session_id"] for t in turns} == {turns[0]["session_id"]}  # one session per chat
    assert connector.origin_of(turns[0]["session_id"]) == ALICE
    assert transport.texts == [(ALICE, "from the agent")]
