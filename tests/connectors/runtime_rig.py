"""The platform-independent connector tests' rig: an in-memory recording transport in
place of a platform, direct messages from Alice, and a Connector on the real service.
Shared by test_runtime.py and test_send_endpoint.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars.http import SendEndpoint
from sidecars.runtime import ButtonSpec, Connector, Inbound
from tests.conftest import Tenant
from tests.connectors.conftest import ConfigFactory, RecordingAgent

ALICE = "2002"
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
