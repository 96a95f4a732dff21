"""A local stand-in for Discord: the REST API (v10), a minimal gateway, and
builders for the events the real Discord would push.

The Discord connector runs on the real discord.py client; only the network
peer is fake. Point `discord.http.Route.BASE` at `FakeDiscord.api_base` and
every REST call the library makes (interaction callbacks included) lands here
and is recorded, so tests assert on what the bot actually sent: message text,
buttons, edits and interaction responses.

Events reach the bot in one of two ways:
- directly: build a MESSAGE_CREATE with `message_create` or an
  INTERACTION_CREATE with `FakeDiscord.button_press`, and hand it to the
  client's connection state (fast and deterministic);
- over the gateway: point `discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`
  at `gateway_url`; the fake answers HELLO / IDENTIFY / heartbeats and
  `dispatch` pushes events, so the connector's real `run` can be tested.

Discord's quirks that the fake reproduces because discord.py depends on them:
responses carry the content type exactly `application/json` (discord.py only
parses JSON when the header matches exactly), and interaction callbacks are
`POST /interactions/{id}/{token}/callback?with_response=1`.
"""

from __future__ import annotations

import copy
import itertools
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.connectors.conftest import CallLog

JSON = dict[str, Any]

BOT_ID = "1300000000000000001"
APPLICATION_ID = "1300000000000000002"
APP_OWNER_ID = "1300000000000000003"

# Discord's numbers (discord.com/developers/docs).
INTERACTION_COMPONENT = 3
COMPONENT_ACTION_ROW = 1
COMPONENT_BUTTON = 2
STYLE_SUCCESS = 3  # green
STYLE_DANGER = 4  # red
CHANNEL_DM = 1
CONTEXT_BOT_DM = 1
FLAG_EPHEMERAL = 64
CALLBACK_CHANNEL_MESSAGE = 4
CALLBACK_UPDATE_MESSAGE = 7
OP_DISPATCH = 0
OP_HEARTBEAT = 1
OP_IDENTIFY = 2
OP_HELLO = 10
OP_HEARTBEAT_ACK = 11
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15


def _now() -> str:
    return datetime.now(UTC).isoformat()


def user_payload(user_id: str, *, name: str = "", bot: bool = False) -> JSON:
    return {
        "id": user_id,
        "username": name or f"user{user_id[-4:]}",
        "global_name": None,
        "discriminator": "0",
        "avatar": None,
        "bot": bot,
        "public_flags": 0,
    }


@dataclass
class SentMessage:
    """A message the bot posted, as Discord stored it (edits applied)."""

    channel_id: str
    payload: JSON
    edits: list[JSON] = field(default_factory=list)

    @property
    def message_id(self) -> str:
        return str(self.payload["id"])

    @property
    def content(self) -> str:
        return str(self.payload.get("content", ""))

    @property
    def buttons(self) -> list[JSON]:
        """Every button on the message, in order."""
        return [c for row in self.payload.get("components", []) for c in row.get("components", [])]


@dataclass(frozen=True)
class InteractionCallback:
    """The bot's answer to one interaction."""

    interaction_id: str
    token: str
    type: int
    data: JSON

    @property
    def ephemeral(self) -> bool:
        return bool(int(self.data.get("flags", 0)) & FLAG_EPHEMERAL)


