"""`authz serve --workers N`: N processes on one port (SO_REUSEPORT), sharing
the database; SIGTERM drains them all; a dead worker stops the rest."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import sys
import tempfile
from collections.abc import AsyncIterator

import pytest

from authz_service.client import NO_RETRY, connect
from authz_service.gen.authz.v1 import admin_pb2 as adm

from .conftest import Dsns
from .replicas import free_port

AUTHZ = [sys.executable, "-m", "authz_service.cli.main"]


@pytest.fixture
async def workers(dsns: Dsns) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[int], str, str]]:
    with tempfile.TemporaryDirectory(prefix="authz-workers-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
        address = f"127.0.0.1:{free_port()}"
        operator_key = secrets.token_urlsafe(32)
        env.update(
            AUTHZ_HOME=home,
            AUTHZ_DATABASE_URL=dsns.service,
            AUTHZ_SECRET_KEY=secrets.token_urlsafe(32),
            AUTHZ_OPERATOR_KEY=operator_key,
            AUTHZ_LISTEN=address,
            AUTHZ_LOG_FORMAT="text",
        )
        proc = await asyncio.create_subprocess_exec(
            *AUTHZ, "serve", "--workers", "2", env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert proc.stdout is not None
        pids: list[int] = []
        seen: list[str] = []
        try:
            async with asyncio.timeout(60):
                while len(pids) < 2:
                    line = (await proc.stdout.readline()).decode()
                    if not line:
                        raise AssertionError("workers did not start:\n" + "".join(seen))
                    seen.append(line)
                    if m := re.search(r"listening on \S+ \(worker pid (\d+)\)", line):
                        pids.append(int(m.group(1)))
        except BaseException as exc:
            # Never leave the parent (and its workers) running past a failed start.
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 30)
            if isinstance(exc, TimeoutError):
                raise AssertionError("workers did not start within 60 s:\n" + "".join(seen)) from exc
            raise
        drain = asyncio.create_task(proc.stdout.read())
        try:
            yield proc, pids, address, operator_key
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
            await drain


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_two_workers_share_the_port_and_stop_together(
    workers: tuple[asyncio.subprocess.Process, list[int], str, str],
) -> None:
    proc, pids, address, operator_key = workers
    assert len(set(pids)) == 2 and proc.pid not in pids
    # Many fresh connections: every one is answered, whichever worker the kernel picks.
    for _ in range(10):
        client = connect(address, operator_key, retry=NO_RETRY)
        try:
            await client.admin.ListTenants(adm.ListTenantsRequest())
        finally:
            await client.close()
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert not any(alive(p) for p in pids)


async def test_a_dead_worker_stops_the_others(
    workers: tuple[asyncio.subprocess.Process, list[int], str, str],
) -> None:
    proc, pids, _, _ = workers
    os.kill(pids[0], signal.SIGKILL)
    assert await asyncio.wait_for(proc.wait(), 30) == 1
    assert not alive(pids[1])
