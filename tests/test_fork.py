"""gRPC core's fork handlers stay off in our processes.

With them on, every fork() of a process running gRPC stops and restarts gRPC's
threads: under grpc.aio that stalled the test service's open streams, and a
child crashed (SIGSEGV in an ``event_engine`` thread) before it could exec.
A fork that cannot use vfork (a child run as another user, as the embedded
PostgreSQL is when the service runs as root) goes through those handlers; with
them on, gRPC logs ``fork_posix.cc`` for each such fork while it is busy."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import os, subprocess, asyncio
{first}
import grpc
from grpc import aio

async def main():
    server = aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{{port}}")
    async def busy():
        for _ in range(100):
            try:
                await channel.unary_unary("/x.Y/Z")(b"", timeout=0.05)
            except grpc.aio.AioRpcError:
                pass
    calls = asyncio.ensure_future(busy())
    for _ in range(10):  # user= rules out vfork: fork() and its handlers
        await asyncio.to_thread(subprocess.run, ["true"], user=os.getuid(), cwd="/", check=True)
    await calls
    await channel.close()
    await server.stop(None)
    print(os.environ.get("GRPC_ENABLE_FORK_SUPPORT"))

asyncio.run(main())
"""


def run(first: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}  # nothing inherited that sets it
    return subprocess.run(
        [sys.executable, "-c", SCRIPT.format(first=first)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_importing_the_package_first_turns_grpcs_fork_handlers_off() -> None:
    done = run("import authz_service")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
    assert "fork_posix" not in done.stderr, done.stderr


def test_the_connector_package_does_too() -> None:
    done = run("import sidecars")
    assert done.returncode == 0, done.stderr
    assert "fork_posix" not in done.stderr, done.stderr


def test_an_operator_may_still_turn_them_on() -> None:
    """setdefault: an explicit setting is kept."""
    script = "import os\nos.environ['GRPC_ENABLE_FORK_SUPPORT'] = '1'\nimport authz_service\n"
    script += "print(os.environ['GRPC_ENABLE_FORK_SUPPORT'])"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "1"
