"""A local fake of the Telegram Bot API (``POST /bot{token}/{method}``).

It records every call (form values arrive as strings; ``reply_markup`` is
decoded from JSON), answers ``sendMessage`` / ``editMessageText`` with real
Message objects, and serves queued updates through ``getUpdates`` without long
polling. Helpers build the Update payloads tests feed to the bot.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

from aiohttp import web

from tests.connectors.conftest import CallLog

BOT_ID = 777000111
BOT_USERNAME = "authz_test_bot"
TOKEN = "123456:TEST-token"


class FakeTelegram:
    def __init__(self, *, fail_send_to: set[str] | None = None) -> None:
        self.log = CallLog()
        self.fail_send_to = fail_send_to or set()
        self._message_ids = itertools.count(1)
        self._updates: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.edits: list[dict[str, Any]] = []  # every edited Message, as it reads after the edit
        self.deleted: set[tuple[int, int]] = set()  # (chat id, message id) an edit cannot find
        self._new_update = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def push_update(self, update: dict[str, Any]) -> None:
        """Queue an update for the next getUpdates."""
        self._updates.append(update)
        self._new_update.set()

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != TOKEN:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        method = request.match_info["method"]
        if request.content_type == "application/json":
            params: dict[str, Any] = await request.json()
        else:
            params = dict(await request.post())
        if isinstance(params.get("reply_markup"), str):
            params["reply_markup"] = json.loads(params["reply_markup"])
        await self.log.record(method, params)
        result: Any = True
        if method == "getMe":
            result = {"id": BOT_ID, "is_bot": True, "first_name": "Authz", "username": BOT_USERNAME}
        elif method == "getUpdates":
            result = await self._get_updates(int(params.get("offset", 0) or 0))
        elif method in ("sendMessage", "editMessageText", "editMessageReplyMarkup"):
            if str(params.get("chat_id")) in self.fail_send_to:
                return web.json_response(
                    {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}, status=400
                )
            if (
                method != "sendMessage"
                and (int(params["chat_id"]), int(params["message_id"])) in self.deleted
            ):
                return web.json_response(
                    {"ok": False, "error_code": 400, "description": "Bad Request: message to edit not found"},
                    status=400,
                )
            if method == "sendMessage":
                result = self._message(params)
                self.messages.append(result)
            else:
                result = self._edit(method, params)
        return web.json_response({"ok": True, "result": result})

    async def _get_updates(self, offset: int) -> list[dict[str, Any]]:
        # Answer at once (a short wait at most): a long poll would block updater.stop().
        if not any(u["update_id"] >= offset for u in self._updates):
            self._new_update.clear()
            try:
                async with asyncio.timeout(0.1):
                    await self._new_update.wait()
            except TimeoutError:
                return []
        return [u for u in self._updates if u["update_id"] >= offset]

    def _message(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        message: dict[str, Any] = {
            "message_id": int(params.get("message_id") or next(self._message_ids)),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup"},
            "from": {"id": BOT_ID, "is_bot": True, "first_name": "Authz", "username": BOT_USERNAME},
            "text": params.get("text", ""),
        }
        if params.get("reply_markup"):
            message["reply_markup"] = params["reply_markup"]
        return message

    def _edit(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Apply an edit to the message sent earlier (if this fake sent it) and record it."""
        chat_id, message_id = int(params["chat_id"]), int(params["message_id"])
        index = next(
            (
                i
                for i, m in enumerate(self.messages)
                if (m["chat"]["id"], m["message_id"]) == (chat_id, message_id)
            ),
            None,
        )
        message = dict(self.messages[index]) if index is not None else self._message(params)
        if method == "editMessageText":
            message["text"] = params.get("text", "")
        message.pop("reply_markup", None)
        if params.get("reply_markup"):
            message["reply_markup"] = params["reply_markup"]
        if index is not None:  # a new dict: a test's earlier copy of the message stays as it was
            self.messages[index] = message
        self.edits.append(dict(message))
        return message

    # ---- what the bot sent ------------------------------------------------------

    def messages_to(self, chat_id: int | str) -> list[dict[str, Any]]:
        """The Message objects the bot sent to ``chat_id`` (text, reply_markup), in order."""
        return [m for m in self.messages if m["chat"]["id"] == int(chat_id)]

    def texts(self, chat_id: int | str) -> list[str]:
        return [m["text"] for m in self.messages_to(chat_id)]


_update_ids = itertools.count(1)


def _user(user_id: int, name: str, username: str = "") -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": name} | ({"username": username} if username else {})


def message_update(
    user_id: int,
    text: str,
    *,
    chat_id: int | None = None,
    chat_type: str = "private",
    name: str = "Alice",
    username: str = "",
    entities: list[dict[str, Any]] | None = None,
    reply_to_bot: bool = False,
) -> dict[str, Any]:
    chat_id = user_id if chat_id is None else chat_id
    message: dict[str, Any] = {
        "message_id": next(_update_ids),
        "date": int(time.time()),
        "chat": {"id": chat_id, "type": chat_type} | ({"title": "Group"} if chat_type != "private" else {}),
        "from": _user(user_id, name, username),
        "text": text,
    }
    if text.startswith("/"):
        command = text.split()[0]
        entities = [{"type": "bot_command", "offset": 0, "length": len(command)}, *(entities or [])]
    if entities:
        message["entities"] = entities
    if reply_to_bot:
        message["reply_to_message"] = {
            "message_id": 1,
            "date": int(time.time()),
            "chat": message["chat"],
            "from": {"id": BOT_ID, "is_bot": True, "first_name": "Authz", "username": BOT_USERNAME},
            "text": "earlier",
        }
    return {"update_id": next(_update_ids), "message": message}


def callback_update(presser_id: int, message: dict[str, Any], data: str) -> dict[str, Any]:
    """A press on one of ``message``'s inline buttons by ``presser_id``."""
    return {
        "update_id": next(_update_ids),
        "callback_query": {
            "id": str(next(_update_ids)),
            "from": _user(presser_id, "Presser"),
            "chat_instance": "ci",
            "message": message,
            "data": data,
        },
    }
