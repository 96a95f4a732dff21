"""The HTTP/JSON API: every RPC of AuthzService and AdminService over the Connect
protocol (https://connectrpc.com/docs/protocol), served by the gRPC servicers
themselves.

A call here runs the very method the gRPC server runs, wrapped by ``rpc`` /
``rpc_stream``: the same API keys, role checks, validation, telemetry and the
one status map (``rpc.STATUS``). Only the transport differs: ``HttpCall`` stands
in for ``grpc.aio.ServicerContext`` (metadata from HTTP headers, the peer from
the socket, ``abort`` raising ``Aborted``), and this module turns the gRPC code
into the Connect error JSON and HTTP status.

Unary: ``POST /<package.Service>/<Method>`` with ``Content-Type:
application/json`` (proto3 JSON mapping) or ``application/proto``. Server
streams (WatchApproval, WatchApprovals, WatchChanges): ``application/connect+json``
or ``application/connect+proto`` enveloped messages, the last one the
end-of-stream frame (JSON) carrying the error, if any.
``GET /openapi.json`` describes it all (api.http_openapi, derived from the
descriptors).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import struct
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
from aiohttp import web
from google.protobuf import descriptor, json_format, message, message_factory

from .http_openapi import openapi_document

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024
"""As the gRPC server's grpc.max_receive_message_length: larger bodies are 413."""

# The Connect protocol's HTTP status for each code (connectrpc.com/docs/protocol#error-codes).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

# Request headers that become gRPC metadata: the API key and the trace context.
# Nothing else crosses over (no cookies: a browser must not authenticate by ambient credentials).
_METADATA_HEADERS = ("authorization", "traceparent", "tracestate")
_STREAM_END = 0x02


def connect_code(code: grpc.StatusCode) -> str:
    """``StatusCode.INVALID_ARGUMENT`` → ``invalid_argument`` (Connect's spelling)."""
    return code.name.lower() if code is not grpc.StatusCode.CANCELLED else "canceled"


