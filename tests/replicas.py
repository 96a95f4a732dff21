"""Service replicas in their own processes (`authz serve`) on the test database."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from authz_service.client import Client, connect
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Dsns

AUTHZ = [sys.executable, "-m", "authz_service.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


OWN_PORT = "own port"


@dataclass
class Replica:
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return self.env["AUTHZ_LISTEN"]

    @property
    def http_url(self) -> str:
        """The HTTP listener (``two_replicas(..., AUTHZ_HTTP_LISTEN=OWN_PORT)``)."""
        return f"http://{self.env['AUTHZ_HTTP_LISTEN']}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *AUTHZ, "serve", env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        assert self.proc.stdout is not None
        seen: list[str] = []
        async with asyncio.timeout(60):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError("replica exited during start-up:\n" + "".join(seen))
                seen.append(line)
                if "authz service listening on" in line:
                    break
        self._drain = asyncio.create_task(self._discard(self.proc.stdout))

    @staticmethod
    async def _discard(stream: asyncio.StreamReader) -> None:
        while await stream.readline():
            pass

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        await self._drain
        return code


@dataclass
class Cluster:
    a: Replica
    b: Replica
    # The environment both share (without AUTHZ_LISTEN): for CLI runs against them.
    env: dict[str, str]

    @property
    def operator_key(self) -> str:
        return self.env["AUTHZ_OPERATOR_KEY"]


@asynccontextmanager
async def two_replicas(dsns: Dsns, **settings: str) -> AsyncIterator[Cluster]:
    """Two `authz serve` processes on the test database, with one server key and
    operator key, plus ``settings`` (AUTHZ_* variables, which win;
    ``AUTHZ_HTTP_LISTEN=OWN_PORT``: each serves the HTTP API on a port of its
    own). Both are stopped afterwards, also after a test killed and restarted them."""
    http = settings.get("AUTHZ_HTTP_LISTEN") == OWN_PORT
    if http:
        del settings["AUTHZ_HTTP_LISTEN"]
    with tempfile.TemporaryDirectory(prefix="authz-replicas-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
        env.update(
            AUTHZ_HOME=home,
            AUTHZ_DATABASE_URL=dsns.service,
            AUTHZ_SECRET_KEY=secrets.token_urlsafe(32),
            AUTHZ_OPERATOR_KEY=secrets.token_urlsafe(32),
            AUTHZ_LOG_FORMAT="text",
        )
        env.update(settings)  # may override the above (a pooler's AUTHZ_DATABASE_URL)

        def listen() -> dict[str, str]:
            ports = {"AUTHZ_LISTEN": f"127.0.0.1:{free_port()}"}
            if http:
                ports["AUTHZ_HTTP_LISTEN"] = f"127.0.0.1:{free_port()}"
            return ports

        a = Replica({**env, **listen()})
        b = Replica({**env, **listen()})
        await asyncio.gather(a.start(), b.start())
        try:
            yield Cluster(a, b, env)
        finally:
            for r in (a, b):
                if r.proc is not None and r.proc.returncode is None:
                    await r.stop()


async def new_tenant(replica: Replica, operator_key: str, prefix: str) -> Client:
    """A fresh tenant with a Telegram channel "tg" (default policy), made
    through ``replica``; its admin client there (the caller closes it)."""
    op = connect(replica.address, operator_key)
    try:
        created = await op.admin.CreateTenant(
            adm.CreateTenantRequest(tenant_id=prefix + secrets.token_hex(5))
        )
    finally:
        await op.close()
    admin = connect(replica.address, created.secret)
    await admin.admin.SetChannel(
        adm.SetChannelRequest(channel_id="tg", platform=cm.PLATFORM_TELEGRAM, policy=cm.ChannelPolicy())
    )
    return admin
