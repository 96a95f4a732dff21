"""The notification outbox's follower in a connector (issue #17).

A transport with :class:`~sidecars.runtime.DirectMessages` gets every
approver's copy of every approval notification on its channel from the
service's ``WatchNotifications`` stream: this posts or edits each copy on the
platform and acknowledges it (``AckNotification``) with the platform's
message reference, or with why the approver cannot be reached
(:class:`~sidecars.runtime.ApproverUnreachable`); when that leaves a pending
pairing request with no approver reachable, the service names its requester,
who is told to have an approver message the bot or use the CLI or console
(``OWNER_UNREACHABLE``). Started by
:func:`follow_notifications` (``sidecars.main`` does, for every platform
that can).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

import grpc

from authz_service.client import Client
from authz_service.gen.authz.v1 import authz_pb2 as az

from .runtime import (
    OWNER_UNREACHABLE,
    ApproverUnreachable,
    Connector,
    DirectMessages,
    buttons_of,
)

log = logging.getLogger("sidecars")


class Outbox:
    """Posts and edits approvers' copies of approval notifications for one
    channel, as ``WatchNotifications`` hands them out, and acknowledges each.

    Fail closed: while the stream is down nothing is posted; it is opened again
    with a bounded backoff, and the service hands out again whatever is still
    behind (a copy already posted comes with its stored reference, so it is
    edited, never posted twice). Copies are delivered one at a time, in order.
    """

    BACKOFF = (0.2, 5.0)  # first and longest wait before opening the stream again
    MAX_REFS = 10_000

    def __init__(
        self, channel_id: str, transport: DirectMessages, client: Client, rpc_timeout: float
    ) -> None:
        self.channel_id = channel_id
        self.transport = transport
        self.client = client
        self.rpc_timeout = rpc_timeout
        # Refs this process acknowledged, by (approval, approver): a copy handed
        # out again before its acknowledgement was recorded is edited, not posted.
        self._refs: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # no copy between its post and its acknowledgement
        self._idle.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="notification-outbox")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop following; a copy being delivered is finished (posted and
        acknowledged) first, within ``grace`` seconds, so a restart edits it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        wait = self.BACKOFF[0]
        while True:
            call = self.client.authz.WatchNotifications(
                az.WatchNotificationsRequest(channel_id=self.channel_id)
            )
            try:
                async for item in call:
                    wait = self.BACKOFF[0]
                    self._idle.clear()
                    try:
                        await asyncio.shield(self.deliver(item))
                    finally:
                        self._idle.set()
            except asyncio.CancelledError:
                call.cancel()
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning("notification stream ended: %s %s", exc.code().name, exc.details())
            except Exception:
                log.exception("notification stream failed")
            call.cancel()
            await asyncio.sleep(wait)
            wait = min(wait * 2, self.BACKOFF[1])

    async def deliver(self, item: az.NotificationCopy) -> None:
        """Post or edit one copy and acknowledge it; then its next version, if
        the approval changed meanwhile. A platform error other than an
        unreachable approver is not acknowledged: the copy is handed out again
        when its lease lapses."""
        next_item: az.NotificationCopy | None = item
        while next_item is not None:
            copy, next_item = next_item, None
            key = (copy.approval_id, copy.approver_id)
            ref = copy.message_ref or self._refs.get(key, "")
            buttons = buttons_of(copy.buttons)
            ack = az.AckNotificationRequest(
                channel_id=self.channel_id,
                approval_id=copy.approval_id,
                approver_id=copy.approver_id,
                version=copy.version,
            )
            try:
                if ref:
                    ack.message_ref = await self.transport.edit_direct(
                        copy.approver_id, ref, copy.text, buttons
                    )
                else:
                    ack.message_ref = await self.transport.post_direct(copy.approver_id, copy.text, buttons)
            except ApproverUnreachable as exc:
                log.warning("approver %s cannot be reached: %s", copy.approver_id, exc.reason)
                ack.failure = exc.reason
            except Exception:
                log.exception("could not deliver the notification of %s to %s", *key)
                return
            if ack.message_ref:
                self._refs[key] = ack.message_ref
                self._refs.move_to_end(key)
                while len(self._refs) > self.MAX_REFS:
                    self._refs.popitem(last=False)
            try:
                done = await self.client.authz.AckNotification(ack, timeout=self.rpc_timeout)
            except grpc.aio.AioRpcError as exc:
                log.warning("notification of %s to %s not acknowledged: %s", *key, exc.code().name)
                return
            if done.unnotified_requester_id:
                await self._tell_requester(done.unnotified_requester_id)
            if done.HasField("next"):
                next_item = done.next

    async def _tell_requester(self, user_id: str) -> None:
        """No approver of ``user_id``'s pairing request can be reached here:
        they are told the request is decided elsewhere (as ``Connector`` does
        when it notifies the owner itself)."""
        try:
            await self.transport.post_direct(user_id, OWNER_UNREACHABLE, ())
        except Exception as exc:
            reason = getattr(exc, "reason", "") or type(exc).__name__
            log.warning("requester %s not told that no approver can be reached: %s", user_id, reason)


def follow_notifications(connector: Connector) -> Outbox | None:
    """Follow the channel's notification outbox if the connector's transport
    can post and edit DMs (:class:`~sidecars.runtime.DirectMessages`); the
    connector then no longer DMs the owner from the RequestPairing answer, and
    leaves editing a pressed message to the outbox. None if it cannot."""
    transport = connector.transport
    if not isinstance(transport, DirectMessages):
        return None
    outbox = Outbox(connector.config.channel_id, transport, connector.client, connector.config.rpc_timeout)
    connector.follows_notifications = True
    outbox.start()
    return outbox
