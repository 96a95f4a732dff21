"""Slack events and button presses, translated for the shared flow.

The bolt app verifies every request's signature (``signing_secret``) before
any listener runs; a badly signed request gets 401 and reaches nothing.

Identities are "<team id>:<user id>" with the user's own workspace, never a
name. Messages are handled after the HTTP response: Slack re-sends an event
that is not acknowledged within 3 seconds, and an agent may take longer, so
acknowledging first is what keeps one message one agent turn. Button presses
are resolved before the response, so the presser's view is updated in order.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from ..runtime import Connector, Inbound
from ..webhook_server import WebhookServer
from .blocks import ACTION_ID_PATTERN, escape, outcome_blocks

log = logging.getLogger("sidecars.slack")

EVENTS_PATH = "/slack/events"
"""Both the Events API and Interactivity request URLs point here."""


class SlackBot:
    """The bolt app wired to a :class:`Connector`, and the HTTP listener serving it."""

    def __init__(
        self, connector: Connector, client: AsyncWebClient, signing_secret: str, bot_user_id: str
    ) -> None:
        self.connector = connector
        self.mention = f"<@{bot_user_id}>"
        self.app = AsyncApp(
            name="authz-connector",
            signing_secret=signing_secret,
            process_before_response=True,
            client=client,
        )
        self.app.event("message")(self._on_message)
        self.app.event("app_mention")(self._on_mention)
        self.app.action(re.compile(ACTION_ID_PATTERN))(self._on_press)
        self._server = WebhookServer("slack events", log)

    async def start(self, listen: str) -> int:
        """Serve ``/slack/events`` on ``listen`` ("host:port", 0 = any); return the port."""
        return await self._server.start(self.app.web_app(path=EVENTS_PATH), listen, EVENTS_PATH)

    async def close(self) -> None:
        """Stop listening, then let acknowledged messages finish (bounded)."""
        await self._server.close()

    # ---- messages --------------------------------------------------------------

    async def _on_message(self, event: dict[str, Any], context: AsyncBoltContext) -> None:
        # Edits, joins and other bots' posts carry a subtype or a bot_id: not user turns.
        if event.get("subtype") or event.get("bot_id"):
            return
        text = str(event.get("text") or "")
        if event.get("channel_type") == "im":
            self._dispatch(event, context, "direct", text, mentioned=False)
        elif self.mention not in text:
            # A channel message that mentions the bot also arrives as app_mention: handle it once, there.
            self._dispatch(event, context, "group", text, mentioned=False)

    async def _on_mention(self, event: dict[str, Any], context: AsyncBoltContext) -> None:
        if event.get("subtype") or event.get("bot_id"):
            return
        text = str(event.get("text") or "").strip().removeprefix(self.mention).strip()
        self._dispatch(event, context, "group", text, mentioned=True)

    def _dispatch(
        self,
        event: dict[str, Any],
        context: AsyncBoltContext,
        kind: Literal["direct", "group"],
        text: str,
        *,
        mentioned: bool,
    ) -> None:
        user, channel = event.get("user"), event.get("channel")
        team = event.get("user_team") or event.get("team") or context.team_id
        if not (user and channel and team):
            log.warning("ignored a Slack event without user, channel or team")
            return
        msg = Inbound(
            user_id=f"{team}:{user}",
            chat_id=str(channel),
            chat_kind=kind,
            group_id=str(channel) if kind == "group" else "",
            mentioned=mentioned,
            text=text,
        )
        self._server.spawn(self.connector.handle_message(msg))

    # ---- button presses -----------------------------------------------------------

    async def _on_press(
        self,
        ack: AsyncAck,
        body: dict[str, Any],
        action: dict[str, Any],
        context: AsyncBoltContext,
        client: AsyncWebClient,
    ) -> None:
        await ack()
        presser = body.get("user") or {}
        user, team = presser.get("id"), presser.get("team_id") or context.team_id
        container = body.get("container") or {}
        channel, ts = container.get("channel_id"), container.get("message_ts")
        if not (user and team and channel and ts):
            log.warning("ignored a Slack button press without presser or message")
            return
        result = await self.connector.handle_press(str(action.get("value") or ""), f"{team}:{user}")
        try:
            if result.ok and not result.edit:  # the outbox edits every copy, this one too
                await client.chat_postEphemeral(channel=channel, user=user, text=escape(result.owner_text))
            elif result.ok:
                await client.chat_update(
                    channel=channel,
                    ts=ts,
                    text=escape(result.owner_text),
                    blocks=outcome_blocks(_request_text(body), result.owner_text),
                )
            else:
                # Only the presser sees the refusal; the owner's message is untouched.
                await client.chat_postEphemeral(channel=channel, user=user, text=escape(result.owner_text))
        except SlackApiError as exc:
            log.error("could not show the outcome of a button press: %s", exc.response.get("error"))


def _request_text(body: dict[str, Any]) -> str:
    """The notification text of the pressed message, read back from its first section."""
    for block in (body.get("message") or {}).get("blocks") or []:
        if block.get("block_id") == "authz_request":
            return str((block.get("text") or {}).get("text") or "")
    return ""
