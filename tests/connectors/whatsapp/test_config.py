"""The WhatsApp section of the connector config: secrets from the environment,
files or the file itself, errors naming the key, and secrets kept out of logs."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from sidecars.config import ConfigError, load_config
from sidecars.main import log_handler
from sidecars.whatsapp import notify_template

ROOT = Path(__file__).resolve().parents[3]
ENV = {
    "AUTHZ_CONNECTOR_API_KEY": "azk.test",
    "WHATSAPP_ACCESS_TOKEN": "EAAG-env-token",
    "WHATSAPP_APP_SECRET": "env-app-secret",
    "WHATSAPP_VERIFY_TOKEN": "env-verify-token",
}


def write(tmp_path: Path, text: str, name: str = "wa.yaml") -> Path:
    path = tmp_path / name
    path.write_text("channel_id: wa\nsend_token_file: wa.send-token\n" + text, encoding="utf-8")
    return path


def test_the_example_loads_with_secrets_from_the_environment(tmp_path: Path) -> None:
    example = tmp_path / "whatsapp.yaml"
    example.write_text((ROOT / "examples/connectors/whatsapp.yaml").read_text(encoding="utf-8"))
    config = load_config(example, "whatsapp", ENV)
    wa = config.whatsapp
    assert wa is not None
    assert (wa.phone_number_id, wa.listen, wa.notify_template) == ("106540352242922", "127.0.0.1:3001", "")
    assert (wa.access_token, wa.app_secret, wa.verify_token) == (
        "EAAG-env-token",
        "env-app-secret",
        "env-verify-token",
    )
    for secret in (wa.access_token, wa.app_secret, wa.verify_token):
        assert secret in config.secrets()
        assert secret not in repr(config)


def test_secrets_from_files_next_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("EAAG-file-token\n")
    (tmp_path / "secret").write_text("file-app-secret\n")
    path = write(
        tmp_path,
        "api_key_file: key\n"
        "whatsapp:\n  phone_number_id: 123\n  access_token_file: token\n  app_secret_file: secret\n"
        "  verify_token: inline-verify\n  notify_template: authz_pairing\n  notify_template_language: pt_BR\n",
    )
    (tmp_path / "key").write_text("azk.file")
    wa = load_config(path, "whatsapp", {}).whatsapp
    assert wa is not None
    assert (wa.phone_number_id, wa.access_token, wa.app_secret, wa.verify_token) == (
        "123",
        "EAAG-file-token",
        "file-app-secret",
        "inline-verify",
    )
    template = notify_template(wa)
    assert template is not None and (template.name, template.language.value) == ("authz_pairing", "pt_BR")
    # The environment wins over the file.
    assert load_config(path, "whatsapp", ENV).whatsapp.access_token == "EAAG-env-token"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("section", "env", "expected"),
    [
        ("", {}, "whatsapp.phone_number_id: required"),
        ("  phone_number_id: '+1555'\n", {}, "whatsapp.phone_number_id"),
        ("  phone_number_id: 1\n", {}, "whatsapp.access_token: required"),
        ("  phone_number_id: 1\n", {"WHATSAPP_ACCESS_TOKEN": "t"}, "whatsapp.app_secret: required"),
        (
            "  phone_number_id: 1\n  verify_token_file: missing\n",
            ENV | {"WHATSAPP_VERIFY_TOKEN": ""},
            "whatsapp.verify_token_file: cannot read missing",
        ),
        ("  phone_number_id: 1\n  listen: nowhere\n", ENV, "whatsapp.listen"),
        ("  phone_number_id: 1\n  base_url: ftp://x\n", ENV, "whatsapp.base_url"),
        (
            "  phone_number_id: 1\n  notify_template_language: English\n",
            ENV,
            "whatsapp.notify_template_language",
        ),
        ("  phone_number_id: 1\n  token: x\n", ENV, "whatsapp.token: unknown key"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, section: str, env: dict[str, str], expected: str) -> None:
    path = write(tmp_path, "api_key_file: key\nwhatsapp:\n" + section if section else "api_key_file: key\n")
    (tmp_path / "key").write_text("azk.file")
    with pytest.raises(ConfigError) as caught:
        load_config(path, "whatsapp", env)
    assert str(caught.value).startswith(expected), str(caught.value)
    for secret in ENV.values():
        assert secret not in str(caught.value)


def test_an_unknown_template_language_is_refused_at_start(tmp_path: Path) -> None:
    path = write(
        tmp_path, "whatsapp:\n  phone_number_id: 1\n  notify_template: t\n  notify_template_language: xx_YY\n"
    )
    wa = load_config(path, "whatsapp", ENV).whatsapp
    assert wa is not None
    with pytest.raises(ConfigError, match="notify_template_language"):
        notify_template(wa)


def test_the_log_handler_scrubs_every_whatsapp_secret(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "whatsapp:\n  phone_number_id: 1\n"), "whatsapp", ENV)
    stream = io.StringIO()
    logger = logging.getLogger("test.whatsapp.scrub")
    logger.propagate = False
    logger.addHandler(log_handler(stream, config.secrets()))
    try:
        logger.error("token EAAG-env-token, secret %s, verify %r", "env-app-secret", "env-verify-token")
    finally:
        logger.handlers.clear()
    written = stream.getvalue()
    assert "***" in written
    for secret in ENV.values():
        if secret != "azk.test":
            assert secret not in written
