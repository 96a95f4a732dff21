"""The Slack side of :class:`~sidecars.runtime.Transport`, over the Web API."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from ..runtime import NO_CONTACT, ApproverUnreachable, ButtonSpec, Contact, ContactUnavailable
from .blocks import approval_blocks, escape, fits_one_section, notice_blocks

log = logging.getLogger("sidecars.slack")
# The users.info client's own logger: slack_sdk logs whole responses at DEBUG, and
# these carry the email, which must never be logged.
_USERS_LOG = logging.getLogger("sidecars.slack.users")
_USERS_LOG.setLevel(logging.INFO)


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

    It also implements :class:`~sidecars.runtime.ContactLookup`: a pairing
    requester's name and handle from ``users.info``, and with ``lookup_email``
    their confirmed email.
    """

    platform = "slack"

    def __init__(self, client: AsyncWebClient, team_id: str, *, lookup_email: bool = False) -> None:
        self.client = client
        self.team_id = team_id
        self.lookup_email = lookup_email
        self._users = AsyncWebClient(
            token=client.token,
            base_url=client.base_url,
            timeout=client.timeout,
            ssl=client.ssl,
            proxy=client.proxy,
            headers=client.headers,
            logger=_USERS_LOG,
        )

    async def send_text(self, chat_id: str, text: str) -> None:
        await self.client.chat_postMessage(channel=chat_id, text=escape(text))

    async def send_direct(self, user_id: str, text: str, buttons: Sequence[ButtonSpec] = ()) -> None:
        # A DM needs a conversation id; conversations.open returns the existing one.
        opened = await self.client.conversations_open(users=slack_user(user_id, self.team_id))
        channel = opened["channel"]["id"]
        if buttons and not fits_one_section(text):  # never a decision on a cut text
            log.warning("notification to %s too long for one section (%d characters): sent without buttons",
                        user_id, len(text))  # fmt: skip
            buttons = ()
        if buttons:
            await self.client.chat_postMessage(
                channel=channel, text=escape(text), blocks=approval_blocks(text, buttons)
            )
        else:
            await self.client.chat_postMessage(channel=channel, text=escape(text))

    # DirectMessages: the notification outbox's copies. The reference is
    # "<DM conversation id>:<message ts>", what chat.update needs.

    async def post_direct(self, user_id: str, text: str, buttons: Sequence[ButtonSpec]) -> str:
        try:
            opened = await self.client.conversations_open(users=slack_user(user_id, self.team_id))
            channel = opened["channel"]["id"]
            posted = await self.client.chat_postMessage(
                channel=channel, text=escape(text), blocks=self._blocks(user_id, text, buttons)
            )
        except SlackApiError as exc:
            raise ApproverUnreachable(_reason(exc)) from exc
        except ValueError as exc:  # another workspace's user: never DMed from here
            raise ApproverUnreachable("other_workspace") from exc
        return f"{posted['channel']}:{posted['ts']}"

    async def edit_direct(
        self, user_id: str, message_ref: str, text: str, buttons: Sequence[ButtonSpec]
    ) -> str:
        channel, _, ts = message_ref.partition(":")
        try:
            await self.client.chat_update(
                channel=channel, ts=ts, text=escape(text), blocks=self._blocks(user_id, text, buttons)
            )
        except SlackApiError as exc:
            if exc.response.get("error") in (
                "message_not_found",
                "cant_update_message",
                "edit_window_closed",
            ):
                return await self.post_direct(user_id, text, buttons)  # gone: post anew
            raise ApproverUnreachable(_reason(exc)) from exc
        return message_ref

    def _blocks(self, user_id: str, text: str, buttons: Sequence[ButtonSpec]) -> list[dict[str, Any]]:
        if buttons and not fits_one_section(text):  # never a decision on a cut text
            log.warning("notification to %s too long for one section: sent without buttons", user_id)
            buttons = ()
        return approval_blocks(text, buttons) if buttons else notice_blocks(text)

    async def contact(self, user_id: str) -> Contact:
        """Who asks to pair, from ``users.info`` (scope ``users:read``): their
        display name and handle (Slack's message events carry neither), and with
        ``lookup_email`` their email for auto-approve rules.

        Slack includes ``profile.email`` only with the ``users:read.email`` scope.
        The email is reported only for an active human member of the bot's own
        workspace whose email Slack marks confirmed. Nothing here is logged; the
        connector keeps the answer for a few minutes (``Connector._contact``).
        """
        try:
            user = slack_user(user_id, self.team_id)
        except ValueError:
            # Another workspace's member (Slack Connect): not this workspace's to vouch for.
            return NO_CONTACT
        try:
            found = await self._users.users_info(user=user)
        except SlackApiError as exc:
            raise ContactUnavailable(f"users.info: {exc.response.get('error')}") from exc
        info: Any = found.get("user")
        if not isinstance(info, dict) or info.get("id") != user:
            raise ContactUnavailable("users.info: answered for another user")
        if info.get("deleted") or info.get("is_bot"):
            return NO_CONTACT
        profile = info.get("profile") or {}
        name = (
            _text(profile.get("display_name"))
            or _text(profile.get("real_name"))
            or _text(info.get("real_name"))
        )
        shown = Contact(display_name=name, handle=_text(info.get("name")))
        if not self.lookup_email:
            return shown
        email = profile.get("email")
        if not email or not isinstance(email, str):
            log.info("users.info gave no email for %s (is the users:read.email scope granted?)", user_id)
            return shown
        if info.get("is_email_confirmed") is not True:
            log.info("the email of %s is not confirmed in Slack; not reported", user_id)
            return shown
        return replace(shown, email=email)


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _reason(exc: SlackApiError) -> str:
    """Slack's error code as a reason class (e.g. "user_not_found", "cannot_dm_bot")."""
    error = str(exc.response.get("error") or "slack_error")
    return "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in error.lower())[:64]
