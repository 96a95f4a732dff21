"""A TCP proxy between a service and PostgreSQL that a test can break.

The service connects to ``127.0.0.1:<port>`` (``PgProxy.dsn``); every
connection is forwarded to the real server (a Unix socket for the embedded
PostgreSQL, or host:port). The test can then:

* ``cut()``: the database is gone. Every open connection is closed at once and
  new ones are refused, as when PostgreSQL restarts or its host dies.
* ``stall()``: the database is unreachable. Connections stay open but no byte
  flows either way, and new ones hang, as in a network partition. Nothing
  tells the service: only its own timeouts and heartbeats can notice.
* ``restore()``: back to normal; stalled connections resume where they were.

``delay`` (seconds) holds every answer from the server that long: a slow path
to the database, for races between a query and a notification taking another path.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse


@dataclass(frozen=True)
class Upstream:
    unix_path: str = ""
    host: str = ""
    port: int = 0

    @classmethod
    def of(cls, dsn: str) -> Upstream:
        url = urlparse(dsn)
        query = dict(parse_qsl(url.query))
        host = query.get("host") or url.hostname or "localhost"
        port = int(query.get("port") or url.port or 5432)
        if host.startswith("/"):
            return cls(unix_path=f"{host}/.s.PGSQL.{port}")
        return cls(host=host, port=port)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.unix_path:
            return await asyncio.open_unix_connection(self.unix_path)
        return await asyncio.open_connection(self.host, self.port)


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class PgProxy:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._upstream = Upstream.of(dsn)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._accepting = True
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0
        self.connections = 0  # accepted and forwarded, over the proxy's life
        self.delay = 0.0

    @property
    def dsn(self) -> str:
        """The original DSN, pointed at the proxy (user, password, database and
        other options kept)."""
        url = urlparse(self._dsn)
        query = [(k, v) for k, v in parse_qsl(url.query) if k not in ("host", "port")]
        userinfo = url.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunparse(url._replace(netloc=netloc, query=urlencode(query)))

    @property
    def open_links(self) -> int:
        return len(self._links)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Close every connection now and refuse new ones until ``restore``."""
        self._accepting = False
        self._flowing.set()  # a stalled pump must see the cut, not hang
        for link in list(self._links):
            link.abort()
        await self._settle()

    def stall(self) -> None:
        """Stop every byte, both ways, on open and new connections, until ``restore``."""
        self._flowing.clear()

    def restore(self) -> None:
        self._accepting = True
        self._flowing.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.cut()
        if self._server is not None:
            await self._server.wait_closed()

    async def _settle(self) -> None:
        handlers = list(self._handlers)
        if handlers:
            await asyncio.wait(handlers, timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        link = _Link(writer)
        try:
            if not self._accepting:
                return
            self._links.add(link)
            await self._flowing.wait()  # unreachable: a new connection hangs too
            try:
                up_reader, link.upstream = await self._upstream.open()
            except OSError:
                return
            if not self._accepting:  # cut while we were connecting
                return
            self.connections += 1
            link.tasks = [
                asyncio.create_task(self._pump(reader, link.upstream)),
                asyncio.create_task(self._pump(up_reader, writer, answers=True)),
            ]
            # Either side closing ends the link (PostgreSQL connections are not half-closed).
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            link.abort()
            for t in link.tasks:
                t.cancel()
            for t in link.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            for w in (link.client, link.upstream):
                if w is not None:
                    w.close()
            self._links.discard(link)
            self._handlers.discard(task)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, answers: bool = False
    ) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    return
                if answers and self.delay:
                    await asyncio.sleep(self.delay)
                await self._flowing.wait()
                if dst.transport.is_closing():
                    return
                dst.write(data)
                await dst.drain()
        except (OSError, ConnectionError):
            return
