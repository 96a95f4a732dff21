"""WatchNotifications read in the background, for the notification tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from authz_service.client import Client
from authz_service.gen.authz.v1 import authz_pb2 as az


class Copies:
    """One WatchNotifications stream: what it handed out, in order."""

    def __init__(self, client: Client, channel_id: str) -> None:
        self.call = client.authz.WatchNotifications(az.WatchNotificationsRequest(channel_id=channel_id))
        self.queue: asyncio.Queue[az.NotificationCopy | grpc.aio.AioRpcError] = asyncio.Queue()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for item in self.call:
                await self.queue.put(item)
        except grpc.aio.AioRpcError as exc:
            await self.queue.put(exc)

    async def take(self, n: int, timeout: float = 5.0) -> list[az.NotificationCopy]:
        """The next ``n`` copies, sorted by approver."""
        out = []
        async with asyncio.timeout(timeout):
            for _ in range(n):
                item = await self.queue.get()
                if isinstance(item, grpc.aio.AioRpcError):
                    raise item
                out.append(item)
        return sorted(out, key=lambda c: c.approver_id)

    async def collect(self, wait: float = 0.5) -> list[az.NotificationCopy]:
        """Whatever arrives until nothing more comes for ``wait`` seconds."""
        out: list[az.NotificationCopy] = []
        while True:
            try:
                async with asyncio.timeout(wait):
                    item = await self.queue.get()
            except TimeoutError:
                return out
            if isinstance(item, grpc.aio.AioRpcError):
                raise item
            out.append(item)

    async def nothing(self, wait: float = 0.3) -> bool:
        """True if nothing more arrives within ``wait`` seconds (a negative check)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self.queue.get()
                return False
        return True

    async def close(self) -> None:
        self.call.cancel()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def watching(client: Client, channel_id: str = "tg") -> AsyncIterator[Copies]:
    copies = Copies(client, channel_id)
    try:
        yield copies
    finally:
        await copies.close()


async def ack(
    client: Client, copy: az.NotificationCopy, ref: str = "", failure: str = "", channel_id: str = "tg"
) -> az.AckNotificationResponse:
    req = az.AckNotificationRequest(
        channel_id=channel_id,
        approval_id=copy.approval_id,
        approver_id=copy.approver_id,
        version=copy.version,
    )
    if failure:
        req.failure = failure
    else:
        req.message_ref = ref or f"m-{copy.approver_id}"
    return await client.authz.AckNotification(req)
