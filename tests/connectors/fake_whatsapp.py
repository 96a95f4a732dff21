"""A local fake of the WhatsApp Cloud API (Graph API ``POST /{version}/{phone id}/messages``),
and builders for the signed webhook updates Meta posts to the connector.

The fake checks what the real API checks before it accepts a message (the
bearer token, reply-button limits, body lengths) and answers with a message id,
as the Cloud API does. It also keeps the 24-hour customer-service window the
way Meta does: a free-form message to someone who has not written in the last
24 hours is accepted by the API and fails later, so the fake accepts it too and
records it in ``window_violations`` for the tests to assert on. A person
"writes" when a test builds an inbound update for them with ``fake.inbound``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from typing import Any

from aiohttp import web

from tests.connectors.conftest import CallLog

API_VERSION = "v23.0"
PHONE_ID = "1122334455667"
DISPLAY_NUMBER = "15550001111"
WABA_ID = "5467539754836534"
TOKEN = "EAAG-test-access-token"
APP_SECRET = "test-app-secret"
VERIFY_TOKEN = "test-verify-token"
WINDOW = 24 * 3600


def error(status: int, code: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AbC"}}
    return web.json_response(body, status=status)


class FakeWhatsApp:
    def __init__(self) -> None:
        self.log = CallLog()
        self.last_wrote: dict[str, float] = {}  # wa_id -> when they last wrote
        self.window_violations: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{API_VERSION}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{version}/{phone_id}/messages", self._messages)
        app.router.add_get("/{version}/{phone_id}", self._phone_number)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def sent_to(self, wa_id: str) -> list[dict[str, Any]]:
        """Every message accepted for ``wa_id``, in order."""
        return [c.params for c in self.log.of("messages") if c.params.get("to") == wa_id]

    def texts_to(self, wa_id: str) -> list[str]:
        return [text_of(m) for m in self.sent_to(wa_id)]

    async def _phone_number(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return error(401, 190, "Invalid OAuth access token.")
        if request.match_info["phone_id"] != PHONE_ID:
            return error(400, 100, "Unsupported get request.")
        await self.log.record("phone_number", dict(request.query))
        return web.json_response(
            {"id": PHONE_ID, "display_phone_number": "+1 555-000-1111", "verified_name": "Authz"}
        )

    async def _messages(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return error(401, 190, "Invalid OAuth access token.")
        if request.match_info["version"] != API_VERSION or request.match_info["phone_id"] != PHONE_ID:
            return error(400, 100, "Unsupported post request.")
        body: dict[str, Any] = await request.json()
        problem = invalid(body)
        if problem:
            return error(400, 131009, f"Parameter value is not valid: {problem}")
        to = str(body["to"])
        if body["type"] != "template" and time.time() - self.last_wrote.get(to, float("-inf")) >= WINDOW:
            self.window_violations.append(body)
        await self.log.record("messages", body)
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to}],
                "messages": [{"id": f"wamid.out{next(self._ids)}"}],
            }
        )

    # ---- updates Meta posts to the webhook ------------------------------------------------

    def inbound(self, wa_id: str, message: dict[str, Any], *, name: str = "", at: float | None = None) -> str:
        """A signed-later webhook body: ``wa_id`` sent ``message`` (which opens their window)."""
        when = time.time() if at is None else at
        self.last_wrote[wa_id] = max(self.last_wrote.get(wa_id, 0.0), when)
        message = {"from": wa_id, "timestamp": str(int(when)), **message}
        contact = {"profile": {"name": name or "Test User"}, "wa_id": wa_id, "user_id": f"US.{wa_id}"}
        return envelope({"contacts": [contact], "messages": [message]})


def envelope(value: dict[str, Any], field: str = "messages") -> str:
    meta = {"display_phone_number": DISPLAY_NUMBER, "phone_number_id": PHONE_ID}
    change = {"value": {"messaging_product": "whatsapp", "metadata": meta, **value}, "field": field}
    return json.dumps(
        {"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes": [change]}]}
    )


def text(body: str, message_id: str) -> dict[str, Any]:
    return {"id": message_id, "type": "text", "text": {"body": body}}


def button_reply(button: dict[str, Any], message_id: str, context_id: str = "wamid.out1") -> dict[str, Any]:
    """A press on an interactive reply button (``button`` as the bot sent it)."""
    reply = {"id": button["reply"]["id"], "title": button["reply"]["title"]}
    return {
        "id": message_id,
        "context": {"from": DISPLAY_NUMBER, "id": context_id},
        "type": "interactive",
        "interactive": {"type": "button_reply", "button_reply": reply},
    }


def quick_reply(payload: str, title: str, message_id: str) -> dict[str, Any]:
    """A press on a template's quick-reply button."""
    return {"id": message_id, "type": "button", "button": {"payload": payload, "text": title}}


def status(wa_id: str, message_id: str, state: str = "delivered", *, contacts: bool = True) -> str:
    """A status update: sent / delivered / read (with the recipient's contact since the
    business-scoped ids; ``contacts=False``: the older shape)."""
    entry = {
        "id": message_id,
        "status": state,
        "timestamp": str(int(time.time())),
        "recipient_id": wa_id,
    }
    value: dict[str, Any] = {"statuses": [entry]}
    if contacts:
        value["contacts"] = [{"profile": {"name": "Test User"}, "wa_id": wa_id, "user_id": f"US.{wa_id}"}]
    return envelope(value)


def signature(body: str, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()


def text_of(message: dict[str, Any]) -> str:
    """The visible text of a sent message (text, interactive body or template variable)."""
    if message["type"] == "text":
        return str(message["text"]["body"])
    if message["type"] == "interactive":
        return str(message["interactive"]["body"]["text"])
    body = next(c for c in message["template"]["components"] if c["type"].lower() == "body")
    return str(body["parameters"][0]["text"])


def buttons_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    return list(message["interactive"]["action"]["buttons"])


def invalid(body: dict[str, Any]) -> str:
    """What the Cloud API would refuse in a message ("" = nothing)."""
    if body.get("messaging_product") != "whatsapp" or not str(body.get("to", "")).isdigit():
        return "to"
    if body["type"] == "text":
        return "" if 0 < len(body["text"]["body"]) <= 4096 else "text.body"
    if body["type"] == "interactive":
        interactive = body["interactive"]
        if interactive.get("type") != "button" or not 0 < len(interactive["body"]["text"]) <= 1024:
            return "interactive.body"
        buttons = interactive["action"]["buttons"]
        if not 1 <= len(buttons) <= 3:
            return "interactive.action.buttons"
        for b in buttons:
            if (
                b["type"] != "reply"
                or not 0 < len(b["reply"]["title"]) <= 20
                or not 0 < len(b["reply"]["id"]) <= 256
            ):
                return "interactive.action.buttons.reply"
        return ""
    if body["type"] == "template":
        for component in body["template"].get("components", []):
            for param in component.get("parameters", []):
                value = param.get("text", "")
                if "\n" in value or "\t" in value or "     " in value:
                    return "template.components.parameters.text"
        return ""
    return "type"
