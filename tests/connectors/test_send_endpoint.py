"""The connector's send endpoint (POST /send): every message gated by the send policy,
the origin taken from the agent's session, sessions bounded, malformed requests,
the bearer token and what a browser can send. The authz service and PostgreSQL
are real; the platform is an in-memory recording transport.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import pytest

from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars.http import is_loopback_host, start_send_endpoint
from sidecars.runtime import Connector
from tests.conftest import Tenant
from tests.connectors.conftest import SEND_TOKEN, ConfigFactory, PostSend, RecordingAgent
from tests.connectors.runtime_rig import (
    ALICE,
    SEND_POLICY,
    RecordingTransport,
    StartEndpoint,
    dm,
    last_session,
    make_connector,
)

GUESSED = f"telegram:{ALICE}"  # what a session id used to be: the chat's name, anyone could guess it


# ---- the send endpoint ------------------------------------------------------------------


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
