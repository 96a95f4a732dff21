"""The change stream over the service's HTTP listener (issue #21).

``WatchChanges`` is also served by the HTTP/JSON API (``AUTHZ_HTTP_LISTEN``,
api/http.py) as a Connect server stream: one HTTP/1.1 response whose chunks
carry enveloped ``WatchChangesResponse`` messages (``application/connect+proto``),
the last frame the end of the stream with its error, if any. The same handler
as over gRPC answers it (keys, roles, stream caps, revocation).

Read here by an ``asyncio.Protocol``: each message is handled in the socket's
own callback, with no task woken per message. A change fanned out to 1,000
edges costs the service about half, and the edge about a third, of the gRPC
stream's CPU per message (docs/performance.md), which is what keeps the
revocation bound when one process serves many streams. Anything unexpected (a status other than 200, a
content type, a frame that does not parse, a compressed frame) ends the stream:
the edge drops every answer and opens another, as for any stream error.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from google.protobuf.message import DecodeError

from ..gen.authz.v1 import authz_pb2

PATH = "/authz.v1.AuthzService/WatchChanges"
MAX_HEAD = 16 * 1024
MAX_FRAME = 4 * 1024 * 1024
_END_STREAM = 0x02
_COMPRESSED = 0x01
# The HTTP statuses after which the next try waits long (as gRPC's UNIMPLEMENTED
# and PERMISSION_DENIED): the service does not serve the stream to this key here.
LONG_PAUSE_STATUSES = frozenset({403, 404, 405, 415, 501})
# The same for the Connect codes of an end frame (gRPC's UNIMPLEMENTED, PERMISSION_DENIED).
LONG_PAUSE_CODES = frozenset({"unimplemented", "permission_denied"})
_HEX = re.compile(rb"[0-9A-Fa-f]{1,8}")
_STATUS_LINE = re.compile(r"HTTP/1\.[01] ([0-9]{3})(?: .*)?")


def check_url(url: str) -> SplitResult:
    """``url`` split, or ValueError saying what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("change stream URL must be http://host:port or https://host:port")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("change stream URL takes no query, fragment or credentials")
    parts.port  # noqa: B018 - raises ValueError for a port out of range
    return parts


@dataclass(frozen=True)
class HttpTarget:
    """Where and how to open the stream: ``of`` builds it from a URL."""

    host: str
    port: int
    authority: str
    path: str
    api_key: str = field(repr=False)
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def of(cls, url: str, api_key: str, ssl_context: ssl.SSLContext | None = None) -> HttpTarget:
        """``http://host:port`` or ``https://host:port`` (a path prefix is kept,
        for a proxy that serves the API under one). With https and no context,
        the system's roots verify the server."""
        parts = check_url(url)
        if not api_key or not api_key.isascii() or not api_key.isprintable() or " " in api_key:
            raise ValueError("the API key must be printable ASCII without spaces")
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        context = (ssl_context or ssl.create_default_context()) if https else None
        host = parts.hostname
        assert host is not None  # check_url
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return cls(host, port, authority, parts.path.rstrip("/") + PATH, api_key, context)

    def request(self) -> bytes:
        # One enveloped, empty WatchChangesRequest.
        body = struct.pack(">BI", 0, 0)
        head = (
            f"POST {self.path} HTTP/1.1\r\n"
            f"Host: {self.authority}\r\n"
            "Content-Type: application/connect+proto\r\n"
            "Connect-Protocol-Version: 1\r\n"
            f"Authorization: Bearer {self.api_key}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "\r\n"
        )
        return head.encode("ascii") + body


@dataclass(frozen=True)
class Ended:
    """Why a stream ended, and whether to wait long before the next."""

    reason: str
    long_pause: bool = False
    give_up: bool = False  # no more streams this way (client.edge.follow_changes_http)


