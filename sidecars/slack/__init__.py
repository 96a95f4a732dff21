"""Slack connector: slack-bolt (async) over the Events API and interactivity.

Slack posts events and button presses to ``/slack/events`` on the configured
``slack.listen`` address; the bot answers through the Web API with its bot
token. Pairing requests reach the owner as a Block Kit message with Approve
(primary) / Deny / Block (danger) buttons whose values are the service's
callback payloads.

This package only translates: :mod:`.events` (Slack → ``Inbound`` and
presses), :mod:`.transport` (``Transport`` over the Web API), :mod:`.blocks`
(Block Kit). Every decision is made in :mod:`sidecars.runtime`.
"""

from __future__ import annotations

import asyncio
import logging

from slack_sdk.web.async_client import AsyncWebClient

from ..config import ConfigError, ConnectorConfig, SlackSettings
from ..runtime import StartConnector
from .events import EVENTS_PATH, SlackBot
from .transport import SlackTransport

__all__ = ["EVENTS_PATH", "SlackBot", "SlackTransport", "run", "web_client"]

log = logging.getLogger("sidecars.slack")


def web_client(settings: SlackSettings) -> AsyncWebClient:
    if settings.base_url:
        return AsyncWebClient(token=settings.bot_token, base_url=settings.base_url)
    return AsyncWebClient(token=settings.bot_token)


async def run(config: ConnectorConfig, start: StartConnector) -> None:
    """The platform plugin entry point (see :mod:`sidecars.main`)."""
    if config.slack is None:
        raise ConfigError("slack: section required")
    settings = config.slack
    client = web_client(settings)
    # Fails fast on a rejected token, and names the workspace and the bot's own user.
    identity = await client.auth_test()
    team_id, bot_user_id = str(identity["team_id"]), str(identity["user_id"])
    log.info("slack bot %s in workspace %s", bot_user_id, team_id)
    if settings.lookup_email:
        log.info("pairing requesters' emails are looked up (users.info) for auto-approve rules")
    connector = await start(SlackTransport(client, team_id, lookup_email=settings.lookup_email))
    bot = SlackBot(connector, client, settings.signing_secret, bot_user_id)
    try:
        await bot.start(settings.listen)
        await asyncio.Event().wait()
    finally:
        await bot.close()
