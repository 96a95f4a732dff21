"""Discord connector: discord.py events in, the shared flow (`sidecars.runtime`) decides.

This package only translates. A gateway MESSAGE_CREATE becomes an `Inbound`
(identities are snowflakes, never names); a press on an approval button
becomes `Connector.handle_press(payload, presser snowflake)`, and the
`PressResult` is applied natively: the owner's message is edited to show the
outcome without buttons, or the presser alone gets an ephemeral refusal.

Approval buttons are `discord.ui.DynamicItem`s: the service's callback payload
travels inside the button's custom_id, so a press is understood from the
interaction alone. Nothing is kept in memory, and buttons keep working across
connector restarts. Whether the presser may resolve is the service's call,
never checked here.

The package is named `discord_bot` so that it cannot shadow the `discord` library.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from typing import Any

from ..config import ConnectorConfig
from ..runtime import ApproverUnreachable, ButtonAction, ButtonSpec, Connector, Inbound, StartConnector

with warnings.catch_warnings():
    # discord.py imports the stdlib's audioop (deprecated since 3.11) for voice, which this
    # connector never uses; keep the import working where warnings are errors (pytest, -W error).
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    import discord

__all__ = [
    "CUSTOM_ID_PREFIX",
    "ApprovalButton",
    "DiscordBot",
    "DiscordTransport",
    "custom_id_for",
    "prepare",
    "run",
    "to_inbound",
]

log = logging.getLogger("sidecars.discord")

CUSTOM_ID_PREFIX = "authz:"
MAX_CUSTOM_ID = 100  # Discord's limit on a component's custom_id
MAX_CONTENT = 2000  # Discord's limit on a message's content
_STYLES: dict[ButtonAction, discord.ButtonStyle] = {
    "approve": discord.ButtonStyle.success,
    "deny": discord.ButtonStyle.danger,
    "block": discord.ButtonStyle.danger,
    "always_allow": discord.ButtonStyle.secondary,
}
# Messages people type; joins, pins, boosts and the like are not for the agent.
_CHAT_MESSAGES = (discord.MessageType.default, discord.MessageType.reply)


def custom_id_for(payload: str) -> str:
    """The custom_id carrying a callback payload. Fails closed on a payload Discord would refuse."""
    custom_id = CUSTOM_ID_PREFIX + payload
    if not payload or len(custom_id) > MAX_CUSTOM_ID:
        raise ValueError(f"a callback payload of {len(payload)} characters does not fit a Discord custom_id")
    return custom_id


class ApprovalButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    # Any payload behind our prefix is routed: the service tells genuine from forged.
    template=re.compile(re.escape(CUSTOM_ID_PREFIX) + r"(?P<payload>.+)", re.DOTALL),
):
    """An Approve / Deny / Block button whose custom_id carries the service's payload."""

    def __init__(
        self, payload: str, *, label: str = "", style: discord.ButtonStyle = discord.ButtonStyle.secondary
    ) -> None:
        super().__init__(discord.ui.Button(label=label, style=style, custom_id=custom_id_for(payload)))
        self.payload = payload

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ApprovalButton:
        return cls(match["payload"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = interaction.client
        if not isinstance(bot, DiscordBot) or bot.connector is None:
            return
        result = await bot.connector.handle_press(self.payload, str(interaction.user.id))
        if not result.ok or not result.edit:  # a refusal; or the outbox edits every copy
            await interaction.response.send_message(result.owner_text, ephemeral=True)
            return
        original = interaction.message.content if interaction.message is not None else ""
        outcome = f"{original}\n\n{result.owner_text}" if original else result.owner_text
        await interaction.response.edit_message(content=outcome[:MAX_CONTENT], view=None)


def approval_view(buttons: Sequence[ButtonSpec]) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for spec in buttons:
        view.add_item(ApprovalButton(spec.payload, label=spec.label, style=_STYLES[spec.action]))
    return view


class DiscordBot(discord.Client):
    """The gateway client: turns messages into `Inbound`s for the connector.

    Events arriving before `connector` is set (it is set before the gateway
    connects) are dropped.
    """

    def __init__(self) -> None:
        super().__init__(
            # message_content is privileged: enable it in the developer portal too.
            intents=discord.Intents(guilds=True, messages=True, message_content=True),
            # The agent's text must never ping @everyone, roles or users.
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=0,
        )
        self.connector: Connector | None = None

    async def setup_hook(self) -> None:
        self.add_dynamic_items(ApprovalButton)

    async def on_message(self, message: discord.Message) -> None:
        if self.connector is None or self.user is None:
            return
        inbound = to_inbound(message, self.user.id)
        if inbound is not None:
            await self.connector.handle_message(inbound)


def to_inbound(message: discord.Message, bot_id: int) -> Inbound | None:
    """Translate a message, or None for what no one should answer (bots, system messages)."""
    author = message.author
    if author.bot or author.id == bot_id or message.webhook_id is not None:
        return None
    if message.type not in _CHAT_MESSAGES:
        return None
    # The bot's own mention is addressing, carried by `mentioned`; the rest is the text.
    text = re.sub(rf"<@!?{bot_id}>", "", message.content).strip()
    if not text:
        return None
    chat_id = str(message.channel.id)
    # Decided by the channel, not by `message.guild`, which is None for an uncached guild.
    if isinstance(message.channel, discord.DMChannel):
        return Inbound(
            user_id=str(author.id),
            chat_id=chat_id,
            chat_kind="direct",
            text=text,
            display_name=author.display_name,
            handle=author.name,
        )
    replied = message.reference.resolved if message.reference is not None else None
    mentioned = any(u.id == bot_id for u in message.mentions) or (
        isinstance(replied, discord.Message) and replied.author.id == bot_id
    )
    return Inbound(
        user_id=str(author.id),
        chat_id=chat_id,
        chat_kind="group",
        group_id=chat_id,
        mentioned=mentioned,
        text=text,
        display_name=author.display_name,
        handle=author.name,
    )


class DiscordTransport:
    """Delivers to channels by snowflake and DMs users with native buttons."""

    platform = "discord"

    def __init__(self, bot: DiscordBot) -> None:
        self.bot = bot

    async def send_text(self, chat_id: str, text: str) -> None:
        channel = self.bot.get_partial_messageable(_snowflake(chat_id))
        for part in _parts(text):
            await channel.send(part)

    async def send_direct(self, user_id: str, text: str, buttons: Sequence[ButtonSpec] = ()) -> None:
        user = await self.bot.fetch_user(_snowflake(user_id))
        dm = await user.create_dm()
        if buttons and len(text) <= MAX_CONTENT:
            await dm.send(text, view=approval_view(buttons))
            return
        if buttons:  # never a decision on a cut text: the whole text, and no buttons
            log.warning("notification to %s too long for one message (%d characters): sent without buttons",
                        user_id, len(text))  # fmt: skip
        for part in _parts(text):
            await dm.send(part)

    # DirectMessages: the notification outbox's copies. The reference is
    # "<DM channel id>:<message id>".

    async def post_direct(self, user_id: str, text: str, buttons: Sequence[ButtonSpec]) -> str:
        try:
            user = await self.bot.fetch_user(_snowflake(user_id))
            dm = await user.create_dm()
            view = _view(user_id, text, buttons)
            if view is None:
                sent = await dm.send(text[:MAX_CONTENT])
            else:
                sent = await dm.send(text[:MAX_CONTENT], view=view)
        except discord.NotFound as exc:
            raise ApproverUnreachable("user_not_found") from exc
        except discord.Forbidden as exc:  # 50007: DMs closed, no shared server, or the bot blocked
            raise ApproverUnreachable("cannot_dm_user") from exc
        return f"{dm.id}:{sent.id}"

    async def edit_direct(
        self, user_id: str, message_ref: str, text: str, buttons: Sequence[ButtonSpec]
    ) -> str:
        channel_id, _, message_id = message_ref.partition(":")
        message = self.bot.get_partial_messageable(_snowflake(channel_id)).get_partial_message(
            _snowflake(message_id)
        )
        try:
            await message.edit(content=text[:MAX_CONTENT], view=_view(user_id, text, buttons))
        except discord.NotFound:
            return await self.post_direct(user_id, text, buttons)  # deleted: post anew
        except discord.Forbidden as exc:
            raise ApproverUnreachable("cannot_dm_user") from exc
        return message_ref


def _view(user_id: str, text: str, buttons: Sequence[ButtonSpec]) -> discord.ui.View | None:
    """The buttons as a view, or None (no buttons, or a text too long to show whole)."""
    if buttons and len(text) > MAX_CONTENT:  # never a decision on a cut text
        log.warning("notification to %s too long for one message: sent without buttons", user_id)
        return None
    return approval_view(buttons) if buttons else None


# As the service spells snowflakes: ASCII digits, no leading zero. Not str.isdigit(), which
# passes "１２３" (int() reads it as 123); not "0123": one snowflake, one spelling.
_SNOWFLAKE = re.compile(r"[1-9][0-9]{0,19}")


def _snowflake(value: str) -> int:
    """Raises ValueError for anything but a canonical snowflake (a delivery error, nothing is sent)."""
    if not (value.isascii() and _SNOWFLAKE.fullmatch(value)):
        raise ValueError(f"not a canonical Discord snowflake: {value[:80]!r}")
    return int(value)


def _parts(text: str) -> list[str]:
    return [text[i : i + MAX_CONTENT] for i in range(0, len(text), MAX_CONTENT)] or [""]


async def prepare(config: ConnectorConfig, start: StartConnector) -> DiscordBot:
    """Log in (REST only) and attach the connector; the gateway is not connected yet.

    Logging in first lets the send endpoint deliver as soon as it listens, and a
    rejected token fails before anything is served.
    """
    if config.discord is None:
        raise ValueError("the discord section of the configuration is missing")
    bot = DiscordBot()
    try:
        await bot.login(config.discord.token)
        bot.connector = await start(DiscordTransport(bot))
    except BaseException:
        await bot.close()
        raise
    return bot


async def run(config: ConnectorConfig, start: StartConnector) -> None:
    """The `sidecars.main` entry point: serve Discord until cancelled."""
    bot = await prepare(config, start)
    try:
        log.info("logged in to Discord as %s", bot.user.id if bot.user else "?")
        await bot.connect(reconnect=True)
    finally:
        await bot.close()
