"""The local send endpoint: how the agent runtime speaks outside a turn.

``POST /send`` JSON ``{"target", "text", "session_id"?}``. The origin of the send
(what the policy token ``origin`` means) is the chat of ``session_id`` if this
connector handed that session to the agent, else there is none: the connector
decides it, never the caller. An ``origin`` field is still accepted (older
runtimes send one) and ignored, with an info log line when it differs.

- 200 ``{"allow": true, "resolved_target": ...}``: delivered;
- 403 ``{"allow": false, "reason": ...}``: the send policy refused (e.g. ``origin``
  without a known session), or allowed without naming a conversation to deliver
  to; ``reason`` is written for the model to read; nothing was delivered;
- 400 ``{"allow": false, "reason": ...}``: malformed request (nothing delivered);
- 502 ``{"allow": true, "resolved_target": ..., "reason": ...}``: allowed, but the
  platform rejected the message;
- 503 ``{"allow": false, "reason": ...}``: the authz service is unreachable; nothing
  was delivered (fail closed).

``GET /healthz`` answers 200 ``{"ok": true}``.

It listens on loopback by default: anything that can reach it can make the bot
speak, within the send policy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web

from .config import parse_listen
from .runtime import Connector, DeliveryFailed, ServiceUnavailable

log = logging.getLogger("sidecars.http")

MAX_TEXT = 16_384
MAX_FIELD = 256
_CONNECTOR = web.AppKey("connector", Connector)


def build_app(connector: Connector) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[_CONNECTOR] = connector
    app.router.add_post("/send", _send)
    app.router.add_get("/healthz", _healthz)
    return app


@dataclass
class SendEndpoint:
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_send_endpoint(connector: Connector, listen: str) -> SendEndpoint:
    """Serve the endpoint on ``listen`` ("host:port"; port 0 picks a free port)."""
    host, port = parse_listen(listen)
    runner = web.AppRunner(build_app(connector), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = int(runner.addresses[0][1])
    log.info("send endpoint listening on %s:%s", host, bound)
    return SendEndpoint(runner, host, bound)


def _reject(status: int, reason: str) -> web.Response:
    return web.json_response({"allow": False, "reason": reason}, status=status)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _send(request: web.Request) -> web.Response:
    try:
        body: Any = await request.json()
    except ValueError:
        return _reject(400, "the body must be a JSON object")
    if not isinstance(body, dict):
        return _reject(400, "the body must be a JSON object")
    fields: dict[str, str] = {}
    for name, required, limit in (
        ("target", True, MAX_FIELD),
        ("text", True, MAX_TEXT),
        ("session_id", False, MAX_FIELD),
        ("origin", False, MAX_FIELD),
    ):
        value = body.get(name, "")
        if not isinstance(value, str):
            return _reject(400, f"'{name}' must be a string")
        if required and not value.strip():
            return _reject(400, f"'{name}' is required")
        if len(value) > limit:
            return _reject(400, f"'{name}' is longer than {limit} characters")
        fields[name] = value
    connector = request.app[_CONNECTOR]
    session = fields["session_id"]
    origin = connector.origin_of(session)
    if fields["origin"] and fields["origin"] != origin:
        log.info(
            "POST /send: ignored the caller's origin %r for session %r (the connector's: %r)",
            fields["origin"],
            session,
            origin or "none",
        )
    try:
        result = await connector.send(fields["target"], fields["text"], origin=origin, session_id=session)
    except ServiceUnavailable:
        return _reject(503, "the authorization service is unavailable; nothing was sent")
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return _reject(400, exc.details() or "invalid request")
        log.error("send refused by the service: %s %s", exc.code().name, exc.details())
        return _reject(503, "the authorization service refused the request; nothing was sent")
    except DeliveryFailed as exc:
        # EvaluateSend allowed it; the platform did not take it.
        log.error("%s", exc)
        return web.json_response(
            {"allow": True, "resolved_target": exc.resolved_target, "reason": str(exc)}, status=502
        )
    if not result.allow:
        return _reject(403, result.reason)
    return web.json_response({"allow": True, "resolved_target": result.resolved_target})