class FakeDiscord:
    """Serves the REST routes a bot needs for DMs, messages and buttons."""

    def __init__(self) -> None:
        # Calls are named after Discord's API reference (createMessage, ...); params
        # are the JSON body plus "path". Unserved routes are logged as "unknown".
        self.log = CallLog()
        self.messages: list[SentMessage] = []
        self.callbacks: list[InteractionCallback] = []
        self.unknown_users: set[str] = set()
        # Users whose DMs refuse the bot (no shared server, DMs closed): 403, code 50007.
        self.closed_dms: set[str] = set()
        self._dm_channels: dict[str, str] = {}
        self._pressed: dict[str, SentMessage] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._sequence = 0
        self._ids = itertools.count(1400000000000000000)
        self._runner: web.AppRunner | None = None
        self.port = 0

        app = web.Application()
        app.router.add_get("/api/v10/users/@me", self._me)
        app.router.add_get("/api/v10/oauth2/applications/@me", self._application)
        app.router.add_post("/api/v10/users/@me/channels", self._create_dm)
        app.router.add_get("/api/v10/users/{user_id}", self._user)
        app.router.add_post("/api/v10/channels/{channel_id}/messages", self._send)
        app.router.add_patch("/api/v10/channels/{channel_id}/messages/{message_id}", self._edit)
        app.router.add_post("/api/v10/interactions/{interaction_id}/{token}/callback", self._callback)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._app = app

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        """The value for `discord.http.Route.BASE`."""
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        """The value for `discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY` (as a yarl.URL)."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    async def dispatch(self, event: str, data: JSON) -> None:
        """Push a gateway dispatch (e.g. MESSAGE_CREATE) to every identified client."""
        for ws in self._sockets:
            self._sequence += 1
            await ws.send_json({"op": OP_DISPATCH, "t": event, "s": self._sequence, "d": data})

    # -- what the bot did ------------------------------------------------------

    def dm_channel_of(self, user_id: str) -> str:
        """The DM channel id the bot got (or will get) for this user."""
        if user_id not in self._dm_channels:
            self._dm_channels[user_id] = self._snowflake()
        return self._dm_channels[user_id]

    def sent_to(self, channel_id: str) -> list[SentMessage]:
        return [m for m in self.messages if m.channel_id == channel_id]

    def button_press(
        self, message: SentMessage, *, custom_id: str, user_id: str, user_name: str = ""
    ) -> JSON:
        """An INTERACTION_CREATE for a button on a message the bot sent in a DM.

        discord.py dispatches a DynamicItem only when the pressed custom_id is
        among the message's components, as it always is on the real Discord. A
        custom_id the bot never sent (a forged payload) is put on the message as
        an extra button, so the press reaches the bot the way a crafted client
        would make it.
        """
        payload = copy.deepcopy(message.payload)
        if custom_id not in {b.get("custom_id") for b in message.buttons}:
            forged = {"type": COMPONENT_BUTTON, "style": 2, "label": "forged", "custom_id": custom_id}
            payload["components"] = [
                *payload.get("components", []),
                {"type": COMPONENT_ACTION_ROW, "components": [forged]},
            ]
        interaction_id = self._snowflake()
        self._pressed[interaction_id] = message
        presser = user_payload(user_id, name=user_name)
        return {
            "id": interaction_id,
            "application_id": APPLICATION_ID,
            "type": INTERACTION_COMPONENT,
            "token": "itoken-" + secrets.token_hex(8),
            "version": 1,
            "channel_id": message.channel_id,
            "channel": {"id": message.channel_id, "type": CHANNEL_DM, "recipients": [presser]},
            "user": presser,
            "message": payload,
            "data": {"custom_id": custom_id, "component_type": COMPONENT_BUTTON},
            "locale": "en-US",
            "app_permissions": "0",
            "entitlements": [],
            "authorizing_integration_owners": {"1": user_id},
            "context": CONTEXT_BOT_DM,
            # Required since discord.py 2.6.
            "attachment_size_limit": 10 * 1024 * 1024,
        }

    # -- handlers --------------------------------------------------------------

    def _snowflake(self) -> str:
        return str(next(self._ids))

    async def _record(self, name: str, request: web.Request, body: JSON | None = None) -> None:
        """Log the call, after the fake's state reflects it, so waiters see both."""
        params = dict(body or {}) | {"path": f"{request.method} {request.path_qs}"}
        await self.log.record(name, params)

    @staticmethod
    async def _body(request: web.Request) -> JSON:
        raw = await request.read()
        body = json.loads(raw) if raw else {}
        assert isinstance(body, dict)
        return body

    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        # Exactly "application/json": json_response would add "; charset=utf-8".
        return web.Response(
            body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json"}
        )

    async def _me(self, request: web.Request) -> web.Response:
        await self._record("getCurrentUser", request)
        return self._json(user_payload(BOT_ID, name="authz-bot", bot=True) | {"verified": True, "flags": 0})

    async def _application(self, request: web.Request) -> web.Response:
        await self._record("getCurrentApplication", request)
        return self._json(
            {
                "id": APPLICATION_ID,
                "name": "authz-bot",
                "description": "",
                "icon": None,
                "bot_public": False,
                "bot_require_code_grant": False,
                "owner": user_payload(APP_OWNER_ID),
                "verify_key": secrets.token_hex(32),
                "flags": 0,
            }
        )

    async def _create_dm(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        user_id = str(body["recipient_id"])
        channel = {
            "id": self.dm_channel_of(user_id),
            "type": CHANNEL_DM,
            "last_message_id": None,
            "recipients": [user_payload(user_id)],
        }
        await self._record("createDM", request, body)
        return self._json(channel)

    async def _user(self, request: web.Request) -> web.Response:
        await self._record("getUser", request)
        user_id = request.match_info["user_id"]
        if not user_id.isdigit() or user_id in self.unknown_users:
            return self._json({"message": "Unknown User", "code": 10013}, status=404)
        return self._json(user_payload(user_id))

    def _message(self, channel_id: str, body: JSON) -> JSON:
        return {
            "id": self._snowflake(),
            "channel_id": channel_id,
            "type": 0,
            "author": user_payload(BOT_ID, name="authz-bot", bot=True),
            "content": body.get("content") or "",
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "flags": int(body.get("flags") or 0),
            "components": body.get("components") or [],
        }

    async def _send(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        channel_id = request.match_info["channel_id"]
        if any(self._dm_channels.get(u) == channel_id for u in self.closed_dms):
            await self._record("createMessage", request, body)
            return self._json({"message": "Cannot send messages to this user", "code": 50007}, status=403)
        message = self._message(request.match_info["channel_id"], body)
        self.messages.append(SentMessage(message["channel_id"], message))
        await self._record("createMessage", request, body)
        return self._json(message)

    async def _edit(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        found = next((m for m in self.messages if m.message_id == request.match_info["message_id"]), None)
        if found is not None:
            self._apply_edit(found, body)
        await self._record("editMessage", request, body)
        if found is None:
            return self._json({"message": "Unknown Message", "code": 10008}, status=404)
        return self._json(found.payload)

    @staticmethod
    def _apply_edit(message: SentMessage, body: JSON) -> None:
        message.edits.append(body)
        message.payload.update({k: v for k, v in body.items() if k in ("content", "components")})
        message.payload["edited_timestamp"] = _now()

    async def _callback(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        interaction_id = request.match_info["interaction_id"]
        callback = InteractionCallback(
            interaction_id, request.match_info["token"], int(body["type"]), body.get("data") or {}
        )
        self.callbacks.append(callback)
        pressed = self._pressed.get(interaction_id)
        if callback.type == CALLBACK_UPDATE_MESSAGE and pressed is not None:
            # What Discord does for UPDATE_MESSAGE: the pressed message is edited.
            self._apply_edit(pressed, callback.data)
        await self._record("createInteractionResponse", request, body)
        return self._json(
            {
                "interaction": {
                    "id": interaction_id,
                    "type": INTERACTION_COMPONENT,
                    "response_message_ephemeral": callback.ephemeral,
                }
            }
        )

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        """The gateway handshake: HELLO, then READY once the client identifies.

        Frames go out as plain JSON text, which discord.py accepts even when it
        asked for compression; heartbeats are acknowledged.
        """
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await self._record("gatewayConnect", request)
        await ws.send_json({"op": OP_HELLO, "d": {"heartbeat_interval": 45_000}})
        try:
            async for frame in ws:
                message = json.loads(frame.data)
                if message["op"] == OP_HEARTBEAT:
                    await ws.send_json({"op": OP_HEARTBEAT_ACK})
                elif message["op"] == OP_IDENTIFY:
                    self._sequence += 1
                    ready = {
                        "v": 10,
                        "user": user_payload(BOT_ID, name="authz-bot", bot=True),
                        "guilds": [],
                        "session_id": secrets.token_hex(8),
                        "resume_gateway_url": self.gateway_url,
                        "application": {"id": APPLICATION_ID, "flags": 0},
                    }
                    await ws.send_json({"op": OP_DISPATCH, "t": "READY", "s": self._sequence, "d": ready})
                    self._sockets.add(ws)
                    await self._record("identify", request, message["d"])
        finally:
            self._sockets.discard(ws)
            await self._record("gatewayClosed", request)
        return ws

    async def _unknown(self, request: web.Request) -> web.Response:
        await self._record("unknown", request)
        return self._json({"message": "404: Not Found", "code": 0}, status=404)


# -- gateway event payloads ------------------------------------------------------

_event_ids = itertools.count(1500000000000000000)


def message_create(
    *,
    author_id: str,
    channel_id: str,
    content: str,
    guild_id: str = "",
    mentions: tuple[str, ...] = (),
    author_name: str = "",
    author_is_bot: bool = False,
    reply_to: JSON | None = None,
) -> JSON:
    """A MESSAGE_CREATE dispatch. Without `guild_id` it is a direct message.

    `reply_to` is the message this one replies to (as `message_create` built it),
    embedded the way Discord embeds it.
    """
    data: JSON = {
        "id": str(next(_event_ids)),
        "channel_id": channel_id,
        "type": 19 if reply_to is not None else 0,  # REPLY or DEFAULT
        "author": user_payload(author_id, name=author_name, bot=author_is_bot),
        "content": content,
        "timestamp": _now(),
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [user_payload(m, bot=m == BOT_ID) for m in mentions],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": False,
        "flags": 0,
        "components": [],
    }
    if guild_id:
        data["guild_id"] = guild_id
    if reply_to is not None:
        data["message_reference"] = {"type": 0, "message_id": reply_to["id"], "channel_id": channel_id}
        data["referenced_message"] = reply_to
    return data
