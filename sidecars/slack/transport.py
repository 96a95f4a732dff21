"""The Slack side of :class:`~sidecars.runtime.Transport`, over the Web API."""

from __future__ import annotations

from collections.abc import Sequence

from slack_sdk.web.async_client import AsyncWebClient

from ..runtime import ButtonSpec
from .blocks import approval_blocks, escape


def slack_user(user_id: str, team_id: str) -> str:
    """The Slack user id inside an authz user id ("T0123:U0456" -> "U0456").

    Raises ValueError unless the id is of the bot's workspace ``team_id``: a
    DM must never go to a guessed user.
    """
    team, sep, user = user_id.partition(":")
    if not (team and sep and user) or ":" in user:
        raise ValueError(f"not a Slack user id of the form '<team id>:<user id>': {user_id!r}")
    if team != team_id:
        raise ValueError(f"{user_id!r} is not a user of this bot's workspace {team_id}")
    return user


class SlackTransport:
    """Delivers text to conversations and DMs users, with Block Kit buttons.

    Conversation ids (``chat_id``) are Slack channel ids: "C…" channels, "G…"
    private channels, "D…" direct messages.
    """

    platform = "slack"

    def __init__(self, client: AsyncWebClient, team_id: str) -> None:
        self.client = client
        self.team_id = team_id

    async def send_text(self, chat_id: str, text: str) -> None:
        await self.client.chat_postMessage(channel=chat_id, text=escape(text))

    async def send_direct(self, user_id: str, text: str, buttons: Sequence[ButtonSpec] = ()) -> None:
        # A DM needs a conversation id; conversations.open returns the existing one.
        opened = await self.client.conversations_open(users=slack_user(user_id, self.team_id))
        channel = opened["channel"]["id"]
        if buttons:
            await self.client.chat_postMessage(
                channel=channel, text=escape(text), blocks=approval_blocks(text, buttons)
            )
        else:
            await self.client.chat_postMessage(channel=channel, text=escape(text))
