"""Connector configuration: one YAML file plus environment overrides.

Secrets (the authz API key, platform tokens) may come from the environment so
that the file can be committed; they are kept out of ``repr`` so a logged
config never leaks them. Anything required but missing, unknown or malformed
raises :class:`ConfigError` naming the key: the connector refuses to start
rather than guess (fail closed).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from authz_service.client import RetryPolicy
from authz_service.client.changes_http import check_url

log = logging.getLogger("sidecars")

PLATFORMS = ("telegram", "slack", "discord", "whatsapp")
DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_SEND_LISTEN = "127.0.0.1:8787"
DEFAULT_SLACK_LISTEN = "127.0.0.1:3000"
DEFAULT_WHATSAPP_LISTEN = "127.0.0.1:3001"
# One try, then up to three more about 0.2 s, 0.4 s and 0.8 s apart (jittered down
# to half), all within the call's deadline: a restarting service gets ~1.4 s.
CONNECTOR_RETRY = RetryPolicy(attempts=4, initial_backoff=0.2, max_backoff=0.8)
SEND_TOKEN_ENV = "AUTHZ_CONNECTOR_SEND_TOKEN"  # noqa: S105 (a variable name)
SEND_TOKEN_SUFFIX = ".send-token"  # noqa: S105 (a file name)
# A token the operator chose must be as hard to guess as a generated one (43 characters).
MIN_SEND_TOKEN = 32

_TOP_KEYS = {
    "platform",
    "channel_id",
    "address",
    "api_key_file",
    "agent_url",
    "agent_id",
    "send_listen",
    "send_token_file",
    "edge_cache",
    "changes_url",
    *PLATFORMS,
}
_SECTION_KEYS = {
    "telegram": {"token", "base_url"},
    "slack": {"bot_token", "signing_secret", "listen", "base_url", "lookup_email"},
    "discord": {"token"},
    "whatsapp": {
        "phone_number_id",
        "access_token",
        "access_token_file",
        "app_secret",
        "app_secret_file",
        "verify_token",
        "verify_token_file",
        "listen",
        "base_url",
        "notify_template",
        "notify_template_language",
    },
}


class ConfigError(Exception):
    """Missing or invalid configuration; the message names the offending key."""


@dataclass(frozen=True)
class TelegramSettings:
    token: str = field(repr=False)
    # Bot API root, e.g. "http://127.0.0.1:8081/bot" for a local Bot API server; "" = Telegram's.
    base_url: str = ""


@dataclass(frozen=True)
class SlackSettings:
    bot_token: str = field(repr=False)
    signing_secret: str = field(repr=False)
    # Where the Events API / interactivity endpoint (/slack/events) listens.
    listen: str = DEFAULT_SLACK_LISTEN
    # Web API root, e.g. "https://slack.com/api/"; "" = the library default.
    base_url: str = ""
    # Look up a pairing requester's email (users.info; needs the users:read.email scope)
    # and report it to the service for the channel's auto-approve email domains.
    lookup_email: bool = False


@dataclass(frozen=True)
class DiscordSettings:
    token: str = field(repr=False)


@dataclass(frozen=True)
class WhatsAppSettings:
    # The WhatsApp Business phone number id the bot sends from (Meta's app dashboard).
    phone_number_id: str
    access_token: str = field(repr=False)
    # Signs every webhook POST (X-Hub-Signature-256); unsigned or mis-signed ones are refused.
    app_secret: str = field(repr=False)
    # Answers Meta's GET verification handshake when the webhook URL is set up.
    verify_token: str = field(repr=False)
    # Where the webhook (/whatsapp/webhook) listens.
    listen: str = DEFAULT_WHATSAPP_LISTEN
    # Graph API root, e.g. "https://graph.facebook.com/v23.0"; "" = pywa's default.
    base_url: str = ""
    # An approved message template for owner notifications outside the 24-hour window
    # ("" = none: the requester is told to have the owner open the chat or use the CLI).
    notify_template: str = ""
    notify_template_language: str = "en_US"


@dataclass(frozen=True)
class ConnectorConfig:
    """Everything a connector needs; only the chosen platform's section is set."""

    platform: str
    channel_id: str
    api_key: str = field(repr=False)
    address: str = DEFAULT_ADDRESS
    # "echo" (built-in demo agent) or the http(s) URL of the tenant's agent runtime.
    agent_url: str = "echo"
    # Agent id used for sends that arrive on the send endpoint (replies to a turn use
    # the agent id CheckUser returned). Set it to the channel's agent id.
    agent_id: str = "default"
    send_listen: str = DEFAULT_SEND_LISTEN
    # The bearer secret POST /send requires ("" = the endpoint refuses to start).
    send_token: str = field(default="", repr=False)
    telegram: TelegramSettings | None = None
    slack: SlackSettings | None = None
    discord: DiscordSettings | None = None
    whatsapp: WhatsAppSettings | None = None
    # Service outage handling: the client's retries of calls that are safe to repeat.
    retry: RetryPolicy = CONNECTOR_RETRY
    rpc_timeout: float = 5.0
    # Repeat checks answered from the answers the service marked reusable, while
    # its change stream is healthy (authz_service.client.edge); `edge_cache: false` turns it off.
    edge_cache: bool = True
    # The service's HTTP listener (AUTHZ_HTTP_LISTEN), http(s)://host:port: the edge's change
    # stream is read there, about half of gRPC's cost per message for the service ("": over gRPC).
    changes_url: str = ""
    # A platform contact lookup before pairing (e.g. slack.lookup_email) slower than
    # this is abandoned: the requester pairs without it.
    contact_timeout: float = 3.0

    def secrets(self) -> tuple[str, ...]:
        """Every secret in this config, to scrub from error output."""
        values = [self.api_key, self.send_token]
        if self.telegram is not None:
            values.append(self.telegram.token)
        if self.slack is not None:
            values += [self.slack.bot_token, self.slack.signing_secret]
        if self.discord is not None:
            values.append(self.discord.token)
        if self.whatsapp is not None:
            values += [self.whatsapp.access_token, self.whatsapp.app_secret, self.whatsapp.verify_token]
        return tuple(v for v in values if v)


