"""The HTTP listener of a connector that receives its platform's webhooks (Slack, WhatsApp).

A platform wants a quick answer to every delivery (it retries otherwise), so a
handler answers at once and hands the work to :meth:`WebhookServer.spawn`;
:meth:`WebhookServer.close` stops listening, then lets that work finish, bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from .config import parse_listen

DRAIN_SECONDS = 10.0
"""How long :meth:`WebhookServer.close` waits for handed-off work before cancelling it."""


class WebhookServer:
    """Serves one aiohttp app and keeps the tasks its handlers handed off; logs as
    ``name`` ("slack events", "whatsapp webhook") on the platform's ``log``."""

    def __init__(self, name: str, log: logging.Logger, drain_seconds: float = DRAIN_SECONDS) -> None:
        self.name = name
        self.log = log
        self.drain_seconds = drain_seconds
        self._pending: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None

    async def start(self, app: web.Application, listen: str, path: str) -> int:
        """Serve ``app`` on ``listen`` ("host:port", 0 = any); return the bound port."""
        host, port = parse_listen(listen)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = int(self._runner.addresses[0][1])
        self.log.info("%s listening on http://%s:%d%s", self.name, host, bound, path)
        return bound

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` after the platform has had its answer."""
        # Keep a reference: the event loop holds tasks only weakly.
        task = asyncio.create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for every handed-off task to finish (tests, shutdown)."""
        while self._pending:
            await asyncio.wait(set(self._pending))

    async def close(self) -> None:
        """Stop listening, then let handed-off work finish (bounded; the rest is cancelled)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._pending:
            _, late = await asyncio.wait(self._pending, timeout=self.drain_seconds)
            for task in late:
                task.cancel()
            if late:
                self.log.warning(
                    "%s: dropped %d request(s) still in flight at shutdown", self.name, len(late)
                )
