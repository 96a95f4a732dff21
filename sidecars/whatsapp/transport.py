"""The WhatsApp side of :class:`~sidecars.runtime.Transport`, over the Cloud API (pywa).

WhatsApp lets a business send free-form messages (text, reply buttons) to a
person only within 24 hours of that person's last message: the customer-service
window. :class:`CustomerWindow` remembers when each user last wrote (bounded);
outside the window a free-form message is not attempted (the Cloud API would
take it and fail it later, asynchronously):

- a pairing request's copy (buttons Approve / Deny / Block) goes out as the
  configured message template (``whatsapp.notify_template``), whose quick-reply
  buttons carry the service's callback payloads; without a template, and for any
  other copy with buttons (a tool call's), it raises
  :class:`~sidecars.runtime.ApproverUnreachable` (reason ``outside_24h_window_no_template``):
  the outbox reports it (audit ``notification.undeliverable``, ``authz doctor``);
- anything else raises :class:`OutsideWindow` / :class:`ApproverUnreachable`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pywa_async.client import WhatsApp
from pywa_async.types.callback import Button
from pywa_async.types.templates import QuickReplyButton, TemplateLanguage

from authz_service.domain import ids
from authz_service.domain.errors import InvalidArgument
from authz_service.domain.model import Platform

from ..runtime import MAX_SESSIONS, ApproverUnreachable, ButtonAction, ButtonSpec, Contact

log = logging.getLogger("sidecars.whatsapp")

# Cloud API limits: reply buttons (at most three, titles of 20 characters, ids of
# 256), an interactive body of 1024 characters, a text message of 4096.
MAX_BUTTONS = 3
MAX_BUTTON_TITLE = 20
MAX_BUTTON_ID = 256
MAX_BODY = 1024
MAX_TEXT = 4096
# Template body parameters: no newlines or tabs, no more than four spaces in a row.
MAX_TEMPLATE_PARAM = 900

# The notification template's quick-reply buttons, fixed when Meta approved it; a copy's
# buttons are put on them by position, so only a copy with exactly these goes out as it.
TEMPLATE_ACTIONS: tuple[ButtonAction, ...] = ("approve", "deny", "block")

WINDOW_SECONDS = 24 * 3600.0
# A message is not attempted in the window's last minutes: it could close in flight.
WINDOW_MARGIN = 300.0


def _whatsapp_id(user_id: str) -> bool:
    """Whether the service would take ``user_id`` as a WhatsApp user id (E.164: "+", digits)."""
    try:
        ids.user_id(Platform.WHATSAPP, user_id)
    except InvalidArgument:
        return False
    return user_id.isascii()


def user_id_of(wa_id: str | None) -> str:
    """The authz user id of a Cloud API ``wa_id`` ("84912345678" -> "+84912345678"),
    spelled as the service stores WhatsApp ids (``domain.ids``).

    Raises ValueError for anything that is not a phone number (a user who hides
    their number behind a WhatsApp username has only a business-scoped id)."""
    user_id = "+" + (wa_id or "").strip().removeprefix("+")
    if not _whatsapp_id(user_id):
        raise ValueError("not an E.164 phone number")
    return user_id


def wa_id_of(user_id: str) -> str:
    """The Cloud API recipient of an authz user id ("+84912345678" -> "84912345678").
    Raises ValueError for anything else: nothing is sent to a guessed recipient."""
    if not _whatsapp_id(user_id):
        raise ValueError(f"not an E.164 WhatsApp user id: {user_id[:80]!r}")
    return user_id[1:]


class OutsideWindow(Exception):
    """A free-form message was not sent: its recipient has not written in the last 24 hours."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CustomerWindow:
    """When each user last wrote to the bot, for the 24-hour window (memory only,
    the ``max_users`` most recent writers; a forgotten user counts as outside)."""

    def __init__(self, max_users: int = MAX_SESSIONS, clock: Callable[[], float] = time.time) -> None:
        self._last: OrderedDict[str, float] = OrderedDict()
        self._max = max_users
        self._clock = clock

    def wrote(self, user_id: str, at: float | None = None) -> None:
        """``user_id`` wrote at ``at`` (the platform's timestamp, never later than now)."""
        now = self._clock()
        when = now if at is None else min(at, now)
        if when > self._last.get(user_id, float("-inf")):
            self._last[user_id] = when
        self._last.move_to_end(user_id)
        while len(self._last) > self._max:
            self._last.popitem(last=False)

    def is_open(self, user_id: str) -> bool:
        last = self._last.get(user_id)
        return last is not None and self._clock() - last < WINDOW_SECONDS - WINDOW_MARGIN


