"""Fixtures shared by every connector test (Telegram, Slack, Discord).

- ``CallLog``: what a fake platform server received, in order; fakes call
  ``await log.record(method, params)`` and tests ``await log.wait_for(...)``
  (an asyncio wait with a timeout, never a sleep). Import it with
  ``from tests.connectors.conftest import CallLog``.
- ``RecordingAgent``: the built-in echo agent, remembering every turn, so tests
  can assert that nothing reached the agent.
- ``connector_config``: a ConnectorConfig for the test tenant (connector key,
  the session's service, fast retries, send endpoint on a free port).
- ``send_endpoint`` / ``post_send``: start the real local send endpoint for a
  Connector and call ``POST /send`` on it.
- ``dead_address``: a local address where nothing listens (service outage).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import pytest

from authz_service.client import RetryPolicy
from sidecars.config import ConnectorConfig
from sidecars.http import SendEndpoint, start_send_endpoint
from sidecars.runtime import AgentTurn, Connector, EchoAgent
from tests.conftest import Service, Tenant

FAST_RETRIES = RetryPolicy(attempts=4, initial_backoff=0.01, max_backoff=0.04)
SEND_TOKEN = "test-send-token-" + "s" * 32  # every test connector's; post_send sends it


@dataclass
class Call:
    method: str
    params: dict[str, Any]


@dataclass
class CallLog:
    """Every API call a fake platform received."""

    calls: list[Call] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def record(self, method: str, params: dict[str, Any]) -> None:
        async with self._changed:
            self.calls.append(Call(method, params))
            self._changed.notify_all()

    def of(self, method: str, where: Callable[[Call], bool] = lambda c: True) -> list[Call]:
        return [c for c in self.calls if c.method == method and where(c)]

    async def wait_for(
        self,
        method: str,
        where: Callable[[Call], bool] = lambda c: True,
        *,
        count: int = 1,
        timeout: float = 5.0,
    ) -> Call:
        """The ``count``-th call to ``method`` matching ``where``, waiting for it if needed."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.of(method, where)) >= count)
        return self.of(method, where)[count - 1]


class RecordingAgent(EchoAgent):
    """The echo agent, remembering what reached it."""

    def __init__(self) -> None:
        self.turns: list[AgentTurn] = []

    async def reply(self, turn: AgentTurn) -> str:
        self.turns.append(turn)
        return await super().reply(turn)


@pytest.fixture
def agent() -> RecordingAgent:
    return RecordingAgent()


ConfigFactory = Callable[..., ConnectorConfig]


@pytest.fixture
def connector_config(service: Service, tenant: Tenant) -> ConfigFactory:
    """``connector_config(platform, channel_id, **overrides)``; pass the platform section, e.g.
    ``telegram=TelegramSettings(token, base_url)``."""

    def make(platform: str, channel_id: str, **overrides: Any) -> ConnectorConfig:
        base = ConnectorConfig(
            platform=platform,
            channel_id=channel_id,
            api_key=tenant.keys["connector"],
            address=service.address,
            send_listen="127.0.0.1:0",
            send_token=SEND_TOKEN,
            retry=FAST_RETRIES,
        )
        return replace(base, **overrides)

    return make


@pytest.fixture
async def send_endpoint() -> AsyncIterator[Callable[[Connector], Awaitable[SendEndpoint]]]:
    """``await send_endpoint(connector)`` serves POST /send on a free port until the test ends."""
    started: list[SendEndpoint] = []

    async def start(connector: Connector) -> SendEndpoint:
        endpoint = await start_send_endpoint(connector, "127.0.0.1:0")
        started.append(endpoint)
        return endpoint

    yield start
    for endpoint in started:
        await endpoint.stop()


PostSend = Callable[..., Awaitable[tuple[int, Any]]]


@pytest.fixture
async def post_send() -> AsyncIterator[PostSend]:
    """``status, body = await post_send(endpoint.url, {"target": ..., "text": ...})``, as the
    agent runtime sends it (the bearer token, JSON); ``headers`` adds or replaces headers."""
    async with aiohttp.ClientSession() as session:

        async def post(
            url: str, payload: Any = None, *, data: str | None = None, headers: dict[str, str] | None = None
        ) -> tuple[int, Any]:
            kwargs: dict[str, Any] = {"data": data} if data is not None else {"json": payload}
            sent = {"Authorization": f"Bearer {SEND_TOKEN}", "Content-Type": "application/json"}
            async with session.post(url + "/send", headers=sent | (headers or {}), **kwargs) as resp:
                return resp.status, await resp.json()

        yield post


@pytest.fixture
def dead_address() -> str:
    """host:port with nothing listening: the authz service is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"
