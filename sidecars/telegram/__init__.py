"""Telegram connector (python-telegram-bot): translation only, no flow logic.

- private chat → ``direct``; group / supergroup → ``group`` (``mentioned`` when a
  message @mentions the bot, text-mentions it, or replies to it); channel posts
  and service messages are ignored;
- identities are Telegram's numeric user ids; a DM to a user is a message to
  the chat with the same id;
- approval buttons are an ``InlineKeyboardMarkup`` whose ``callback_data`` is the
  service's payload verbatim (checked against Telegram's 64-byte limit, which
  python-telegram-bot does not enforce);
- a resolved press edits the owner's message (outcome appended, keyboard
  removed); a refused press answers the callback with an alert, changing nothing;
- approvers' copies of approval notifications (the outbox, ``DirectMessages``)
  are posted with ``sendMessage`` and edited with ``editMessageText``; the
  message reference is the message id (a DM's chat is the user). A user who
  never started a chat with the bot ("chat not found") or blocked it is
  reported unreachable. With the outbox on, a press only answers the callback:
  the outbox edits every copy.

Updates come by long polling. Telegram keeps unconfirmed updates for a day, so
a restarted connector picks up where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias

from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    MessageEntity,
    Update,
)
from telegram.constants import ChatType, InlineKeyboardButtonLimit, MessageLimit
from telegram.error import BadRequest, Forbidden
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from ..config import ConnectorConfig, TelegramSettings
from ..runtime import ApproverUnreachable, ButtonSpec, Connector, Inbound, StartConnector

log = logging.getLogger("sidecars.telegram")

MAX_CALLBACK_DATA = int(InlineKeyboardButtonLimit.MAX_CALLBACK_DATA)
MAX_TEXT = int(MessageLimit.MAX_TEXT_LENGTH)

TelegramApp: TypeAlias = Application[Any, Any, Any, Any, Any, Any]


# A chat id as the service spells it (ASCII, no leading zero, no "+"), and a public
# "@username". Nothing else reaches Telegram: it would read "-0100123" or "-١٠٠١٢٣" as
# the number -100123, a chat the send policy judged under another name.
_CHAT_ID = re.compile(r"-?[1-9][0-9]{0,19}")
_USERNAME = re.compile(r"@[A-Za-z][A-Za-z0-9_]{0,63}")


def _chat(chat_id: str) -> int | str:
    """Numeric ids go to Telegram as ints; "@channelname" targets stay strings.
    Raises ValueError for anything else (a delivery error, nothing is sent)."""
    if chat_id.isascii() and _CHAT_ID.fullmatch(chat_id):
        return int(chat_id)
    if chat_id.isascii() and _USERNAME.fullmatch(chat_id):
        return chat_id
    raise ValueError(f"not a canonical Telegram chat id or @username: {chat_id[:80]!r}")


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Cut a long text into messages Telegram accepts (it counts UTF-16 code units)."""
    parts: list[str] = []
    start, units = 0, 0
    for i, char in enumerate(text):
        width = 2 if ord(char) > 0xFFFF else 1
        if units + width > limit:
            parts.append(text[start:i])
            start, units = i, 0
        units += width
    parts.append(text[start:])
    return parts


def keyboard(buttons: Sequence[ButtonSpec]) -> InlineKeyboardMarkup:
    """One row of buttons; refuses payloads Telegram would reject."""
    for button in buttons:
        if len(button.payload.encode()) > MAX_CALLBACK_DATA:
            raise ValueError(f"callback payload for {button.action!r} exceeds {MAX_CALLBACK_DATA} bytes")
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(button.label, callback_data=button.payload) for button in buttons]]
    )


class TelegramTransport:
    platform = "telegram"

    def __init__(self, bot: Bot) -> None:
        self.bot = bot

    async def send_text(self, chat_id: str, text: str) -> None:
        for part in split_text(text):
            await self.bot.send_message(chat_id=_chat(chat_id), text=part)

    async def send_direct(self, user_id: str, text: str, buttons: Sequence[ButtonSpec] = ()) -> None:
        markup = keyboard(buttons) if buttons else None
        await self.bot.send_message(chat_id=_chat(user_id), text=text, reply_markup=markup)

    # DirectMessages: the notification outbox's copies.

    async def post_direct(self, user_id: str, text: str, buttons: Sequence[ButtonSpec]) -> str:
        markup = keyboard(buttons) if buttons else None
        try:
            sent = await self.bot.send_message(
                chat_id=_chat(user_id), text=text[:MAX_TEXT], reply_markup=markup
            )
        except (BadRequest, Forbidden) as exc:
            raise ApproverUnreachable(unreachable_reason(exc)) from exc
        return str(sent.message_id)

    async def edit_direct(
        self, user_id: str, message_ref: str, text: str, buttons: Sequence[ButtonSpec]
    ) -> str:
        markup = keyboard(buttons) if buttons else None
        try:
            await self.bot.edit_message_text(
                chat_id=_chat(user_id), message_id=int(message_ref), text=text[:MAX_TEXT], reply_markup=markup
            )
        except BadRequest as exc:
            said = exc.message.lower()
            if "message is not modified" in said:
                return message_ref
            if "message to edit not found" in said or "message can't be edited" in said:
                return await self.post_direct(user_id, text, buttons)  # deleted or too old: post anew
            raise ApproverUnreachable(unreachable_reason(exc)) from exc
        except Forbidden as exc:
            raise ApproverUnreachable(unreachable_reason(exc)) from exc
        return message_ref


