"""Platform-independent connector behaviour: configuration errors, the send
endpoint, the agent runtime protocol and service outages. The authz service
and PostgreSQL are real; the platform is an in-memory recording transport.
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars.config import ConfigError, load_config
from sidecars.http import SendEndpoint, is_loopback_host, start_send_endpoint
from sidecars.main import log_handler, make_client
from sidecars.runtime import ButtonSpec, Connector, HttpAgent, Inbound, is_command
from tests.conftest import Service, Tenant
from tests.connectors.conftest import SEND_TOKEN, ConfigFactory, PostSend, RecordingAgent

ALICE = "2002"
GUESSED = f"telegram:{ALICE}"  # what a session id used to be: the chat's name, anyone could guess it
SEND_POLICY = cm.SendPolicy(default=cm.SEND_DEFAULT_DENY, allow=["origin", "ops"])
StartEndpoint = Callable[[Connector], Awaitable[SendEndpoint]]


class RecordingTransport:
    platform = "telegram"

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.texts: list[tuple[str, str]] = []
        self.directs: list[tuple[str, str, tuple[ButtonSpec, ...]]] = []

    async def send_text(self, chat_id: str, text: str) -> None:
        if self.fail:
            raise RuntimeError("platform said no")
        self.texts.append((chat_id, text))

    async def send_direct(self, user_id: str, text: str, buttons: Sequence[ButtonSpec] = ()) -> None:
        self.directs.append((user_id, text, tuple(buttons)))


def dm(text: str, user: str = ALICE) -> Inbound:
    return Inbound(user_id=user, chat_id=user, chat_kind="direct", text=text)


# ---- configuration -------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "connector.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_config_from_file_and_env(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("azk.file-key\n")
    path = write(
        tmp_path,
        f"platform: telegram\nchannel_id: tg\napi_key_file: {key_file}\nagent_url: http://127.0.0.1:9000/turn\n"
        "send_listen: 127.0.0.1:9999\ntelegram:\n  base_url: http://127.0.0.1:8081/bot\n",
    )
    config = load_config(
        path, "telegram", {"TELEGRAM_BOT_TOKEN": "123:secret-token", "AUTHZ_ADDRESS": "svc:50051"}
    )
    assert (config.channel_id, config.address, config.api_key) == ("tg", "svc:50051", "azk.file-key")
    assert (config.agent_url, config.agent_id, config.send_listen) == (
        "http://127.0.0.1:9000/turn",
        "default",
        "127.0.0.1:9999",
    )
    assert config.telegram is not None and config.telegram.token == "123:secret-token"
    assert config.telegram.base_url == "http://127.0.0.1:8081/bot"
    assert config.slack is None and config.discord is None
    assert "secret-token" not in repr(config) and "file-key" not in repr(config)

    (tmp_path / "relative.key").write_text("azk.relative")
    relative = write(tmp_path, "channel_id: tg\napi_key_file: relative.key\n", "relative.yaml")
    assert load_config(relative, "telegram", {"TELEGRAM_BOT_TOKEN": "t"}).api_key == "azk.relative"

    env_key = load_config(path, "telegram", {"TELEGRAM_BOT_TOKEN": "t", "AUTHZ_CONNECTOR_API_KEY": "azk.env"})
    assert env_key.api_key == "azk.env"
    assert env_key.address == "127.0.0.1:50051"


def test_config_platform_sections(tmp_path: Path) -> None:
    path = write(
        tmp_path, "channel_id: c\nslack:\n  bot_token: xoxb-1\n  listen: 0.0.0.0:3000\ndiscord: {}\n"
    )
    env = {"AUTHZ_CONNECTOR_API_KEY": "k", "SLACK_SIGNING_SECRET": "s", "DISCORD_BOT_TOKEN": "d"}
    slack = load_config(path, "slack", env).slack
    assert slack is not None and (slack.bot_token, slack.signing_secret, slack.listen) == (
        "xoxb-1",
        "s",
        "0.0.0.0:3000",
    )
    assert slack.lookup_email is False  # off unless asked for
    lookup = write(tmp_path, "channel_id: c\nslack:\n  lookup_email: true\n", "lookup.yaml")
    slack = load_config(lookup, "slack", {**env, "SLACK_BOT_TOKEN": "b"}).slack
    assert slack is not None and slack.lookup_email is True
    discord = load_config(path, "discord", env).discord
    assert discord is not None and discord.token == "d"


@pytest.mark.parametrize(
    ("text", "platform", "env", "message"),
    [
        ("telegram: {token: t}\n", "telegram", {"AUTHZ_CONNECTOR_API_KEY": "k"}, "channel_id: required"),
        ("channel_id: tg\ntelegram: {token: t}\n", "telegram", {}, "api_key_file: required"),
        (
            "channel_id: tg\napi_key_file: /nonexistent/key\n",
            "telegram",
            {"TELEGRAM_BOT_TOKEN": "t"},
            "api_key_file: cannot read",
        ),
        (
            "channel_id: tg\n",
            "telegram",
            {"AUTHZ_CONNECTOR_API_KEY": "k"},
            "telegram.token: required (or set TELEGRAM_BOT_TOKEN)",
        ),
        (
            "channel_id: c\nslack: {bot_token: b}\n",
            "slack",
            {"AUTHZ_CONNECTOR_API_KEY": "k"},
            "slack.signing_secret: required (or set SLACK_SIGNING_SECRET)",
        ),
        (
            "channel_id: c\n",
            "discord",
            {"AUTHZ_CONNECTOR_API_KEY": "k"},
            "discord.token: required (or set DISCORD_BOT_TOKEN)",
        ),
        (
            "channel_id: c\nslack: {bot_token: b, signing_secret: s, lookup_email: 'yes'}\n",
            "slack",
            {"AUTHZ_CONNECTOR_API_KEY": "k"},
            "slack.lookup_email: must be true or false",
        ),
        ("chanel_id: tg\n", "telegram", {}, "chanel_id: unknown key"),
        ("channel_id: tg\ntelegram: {tokn: t}\n", "telegram", {}, "telegram.tokn: unknown key"),
        ("platform: slack\nchannel_id: tg\n", "telegram", {}, "platform: the file says 'slack'"),
        (
            "channel_id: tg\nagent_url: ftp://x\n",
            "telegram",
            {},
            "agent_url: must be 'echo' or an http(s) URL",
        ),
        ("channel_id: tg\nsend_listen: '8787'\n", "telegram", {}, "send_listen: must be host:port"),
        ("channel_id: [a, b]\n", "telegram", {}, "channel_id: must be a string"),
        ("- a\n", "telegram", {}, "must be a mapping"),
        ("channel_id: [\n", "telegram", {}, "not valid YAML"),
        ("channel_id: tg\n", "signal", {}, "platform: must be one of telegram, slack, discord, whatsapp"),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, text: str, platform: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), platform, env)
    assert message in str(err.value)


def test_send_token_is_generated_once_owner_only(tmp_path: Path) -> None:
    path = write(tmp_path, "channel_id: tg\n", "bot.yaml")
    env = {"AUTHZ_CONNECTOR_API_KEY": "k", "TELEGRAM_BOT_TOKEN": "t"}
    token_file = tmp_path / "bot.send-token"
    assert not token_file.exists()
    first = load_config(path, "telegram", env)
    assert token_file.read_text().strip() == first.send_token and len(first.send_token) >= 43
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert first.send_token not in repr(first) and first.send_token in first.secrets()
    assert load_config(path, "telegram", env).send_token == first.send_token  # kept across restarts
    other = write(tmp_path, "channel_id: tg2\n", "other.yaml")  # a second connector: its own token
    assert load_config(other, "telegram", env).send_token != first.send_token

    mine = "m" * 40
    named = write(tmp_path, "channel_id: tg\nsend_token_file: secret/send.token\n", "named.yaml")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "send.token").write_text(mine + "\n")
    (tmp_path / "secret" / "send.token").chmod(0o600)
    assert load_config(named, "telegram", env).send_token == mine
    assert (
        load_config(named, "telegram", {**env, "AUTHZ_CONNECTOR_SEND_TOKEN": "e" * 32}).send_token == "e" * 32
    )


@pytest.mark.parametrize(
    ("content", "mode", "env_token", "message"),
    [
        ("x" * 40, 0o644, "", "send_token_file: bot.send-token is accessible by other users"),
        ("x" * 40, 0o620, "", "is accessible by other users"),
        (
            "short",
            0o600,
            "",
            "send_token_file: bot.send-token: the send token must be at least 32 characters",
        ),
        ("", 0o600, "", "the send token must be at least 32 characters"),
        (None, None, "too-short", "AUTHZ_CONNECTOR_SEND_TOKEN: the send token must be at least 32"),
        (None, None, "a b" * 20, "the send token must be printable ASCII without spaces"),
    ],
)
def test_send_token_refused(
    tmp_path: Path, content: str | None, mode: int | None, env_token: str, message: str
) -> None:
    path = write(tmp_path, "channel_id: tg\n", "bot.yaml")
    if content is not None and mode is not None:
        token_file = tmp_path / "bot.send-token"
        token_file.write_text(content)
        os.chmod(token_file, mode)
    env = {"AUTHZ_CONNECTOR_API_KEY": "k", "TELEGRAM_BOT_TOKEN": "t", "AUTHZ_CONNECTOR_SEND_TOKEN": env_token}
    with pytest.raises(ConfigError) as err:
        load_config(path, "telegram", env)
    assert message in str(err.value)


def test_broken_config_leaves_no_token_file(tmp_path: Path) -> None:
    path = write(tmp_path, "channel_id: tg\n", "bot.yaml")
    with pytest.raises(ConfigError):
        load_config(path, "telegram", {"AUTHZ_CONNECTOR_API_KEY": "k"})  # no bot token
    assert not (tmp_path / "bot.send-token").exists()


def test_cli_config_error_exits_2_without_leaking_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, "telegram:\n  token: 123:very-secret\n")
    cli = Path(sys.executable).parent / "authz-connector"
    done = subprocess.run(
        [str(cli), "telegram", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"AUTHZ_CONNECTOR_API_KEY": "azk.also-secret", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 2
    assert "configuration error: channel_id: required" in done.stderr
    assert "very-secret" not in done.stderr + done.stdout
    assert "also-secret" not in done.stderr + done.stdout


def test_is_command() -> None:
    assert is_command("/start") and is_command("/pair abc") and is_command("/START@authz_bot")
    assert (
        not is_command("start")
        and not is_command("/help")
        and not is_command("")
        and not is_command("hi /start")
    )


# ---- the send endpoint ------------------------------------------------------------------


async def make_connector(
    tenant: Tenant, connector_config: ConfigFactory, transport: RecordingTransport, **overrides: Any
) -> Connector:
    config = connector_config("telegram", "tg", **overrides)
    return Connector(config, transport, tenant.connector, RecordingAgent())


def last_session(connector: Connector) -> str:
    """The session id the agent was handed with its latest turn."""
    agent = connector.agent
    assert isinstance(agent, RecordingAgent)
    return agent.turns[-1].session_id


async def test_send_endpoint_gates_every_message(
    tenant: Tenant, connector_config: ConfigFactory, send_endpoint: StartEndpoint, post_send: PostSend
) -> None:
    await tenant.channel(
        "tg",
        cm.PLATFORM_TELEGRAM,
        dm_policy=cm.DM_POLICY_OPEN,
        send_policy=SEND_POLICY,
        aliases={"ops": "-100777"},
    )
    transport = RecordingTransport()
    connector = await make_connector(tenant, connector_config, transport)
    endpoint = await send_endpoint(connector)
    await connector.handle_message(dm("hello"))  # Alice's session now has her chat as its origin
    assert transport.texts == [(ALICE, "echo: hello")]
    session = last_session(connector)

    status, body = await post_send(endpoint.url, {"target": "999", "text": "leak", "session_id": session})
    assert status == 403 and body["allow"] is False
    assert body["reason"].startswith("Failed to send to 999")
    assert len(transport.texts) == 1

    status, body = await post_send(endpoint.url, {"target": ALICE, "text": "hi", "session_id": session})
    assert (status, body) == (200, {"allow": True, "resolved_target": ALICE})
    status, body = await post_send(endpoint.url, {"target": "ops", "text": "deploy done"})
    assert (status, body) == (200, {"allow": True, "resolved_target": "-100777"})
    assert transport.texts[1:] == [(ALICE, "hi"), ("-100777", "deploy done")]

    status, body = await post_send(endpoint.url, {"target": ALICE, "text": "no session"})
    assert status == 403  # "origin" only matches the chat of a session this connector handed out
    assert len(transport.texts) == 3


async def test_send_endpoint_takes_the_origin_from_the_session(
    tenant: Tenant,
    connector_config: ConfigFactory,
    send_endpoint: StartEndpoint,
    post_send: PostSend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The caller's "origin" is ignored: a forged one cannot make a denied target the origin."""
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM, dm_policy=cm.DM_POLICY_OPEN, send_policy=SEND_POLICY)
    transport = RecordingTransport()
    connector = await make_connector(tenant, connector_config, transport)
    endpoint = await send_endpoint(connector)
    await connector.handle_message(dm("hello"))
    delivered = [(ALICE, "echo: hello")]
    assert transport.texts == delivered
    session = last_session(connector)

    with caplog.at_level(logging.INFO, logger="sidecars"):
        for request in (
            {"target": "999", "text": "secret", "origin": "999"},
            {"target": "999", "text": "secret", "origin": "999", "session_id": session},
            {"target": "999", "text": "secret", "origin": "999", "session_id": "telegram:999"},
            {"target": "origin", "text": "secret", "origin": "999", "session_id": "telegram:999"},
        ):
            status, body = await post_send(endpoint.url, request)
            assert status == 403 and body["allow"] is False, request
            assert body["reason"].startswith(f"Failed to send to {request['target']}:"), request
    assert transport.texts == delivered
    ignored = [r.getMessage() for r in caplog.records if "ignored the caller's origin" in r.getMessage()]
    assert len(ignored) == 4
    # Never the message text, nor the session id (a capability to speak as that chat).
    assert not any("secret" in r.getMessage() or session in r.getMessage() for r in caplog.records)

    # The session's own chat is the origin, by the token or by its id, whatever "origin" says.
    for target, origin in (("origin", ""), ("origin", "999"), (ALICE, "")):
        status, body = await post_send(
            endpoint.url, {"target": target, "text": "later", "origin": origin, "session_id": session}
        )
        assert (status, body) == (200, {"allow": True, "resolved_target": ALICE}), target
    assert transport.texts == delivered + [(ALICE, "later")] * 3