class ChangesProtocol(asyncio.Protocol):
    """One stream's connection. ``on_message`` gets every message; ``ended``
    resolves once, with why the stream is over."""

    def __init__(
        self,
        request: bytes,
        on_message: Callable[[authz_pb2.WatchChangesResponse], None],
    ) -> None:
        self._request = request
        self._on_message = on_message
        self._transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._in_body = False
        self._chunked = False
        self._chunks = bytearray()  # undecoded chunked body
        self._frames = bytearray()  # decoded body: enveloped messages
        self._body_over = False
        self.ended: asyncio.Future[Ended] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(Ended("change stream ended" if exc is None else "change stream connection lost"))

    def data_received(self, data: bytes) -> None:
        if self.ended.done():
            return
        try:
            if not self._in_body:
                self._head += data
                split = self._head.find(b"\r\n\r\n")
                if split < 0:
                    if len(self._head) > MAX_HEAD:
                        raise _Bad("response head too large")
                    return
                data = bytes(self._head[split + 4 :])
                self._start(bytes(self._head[:split]))
                self._in_body = True
                del self._head[:]
                if self.ended.done():
                    return
            if self._chunked:
                self._chunks += data
                self._dechunk()
            else:
                self._frames += data
            self._read_frames()
            if self._body_over:
                self._end(Ended("change stream ended"))
        except _Bad as exc:
            self._end(Ended(f"change stream broken: {exc}"))

    def _start(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        status_line = _STATUS_LINE.fullmatch(lines[0])
        if status_line is None:
            raise _Bad("not an HTTP/1.1 response")
        status = int(status_line.group(1))
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _Bad("malformed header")
            headers[name.strip().lower()] = value.strip()
        if status != 200:
            self._end(Ended(f"change stream refused: HTTP {status}", status in LONG_PAUSE_STATUSES))
            return
        if headers.get("content-type", "").split(";")[0].strip().lower() != "application/connect+proto":
            raise _Bad("unexpected content type")
        encoding = headers.get("transfer-encoding", "").lower()
        if encoding not in ("", "chunked"):
            raise _Bad("unexpected transfer encoding")
        self._chunked = encoding == "chunked"

    def _dechunk(self) -> None:
        buf = self._chunks
        while not self._body_over:
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                if len(buf) > 64:
                    raise _Bad("chunk size line too long")
                return
            size_text = bytes(buf[:line_end]).split(b";", 1)[0].strip()
            if not _HEX.fullmatch(size_text):
                raise _Bad("bad chunk size")
            size = int(size_text, 16)
            if size > MAX_FRAME + 5:  # the service writes one frame per chunk
                raise _Bad("chunk too large")
            if size == 0:  # the last chunk: the body is over, once the frames before it are read
                self._body_over = True
                return
            end = line_end + 2 + size
            if len(buf) < end + 2:
                return
            if buf[end : end + 2] != b"\r\n":
                raise _Bad("chunk not terminated")
            self._frames += buf[line_end + 2 : end]
            del buf[: end + 2]

    def _read_frames(self) -> None:
        buf = self._frames
        while len(buf) >= 5 and not self.ended.done():
            flags, length = struct.unpack_from(">BI", buf)
            if length > MAX_FRAME:
                raise _Bad("frame too large")
            if len(buf) < 5 + length:
                return
            payload = bytes(buf[5 : 5 + length])
            del buf[: 5 + length]
            if flags & _COMPRESSED:
                raise _Bad("compressed frame (none was asked for)")
            if flags & _END_STREAM:
                self._end(_ended_by(payload))
                return
            try:
                message = authz_pb2.WatchChangesResponse.FromString(payload)
            except DecodeError:
                raise _Bad("message does not parse") from None
            self._on_message(message)

    def _end(self, ended: Ended) -> None:
        if not self.ended.done():
            self.ended.set_result(ended)
        if self._transport is not None:
            self._transport.close()


class _Bad(Exception):
    pass


def _ended_by(payload: bytes) -> Ended:
    """The end frame's error code, if any (never its message: it stays in the server's logs)."""
    try:
        end = json.loads(payload) if payload else {}
        error = end.get("error") if isinstance(end, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
    except ValueError:
        return Ended("change stream ended with an unreadable end frame")
    if isinstance(code, str) and code.isidentifier():
        return Ended(f"change stream failed: {code.upper()}", code in LONG_PAUSE_CODES)
    return Ended("change stream ended")


async def open_stream(
    target: HttpTarget, on_message: Callable[[authz_pb2.WatchChangesResponse], None]
) -> Ended:
    """One stream, until it ends (cancel to stop it; the connection is closed)."""
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.create_connection(
            lambda: ChangesProtocol(target.request(), on_message),
            target.host,
            target.port,
            ssl=target.ssl_context,
            server_hostname=target.host if target.ssl_context is not None else None,
        )
    except Exception as exc:  # any failure to connect is a stream that ended
        return Ended(f"change stream could not connect: {type(exc).__name__}")
    try:
        return await protocol.ended
    finally:
        transport.close()
