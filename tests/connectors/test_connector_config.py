"""The connector's configuration: the file, the environment and the send token, and
the errors that name the key at fault (without printing a secret).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sidecars.config import ConfigError, load_config

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
