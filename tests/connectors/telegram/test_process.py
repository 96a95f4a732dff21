"""The Telegram connector as it runs: a service outage, the ``authz-connector``
entry point with long polling against the fake Bot API, SIGTERM, and a rejected
bot token (never printed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars import main as sidecar_main
from sidecars import telegram as tg
from sidecars.runtime import UNAVAILABLE, Connector
from tests.conftest import Service, Tenant, eventually
from tests.connectors.conftest import ConfigFactory, RecordingAgent
from tests.connectors.fake_telegram import TOKEN, FakeTelegram, callback_update, message_update
from tests.connectors.telegram.rig import ALICE, OWNER, SEND_POLICY, Bot, alerts, telegram_config
from tests.edge_helpers import served
from tests.pgproxy import PgProxy


async def test_service_outage_drops_message(
    fake: FakeTelegram,
    tenant: Tenant,
    connector_config: ConfigFactory,
    agent: RecordingAgent,
    dead_address: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = telegram_config(connector_config, fake, address=dead_address)
    client = sidecar_main.make_client(config)
    app = tg.build_application(config.telegram)  # type: ignore[arg-type]
    await app.initialize()
    try:
        connector = Connector(config, tg.TelegramTransport(app.bot), client, agent)
        tg.install_handlers(app, connector)
        bot = Bot(fake, app, connector, agent)
        owner_message = {"message_id": 1, "date": 0, "chat": {"id": OWNER, "type": "private"}, "text": "req"}
        with (
            caplog.at_level(logging.WARNING, logger="sidecars"),
            caplog.at_level(logging.INFO, logger="authz_service.client"),
        ):
            await bot.say(ALICE, "anyone there?")
            await bot.feed(callback_update(OWNER, owner_message, "x" * 40))
    finally:
        await app.shutdown()
        await client.close()
    assert agent.turns == []
    assert fake.log.of("sendMessage") == []
    assert alerts(fake) == [UNAVAILABLE]
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == config.retry.attempts - 1  # the press is not retried
    assert any("dropped message from 2002" in r.getMessage() for r in caplog.records)


async def test_authz_connector_polls_and_replies(
    fake: FakeTelegram, tenant: Tenant, connector_config: ConfigFactory
) -> None:
    """The real entry point: serve() + telegram.run with long polling against the fake."""
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM, dm_policy=cm.DM_POLICY_OPEN, send_policy=SEND_POLICY)
    config = telegram_config(connector_config, fake)
    task = asyncio.create_task(sidecar_main.serve(config, sidecar_main.load_platform("telegram")))
    try:
        await fake.log.wait_for("getUpdates")
        fake.push_update(message_update(ALICE, "over polling"))
        await fake.log.wait_for("sendMessage", lambda c: c.params["chat_id"] == str(ALICE))
        assert fake.texts(ALICE) == ["echo: over polling"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_authz_connector_answers_repeats_from_its_edge_over_http(
    fake: FakeTelegram, tenant: Tenant, service: Service, connector_config: ConfigFactory
) -> None:
    """The real entry point with ``changes_url``: the edge's stream goes to the service's
    HTTP listener (through a proxy, to see it), and once it is up a repeat message is
    routed and answered without a call to the service; a block still stops it."""
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM, dm_policy=cm.DM_POLICY_PAIRING, send_policy=SEND_POLICY)
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id=str(ALICE)))
    assert service.running.http is not None
    proxy = PgProxy(f"postgresql://127.0.0.1:{service.running.http.port}/x")
    await proxy.start()
    config = replace(telegram_config(connector_config, fake), changes_url=f"http://127.0.0.1:{proxy.port}")
    task = asyncio.create_task(sidecar_main.serve(config, sidecar_main.load_platform("telegram")))
    sent = 0

    async def say(text: str) -> None:
        nonlocal sent
        fake.push_update(message_update(ALICE, text))
        sent += 1
        await fake.log.wait_for("sendMessage", lambda c: c.params["chat_id"] == str(ALICE), count=sent)

    try:
        await fake.log.wait_for("getUpdates")

        async def stream_up() -> bool:
            return proxy.open_links == 1

        await eventually(stream_up)

        async def answered_at_the_edge() -> bool:
            before = served(service.running)
            await say(f"hello #{sent}")
            return served(service.running) == before

        await eventually(answered_at_the_edge)  # once the edge holds both answers
        assert fake.texts(ALICE)[-1] == f"echo: hello #{sent - 1}"
        await tenant.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id=str(ALICE)))

        async def stopped() -> bool:
            before = len(fake.texts(ALICE))
            fake.push_update(message_update(ALICE, "still there?"))
            await asyncio.sleep(0.2)
            return len(fake.texts(ALICE)) == before

        await eventually(stopped)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await proxy.close()


async def test_authz_connector_process_stops_on_sigterm(
    fake: FakeTelegram, tenant: Tenant, service: Service, tmp_path: Path
) -> None:
    """The installed command starts against the fake, then exits 0 on SIGTERM."""
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM)
    config = tmp_path / "telegram.yaml"
    config.write_text(
        f"channel_id: tg\naddress: {service.address}\nsend_listen: 127.0.0.1:0\n"
        f"telegram:\n  base_url: {fake.base_url}\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "AUTHZ_CONNECTOR_API_KEY": tenant.keys["connector"],
    }
    cli = Path(sys.executable).parent / "authz-connector"
    proc = await asyncio.create_subprocess_exec(
        str(cli), "telegram", "--config", str(config), env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        await fake.log.wait_for("getUpdates", timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert TOKEN not in stderr.decode()
    assert "telegram connector running as @authz_test_bot for channel tg" in stderr.decode()


async def test_a_rejected_token_exits_1_without_printing_it(
    fake: FakeTelegram, tenant: Tenant, service: Service, tmp_path: Path
) -> None:
    """python-telegram-bot puts the rejected token in its error; the connector must not print it."""
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM)
    config = tmp_path / "telegram.yaml"
    config.write_text(
        f"channel_id: tg\naddress: {service.address}\nsend_listen: 127.0.0.1:0\n"
        f"telegram:\n  base_url: {fake.base_url}\n"
    )
    wrong = "999999:WRONG-secret-token"
    env = {
        "PATH": "/usr/bin:/bin",
        "TELEGRAM_BOT_TOKEN": wrong,
        "AUTHZ_CONNECTOR_API_KEY": tenant.keys["connector"],
    }
    cli = Path(sys.executable).parent / "authz-connector"
    proc = await asyncio.create_subprocess_exec(
        str(cli), "telegram", "--config", str(config), "--log-level", "DEBUG", env=env,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        _, stderr = await proc.communicate()
    text = stderr.decode()
    assert proc.returncode == 1, text
    assert "authz-connector: stopped: telegram.error.InvalidToken" in text
    *logged, stopped = text.splitlines()
    assert stopped.startswith("authz-connector: stopped:")
    assert logged and all(json.loads(line)["level"] for line in logged)  # the log: JSON lines
    assert wrong not in text and tenant.keys["connector"] not in text