@pytest.mark.parametrize(
    "session",
    [
        pytest.param("", id="no-session"),
        pytest.param("telegram:3003", id="unknown-session"),
        pytest.param(GUESSED, id="guessed-session"),  # Alice's chat has a session; this is not its id
    ],
)
async def test_send_to_origin_without_a_known_session_is_refused(
    tenant: Tenant,
    connector_config: ConfigFactory,
    send_endpoint: StartEndpoint,
    post_send: PostSend,
    session: str,
) -> None:
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM, dm_policy=cm.DM_POLICY_OPEN, send_policy=SEND_POLICY)
    transport = RecordingTransport()
    connector = await make_connector(tenant, connector_config, transport)
    endpoint = await send_endpoint(connector)
    await connector.handle_message(dm("hello"))  # another chat's session is known; not this one

    status, body = await post_send(endpoint.url, {"target": "origin", "text": "hi", "session_id": session})
    assert status == 403 and body["allow"] is False
    assert body["reason"].startswith("Failed to send to origin:")
    assert transport.texts == [(ALICE, "echo: hello")]


async def test_sessions_are_bounded_and_forgotten_oldest_first(
    tenant: Tenant, connector_config: ConfigFactory, send_endpoint: StartEndpoint, post_send: PostSend
) -> None:
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM, dm_policy=cm.DM_POLICY_OPEN, send_policy=SEND_POLICY)
    transport = RecordingTransport()
    connector = Connector(
        connector_config("telegram", "tg"), transport, tenant.connector, RecordingAgent(), max_sessions=2
    )
    endpoint = await send_endpoint(connector)
    sessions: dict[str, str] = {}
    for user in (ALICE, "3003", ALICE, "4004"):  # Alice wrote again: 3003 is the least recent
        await connector.handle_message(dm("hello", user=user))
        assert sessions.setdefault(user, last_session(connector)) == last_session(connector)
    await connector.handle_message(dm("/start", user="5005"))  # not handed to the agent: no session
    assert len(connector.agent.turns) == 4  # type: ignore[attr-defined]
    assert len(set(sessions.values())) == 3  # one per chat, the same on every turn of a chat

    expected = {ALICE: 200, "3003": 403, "4004": 200, "5005": 403}
    for user, code in expected.items():
        session = sessions.get(user, f"telegram:{user}")
        status, _ = await post_send(endpoint.url, {"target": "origin", "text": "ping", "session_id": session})
        assert status == code, user
    assert [chat for chat, text in transport.texts if text == "ping"] == [ALICE, "4004"]


