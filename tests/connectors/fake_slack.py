"""A local fake of the Slack Web API, and signed requests into a bolt app.

`FakeSlack` is an aiohttp server on port 0 that the real ``AsyncWebClient``
talks to (POST, or GET as for ``users.info``) (``base_url=fake.base_url``). It records every call in ``fake.log``
(query, form and JSON arguments merged), so tests assert on what the bot
actually sent, and it refuses what Slack would refuse: a wrong bot token, a
message without text, malformed Block Kit buttons, an update of a message that
was never posted.

``users.info`` answers for every member id: with ``profile.email`` (and
``is_email_confirmed``) for users registered with ``add_user(id, email=...)``,
without it for others, and for nobody when the token lacks the
``users:read.email`` scope (``email_scope = False``). Any method can be made to
fail (``fail(method, error)``: ``{"ok": false, "error": error}``) or to hang
until the fake closes (``stall(method)``). ``conversations.open`` refuses users
in ``disabled`` (``user_disabled``). ``chat.update`` edits the stored message:
``messages`` always reads as the user sees it now.

The other half builds what Slack sends to the app: Events API callbacks (JSON)
and ``block_actions`` interactions (form-encoded ``payload=``), signed with
the app's signing secret exactly as Slack signs them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from tests.connectors.conftest import CallLog

TEAM_ID = "T0FAKE01"
BOT_USER_ID = "U0BOT0001"
BOT_ID = "B0BOT0001"
APP_ID = "A0FAKE01"

_BUTTON_STYLES = {"primary", "danger"}


class FakeSlack:
    """The Slack Web API methods a connector uses, served on 127.0.0.1:0."""

    def __init__(self, bot_token: str, team_id: str = TEAM_ID) -> None:
        self.bot_token = bot_token
        self.team_id = team_id
        self.log = CallLog()
        # (channel, ts) -> the message as Slack would store it.
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self._ts = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0
        # Slack user id -> fields of its users.info user object (profile.email included).
        self.users: dict[str, dict[str, Any]] = {}
        self.email_scope = True
        self._failures: dict[str, str] = {}
        # Slack user ids conversations.open refuses ("user_disabled": a deactivated account).
        self.disabled: set[str] = set()
        self._stalled: set[str] = set()
        self._release = asyncio.Event()
        self._methods: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
            "auth.test": self._auth_test,
            "conversations.open": self._conversations_open,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.postEphemeral": self._post_ephemeral,
            "users.info": self._users_info,
        }

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/{method}", self._handle)
        app.router.add_get("/api/{method}", self._handle)  # users.info is a GET in slack_sdk
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def add_user(self, user_id: str, email: str = "", **fields: Any) -> None:
        """A workspace member with ``email`` (confirmed unless ``is_email_confirmed=False``);
        ``fields`` override the rest of the user object, e.g. ``deleted=True``."""
        self.users[user_id] = {"email": email, "is_email_confirmed": bool(email), **fields}

    def fail(self, method: str, error: str) -> None:
        """From now on ``method`` answers ``{"ok": false, "error": error}``."""
        self._failures[method] = error

    def stall(self, method: str) -> None:
        """From now on ``method`` never answers (until the fake closes)."""
        self._stalled.add(method)

    def last_message(self, channel: str) -> dict[str, Any]:
        """The newest message the bot posted in ``channel``, with its ``channel``."""
        ts = max(ts for (ch, ts) in self.messages if ch == channel)
        return {**self.messages[(channel, ts)], "channel": channel}

    # -- the Web API ---------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json())
        elif request.content_type == "application/x-www-form-urlencoded":
            args.update(await request.post())
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else str(args.pop("token", ""))
        if method in self._stalled:
            await self.log.record(method, args)
            await self._release.wait()
            return web.json_response({"ok": False, "error": "fatal_error"})
        if token != self.bot_token:
            result: dict[str, Any] = {"ok": False, "error": "invalid_auth"}
        elif method in self._failures:
            result = {"ok": False, "error": self._failures[method]}
        else:
            handler = self._methods.get(method)
            result = handler(args) if handler else {"ok": False, "error": "unknown_method"}
        await self.log.record(method, args)
        return web.json_response(result)

    def _next_ts(self) -> str:
        return f"1700000000.{next(self._ts):06d}"

    def _auth_test(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://fake.slack.test/",
            "team": "Fake",
            "user": "authzbot",
            "team_id": self.team_id,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _conversations_open(self, args: Mapping[str, Any]) -> dict[str, Any]:
        users = str(args.get("users", ""))
        if not users or "," in users:
            return {"ok": False, "error": "users_list_not_supplied"}
        if users in self.disabled:
            return {"ok": False, "error": "user_disabled"}
        return {"ok": True, "channel": {"id": dm_channel(users)}}

    def _post_message(self, args: Mapping[str, Any]) -> dict[str, Any]:
        channel = str(args.get("channel", ""))
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        blocks = args.get("blocks")
        if not args.get("text") and not blocks:
            return {"ok": False, "error": "no_text"}
        if blocks is not None and not valid_blocks(blocks):
            return {"ok": False, "error": "invalid_blocks"}
        ts = self._next_ts()
        message = {
            "type": "message",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "text": args.get("text", ""),
            "ts": ts,
            "blocks": blocks or [],
        }
        self.messages[(channel, ts)] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _update(self, args: Mapping[str, Any]) -> dict[str, Any]:
        key = (str(args.get("channel", "")), str(args.get("ts", "")))
        if key not in self.messages:
            return {"ok": False, "error": "message_not_found"}
        blocks = args.get("blocks")
        if blocks is not None and not valid_blocks(blocks):
            return {"ok": False, "error": "invalid_blocks"}
        message = self.messages[key]
        if "text" in args:
            message["text"] = args["text"]
        if blocks is not None:
            message["blocks"] = blocks
        return {"ok": True, "channel": key[0], "ts": key[1], "text": message["text"], "message": message}

    def _users_info(self, args: Mapping[str, Any]) -> dict[str, Any]:
        user = str(args.get("user", ""))
        if not user.startswith(("U", "W")):
            return {"ok": False, "error": "user_not_found"}
        known = dict(self.users.get(user, {}))
        email = known.pop("email", "")
        profile: dict[str, Any] = {
            "real_name": user.lower(),
            "display_name": user.lower(),
            "team": self.team_id,
        }
        if email and self.email_scope:
            profile["email"] = email
        member = {
            "id": user,
            "team_id": self.team_id,
            "name": user.lower(),
            "deleted": False,
            "is_bot": False,
            "is_email_confirmed": False,
            "profile": profile,
            **known,
        }
        return {"ok": True, "user": member}

    def _post_ephemeral(self, args: Mapping[str, Any]) -> dict[str, Any]:
        if not args.get("channel") or not args.get("user"):
            return {
                "ok": False,
                "error": "channel_not_found" if not args.get("channel") else "user_not_found",
            }
        if not args.get("text") and not args.get("blocks"):
            return {"ok": False, "error": "no_text"}
        return {"ok": True, "message_ts": self._next_ts()}


def dm_channel(user_id: str) -> str:
    """The fake's DM conversation id with a Slack user ("U123" -> "DU123")."""
    return "D" + user_id