def load_config(path: str | Path, platform: str, env: Mapping[str, str] | None = None) -> ConnectorConfig:
    """Read ``path`` and apply the environment (``os.environ`` by default)."""
    env = os.environ if env is None else env
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a mapping of keys to values")
    config = build_config(raw, platform, env, Path(path).parent)
    # Last: a config that is wrong otherwise must not leave a token file behind.
    return replace(config, send_token=send_token(raw, env, Path(path)))


def send_token(raw: Mapping[str, Any], env: Mapping[str, str], config_path: Path) -> str:
    """The send endpoint's bearer secret: ``AUTHZ_CONNECTOR_SEND_TOKEN``, else the file
    ``send_token_file`` (default ``<config name>.send-token`` next to the config).

    On first start the file does not exist: a random token is written to it, readable
    by its owner only, for the agent runtime to read. An existing file that others may
    read or write is refused, like ssh refuses such a key."""
    token = env.get(SEND_TOKEN_ENV, "").strip()
    if token:
        return _checked_token(token, SEND_TOKEN_ENV)
    name = _opt_str(raw, "send_token_file") or config_path.stem + SEND_TOKEN_SUFFIX
    path = config_path.parent / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return _read_token(path, name)
    except OSError as exc:
        raise ConfigError(f"send_token_file: cannot create {name}: {exc.strerror}") from exc
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(token + "\n")
    log.info("generated the send endpoint's token in %s", path)
    return token


def _read_token(path: Path, name: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, encoding="utf-8") as source:
            if os.fstat(source.fileno()).st_mode & 0o077:
                raise ConfigError(f"send_token_file: {name} is accessible by other users (chmod 600 {name})")
            token = source.read().strip()
    except OSError as exc:
        raise ConfigError(f"send_token_file: cannot read {name}: {exc.strerror}") from exc
    return _checked_token(token, f"send_token_file: {name}")