class Aborted(Exception):
    """Raised by ``HttpCall.abort``: the call ended with a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message

    def body(self) -> dict[str, str]:
        return {"code": connect_code(self.code), "message": self.message}


class HttpCall:
    """The part of ``grpc.aio.ServicerContext`` that ``api.rpc`` uses, for one HTTP request."""

    def __init__(self, request: web.Request) -> None:
        self._metadata = tuple(
            (name, request.headers[name]) for name in _METADATA_HEADERS if name in request.headers
        )
        self._peer = _peer(request)

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: Any) -> NoReturn:
        raise Aborted(code, details)


def _peer(request: web.Request) -> str:
    """The socket's address in gRPC's spelling (``ipv4:10.0.0.7:51234``), so the
    failed-authentication throttle counts HTTP and gRPC callers alike. Behind a
    proxy this is the proxy: no forwarded header is trusted."""
    info = request.transport.get_extra_info("peername") if request.transport is not None else None
    if not info:
        return "unknown"
    host, port = info[0], info[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


@dataclass(frozen=True)
class Procedure:
    """One RPC as served here: its descriptor, message classes and servicer method."""

    method: descriptor.MethodDescriptor
    request_type: type[message.Message]
    call: Callable[[message.Message, Any], Any]

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"


def procedures(servicers: Iterable[tuple[descriptor.ServiceDescriptor, object]]) -> list[Procedure]:
    """Every method of every service, bound to the servicer's method of that name.
    A method the servicer lacks fails here, at start-up, not on a call."""
    out = []
    for service, servicer in servicers:
        for method in service.methods:
            call = getattr(type(servicer), method.name, None)
            if call is None or not callable(call):
                raise RuntimeError(f"{type(servicer).__name__} does not implement {method.name}")
            out.append(
                Procedure(
                    method,
                    message_factory.GetMessageClass(method.input_type),
                    getattr(servicer, method.name),
                )
            )
    return out


def _error(status: grpc.StatusCode, message_: str) -> web.Response:
    return web.json_response({"code": connect_code(status), "message": message_}, status=HTTP_STATUS[status])


def _decode(procedure: Procedure, content_type: str, body: bytes) -> message.Message:
    request = procedure.request_type()
    try:
        if content_type == "application/proto":
            request.ParseFromString(body)
        else:
            text = body.decode("utf-8")
            value = json.loads(text) if text.strip() else {}
            if not isinstance(value, dict):
                raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, "invalid request body: not a JSON object")
            # Unknown fields are refused, not dropped: a misspelt field must not pass silently.
            json_format.ParseDict(value, request)
    except (json_format.ParseError, message.DecodeError, ValueError, RecursionError) as exc:
        raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, f"invalid request body: {exc}") from None
    return request


def _to_json(response: message.Message) -> dict[str, Any]:
    return json_format.MessageToDict(response, preserving_proto_field_name=False)


def _unary(procedure: Procedure) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        content_type = request.content_type
        if content_type not in ("application/json", "application/proto"):
            return web.json_response(
                {"code": "invalid_argument", "message": "Content-Type must be application/json"},
                status=415,
            )
        try:
            body = await request.read()
            call_request = _decode(procedure, content_type, body)
            response = await procedure.call(call_request, HttpCall(request))
        except Aborted as exc:
            return _error(exc.code, exc.message)
        if content_type == "application/proto":
            return web.Response(body=response.SerializeToString(), content_type="application/proto")
        return web.json_response(_to_json(response))

    return handle


def _frame(flags: int, payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, separators=(",", ":")).encode()
    return struct.pack(">BI", flags, len(data)) + data


def _proto_frame(data: bytes) -> bytes:
    return struct.pack(">BI", 0, len(data)) + data


class _LastFrame:
    """The frame of the last message a stream wrote, by identity: a change sent
    to 1,000 WatchChanges streams is one message object (api.authz), so it is
    serialised once, not once per stream. Holding the message keeps it alive,
    so ``is`` never matches a new message at a recycled address."""

    def __init__(self) -> None:
        self._last: tuple[message.Message, bool, bytes] | None = None

    def get(self, item: message.Message, binary: bool) -> bytes:
        last = self._last
        if last is not None and last[0] is item and last[1] == binary:
            return last[2]
        frame = _proto_frame(item.SerializeToString()) if binary else _frame(0, _to_json(item))
        self._last = (item, binary, frame)
        return frame


_stream_frame = _LastFrame().get

_STREAM_TYPES = ("application/connect+json", "application/connect+proto")


async def _read_envelope(request: web.Request) -> bytes:
    body = await request.read()
    if len(body) < 5:
        raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, "a streaming request is one enveloped message")
    flags, length = struct.unpack(">BI", body[:5])
    if flags != 0 or length != len(body) - 5:
        raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, "a streaming request is one enveloped message")
    return body[5:]


def _server_stream(procedure: Procedure) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        content_type = request.content_type
        if content_type not in _STREAM_TYPES:
            return web.json_response(
                {
                    "code": "invalid_argument",
                    "message": "Content-Type must be application/connect+json or application/connect+proto",
                },
                status=415,
            )
        binary = content_type == "application/connect+proto"
        try:
            body = await _read_envelope(request)
            call_request = _decode(procedure, "application/proto" if binary else "application/json", body)
        except Aborted as exc:
            return _error(exc.code, exc.message)
        # The status is 200 once the stream starts; an error is in the end frame (Connect),
        # which is JSON whatever the messages' encoding.
        response = web.StreamResponse(headers={"Content-Type": content_type})
        stream: AsyncIterator[message.Message] = procedure.call(call_request, HttpCall(request))
        end: dict[str, Any] = {}
        try:
            async for item in stream:
                if not response.prepared:
                    await response.prepare(request)
                await response.write(_stream_frame(item, binary))
        except Aborted as exc:
            if not response.prepared:  # refused before it started: an ordinary error answer
                return _error(exc.code, exc.message)
            end = {"error": exc.body()}
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # leaves the stream's slot (api.streams)
        if not response.prepared:
            await response.prepare(request)
        await response.write(_frame(_STREAM_END, end))
        await response.write_eof()
        return response

    return handle


def build_app(
    servicers: Iterable[tuple[descriptor.ServiceDescriptor, object]],
    console: Callable[[web.Application], None] | None = None,
) -> web.Application:
    """The aiohttp application: one POST route per RPC and ``GET /openapi.json``;
    ``console`` adds the web console's routes (api.console.add_console)."""
    servicers = list(servicers)
    app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
    for procedure in procedures(servicers):
        handler = _server_stream(procedure) if procedure.method.server_streaming else _unary(procedure)
        app.router.add_post(procedure.path, handler)
    document = json.dumps(openapi_document([service for service, _ in servicers]), indent=2)

    async def openapi(_: web.Request) -> web.Response:
        return web.Response(text=document, content_type="application/json")

    app.router.add_get("/openapi.json", openapi)
    if console is not None:
        console(app)
    return app


def server_ssl_context(
    certificate_chain: bytes, private_key: bytes, client_ca: bytes | None
) -> ssl.SSLContext:
    """The gRPC server's TLS settings (AUTHZ_TLS_*) as an SSL context; with a client
    CA, a client certificate is required, as for gRPC."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # ssl loads a certificate and key only from files: a private folder, removed at once.
    with tempfile.TemporaryDirectory(prefix="authz-tls-") as folder:
        cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        for path, data in ((cert, certificate_chain), (key, private_key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cadata=client_ca.decode())
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class HttpServer:
    """The HTTP listener (AUTHZ_HTTP_LISTEN) of one process."""

    def __init__(self, app: web.Application, grace: float = 5.0) -> None:
        # Handlers are cancelled when their client goes away, so a watch ends with it; on
        # stop, calls still running after ``grace`` seconds (open watches) are cancelled.
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=grace)
        self.port = 0

    async def start(
        self, address: str, ssl_context: ssl.SSLContext | None = None, *, reuse_port: bool = False
    ) -> int:
        host, _, port = address.rpartition(":")
        await self.runner.setup()
        site = web.TCPSite(
            self.runner, host.strip("[]"), int(port), ssl_context=ssl_context, reuse_port=reuse_port or None
        )
        await site.start()
        # Port 0 picks a free port: the bound one is on the listening socket.
        sockets = getattr(site._server, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1] if sockets else int(port)
        return self.port

    async def stop(self) -> None:
        await self.runner.cleanup()
