"""A serving process tunes its garbage collector once it is up (server.settle_heap):
start-up's objects frozen out of every collection, the youngest generation
collected every 50,000 allocations. Measured in docs/performance.md (the tail of
the revocation latency to 1,000 edges)."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import tempfile

from .conftest import Dsns
from .replicas import free_port

SCRIPT = """
import asyncio, gc, os, signal
from authz_service.config import Settings
from authz_service.server import GC_THRESHOLDS, serve

async def ready(running):
    print("serving", gc.get_threshold() == GC_THRESHOLDS, gc.get_freeze_count() > 0, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

print("before", gc.get_threshold(), gc.get_freeze_count(), flush=True)
asyncio.run(serve(Settings.from_env(), on_ready=ready))
"""


async def test_serve_freezes_start_up_and_raises_the_young_threshold(dsns: Dsns) -> None:
    with tempfile.TemporaryDirectory(prefix="authz-heap-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
        env.update(
            AUTHZ_HOME=home,
            AUTHZ_DATABASE_URL=dsns.service,
            AUTHZ_SECRET_KEY=secrets.token_urlsafe(32),
            AUTHZ_OPERATOR_KEY=secrets.token_urlsafe(32),
            AUTHZ_LISTEN=f"127.0.0.1:{free_port()}",
            AUTHZ_LOG_FORMAT="text",
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SCRIPT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "before (700, 10, 10) 0\n" in text, text  # the interpreter's defaults, nothing frozen
    assert "serving True True\n" in text, text