async def test_send_endpoint_uses_the_configured_agent(
    tenant: Tenant, connector_config: ConfigFactory, send_endpoint: StartEndpoint, post_send: PostSend
) -> None:
    await tenant.channel(
        "tg",
        cm.PLATFORM_TELEGRAM,
        send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_DENY),
        agent_send_policies={"helper": cm.SendPolicy(default=cm.SEND_DEFAULT_DENY, allow=["555"])},
    )
    transport = RecordingTransport()
    default = await send_endpoint(await make_connector(tenant, connector_config, transport))
    helper = await send_endpoint(await make_connector(tenant, connector_config, transport, agent_id="helper"))
    assert (await post_send(default.url, {"target": "555", "text": "x"}))[0] == 403
    assert (await post_send(helper.url, {"target": "555", "text": "y"}))[0] == 200
    assert transport.texts == [("555", "y")]


@pytest.mark.parametrize(
    ("payload", "raw", "reason"),
    [
        (None, "not json", "the body must be a JSON object"),
        (["target", "text"], None, "the body must be a JSON object"),
        ({"text": "hi"}, None, "'target' is required"),
        ({"target": "1", "text": "  "}, None, "'text' is required"),
        ({"target": 1, "text": "hi"}, None, "'target' must be a string"),
        ({"target": "1", "text": "hi", "origin": None}, None, "'origin' must be a string"),
        ({"target": "1" * 257, "text": "hi"}, None, "'target' is longer than 256 characters"),
    ],
)
async def test_send_endpoint_rejects_malformed_requests(
    tenant: Tenant,
    connector_config: ConfigFactory,
    send_endpoint: StartEndpoint,
    post_send: PostSend,
    payload: Any,
    raw: str | None,
    reason: str,
) -> None:
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM, send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW))
    transport = RecordingTransport()
    endpoint = await send_endpoint(await make_connector(tenant, connector_config, transport))
    assert await post_send(endpoint.url, payload, data=raw) == (400, {"allow": False, "reason": reason})
    assert transport.texts == []


