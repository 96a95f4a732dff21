"""PraisonAI's ``PairingProtocol`` backed by the service, for one channel.

praisonai-bot's Telegram, Slack and Discord bots keep their pairing store in
``bot._pairing_store`` (made in ``__init__``, handed to the pipeline's
``BotContext`` in ``start()``) and relay owner button presses through
``bot._pairing_callback_handler``; ``ServicePairingStore.install(bot)`` sets
both before ``start()``. The bots call the store synchronously from their
event loop, so:

* every call runs on a worker thread (one event loop per process, shared by
  the stores; each store's client opens its own channel there) and waits at
  most ``timeout`` seconds for its one RPC.
* ``is_paired`` is CheckUser through the client's edge cache
  (``connect(..., edge=EdgeSettings())``): a paired user's repeat is answered
  on the worker from an answer the service marked reusable, with no RPC (the
  bot's loop waits only for the hand-over to the worker thread), and a block or
  unpair made anywhere drops it within the change stream's bound (1.5 s by
  default). A first check, a check after the edge dropped its answers and a
  check on a channel whose answers are not reusable (rate limits) wait for one
  CheckUser. ``generate_code`` cannot return the service's code without one
  RequestPairing: it waits once per message of an unpaired user.
* an owner's button press is handled by ``PairingCallbackHandler`` (our
  subclass of PraisonAI's), which awaits the RPC without blocking the loop and
  sends the presser's id, so the service checks them against the approvers.

Keys (least privilege): the bot holds a **connector** key bound to the channel
(CheckUser, RequestPairing, ResolveApproval for a presser). ``approve``,
``list_pending``, ``list_paired`` and ``revoke`` are an operator's calls with no
presser to check: they use ``operator=``, a client with an approver key
(``approve``, ``list_pending``) or an admin key (all four). Without it they
refuse (False, or an empty list) and log why.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message

from ..client import Client, EdgeCache, paging
from ..client.results import check_result
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import authz_pb2 as az
from ..gen.authz.v1 import common_pb2 as cm
from ._common import describe, list_approvals

__all__ = ["PairedChannel", "ServicePairingStore"]

log = logging.getLogger("authz_service.adapters")

T = TypeVar("T")

# The (channel_type, user id) that ``is_paired`` was last asked about in this
# context: PraisonAI's ``generate_code(channel_type=...)`` is called right after
# it for the same message, without the user id the service pairs.
_asked: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "authz_pairing_asked", default=None
)

_ACTION = {"approve": cm.APPROVAL_ACTION_APPROVE, "deny": cm.APPROVAL_ACTION_DENY}


@dataclass
class PairedChannel:
    """PraisonAI's ``PairedChannel`` fields, used where praisonai-bot is not
    installed (``list_paired`` returns its own class when it is)."""

    channel_id: str
    channel_type: str
    paired_at: float = 0.0
    label: str = ""


def _paired_channel(channel_id: str, channel_type: str, paired_at: float, label: str) -> Any:
    try:
        from praisonai_bot.gateway.pairing import PairedChannel as Paired
    except ImportError:
        return PairedChannel(channel_id, channel_type, paired_at, label)
    return Paired(channel_id=channel_id, channel_type=channel_type, paired_at=paired_at, label=label)


class _Worker:
    """A daemon thread running an event loop: the stores' RPCs run there, so
    a caller on another loop (the bot's) never needs a channel of its own.

    One per process, shared by every store, and never closed: gRPC delivers a
    cancelled call's last event to its loop after the channel has closed, and a
    closed loop turns that into an "Event loop is closed" error (or a pending
    task destroyed) in the bot's log. A fork gets a worker of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="authz-pairing", daemon=True).start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop

    def submit(self, call: Callable[[], Awaitable[T]]) -> concurrent.futures.Future[T]:
        async def run() -> T:
            return await call()

        return asyncio.run_coroutine_threadsafe(run(), self.loop())


_WORKER = _Worker()


class ServicePairingStore:
    """PraisonAI's ``PairingProtocol`` (``praisonaiagents.gateway.protocols``)
    for the service channel ``channel_id`` on ``platform`` ("telegram",
    "slack", "discord", "whatsapp"). A call for another ``channel_type`` is
    refused: a Telegram code never pairs a Slack user.

    ``client``: a connector key's client, with the edge on
    (``connect(address, key, edge=EdgeSettings())``) so that a paired user's
    messages need no RPC; without it every ``is_paired`` asks the service.
    ``operator``: optional approver or admin key's client for the operator
    calls (see the module's doc). ``timeout``: seconds one call may wait.
    ``slack_team``: the Slack workspace id (``T...``), required
    for Slack, whose user ids the service scopes by workspace. Call
    ``close()`` when done.
    """

    def __init__(
        self,
        client: Client,
        channel_id: str,
        *,
        platform: str,
        operator: Client | None = None,
        timeout: float = 2.0,
        slack_team: str = "",
    ) -> None:
        if not platform:
            raise ValueError("platform is required: the bot's channel_type, e.g. 'telegram'")
        if (platform == "slack") != bool(slack_team):
            raise ValueError("slack_team (the workspace id, T...) is required for slack, and only there")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if client.edge is None:
            log.warning(
                "pairing store for channel %s: the client has no edge (connect(..., edge=EdgeSettings())); "
                "every message of a paired user waits for a CheckUser",
                channel_id,
            )
        self.client = client
        self.channel_id = channel_id
        self.platform = platform
        self.operator = operator
        self.timeout = float(timeout)
        self.slack_team = slack_team
        self._worker = _WORKER

    # --- plumbing ----------------------------------------------------------------------

    def _wait(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` on the worker and wait for it (bounded by ``timeout``)."""
        future = self._worker.submit(call)
        try:
            return future.result(self.timeout + 0.5)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("the authorization service did not answer in time") from None

    def _ours(self, channel_type: str) -> bool:
        return channel_type == self.platform

    def _user(self, user_id: str) -> str:
        """PraisonAI's user id as the service names it (Slack ids are scoped
        by workspace: ``<team id>:<user id>``)."""
        return f"{self.slack_team}:{user_id}" if self.slack_team else user_id

    def _praisonai_user(self, user_id: str) -> str:
        return user_id.removeprefix(f"{self.slack_team}:") if self.slack_team else user_id

    def close(self) -> None:
        """Close the channels this store opened on the worker."""

        async def close_all() -> None:
            await self.client.close()
            if self.operator is not None:
                await self.operator.close()

        try:
            self._worker.submit(close_all).result(5)
        except Exception as exc:
            log.debug("closing the pairing store's channels: %s", describe(exc))

    def __enter__(self) -> ServicePairingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def install(self, bot: Any) -> Any:
        """Make a praisonai-bot ``TelegramBot``, ``SlackBot`` or ``DiscordBot``
        use this store: sets ``bot._pairing_store`` and
        ``bot._pairing_callback_handler`` (call before ``bot.start()``; a
        pipeline context made already is pointed here too). Returns ``bot``."""
        bot._pairing_store = self
        bot._pairing_callback_handler = PairingCallbackHandler(self)
        context = getattr(bot, "_bot_context", None)
        if context is not None:
            context.pairing_store = self
        return bot

    # --- is_paired: CheckUser through the edge ----------------------------------------

    @property
    def edge_cache(self) -> EdgeCache | None:
        """The worker's reusable answers (hits, misses, health), for metrics;
        None without an edge."""

        async def cache() -> EdgeCache | None:
            return self.client.edge_cache

        return self._wait(cache)

    async def _check(self, user_id: str) -> bool:
        resp = await self.client.authz.CheckUser(
            az.CheckUserRequest(
                channel_id=self.channel_id, user_id=self._user(user_id), chat_kind=cm.CHAT_KIND_DIRECT
            ),
            timeout=self.timeout,
        )
        return check_result(resp).allowed

    def is_paired(self, channel_id: str, channel_type: str) -> bool:
        """Is this user (PraisonAI's ``channel_id`` is the platform user id)
        admitted to the bot's direct messages? True only for CheckUser's ALLOW
        (from the edge when the service marked it reusable); any error is False."""
        _asked.set((channel_type, channel_id))
        if not self._ours(channel_type) or not channel_id:
            return False
        try:
            return self._wait(lambda: self._check(channel_id))
        except Exception as exc:
            log.warning("pairing check for channel %s failed: %s; not paired", self.channel_id, describe(exc))
            return False

    # --- the bot's pairing path ----------------------------------------------------------

    def generate_code(self, channel_type: str = "unknown", channel_id: str | None = None) -> str:
        """The service's pairing code for the user (``channel_id``, or the user
        ``is_paired`` was just asked about: PraisonAI's bots pass none). A repeat
        returns the same live code. Raises ``RuntimeError`` (which PraisonAI
        answers with "the system is busy") when no code can be given: another
        platform, an unknown user, the service unreachable, the user blocked or
        already allowed, the channel full or not pairing."""
        asked = _asked.get()
        _asked.set(None)
        user_id = channel_id or (asked[1] if asked is not None and asked[0] == channel_type else "")
        if not self._ours(channel_type):
            raise RuntimeError(f"this pairing store pairs {self.platform} users, not {channel_type}")
        if not user_id:
            raise RuntimeError("no user to pair: pass channel_id, the platform user id")

        async def request() -> az.RequestPairingResponse:
            resp: az.RequestPairingResponse = await self.client.authz.RequestPairing(
                az.RequestPairingRequest(channel_id=self.channel_id, user_id=self._user(user_id)),
                timeout=self.timeout,
            )
            return resp

        try:
            resp = self._wait(request)
        except Exception as exc:
            log.warning("RequestPairing on channel %s failed: %s", self.channel_id, describe(exc))
            raise RuntimeError("the authorization service is unavailable") from None
        if resp.outcome in (az.PAIRING_OUTCOME_CREATED, az.PAIRING_OUTCOME_EXISTING) and resp.code:
            return resp.code
        outcome = az.PairingOutcome.Name(resp.outcome).removeprefix("PAIRING_OUTCOME_").lower()
        raise RuntimeError(f"no pairing code for this user ({outcome})")

    async def resolve_code(self, code: str, action: str, actor_id: str) -> tuple[bool, str, str, str]:
        """An owner pressed Approve or Deny on PraisonAI's pairing prompt:
        ResolveApproval by (channel, code) as ``actor_id``, whom the service
        checks against the channel's approvers. Awaitable from any loop; never
        raises. Returns (done, requester id, owner text, requester text)."""

        async def resolve() -> az.ResolveApprovalResponse:
            resp: az.ResolveApprovalResponse = await self.client.authz.ResolveApproval(
                az.ResolveApprovalRequest(
                    code=az.CodeRef(channel_id=self.channel_id, code=code),
                    action=_ACTION[action],
                    actor_id=self._user(actor_id),
                ),
                timeout=self.timeout,
            )
            return resp

        try:
            resp = await asyncio.wait_for(
                asyncio.wrap_future(self._worker.submit(resolve)), self.timeout + 0.5
            )
        except Exception as exc:
            log.warning("pairing %s on channel %s failed: %s", action, self.channel_id, describe(exc))
            return False, "", "", ""
        approval = resp.approval
        done = approval.status == (
            cm.APPROVAL_STATUS_APPROVED if action == "approve" else cm.APPROVAL_STATUS_DENIED
        )
        return done, self._praisonai_user(approval.user_id), resp.owner_text, resp.requester_text

    def verify_and_pair(self, code: str, channel_id: str | None, channel_type: str, label: str = "") -> bool:
        """praisonai-bot's own entry point (its callback handler, CLI, HTTP
        routes): an operator's approval, as ``approve``."""
        return self.approve(channel_type, code, channel_id or "", label)

    # --- operator calls -------------------------------------------------------------------

    def _operator(self, what: str) -> Client | None:
        if self.operator is None:
            log.warning(
                "%s on channel %s refused: it needs an approver or admin key (ServicePairingStore(operator=...))",
                what,
                self.channel_id,
            )
        return self.operator

    def approve(self, channel_type: str, code: str, user_id: str = "", user_name: str = "") -> bool:
        """Approve a pairing code as the operator key (ResolveApproval by code).
        The code pairs the user who asked for it (the service bound it to them;
        ``user_id`` and ``user_name`` are not needed). True when the request was
        approved; False for an invalid, expired or used code, another platform,
        or any error."""
        operator = self._operator("approve")
        if operator is None or not self._ours(channel_type) or not code:
            return False

        async def resolve() -> az.ResolveApprovalResponse:
            resp: az.ResolveApprovalResponse = await operator.authz.ResolveApproval(
                az.ResolveApprovalRequest(
                    code=az.CodeRef(channel_id=self.channel_id, code=code), action=cm.APPROVAL_ACTION_APPROVE
                ),
                timeout=self.timeout,
            )
            return resp

        try:
            resp = self._wait(resolve)
        except Exception as exc:
            log.warning("pairing approve on channel %s failed: %s", self.channel_id, describe(exc))
            return False
        return bool(resp.approval.status == cm.APPROVAL_STATUS_APPROVED)

    def list_pending(self, channel_type: str | None = None) -> list[dict[str, Any]]:
        """The channel's pending pairing requests (ListApprovals), in
        PraisonAI's shape. ``code`` is None: the service keeps codes hashed."""
        operator = self._operator("list_pending")
        if operator is None or (channel_type and not self._ours(channel_type)):
            return []

        async def fetch() -> list[cm.Approval]:
            return await list_approvals(
                operator,
                adm.ListApprovalsRequest(
                    channel_id=self.channel_id,
                    kind=cm.APPROVAL_KIND_PAIRING,
                    status=cm.APPROVAL_STATUS_PENDING,
                ),
                timeout=self.timeout,
            )

        try:
            approvals = self._wait(fetch)
        except Exception as exc:
            log.warning("list_pending on channel %s failed: %s", self.channel_id, describe(exc))
            return []
        now = time.time()
        out = []
        for a in approvals:
            created = a.created_at.ToDatetime().timestamp() if a.HasField("created_at") else now
            user_id = self._praisonai_user(a.user_id)
            out.append(
                {
                    "code": None,
                    "approval_id": a.approval_id,
                    "channel_type": self.platform,
                    "channel_id": user_id,
                    "created_at": created,
                    "channel": self.platform,
                    "user_id": user_id,
                    "user_name": a.display_name or f"User {user_id}",
                    "age_seconds": int(max(0.0, now - created)),
                }
            )
        return out

    def list_paired(self) -> list[Any]:
        """Users paired on the channel (ListUsers, paired ones; admin key) as
        PraisonAI's ``PairedChannel``; empty on any error."""
        operator = self._operator("list_paired")
        if operator is None:
            return []

        async def call(method: str, request: Message) -> Any:
            return await getattr(operator.admin, method)(request, timeout=self.timeout)

        async def fetch() -> list[adm.Subject]:
            paired = adm.ListUsersRequest(channel_id=self.channel_id, filter=adm.USER_FILTER_PAIRED)
            return await paging.all_users(call, paired)

        try:
            found = self._wait(fetch)
        except Exception as exc:
            log.warning("list_paired on channel %s failed: %s", self.channel_id, describe(exc))
            return []
        return [
            _paired_channel(
                self._praisonai_user(u.user_id),
                self.platform,
                u.updated_at.ToDatetime().timestamp() if u.HasField("updated_at") else 0.0,
                u.display_name,
            )
            for u in found
        ]

    def revoke(self, channel_id: str, channel_type: str) -> bool:
        """Unpair a user (UnpairUser; admin key). True if they were paired."""
        operator = self._operator("revoke")
        if operator is None or not self._ours(channel_type):
            return False

        async def unpair() -> adm.RemoveUserResponse:
            resp: adm.RemoveUserResponse = await operator.admin.UnpairUser(
                adm.UserRef(channel_id=self.channel_id, user_id=self._user(channel_id)), timeout=self.timeout
            )
            # The change stream drops the answer too; this store's next check must not wait for it.
            cache = self.client.edge_cache
            if cache is not None:
                cache.invalidate([az.Invalidation(channel_id=self.channel_id)])
            return resp

        try:
            return bool(self._wait(unpair).removed)
        except Exception as exc:
            log.warning("revoke on channel %s failed: %s", self.channel_id, describe(exc))
            return False


def _result(success: bool, message: str, user_id: str | None = None, channel: str | None = None) -> Any:
    from praisonaiagents.bots.pairing_types import PairingApprovalResult

    return PairingApprovalResult(success=success, message=message, user_id=user_id, channel=channel)


def _callback_base() -> type:
    try:
        from praisonai_bot.bots._pairing_ui import PairingCallbackHandler as Base
    except ImportError:
        return object
    base: type = Base
    return base


class PairingCallbackHandler(_callback_base()):  # type: ignore[misc]
    """praisonai-bot's ``PairingCallbackHandler`` with the decision made by the
    service: the presser (``owner_user_id``, which the bots fill with who
    pressed) must be an approver of the channel, a deny consumes the request
    without pairing anyone, and the answer never blocks the bot's loop.
    PraisonAI's own check of the button's signature still runs first."""

    def __init__(self, store: ServicePairingStore) -> None:
        self.pairing_store = store
        self.store = store

    async def handle_approval_callback(self, callback_data: str, owner_user_id: str, bot_adapter: Any) -> Any:
        parsed = self.parse_and_verify_callback(callback_data)
        if not parsed:
            return _result(False, "Invalid or tampered callback data")
        action, channel = parsed["action"], parsed["channel"]
        if action not in _ACTION or channel != self.store.platform:
            return _result(False, "Unknown action")
        done, user_id, owner_text, requester_text = await self.store.resolve_code(
            parsed["code"], action, str(owner_user_id)
        )
        if not done:
            return _result(
                False, f"❌ Failed to {action} (the code may have expired, or you may not decide it)"
            )
        if requester_text and user_id:
            try:
                await bot_adapter.reply(user_id, requester_text)
            except Exception as exc:
                log.warning(
                    "telling the requester on channel %s failed: %s", self.store.channel_id, describe(exc)
                )
        default = "✅ Approved" if action == "approve" else "❌ Denied"
        return _result(True, owner_text or default, user_id=user_id or None, channel=channel)