def valid_blocks(blocks: Any) -> bool:
    """Slack's limits for the blocks a connector sends: sections and buttons."""
    if not isinstance(blocks, list) or len(blocks) > 50:
        return False
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "section":
            text = block.get("text") or {}
            if text.get("type") not in ("plain_text", "mrkdwn") or not 0 < len(text.get("text", "")) <= 3000:
                return False
        elif kind == "actions":
            elements = block.get("elements") or []
            if not 0 < len(elements) <= 25:
                return False
            ids = [e.get("action_id") for e in elements]
            if len(set(ids)) != len(ids) or not all(_valid_button(e) for e in elements):
                return False
        else:
            return False
    return True


def _valid_button(element: Mapping[str, Any]) -> bool:
    text = element.get("text") or {}
    return (
        element.get("type") == "button"
        and text.get("type") == "plain_text"
        and 0 < len(text.get("text", "")) <= 75
        and 0 < len(element.get("action_id", "")) <= 255
        and len(element.get("value", "")) <= 2000
        and element.get("style", "primary") in _BUTTON_STYLES
    )


# -- what Slack sends to the app ---------------------------------------------


def sign(secret: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    """Slack's v0 request signature headers for exactly ``body``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


_event_ids = itertools.count(1)


def event_callback(event: Mapping[str, Any], team_id: str = TEAM_ID) -> str:
    """An Events API ``event_callback`` body (JSON) wrapping ``event``."""
    n = next(_event_ids)
    return json.dumps(
        {
            "token": "unused-verification-token",
            "team_id": team_id,
            "api_app_id": APP_ID,
            "event": {"team": team_id, "event_ts": event.get("ts", ""), **event},
            "type": "event_callback",
            "event_id": f"Ev{n:08d}",
            "event_time": int(time.time()),
            "authorizations": [
                {"team_id": team_id, "user_id": BOT_USER_ID, "is_bot": True, "is_enterprise_install": False}
            ],
        }
    )


def message(user: str, text: str, *, channel: str = "", channel_type: str = "im") -> str:
    """A ``message`` event from ``user``; a DM with the bot unless ``channel_type`` says otherwise."""
    ts = f"1710000000.{next(_event_ids):06d}"
    event = {
        "type": "message",
        "user": user,
        "text": text,
        "ts": ts,
        "channel": channel or dm_channel(user),
        "channel_type": channel_type,
    }
    return event_callback(event)


def app_mention(user: str, text: str, channel: str) -> str:
    """An ``app_mention`` event: the bot was @-mentioned in a channel."""
    ts = f"1710000000.{next(_event_ids):06d}"
    return event_callback(
        {
            "type": "app_mention",
            "user": user,
            "text": f"<@{BOT_USER_ID}> {text}",
            "ts": ts,
            "channel": channel,
        }
    )


def block_actions(
    presser: str, posted: Mapping[str, Any], button: Mapping[str, Any], team_id: str = TEAM_ID
) -> str:
    """The form body Slack sends when ``presser`` clicks ``button`` on ``posted``.

    ``posted`` is the fake's stored message (``FakeSlack.messages`` value plus
    its ``channel``), so the payload quotes what the bot really posted.
    """
    channel, ts = posted["channel"], posted["ts"]
    block_id = next(
        b.get("block_id", "")
        for b in posted["blocks"]
        if any(e.get("action_id") == button["action_id"] for e in b.get("elements", []))
    )
    payload = {
        "type": "block_actions",
        "user": {"id": presser, "username": presser.lower(), "team_id": team_id},
        "api_app_id": APP_ID,
        "token": "unused-verification-token",
        "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
        "trigger_id": "1.2.3",
        "team": {"id": team_id, "domain": "fake"},
        "is_enterprise_install": False,
        "channel": {"id": channel, "name": "directmessage"},
        "message": {k: v for k, v in posted.items() if k != "channel"},
        "response_url": "https://hooks.slack.test/actions/unused",
        "actions": [
            {
                "type": "button",
                "action_id": button["action_id"],
                "block_id": block_id,
                "text": button["text"],
                "value": button.get("value", ""),
                "style": button.get("style", ""),
                "action_ts": str(time.time()),
            }
        ],
    }
    return urlencode({"payload": json.dumps(payload)})
