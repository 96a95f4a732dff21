"""The WhatsApp webhook, translated for the shared flow.

Meta calls one URL (``/whatsapp/webhook`` on ``whatsapp.listen``):

- ``GET``: the verification handshake when the URL is set up. The
  ``hub.verify_token`` is compared with the configured one in constant time
  (pywa's ``webhook_challenge_handler`` uses ``==``, so it is not used here);
  the ``hub.challenge`` is echoed only on a match.
- ``POST``: updates. pywa checks ``X-Hub-Signature-256`` (HMAC-SHA256 of the
  exact body with the app secret, ``hmac.compare_digest``) before anything is
  parsed; an unsigned or mis-signed request gets 401/403 and reaches nothing.
  pywa then parses the update and calls the handlers below: messages and
  button presses. Status updates (sent, delivered, read) are dropped, after the
  signature check and without a log line.

Meta re-delivers an update it thinks was not received. pywa skips a
byte-identical body; this module also remembers the last
:data:`MAX_SEEN` message ids, so a re-delivery in another envelope is
processed once too. Messages and presses are handled after the 200 answer: an
agent may take longer than Meta waits, and a slow answer is what makes it
re-deliver.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections import OrderedDict
from typing import Any

from aiohttp import web
from pywa_async.client import WhatsApp
from pywa_async.handlers import CallbackButtonHandler, MessageHandler
from pywa_async.types.callback import CallbackButton
from pywa_async.types.chat import ChatType
from pywa_async.types.message import Message
from pywa_async.types.others import MessageType
from pywa_async.utils import HUB_SIG

from ..runtime import Connector, Inbound
from ..webhook_server import WebhookServer
from .transport import CustomerWindow, user_id_of

log = logging.getLogger("sidecars.whatsapp")

WEBHOOK_PATH = "/whatsapp/webhook"
"""The callback URL's path, in the Meta app's WhatsApp > Configuration."""

MAX_SEEN = 10_000
"""Message ids remembered to drop re-deliveries (the oldest is forgotten first)."""

# Messages routed to the flow (their text or caption; "" for media without one).
# Reactions, edits, deletions and system notices are not turns.
ROUTED = frozenset(
    {
        MessageType.TEXT,
        MessageType.IMAGE,
        MessageType.VIDEO,
        MessageType.DOCUMENT,
        MessageType.AUDIO,
        MessageType.STICKER,
        MessageType.LOCATION,
        MessageType.CONTACTS,
    }
)
_MAX_BODY = 1024 * 1024


def only_statuses(body: bytes) -> bool:
    """True for an update that carries delivery statuses and nothing else.

    Dropped before pywa parses it: older status payloads have no ``contacts``,
    on which pywa logs an error, and a status is nothing the connector acts on."""
    try:
        update = json.loads(body)
        values = [change["value"] for entry in update["entry"] for change in entry["changes"]]
    except (ValueError, TypeError, KeyError):
        return False  # pywa answers malformed bodies itself
    return bool(values) and all(
        isinstance(v, dict) and "statuses" in v and not v.get("messages") for v in values
    )


class SeenIds:
    """A bounded memory of delivered ids: True the first time an id is offered."""

    def __init__(self, size: int = MAX_SEEN) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def first(self, item_id: str) -> bool:
        if item_id in self._ids:
            self._ids.move_to_end(item_id)
            return False
        self._ids[item_id] = None
        while len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True


class WhatsAppBot:
    """The pywa client wired to a :class:`Connector`, and the webhook serving it."""

    def __init__(self, connector: Connector, wa: WhatsApp, verify_token: str, window: CustomerWindow) -> None:
        self.connector = connector
        self.wa = wa
        self.window = window
        self._verify_token = verify_token.encode()
        self._seen = SeenIds()
        self._server = WebhookServer("whatsapp webhook", log)
        wa.add_handlers(MessageHandler(self._on_message), CallbackButtonHandler(self._on_press))

    def web_app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_get(WEBHOOK_PATH, self._verify)
        app.router.add_post(WEBHOOK_PATH, self._update)
        return app

    async def start(self, listen: str) -> int:
        """Serve the webhook on ``listen`` ("host:port", 0 = any); return the port."""
        return await self._server.start(self.web_app(), listen, WEBHOOK_PATH)

    async def close(self) -> None:
        """Stop listening, then let accepted updates finish (bounded)."""
        await self._server.close()

    async def drain(self) -> None:
        """Wait for every accepted update to be handled (tests, shutdown)."""
        await self._server.drain()

    # ---- HTTP ------------------------------------------------------------------------

    async def _verify(self, request: web.Request) -> web.Response:
        mode = request.query.get("hub.mode", "")
        token = request.query.get("hub.verify_token", "").encode()
        challenge = request.query.get("hub.challenge", "")
        if mode == "subscribe" and hmac.compare_digest(token, self._verify_token):
            log.info("webhook verified by Meta")
            return web.Response(text=challenge)
        log.warning("webhook verification refused: wrong verify token")
        return web.Response(status=403, text="Forbidden")

    async def _update(self, request: web.Request) -> web.Response:
        body = await request.read()
        signature = request.headers.get(HUB_SIG, "")
        if not signature.isascii():  # compare_digest refuses non-ASCII text with a TypeError
            signature = "invalid"
        refused = await self.wa.webhook_update_validator(body, signature)
        if refused is not None:
            text, status = refused
            return web.Response(status=status, text=text)
        if only_statuses(body):
            return web.Response(text="ok")
        text, status = await self.wa.webhook_update_handler(body)
        return web.Response(status=status, text=text)

    # ---- updates -----------------------------------------------------------------------

    async def _on_message(self, _: object, msg: Message) -> None:
        user_id = self._sender(msg.from_user.wa_id, msg.id)
        if user_id is None:
            return
        if msg.chat.type != ChatType.PRIVATE:
            log.info("ignored a group message from %s: only direct messages are routed", user_id)
            return
        self.window.wrote(user_id, msg.timestamp.timestamp())
        if msg.type not in ROUTED:
            return
        text = msg.text or getattr(msg, "caption", None) or ""
        inbound = Inbound(
            user_id=user_id,
            chat_id=user_id,
            chat_kind="direct",
            text=text,
            display_name=msg.from_user.name or "",
        )
        self._server.spawn(self.connector.handle_message(inbound))

    async def _on_press(self, _: object, press: CallbackButton[Any]) -> None:
        user_id = self._sender(press.from_user.wa_id, press.id)
        if user_id is None:
            return
        self.window.wrote(user_id, press.timestamp.timestamp())
        self._server.spawn(self._press(str(press.data or ""), user_id))

    def _sender(self, wa_id: str | None, message_id: str) -> str | None:
        """The sender's authz user id, or None for a re-delivery or a sender without a number."""
        if not self._seen.first(message_id):
            log.info("ignored a re-delivered WhatsApp message")
            return None
        try:
            return user_id_of(wa_id)
        except ValueError:
            # A WhatsApp username hides the number: the service knows users by number only.
            log.warning("ignored a WhatsApp message from a sender without a phone number")
            return None

    async def _press(self, payload: str, presser: str) -> None:
        result = await self.connector.handle_press(payload, presser)
        if not result.owner_text or (result.ok and not result.edit):
            # Resolved, and the outbox posts every approver's copy anew (the presser's too).
            return
        # WhatsApp cannot edit the notification: the outcome (or the refusal) is a new message.
        try:
            await self.connector.transport.send_text(presser, result.owner_text)
        except Exception as exc:
            log.error("could not show %s the outcome of a button press: %s", presser, type(exc).__name__)