def unreachable_reason(exc: BadRequest | Forbidden) -> str:
    """Telegram's refusal as a reason class (never its message)."""
    said = exc.message.lower()
    if "chat not found" in said:
        return "chat_not_found"  # the user never started a chat with the bot
    if "blocked" in said:
        return "bot_blocked"
    if "deactivated" in said:
        return "user_deactivated"
    return "forbidden" if isinstance(exc, Forbidden) else "bad_request"


def to_inbound(update: Update, bot: Bot) -> Inbound | None:
    """Translate a message update; None for what the connector does not route."""
    message, user, chat = update.message, update.effective_user, update.effective_chat
    if message is None or user is None or chat is None or user.is_bot:
        return None
    if chat.type == ChatType.PRIVATE:
        kind: Literal["direct", "group"] = "direct"
    elif chat.type in (ChatType.GROUP, ChatType.SUPERGROUP):
        kind = "group"
    else:
        return None
    return Inbound(
        user_id=str(user.id),
        chat_id=str(chat.id),
        chat_kind=kind,
        group_id=str(chat.id) if kind == "group" else "",
        mentioned=kind == "group" and mentions_bot(message, bot),
        text=message.text or message.caption or "",
        display_name=user.full_name,
        handle=user.username or "",
    )


def mentions_bot(message: Message, bot: Bot) -> bool:
    reply = message.reply_to_message
    if reply is not None and reply.from_user is not None and reply.from_user.id == bot.id:
        return True
    username = f"@{bot.username}".lower()
    kinds: list[str | None] = [MessageEntity.MENTION, MessageEntity.TEXT_MENTION, MessageEntity.BOT_COMMAND]
    for entities in (message.parse_entities(kinds), message.parse_caption_entities(kinds)):
        for entity, text in entities.items():
            if entity.type == MessageEntity.TEXT_MENTION:
                if entity.user is not None and entity.user.id == bot.id:
                    return True
            elif entity.type == MessageEntity.BOT_COMMAND:
                if text.lower().endswith(username):
                    return True
            elif text.lower() == username:
                return True
    return False


def install_handlers(app: TelegramApp, connector: Connector) -> None:
    """Route messages and button presses of ``app`` into ``connector``."""

    async def on_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        inbound = to_inbound(update, context.bot)
        if inbound is not None:
            await connector.handle_message(inbound)

    async def on_press(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None:
            return
        if not query.data:
            await query.answer()
            return
        result = await connector.handle_press(query.data, str(query.from_user.id))
        if not result.ok:
            await query.answer(text=result.owner_text, show_alert=True)
            return
        if not result.edit:  # the outbox edits every copy, this one too
            await query.answer(text=result.owner_text)
            return
        await query.answer()
        original = query.message.text if isinstance(query.message, Message) else ""
        text = f"{original}\n\n{result.owner_text}" if original else result.owner_text
        await query.edit_message_text(text=text, reply_markup=None)

    async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("telegram handler failed: %r", context.error)

    new_messages = filters.UpdateType.MESSAGE & ~filters.StatusUpdate.ALL
    app.add_handler(CommandHandler(["start", "pair"], on_message, filters=new_messages))
    app.add_handler(MessageHandler(new_messages, on_message))
    app.add_handler(CallbackQueryHandler(on_press))
    app.add_error_handler(on_error)


def build_application(settings: TelegramSettings) -> TelegramApp:
    builder = ApplicationBuilder().token(settings.token).concurrent_updates(True)
    if settings.base_url:
        builder = builder.base_url(settings.base_url)
    return builder.build()


async def run(config: ConnectorConfig, start: StartConnector) -> None:
    """The plugin entry point (see sidecars.main): poll Telegram until cancelled."""
    if config.telegram is None:
        raise ValueError("telegram settings missing")
    app = build_application(config.telegram)
    async with app:  # initialize() checks the token with getMe
        connector = await start(TelegramTransport(app.bot))
        install_handlers(app, connector)
        updater = app.updater
        if updater is None:
            raise RuntimeError("the Telegram application has no updater")
        await updater.start_polling(allowed_updates=[Update.MESSAGE, Update.CALLBACK_QUERY])
        await app.start()
        log.info("telegram connector running as @%s for channel %s", app.bot.username, config.channel_id)
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            await updater.stop()
            await app.stop()
