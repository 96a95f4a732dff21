"""A real PgBouncer (Debian's ``pgbouncer`` package) on loopback in front of the
test database, in transaction or session mode, with password (SCRAM) auth.

Missing PgBouncer skips the tests that need it, except under CI=true, where
they fail: `make test` installs it when run as root (Makefile, ``pgbouncer``).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlparse

import pytest

from authz_service.store import embedded

_SEARCH = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer")


def pgbouncer_binary() -> str:
    """The binary, or skip (fail under CI=true) with how to get it."""
    found = shutil.which("pgbouncer") or next((p for p in _SEARCH if os.access(p, os.X_OK)), None)
    if found is None:
        why = "PgBouncer is not installed: `apt-get install pgbouncer` (make test does it as root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Upstream:
    """Where a DSN points, in the pieces PgBouncer's [databases] line takes."""

    host: str
    port: int
    user: str
    password: str
    database: str

    @classmethod
    def of(cls, dsn: str) -> Upstream:
        url = urlparse(dsn)
        query = parse_qs(url.query)
        host = query.get("host", [url.hostname or "127.0.0.1"])[0]
        return cls(
            host=host,
            port=int(query.get("port", [url.port or 5432])[0]),
            user=unquote(url.username or ""),
            password=unquote(url.password or ""),
            database=url.path.lstrip("/") or unquote(url.username or ""),
        )


@dataclass(frozen=True)
class Pooler:
    mode: str
    port: int
    upstream: Upstream

    @property
    def dsn(self) -> str:
        """The service role's DSN through the pooler."""
        up = self.upstream
        return (
            f"postgresql://{quote(up.user)}:{quote(up.password, safe='')}@127.0.0.1:{self.port}/{up.database}"
        )


def _run_as() -> pwd.struct_passwd | None:
    """PgBouncer refuses to run as root: then it runs as the embedded database's account."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(embedded.SYSTEM_USER)
    except KeyError:
        return pwd.getpwnam("nobody")


def _write_config(d: Path, up: Upstream, port: int, mode: str) -> pwd.struct_passwd | None:
    """pgbouncer.ini and its userlist in ``d``, owned by whom PgBouncer runs as (returned)."""
    (d / "userlist.txt").write_text(f'"{up.user}" "{up.password}"\n')
    (d / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{up.database} = host={up.host} port={up.port} dbname={up.database}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = scram-sha-256\n"
        f"auth_file = {d / 'userlist.txt'}\n"
        f"pool_mode = {mode}\n"
        "max_client_conn = 200\n"
        "default_pool_size = 10\n"
        "ignore_startup_parameters = extra_float_digits\n"
        f"logfile = {d / 'pgbouncer.log'}\n"
    )
    user = _run_as()
    if user is not None:
        os.chown(d, user.pw_uid, user.pw_gid)
        for f in d.iterdir():
            os.chown(f, user.pw_uid, user.pw_gid)
    return user


@asynccontextmanager
async def pgbouncer(service_dsn: str, mode: str) -> AsyncIterator[Pooler]:
    """PgBouncer in ``mode`` ("transaction" or "session") in front of ``service_dsn``."""
    binary = pgbouncer_binary()
    up = Upstream.of(service_dsn)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="authz-pgbouncer-") as folder:
        d = Path(folder)
        user = _write_config(d, up, port, mode)
        args = [binary, *(["-u", user.pw_name] if user is not None else []), str(d / "pgbouncer.ini")]
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            await _until_listening(port, proc, d / "pgbouncer.log")
            yield Pooler(mode, port, up)
        finally:
            if proc.returncode is None:
                proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)


def _read(log: Path) -> str:
    return log.read_text() if log.exists() else "(no log)"


async def _until_listening(port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
    async with asyncio.timeout(10):
        while True:
            if proc.returncode is not None:
                text = _read(log)
                raise AssertionError(f"pgbouncer exited with {proc.returncode}:\n{text}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