def _checked_token(token: str, name: str) -> str:
    if len(token) < MIN_SEND_TOKEN:
        raise ConfigError(f"{name}: the send token must be at least {MIN_SEND_TOKEN} characters")
    if not (token.isascii() and token.isprintable()) or " " in token:
        raise ConfigError(f"{name}: the send token must be printable ASCII without spaces")
    return token


def build_config(
    raw: Mapping[str, Any], platform: str, env: Mapping[str, str], base_dir: Path | None = None
) -> ConnectorConfig:
    """Validate an already-parsed config mapping; relative paths are taken from ``base_dir``
    (the config file's folder), else from the working directory."""
    if platform not in PLATFORMS:
        raise ConfigError(f"platform: must be one of {', '.join(PLATFORMS)}, got {platform!r}")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key")
    declared = _opt_str(raw, "platform")
    if declared and declared != platform:
        raise ConfigError(
            f"platform: the file says {declared!r} but the connector was started as {platform!r}"
        )

    channel_id = _opt_str(raw, "channel_id")
    if not channel_id:
        raise ConfigError("channel_id: required (the authz channel this bot serves)")
    address = env.get("AUTHZ_ADDRESS") or _opt_str(raw, "address") or DEFAULT_ADDRESS
    _host_port(address, "address (AUTHZ_ADDRESS)")
    agent_url = _opt_str(raw, "agent_url") or "echo"
    if agent_url != "echo":
        parsed = urlparse(agent_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"agent_url: must be 'echo' or an http(s) URL, got {agent_url!r}")
    send_listen = _opt_str(raw, "send_listen") or DEFAULT_SEND_LISTEN
    _host_port(send_listen, "send_listen")

    section = raw.get(platform) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{platform}: must be a mapping")
    unknown = sorted(set(section) - _SECTION_KEYS[platform])
    if unknown:
        raise ConfigError(f"{platform}.{unknown[0]}: unknown key")

    def secret(key: str, env_name: str) -> str:
        value = env.get(env_name) or _opt_str(section, key, f"{platform}.{key}")
        if not value:
            raise ConfigError(f"{platform}.{key}: required (or set {env_name})")
        return value

    settings: dict[str, Any] = {}
    if platform == "telegram":
        settings["telegram"] = TelegramSettings(
            token=secret("token", "TELEGRAM_BOT_TOKEN"),
            base_url=_opt_str(section, "base_url", "telegram.base_url"),
        )
    elif platform == "slack":
        listen = _opt_str(section, "listen", "slack.listen") or DEFAULT_SLACK_LISTEN
        _host_port(listen, "slack.listen")
        settings["slack"] = SlackSettings(
            bot_token=secret("bot_token", "SLACK_BOT_TOKEN"),
            signing_secret=secret("signing_secret", "SLACK_SIGNING_SECRET"),
            listen=listen,
            base_url=_opt_str(section, "base_url", "slack.base_url"),
            lookup_email=_opt_bool(section, "lookup_email", "slack.lookup_email"),
        )
    elif platform == "whatsapp":
        settings["whatsapp"] = _whatsapp(section, env, base_dir or Path())
    else:
        settings["discord"] = DiscordSettings(token=secret("token", "DISCORD_BOT_TOKEN"))

    return ConnectorConfig(
        platform=platform,
        channel_id=channel_id,
        api_key=_api_key(raw, env, base_dir or Path()),
        address=address,
        agent_url=agent_url,
        agent_id=_opt_str(raw, "agent_id") or "default",
        send_listen=send_listen,
        edge_cache=raw.get("edge_cache") is None or _opt_bool(raw, "edge_cache", "edge_cache"),
        changes_url=_changes_url(env.get("AUTHZ_CHANGES_URL") or _opt_str(raw, "changes_url", "changes_url")),
        **settings,
    )


