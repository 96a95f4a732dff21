"""A connector (edge answers on by default) serving a user it has already
admitted makes no call to the service for a repeat message: neither CheckUser
nor the EvaluateSend of the reply (issue #21). Calls are counted at the service."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars.config import ConfigError, build_config
from sidecars.main import make_client
from sidecars.runtime import ButtonSpec, Connector, Inbound
from tests.conftest import Service, Tenant, eventually
from tests.connectors.conftest import ConfigFactory, RecordingAgent
from tests.edge_helpers import USER, healthy, served
from tests.pgproxy import PgProxy


class Transport:
    platform = "telegram"

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    async def send_text(self, chat_id: str, text: str) -> None:
        self.texts.append((chat_id, text))

    async def send_direct(self, user_id: str, text: str, buttons: Sequence[ButtonSpec] = ()) -> None:
        self.texts.append((user_id, text))


@pytest.mark.parametrize("stream", ["grpc", "http"])
async def test_a_repeat_message_of_an_admitted_user_makes_no_call(
    service: Service, tenant: Tenant, connector_config: ConfigFactory, stream: str
) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING)
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id=USER))
    config = connector_config("telegram", "tg")
    assert config.edge_cache  # the default
    proxy = None
    if stream == "http":  # through a proxy: what goes through it went over HTTP
        assert service.running.http is not None
        proxy = PgProxy(f"postgresql://127.0.0.1:{service.running.http.port}/x")
        await proxy.start()
        config = replace(config, changes_url=f"http://127.0.0.1:{proxy.port}")
    client = make_client(config)
    transport, agent = Transport(), RecordingAgent()
    connector = Connector(config, transport, client, agent)
    try:
        await healthy(client)
        if proxy is not None:
            assert proxy.open_links == 1
        message = Inbound(user_id=USER, chat_id=USER, chat_kind="direct", text="hello")
        await connector.handle_message(message)  # the first: asks the service
        assert len(agent.turns) == 1 and len(transport.texts) == 1
        before = served(service.running)
        for n in range(2, 5):
            await connector.handle_message(
                Inbound(user_id=USER, chat_id=USER, chat_kind="direct", text=f"#{n}")
            )
        assert len(agent.turns) == 4 and len(transport.texts) == 4  # routed and answered
        assert served(service.running) == before  # no CheckUser, no EvaluateSend

        # A block made anywhere stops the user here too.
        await tenant.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id=USER))

        async def stopped() -> bool:
            turns = len(agent.turns)
            await connector.handle_message(
                Inbound(user_id=USER, chat_id=USER, chat_kind="direct", text="again")
            )
            return len(agent.turns) == turns

        await eventually(stopped)
    finally:
        await client.close()
        if proxy is not None:
            await proxy.close()


def test_edge_cache_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("azk.t.k.s.c\n")
    base = {"channel_id": "tg", "api_key_file": "key", "telegram": {"token": "123:abc"}}
    assert build_config(base, "telegram", {}, tmp_path).edge_cache
    assert not build_config({**base, "edge_cache": False}, "telegram", {}, tmp_path).edge_cache
    with pytest.raises(ConfigError, match="edge_cache: must be true or false"):
        build_config({**base, "edge_cache": "no"}, "telegram", {}, tmp_path)


def test_changes_url_from_the_file_or_the_environment(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("azk.t.k.s.c\n")
    base = {"channel_id": "tg", "api_key_file": "key", "telegram": {"token": "123:abc"}}
    assert build_config(base, "telegram", {}, tmp_path).changes_url == ""  # gRPC, the default
    url = "https://authz.example:8081"
    assert build_config({**base, "changes_url": url}, "telegram", {}, tmp_path).changes_url == url
    env = {"AUTHZ_CHANGES_URL": "http://authz:8081"}
    assert (
        build_config({**base, "changes_url": url}, "telegram", env, tmp_path).changes_url
        == "http://authz:8081"
    )
    with pytest.raises(ConfigError, match=r"changes_url \(AUTHZ_CHANGES_URL\): change stream URL must be"):
        build_config({**base, "changes_url": "authz:8081"}, "telegram", {}, tmp_path)
    with pytest.raises(ConfigError, match="no query, fragment or credentials"):
        build_config(base, "telegram", {"AUTHZ_CHANGES_URL": "http://u:p@authz:8081"}, tmp_path)


def test_an_http_changes_url_beside_tls_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "key").write_text("azk.t.k.s.c\n")
    base = {"channel_id": "tg", "api_key_file": "key", "telegram": {"token": "123:abc"}}
    config = build_config({**base, "changes_url": "http://authz:8081"}, "telegram", {}, tmp_path)
    monkeypatch.setenv("AUTHZ_TLS", "1")
    with pytest.raises(ConfigError, match="changes_url must be https:// when the client uses TLS"):
        make_client(config)
