"""``authz-connector {telegram,slack,discord,whatsapp} --config FILE``: run one connector.

Exit codes: 0 after SIGTERM/SIGINT, 2 for a configuration error (nothing
started), 1 if the platform side fails (e.g. a rejected bot token).

Platform plugin contract
------------------------
Each platform package (``sidecars.telegram``, ``sidecars.slack``,
``sidecars.discord_bot``, ``sidecars.whatsapp``) is imported lazily, so one missing library cannot
break the others, and exposes::

    async def run(config: ConnectorConfig, start: StartConnector) -> None

where ``StartConnector = Callable[[Transport], Awaitable[Connector]]``
(``sidecars.runtime``). ``run`` must:

1. build the platform client from ``config.<platform>`` (token, base_url, ...)
   and its :class:`~sidecars.runtime.Transport`;
2. call ``connector = await start(transport)`` once, before it accepts events
   (``start`` builds the Connector and starts the local send endpoint);
3. route every message to ``connector.handle_message(Inbound(...))`` and every
   button press to ``connector.handle_press(payload, presser_id)``, then apply
   the ``PressResult``;
4. run until cancelled: ``main`` cancels the task on SIGTERM/SIGINT, so release
   platform resources in ``finally`` and let ``CancelledError`` propagate. An
   exception ending ``run`` makes the process exit 1.

``main`` owns the authz client, the agent and the send endpoint, and closes them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from typing import IO, Any

import grpc

from authz_service.client import Client, EdgeSettings, TlsConfig, connect
from authz_service.logs import JsonFormatter

from .config import PLATFORMS, ConfigError, ConnectorConfig, load_config
from .http import SendEndpoint, start_send_endpoint
from .outbox import Outbox, follow_notifications
from .runtime import Connector, StartConnector, Transport, make_agent

log = logging.getLogger("sidecars")

PLATFORM_MODULES = {
    "telegram": "sidecars.telegram",
    "slack": "sidecars.slack",
    "discord": "sidecars.discord_bot",
    "whatsapp": "sidecars.whatsapp",
}

RunPlatform = Callable[[ConnectorConfig, StartConnector], Coroutine[Any, Any, None]]


def load_platform(platform: str) -> RunPlatform:
    """Import the platform package only now, and return its ``run``."""
    module = importlib.import_module(PLATFORM_MODULES[platform])
    run: RunPlatform = module.run
    return run


def make_client(config: ConnectorConfig) -> Client:
    """The authz client. It retries the calls the proto declares safe to repeat
    (``config.retry``); the Connector adds no retries of its own."""
    try:
        client = connect(
            config.address,
            config.api_key,
            tls=TlsConfig.from_env(os.environ),
            timeout=config.rpc_timeout,
            retry=config.retry,
            edge=EdgeSettings(changes_url=config.changes_url) if config.edge_cache else None,
        )
    except ValueError as exc:  # e.g. an http:// changes_url beside TLS
        raise ConfigError(str(exc)) from None
    if not config.edge_cache:
        log.info("edge answers off: every message asks the service")
    elif config.changes_url:
        log.info("edge answers on; change stream over HTTP at %s", config.changes_url)
    else:
        log.info("edge answers on; change stream over gRPC")
    return client


# The user id of the start-up probe, shaped as the platform's (the service checks
# shapes). CheckUser is a read-only call: asking about it changes nothing.
PROBE_USERS = {"slack": "TAUTHZ:UAUTHZPROBE", "whatsapp": "+15550000000"}
PROBE_USER = "1000000"  # Telegram and Discord: numeric


async def check_service(config: ConnectorConfig, client: Client) -> None:
    """Before the platform starts: the service answers, the key is accepted and
    the channel exists, or a ConfigError naming which one is wrong."""
    try:
        result = await client.check_user(config.channel_id, PROBE_USERS.get(config.platform, PROBE_USER))
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
        if code is grpc.StatusCode.UNAVAILABLE:
            raise ConfigError(f"address: no authz service answers at {config.address} ({details})") from None
        if code is grpc.StatusCode.UNAUTHENTICATED:
            raise ConfigError(f"api_key: the service at {config.address} refused it ({details})") from None
        if code is grpc.StatusCode.PERMISSION_DENIED:
            raise ConfigError(
                f"api_key: not a connector key for channel {config.channel_id!r} ({details})"
            ) from None
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            raise ConfigError(f"channel_id: {details}") from None
        raise
    if result.reason == "channel_not_configured":
        raise ConfigError(f"channel_id: channel {config.channel_id!r} not found")


async def serve(config: ConnectorConfig, run_platform: RunPlatform) -> None:
    """Run the connector until SIGTERM/SIGINT or until the platform side ends."""
    client = make_client(config)
    try:
        await check_service(config, client)
    except BaseException:
        await client.close()
        raise
    agent = make_agent(config.agent_url)
    endpoint: SendEndpoint | None = None
    outbox: Outbox | None = None

    async def start(transport: Transport) -> Connector:
        nonlocal endpoint
        if endpoint is not None:
            raise RuntimeError("start() may be called only once")
        nonlocal outbox
        connector = Connector(config, transport, client, agent)
        endpoint = await start_send_endpoint(connector, config.send_listen)
        # Approvers' notifications from the outbox, where the platform can post and edit DMs.
        outbox = follow_notifications(connector)
        return connector

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    platform_task = asyncio.create_task(run_platform(config, start))
    stop_task = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({platform_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            log.info("stopping")
    finally:
        # Also reached when serve() itself is cancelled: stop the platform first.
        stop_task.cancel()
        platform_task.cancel()
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await platform_task  # re-raises the platform's own failure
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if outbox is not None:
                await outbox.stop()
            if endpoint is not None:
                await endpoint.stop()
            await agent.close()
            await client.close()


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class _ScrubbingFormatter(JsonFormatter):
    """One JSON object per record (the service's format): a user-supplied value with a
    newline (a display name, an id) stays inside its string and cannot forge a record.

    Libraries log tokens (python-telegram-bot puts the bot token in URLs and in
    InvalidToken's message): every configured secret is removed from every record,
    as written and as JSON escapes it."""

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        super().__init__()
        forms = {form for secret in secrets for form in (secret, json.dumps(secret)[1:-1])}
        self._secrets = sorted(forms, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        return _scrub(super().format(record), self._secrets)


def log_handler(stream: IO[str], secrets: Sequence[str] = ()) -> logging.Handler:
    """The connector's log handler: JSON lines on ``stream``, scrubbed of ``secrets``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_ScrubbingFormatter(secrets))
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="authz-connector", description="Chat platform connector for the authz service."
    )
    parser.add_argument("platform", choices=PLATFORMS)
    parser.add_argument("--config", required=True, metavar="FILE", help="YAML connector config")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    handler = log_handler(sys.stderr)
    logging.basicConfig(level=args.log_level, handlers=[handler], force=True)
    # httpx (python-telegram-bot) logs full request URLs, and those contain the bot token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        config = load_config(args.config, args.platform)
    except ConfigError as exc:
        print(f"authz-connector: configuration error: {exc}", file=sys.stderr)
        return 2
    handler.setFormatter(_ScrubbingFormatter(config.secrets()))
    try:
        run_platform = load_platform(config.platform)
    except ImportError as exc:
        print(
            f"authz-connector: the {config.platform} connector needs its library "
            f"(pip install 'authz-service[connectors]'): {exc}",
            file=sys.stderr,
        )
        return 2
    try:
        asyncio.run(serve(config, run_platform))
    except ConfigError as exc:
        print(f"authz-connector: configuration error: {_scrub(str(exc), config.secrets())}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Libraries put tokens in their messages (python-telegram-bot's InvalidToken
        # does): scrub every configured secret before anything is printed.
        log.debug("connector failure", exc_info=True)
        last = traceback.format_exception_only(exc)[-1].strip()
        print(f"authz-connector: stopped: {_scrub(last, config.secrets())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