def _changes_url(url: str) -> str:
    if url:
        try:
            check_url(url)
        except ValueError as exc:
            raise ConfigError(f"changes_url (AUTHZ_CHANGES_URL): {exc}") from None
    return url


def _whatsapp(section: Mapping[str, Any], env: Mapping[str, str], base_dir: Path) -> WhatsAppSettings:
    def secret(key: str, env_name: str) -> str:
        return _secret(section, key, env, env_name, base_dir, section_name="whatsapp", inline=True)

    phone = env.get("WHATSAPP_PHONE_NUMBER_ID", "").strip() or _opt_str(
        section, "phone_number_id", "whatsapp.phone_number_id"
    )
    if not phone.isascii() or not phone.isdigit():
        raise ConfigError("whatsapp.phone_number_id: required, the numeric id of the bot's phone number")
    listen = _opt_str(section, "listen", "whatsapp.listen") or DEFAULT_WHATSAPP_LISTEN
    _host_port(listen, "whatsapp.listen")
    base_url = _opt_str(section, "base_url", "whatsapp.base_url")
    if base_url and urlparse(base_url).scheme not in ("http", "https"):
        raise ConfigError(f"whatsapp.base_url: must be an http(s) URL, got {base_url!r}")
    template = _opt_str(section, "notify_template", "whatsapp.notify_template")
    language = _opt_str(section, "notify_template_language", "whatsapp.notify_template_language") or "en_US"
    if not re.fullmatch(r"[a-z]{2,3}(_[A-Za-z]{2,4})?", language):
        raise ConfigError(
            f"whatsapp.notify_template_language: a language code such as en_US, got {language!r}"
        )
    return WhatsAppSettings(
        phone_number_id=phone,
        access_token=secret("access_token", "WHATSAPP_ACCESS_TOKEN"),
        app_secret=secret("app_secret", "WHATSAPP_APP_SECRET"),
        verify_token=secret("verify_token", "WHATSAPP_VERIFY_TOKEN"),
        listen=listen,
        base_url=base_url,
        notify_template=template,
        notify_template_language=language,
    )


def _api_key(raw: Mapping[str, Any], env: Mapping[str, str], base_dir: Path) -> str:
    return _secret(raw, "api_key", env, "AUTHZ_CONNECTOR_API_KEY", base_dir, hint=" to a connector key")


def _secret(
    raw: Mapping[str, Any],
    key: str,
    env: Mapping[str, str],
    env_name: str,
    base_dir: Path,
    *,
    section_name: str = "",
    inline: bool = False,
    hint: str = "",
) -> str:
    """A secret from the environment (``env_name``), else the file ``<key>_file`` (relative
    to ``base_dir``, the config's folder), else, if ``inline``, ``<key>`` in ``raw`` itself."""
    name = f"{section_name}.{key}" if section_name else key
    value = env.get(env_name, "").strip()
    if value:
        return value
    path = _opt_str(raw, f"{key}_file", f"{name}_file")
    if path:
        try:
            value = (base_dir / path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{name}_file: cannot read {path}: {exc.strerror}") from exc
        if not value:
            raise ConfigError(f"{name}_file: {path} is empty")
        return value
    value = _opt_str(raw, key, name) if inline else ""
    if not value:
        if inline:
            raise ConfigError(f"{name}: required (or {key}_file, or set {env_name}{hint})")
        raise ConfigError(f"{name}_file: required (or set {env_name}{hint})")
    return value


def _opt_str(raw: Mapping[str, Any], key: str, name: str | None = None) -> str:
    value = raw.get(key)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ConfigError(f"{name or key}: must be a string")
    return str(value).strip()


def _opt_bool(raw: Mapping[str, Any], key: str, name: str) -> bool:
    value = raw.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: must be true or false")
    return value


def parse_listen(value: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 hosts in brackets) for servers that bind it."""
    return _host_port(value, "listen")


def _host_port(value: str, name: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name}: must be host:port, got {value!r}")
    return host, int(port)