async def test_send_endpoint_health_and_platform_failure(
    tenant: Tenant, connector_config: ConfigFactory, send_endpoint: StartEndpoint, post_send: PostSend
) -> None:
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM, send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW))
    endpoint = await send_endpoint(
        await make_connector(tenant, connector_config, RecordingTransport(fail=True))
    )
    status, body = await post_send(endpoint.url, {"target": "42", "text": "hi"})
    assert status == 502
    assert body == {
        "allow": True,
        "resolved_target": "42",
        "reason": "delivery to 42 failed: platform said no",
    }

    async with aiohttp.ClientSession() as session, session.get(endpoint.url + "/healthz") as resp:
        assert (resp.status, await resp.json()) == (200, {"ok": True})


async def test_send_endpoint_requires_the_bearer_token(
    tenant: Tenant, connector_config: ConfigFactory, send_endpoint: StartEndpoint, post_send: PostSend
) -> None:
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM, send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW))
    transport = RecordingTransport()
    endpoint = await send_endpoint(await make_connector(tenant, connector_config, transport))
    request = {"target": "42", "text": "hi"}
    refused = (401, {"allow": False, "reason": "a valid send token is required"})
    for authorization in (
        "",
        "Bearer",
        "Bearer ",
        f"Bearer {SEND_TOKEN[:-1]}",  # one character short
        f"Bearer {SEND_TOKEN}x",
        f"Basic {SEND_TOKEN}",
        SEND_TOKEN,
        "Bearer wrong-token-wrong-token-wrong-token",
    ):
        assert await post_send(endpoint.url, request, headers={"Authorization": authorization}) == refused
    assert transport.texts == []
    async with (
        aiohttp.ClientSession() as session,
        session.post(endpoint.url + "/send", json=request) as resp,  # no Authorization at all
    ):
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    assert transport.texts == []
    assert await post_send(endpoint.url, request, headers={"Authorization": f"bearer {SEND_TOKEN}"}) == (
        200,
        {"allow": True, "resolved_target": "42"},
    )
    assert transport.texts == [("42", "hi")]


