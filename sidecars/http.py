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

Who may call it. Anything that can reach it could make the bot speak (within
the send policy), and a browser on the same machine can reach loopback, so:

- ``POST /send`` needs ``Authorization: Bearer <send token>`` (the config's
  ``send_token``, compared in constant time), else 401;
- a request with an ``Origin`` header (what browsers send with every cross-site
  ``fetch`` or form post) is refused with 403: the agent runtime is no browser;
- so is one whose ``Host`` is not loopback (``localhost``, 127.0.0.0/8, ``[::1]``)
  or the literal address the endpoint listens on: DNS rebinding, a web page that
  renames itself to 127.0.0.1, still sends its own name;
- the body must be ``Content-Type: application/json`` (415 otherwise), which a
  page cannot send cross-site without a preflight that it would fail.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web

from authz_service.client.plaintext import loopback_host

from .config import parse_listen
from .runtime import Connector, DeliveryFailed, ServiceUnavailable

log = logging.getLogger("sidecars.http")

MAX_TEXT = 16_384
MAX_FIELD = 256
_CONNECTOR = web.AppKey("connector", Connector)
_LISTEN_HOST = web.AppKey("listen_host", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(connector: Connector, listen_host: str = "127.0.0.1") -> web.Application:
    """The endpoint's routes; ``listen_host`` is the address it is bound to (a request
    naming that literal address in ``Host`` is accepted besides loopback names)."""
    if not connector.config.send_token:
        raise ValueError("the send endpoint needs a send token (ConnectorConfig.send_token)")
    app = web.Application(client_max_size=64 * 1024, middlewares=[_local_callers_only])
    app[_CONNECTOR] = connector
    app[_LISTEN_HOST] = listen_host
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
    runner = web.AppRunner(build_app(connector, host), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = int(runner.addresses[0][1])
    log.info("send endpoint listening on %s:%s", host, bound)
    return SendEndpoint(runner, host, bound)


def _reject(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"allow": False, "reason": reason}, status=status, headers=headers)


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP literal (``Host`` header form: IPv6 in brackets, a port),
    by the SDK's rule (``authz_service.client.plaintext.loopback_host``)."""
    return loopback_host(_host_name(host))


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() and ":" not in name else host


@web.middleware
async def _local_callers_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse browsers (``Origin``) and foreign names (``Host``) before anything else."""
    if "Origin" in request.headers:
        log.warning(
            "%s %s refused: the request has an Origin header (a browser)", request.method, request.path
        )
        return _reject(403, "requests from browsers are not accepted")
    host = request.headers.get("Host", "")
    listen = request.app[_LISTEN_HOST]
    if not (is_loopback_host(host) or (_is_ip(listen) and _host_name(host) == _host_name(listen))):
        log.warning("%s %s refused: Host is not a loopback address", request.method, request.path)
        return _reject(403, "the Host header must name a loopback address")
    return await handler(request)


def _is_ip(host: str) -> bool:
    try:
        address = ipaddress.ip_address(_host_name(host))
    except ValueError:
        return False
    return not address.is_unspecified  # 0.0.0.0 and :: are no name a client uses


def _authorized(request: web.Request) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = request.app[_CONNECTOR].config.send_token
    # compare_digest always runs, on bytes, so timing tells nothing about the token.
    match = hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected.encode())
    return match and scheme.lower() == "bearer"


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _send(request: web.Request) -> web.Response:
    if not _authorized(request):
        log.warning("POST /send refused: missing or wrong bearer token")
        return _reject(401, "a valid send token is required", {"WWW-Authenticate": "Bearer"})
    if request.content_type != "application/json":
        return _reject(415, "the body must be JSON (Content-Type: application/json)")
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
        # Never the session id: it is what lets a caller speak as that chat.
        log.info(
            "POST /send: ignored the caller's origin",
            extra={"caller_origin": fields["origin"], "origin": origin or "none"},
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