@dataclass(frozen=True)
class NotifyTemplate:
    """An approved template: one body variable ({{1}}, the notification on one
    line), and the Approve / Deny / Block quick-reply buttons in that order
    (:data:`TEMPLATE_ACTIONS`). For pairing requests only."""

    name: str
    language: TemplateLanguage


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    return [text[i : i + limit] for i in range(0, len(text), limit)] or [""]


def one_line(text: str) -> str:
    """A template parameter: WhatsApp refuses newlines, tabs and runs of spaces."""
    return " · ".join(" ".join(line.split()) for line in text.splitlines() if line.strip())


def check_buttons(buttons: Sequence[ButtonSpec]) -> None:
    """Refuse what the Cloud API would reject (pywa does not check these limits)."""
    if len(buttons) > MAX_BUTTONS:
        raise ValueError(f"WhatsApp allows {MAX_BUTTONS} reply buttons, got {len(buttons)}")
    for button in buttons:
        if not 0 < len(button.label) <= MAX_BUTTON_TITLE:
            raise ValueError(f"button title for {button.action!r} must be 1-{MAX_BUTTON_TITLE} characters")
        if not 0 < len(button.payload) <= MAX_BUTTON_ID:
            raise ValueError(f"callback payload for {button.action!r} exceeds {MAX_BUTTON_ID} characters")


class WhatsAppTransport:
    """Sends as the business phone number; chat ids and user ids are both the
    person's E.164 number (a direct message is the only conversation).

    Also a :class:`~sidecars.runtime.ContactLookup`: the number WhatsApp
    verified is reported for the channel's phone-pattern auto-approve rules."""

    platform = "whatsapp"

    def __init__(self, wa: WhatsApp, window: CustomerWindow, template: NotifyTemplate | None = None) -> None:
        self.wa = wa
        self.window = window
        self.template = template

    async def send_text(self, chat_id: str, text: str) -> None:
        to = wa_id_of(chat_id)
        if not self.window.is_open(chat_id):
            raise OutsideWindow(f"{chat_id} has not written in the last 24 hours")
        for part in split_text(text):
            await self.wa.send_message(to=to, text=part)

    async def send_direct(self, user_id: str, text: str, buttons: Sequence[ButtonSpec] = ()) -> None:
        await self.post_direct(user_id, text, buttons)

    async def post_direct(self, user_id: str, text: str, buttons: Sequence[ButtonSpec] = ()) -> str:
        """Send ``text`` (with reply buttons) to ``user_id``; the sent message's id.

        Raises :class:`ApproverUnreachable` when WhatsApp would not deliver it:
        outside the 24-hour window without a usable template."""
        to = wa_id_of(user_id)
        check_buttons(buttons)
        if not self.window.is_open(user_id):
            if self.template is not None and tuple(b.action for b in buttons) == TEMPLATE_ACTIONS:
                return await self._template(to, user_id, text, buttons)
            # Anything else with buttons (a tool call's Approve / Deny / Always allow) has no
            # template: the template's buttons are matched by position and say "Block".
            raise ApproverUnreachable("outside_24h_window_no_template" if buttons else "outside_24h_window")
        if buttons and len(text) > MAX_BODY:
            # Never a decision on a cut text: the full text, decided elsewhere.
            log.warning("notification to %s too long for reply buttons (%d characters): sent without them",
                        user_id, len(text))  # fmt: skip
            buttons = ()
        if buttons:
            sent = await self.wa.send_message(
                to=to,
                text=text,
                buttons=[Button(title=b.label, callback_data=b.payload) for b in buttons],
            )
            return sent.id
        ref = ""
        for part in split_text(text):
            ref = (await self.wa.send_message(to=to, text=part)).id
        return ref

    async def edit_direct(
        self, user_id: str, message_ref: str, text: str, buttons: Sequence[ButtonSpec] = ()
    ) -> str:
        """WhatsApp cannot edit a sent message: a new one is posted; its id."""
        return await self.post_direct(user_id, text, buttons)

    async def _template(self, to: str, user_id: str, text: str, buttons: Sequence[ButtonSpec]) -> str:
        assert self.template is not None
        body = one_line(text)
        if len(body) > MAX_TEMPLATE_PARAM:
            raise ApproverUnreachable("outside_24h_window_too_long_for_template")
        sent = await self.wa.send_template(
            to=to,
            name=self.template.name,
            language=self.template.language,
            params=[
                {"type": "body", "parameters": [{"type": "text", "text": body}]},
                *(QuickReplyButton.params(callback_data=b.payload, index=i) for i, b in enumerate(buttons)),
            ],
        )
        log.info("notified %s with template %s (outside the 24-hour window)", user_id, self.template.name)
        return sent.id

    async def contact(self, user_id: str) -> Contact:
        """The requester's own number: WhatsApp verified it when they registered."""
        wa_id_of(user_id)
        return Contact(phone_number=user_id)