async def test_send_endpoint_refuses_what_a_browser_can_send(
    tenant: Tenant, connector_config: ConfigFactory, send_endpoint: StartEndpoint, post_send: PostSend
) -> None:
    """A web page can post cross-site to loopback (text/plain needs no preflight) and can rebind
    its own name to 127.0.0.1; none of it reaches the send policy, even with the token."""
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM, send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW))
    transport = RecordingTransport()
    endpoint = await send_endpoint(await make_connector(tenant, connector_config, transport))
    body = json.dumps({"target": "42", "text": "hi"})
    browser = {"Origin": "https://evil.example", "Content-Type": "text/plain"}
    cases: list[tuple[dict[str, str], int, str]] = [
        (browser, 403, "requests from browsers are not accepted"),
        ({"Origin": "null"}, 403, "requests from browsers are not accepted"),
        ({"Origin": f"http://127.0.0.1:{endpoint.port}"}, 403, "requests from browsers are not accepted"),
        ({"Host": f"evil.example:{endpoint.port}"}, 403, "the Host header must name a loopback address"),
        ({"Host": "127.0.0.1.nip.io"}, 403, "the Host header must name a loopback address"),
        ({"Host": "10.0.0.1"}, 403, "the Host header must name a loopback address"),
        ({"Content-Type": "text/plain"}, 415, "the body must be JSON (Content-Type: application/json)"),
        (
            {"Content-Type": "application/x-www-form-urlencoded"},
            415,
            "the body must be JSON (Content-Type: application/json)",
        ),
    ]
    for headers, status, reason in cases:
        got = await post_send(endpoint.url, data=body, headers=headers)
        assert got == (status, {"allow": False, "reason": reason}), headers
    assert transport.texts == []
    # Loopback names are the endpoint's own.
    for host in ("localhost", f"localhost:{endpoint.port}", "127.0.0.1", "127.1.2.3:80", "[::1]:8787"):
        status, _ = await post_send(endpoint.url, data=body, headers={"Host": host})
        assert status == 200, host
    assert len(transport.texts) == 5


def test_loopback_host_names() -> None:
    assert is_loopback_host("localhost:8787") and is_loopback_host("[::1]") and is_loopback_host("127.0.0.9")
    assert not is_loopback_host("localhost.evil.example") and not is_loopback_host("[::ffff:10.0.0.1]")
    assert not is_loopback_host("") and not is_loopback_host("10.0.0.1:8787")


async def test_send_endpoint_does_not_start_without_a_token(
    tenant: Tenant, connector_config: ConfigFactory
) -> None:
    connector = await make_connector(tenant, connector_config, RecordingTransport(), send_token="")
    with pytest.raises(ValueError, match="send token"):
        await start_send_endpoint(connector, "127.0.0.1:0")


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
