"""The connector flow, written once for every platform.

A platform package only translates its events into :class:`Inbound` messages
and button presses, and implements :class:`Transport`; every decision is made
here by asking the authz service:

- inbound message → ``CheckUser`` → agent (ALLOW), ``RequestPairing`` and the
  owner's buttons (PAIRING_REQUIRED; with the requester's platform-verified
  email / phone number when the transport can look them up, for the channel's
  auto-approve rules), or the service's text / silence; a direct
  message that is an invite code (optionally after ``/start``) from a user who
  would otherwise pair or be refused as not allowlisted → ``RedeemInvite``;
- a direct message that parses as an approver's chat command (``/approve``,
  ``/pending`` …; ``domain.commands``) → ``RunChatCommand`` with the sender's
  platform id: the service acts only for an approver of the channel and answers
  "not handled" for anyone else, whose text then takes the ordinary route above;
- button press → ``ResolveApproval`` with the presser's platform id (the service
  decides whether they may approve) → tell the requester;
- every agent message (replies included) → ``EvaluateSend`` → deliver or refuse;
- with a transport that has :class:`DirectMessages`, a task follows
  ``WatchNotifications`` for the channel: every approver's copy of every
  pairing request and tool-call approval is posted to their DM, edited on each
  vote, decision and expiry, and acknowledged (``AckNotification``) with the
  platform's message reference, or with why the approver cannot be reached.
  The owner is then no longer DMed from the ``RequestPairing`` answer.

Texts that the *service* dictates (pairing codes, denials, outcomes) are sent
directly: they are the connector speaking, not the agent, and the send policy
gates what agents may say.

The connector decides the ``origin`` of every agent send itself: a session it
handed to the agent (an inbound message from that chat was allowed and passed
to the agent) maps to that chat, in a bounded in-memory map (the
:data:`MAX_SESSIONS` most recently active sessions; ``sessions.py``). Session
ids are random, so only the agent runtime that was handed one can name it. The
caller of ``POST /send`` names a session, never an origin; an unknown session
has none, so a send to ``origin`` is refused. Besides that map the connector keeps no state but its
configuration, so it can restart at any time (earlier sessions have no origin
until their chat writes again).

When the service is unreachable it routes nothing: the client retries each
call the proto declares safe to repeat, with a bounded backoff within the
call's deadline, then the message is dropped with a log line (a button press
is not repeatable: the presser is asked to press again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar, get_args, runtime_checkable

import aiohttp
import grpc

from authz_service.client import Client, invite_code_to_redeem
from authz_service.domain import commands
from authz_service.domain.autoapprove import reported_email, reported_phone
from authz_service.domain.errors import InvalidArgument
from authz_service.domain.ids import one_line
from authz_service.domain.pairing import MAX_HANDLE
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.names import APPROVAL_ACTION

from .config import ConnectorConfig
from .sessions import Sessions

log = logging.getLogger("sidecars")

START_REPLY = "✅ You're paired with this bot. Send a message to talk to the agent."
NOT_ALLOWED = "You are not allowed to approve this request."
INVALID_BUTTON = "This button is not valid."
ALREADY_RESOLVED = "This request was already resolved or has expired."
UNAVAILABLE = "The authorization service is unavailable. Please try again later."
FAILED = "This request could not be processed."
OWNER_UNREACHABLE = (
    "⚠️ The owner could not be notified in this chat. Ask them to message this bot first, "
    "or to approve your code with the authz CLI or console."
)
MAX_SESSIONS = 10_000
# A requester's contact lookup is reused this long (a stranger's repeated
# messages must not turn into one platform API call each).
CONTACT_MEMO_SECONDS = 600.0
"""Sessions whose origin a connector remembers; the least recently active is forgotten first."""

# After the client's own retries: the service is out of reach.
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_COMMANDS = ("/start", "/pair")
ButtonAction = Literal["approve", "deny", "block", "always_allow"]
# The approval buttons, by proto number (labels from ``names``).
_ACTIONS: dict[int, ButtonAction] = {APPROVAL_ACTION.number(a): a for a in get_args(ButtonAction)}

Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass(frozen=True)
class Inbound:
    """One platform message, already translated by the platform package."""

    user_id: str  # authz user id: the platform's stable id, never a name
    chat_id: str  # platform conversation to reply in
    chat_kind: Literal["direct", "group"]
    group_id: str = ""  # for groups: the platform group/channel id
    mentioned: bool = False
    text: str = ""
    display_name: str = ""  # informational only, never used for matching
    handle: str = ""  # the platform's @handle (without "@"), if it has one: shown to approvers, never matched


@dataclass(frozen=True)
class ButtonSpec:
    action: ButtonAction
    label: str
    payload: str  # the service's callback_payload, passed verbatim as the platform's button data


def buttons_of(buttons: Iterable[az.Button]) -> list[ButtonSpec]:
    """The service's buttons as a transport posts them; an action this connector does
    not know (a newer service) is left out rather than posted as a guess."""
    return [
        ButtonSpec(_ACTIONS[b.action], b.label, b.callback_payload) for b in buttons if b.action in _ACTIONS
    ]


@dataclass(frozen=True)
class PressResult:
    """What the platform shows after a button press.

    ok: the approval was resolved; edit the owner's message to show ``owner_text``
    (e.g. "✅ Approved by 42") and remove the buttons.
    not ok: ``owner_text`` is a refusal shown only to the presser (alert /
    ephemeral); the owner's message stays unchanged.
    """

    ok: bool
    owner_text: str
    # False: the notification outbox edits every copy (the presser's too), so
    # the platform only acknowledges the press (a toast, an ephemeral line).
    edit: bool = True


@dataclass(frozen=True)
class SendResult:
    allow: bool
    reason: str = ""
    resolved_target: str = ""


class Transport(Protocol):
    """The platform side: deliver text, and DM a user with native buttons."""

    platform: str  # "telegram" | "slack" | "discord" | "whatsapp"

    async def send_text(self, chat_id: str, text: str) -> None: ...

    async def send_direct(self, user_id: str, text: str, buttons: Sequence[ButtonSpec] = ()) -> None:
        """DM a user by authz user id, rendering ``buttons`` natively if any."""
        ...


@runtime_checkable
class DirectMessages(Protocol):
    """Optional :class:`Transport` capability: post and edit one approver's
    copy of an approval notification. A transport that has it gets every
    approver's copy from the notification outbox (``WatchNotifications``)."""

    async def post_direct(self, user_id: str, text: str, buttons: Sequence[ButtonSpec]) -> str:
        """DM ``user_id``; returns the platform's reference of the message (to
        edit it later). Raises :class:`ApproverUnreachable` when the platform
        refuses to reach the user (e.g. they never messaged the bot)."""
        ...

    async def edit_direct(
        self, user_id: str, message_ref: str, text: str, buttons: Sequence[ButtonSpec]
    ) -> str:
        """Show ``text`` and ``buttons`` (none: remove them) in the message
        ``message_ref``; returns the reference now showing it (the same, or a
        new one where the platform cannot edit it)."""
        ...


class ApproverUnreachable(Exception):
    """The platform cannot reach an approver. ``reason``: a short class such
    as ``chat_not_found`` (sent to the service and audited; never message text)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Contact:
    """A requester's contact details as the platform verified them ("" = unknown).

    ``email`` and ``phone_number`` are sent to the service only for the
    channel's auto-approve rules, never stored there; ``display_name`` and
    ``handle`` are stored with the pairing request for its approvers. None is
    ever logged (hidden from ``repr`` so a stray log line cannot show them).
    """

    email: str = field(default="", repr=False)
    phone_number: str = field(default="", repr=False)  # E.164
    # Who the platform says they are, for a platform whose events carry no name
    # (Slack): shown to approvers with the pairing request, never matched.
    display_name: str = field(default="", repr=False)
    handle: str = field(default="", repr=False)


NO_CONTACT = Contact()


@runtime_checkable
class ContactLookup(Protocol):
    """Optional :class:`Transport` capability: look up who asks to pair.

    A transport that implements it is asked before each ``RequestPairing``;
    one that doesn't (or returns ``NO_CONTACT``) pairs without contact details.
    """

    async def contact(self, user_id: str) -> Contact:
        """The platform-verified email / phone of ``user_id`` (an authz user id).

        Raise :class:`ContactUnavailable` (or anything else) when the lookup
        fails: the requester then pairs without them."""
        ...


# The service's bounds for a requester's display name and handle (RequestPairing).
MAX_SHOWN_NAME = 256


def _shown(value: str, limit: int) -> str:
    """A name or handle the platform reported, as the service takes it: one line,
    cut to ``limit`` characters; "" if it cannot be shown so."""
    value = value.strip()[:limit]
    try:
        return one_line(value, "name", limit)
    except InvalidArgument:
        return ""


class ContactUnavailable(Exception):
    """A contact lookup failed; the message names why and never contains the details."""


class ServiceUnavailable(Exception):
    """The authz service did not answer after every retry; nothing was routed."""


class DeliveryFailed(Exception):
    """EvaluateSend allowed a message but the platform did not take it."""

    def __init__(self, resolved_target: str, cause: BaseException) -> None:
        super().__init__(f"delivery to {resolved_target} failed: {cause}")
        self.resolved_target = resolved_target


@dataclass(frozen=True)
class AgentTurn:
    """What the agent runtime receives for one allowed message."""

    channel_id: str
    agent_id: str
    session_id: str
    user_id: str
    chat_id: str
    text: str
    permissions: tuple[str, ...] = ()


class Agent(Protocol):
    async def reply(self, turn: AgentTurn) -> str:
        """The agent's answer; "" means no message."""
        ...

    async def close(self) -> None: ...


class EchoAgent:
    """Built-in demo agent: answers "echo: <text>"."""

    async def reply(self, turn: AgentTurn) -> str:
        return "echo: " + turn.text

    async def close(self) -> None:
        return None


@dataclass
class HttpAgent:
    """The tenant's agent runtime: POST JSON turn → JSON {"reply": str}."""

    url: str
    timeout: float = 60.0
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    async def reply(self, turn: AgentTurn) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        body = {
            "channel_id": turn.channel_id,
            "agent_id": turn.agent_id,
            "session_id": turn.session_id,
            "user_id": turn.user_id,
            "chat_id": turn.chat_id,
            "text": turn.text,
            "permissions": list(turn.permissions),
        }
        async with self._session.post(self.url, json=body) as resp:
            resp.raise_for_status()
            data = await resp.json(content_type=None)
        reply = data.get("reply") if isinstance(data, dict) else None
        if reply is not None and not isinstance(reply, str):
            raise ValueError("agent runtime answered a non-string 'reply'")
        return reply or ""

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def make_agent(agent_url: str) -> Agent:
    return EchoAgent() if agent_url == "echo" else HttpAgent(agent_url)


def is_command(text: str) -> bool:
    """``/start`` or ``/pair``, with or without a Telegram ``@botname`` suffix or arguments."""
    head = text.strip().split(maxsplit=1)[0] if text.strip() else ""
    return head.split("@", 1)[0].lower() in _COMMANDS


class Connector:
    """The shared flow; one instance per connector process."""

    def __init__(
        self,
        config: ConnectorConfig,
        transport: Transport,
        client: Client,
        agent: Agent,
        *,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.config = config
        self.transport = transport
        self.client = client
        self.agent = agent
        self._max_sessions = max_sessions
        self._sessions = Sessions(max_sessions)
        # user id -> (when looked up, what was found): memory only, never logged
        self._contacts: OrderedDict[str, tuple[float, Contact]] = OrderedDict()
        # True while the notification outbox runs (``sidecars.outbox.follow_notifications``):
        # approvers' copies come from it, not from the RequestPairing answer.
        self.follows_notifications = False

    # ---- sessions ------------------------------------------------------------------

    def origin_of(self, session: str) -> str:
        """The chat a session handed to the agent belongs to; "" if this process
        never handed it out (or has forgotten it): no origin."""
        return self._sessions.chat_of(session)

    # ---- inbound ---------------------------------------------------------------

    async def handle_message(self, msg: Inbound) -> None:
        """Route one inbound message. Never raises: a failure drops the message with a log line."""
        try:
            await self._route(msg)
        except ServiceUnavailable as exc:
            log.error("dropped message from %s in %s: %s", msg.user_id, msg.chat_id, exc)
        except Exception:
            log.exception("dropped message from %s in %s", msg.user_id, msg.chat_id)

    async def _route(self, msg: Inbound) -> None:
        if msg.chat_kind == "direct" and commands.parse(msg.text) is not None and await self._command(msg):
            return
        check = await self._call(
            self.client.authz.CheckUser,
            az.CheckUserRequest(
                channel_id=self.config.channel_id,
                user_id=msg.user_id,
                chat_kind=cm.CHAT_KIND_DIRECT if msg.chat_kind == "direct" else cm.CHAT_KIND_GROUP,
                group_id=msg.group_id if msg.chat_kind == "group" else "",
                mentioned=msg.mentioned,
                text=msg.text,
                display_name=msg.display_name,
            ),
        )
        log.info(
            "message from %s in %s: %s (%s)",
            msg.user_id,
            msg.chat_id,
            az.Decision.Name(check.decision),
            check.reason,
        )
        code = invite_code_to_redeem(check, direct=msg.chat_kind == "direct", text=msg.text)
        if check.decision == az.DECISION_ALLOW:
            await self._allowed(msg, check)
        elif code is not None:
            await self._redeem(msg, code)
        elif check.decision == az.DECISION_PAIRING_REQUIRED:
            await self._pair(msg)
        elif check.decision == az.DECISION_RATE_LIMITED:
            pass  # dropped in silence (logged above): a "slow down" reply to each one would flood the chat
        elif check.text:
            await self.transport.send_text(msg.chat_id, check.text)

    async def _command(self, msg: Inbound) -> bool:
        """An approver's chat command: True if the service acted on it (the reply
        and the requester's notice are sent), False for an ordinary message."""
        done = await self._call(
            self.client.authz.RunChatCommand,
            az.RunChatCommandRequest(channel_id=self.config.channel_id, actor_id=msg.user_id, text=msg.text),
        )
        if not done.handled:
            return False
        log.info("chat command from %s: %s", msg.user_id, msg.text.split(maxsplit=1)[0])
        if done.text:
            await self.transport.send_text(msg.chat_id, done.text)
        for notice in done.notices:
            try:
                await self.transport.send_direct(notice.user_id, notice.text)
            except Exception:
                log.exception("could not tell %s the outcome", notice.user_id)
        return True

    async def _allowed(self, msg: Inbound, check: az.CheckUserResponse) -> None:
        session = ""  # /start and /pair do not reach the agent: no session
        if is_command(msg.text):
            reply = START_REPLY
        else:
            # Before the turn: the runtime may call POST /send with this session during it.
            session = self._sessions.open(msg.chat_id)
            reply = await self.agent.reply(
                AgentTurn(
                    channel_id=self.config.channel_id,
                    agent_id=check.agent_id,
                    session_id=session,
                    user_id=msg.user_id,
                    chat_id=msg.chat_id,
                    text=msg.text,
                    permissions=tuple(check.permissions),
                )
            )
        if not reply:
            return
        result = await self.send(
            msg.chat_id, reply, origin=msg.chat_id, session_id=session, agent_id=check.agent_id
        )
        if not result.allow:
            log.warning("reply in %s refused by send policy: %s", msg.chat_id, result.reason)

    async def _pair(self, msg: Inbound) -> None:
        contact = await self._contact(msg.user_id)
        pairing = await self._call(
            self.client.authz.RequestPairing,
            az.RequestPairingRequest(
                channel_id=self.config.channel_id,
                user_id=msg.user_id,
                display_name=msg.display_name or contact.display_name,
                first_message=msg.text,
                email=contact.email,
                phone_number=contact.phone_number,
                handle=_shown((msg.handle or contact.handle).removeprefix("@"), MAX_HANDLE),
            ),
        )
        log.info("pairing for %s: %s", msg.user_id, az.PairingOutcome.Name(pairing.outcome))
        # The service leaves the text empty when the requester was already told
        # (a live request is returned again), and notifies the owner only once.
        # AUTO_APPROVED (an auto-approve rule matched): the text tells the requester,
        # and there is nothing for the owner (not ``created``, no notification).
        if pairing.text:
            await self.transport.send_text(msg.chat_id, pairing.text)
        if self.follows_notifications:
            return  # every approver's copy comes from the outbox (WatchNotifications)
        if pairing.created and pairing.HasField("notification") and pairing.notification.owner_id:
            note = pairing.notification
            buttons = buttons_of(note.buttons)
            try:
                await self.transport.send_direct(note.owner_id, note.text, buttons)
            except Exception as exc:
                # E.g. WhatsApp's 24-hour window: the request stands, the owner decides elsewhere.
                reason = getattr(exc, "reason", "") or type(exc).__name__
                log.warning(
                    "owner %s not notified of %s's pairing request: %s", note.owner_id, msg.user_id, reason
                )
                await self.transport.send_text(msg.chat_id, OWNER_UNREACHABLE)

    async def _contact(self, user_id: str) -> Contact:
        """The requester's verified contact details if the transport can look them up.

        Never blocks pairing: a failed, slow or malformed lookup pairs without
        them (a warning names the user and the cause, never the details)."""
        if not isinstance(self.transport, ContactLookup):
            return NO_CONTACT
        now = time.monotonic()
        memo = self._contacts.get(user_id)
        if memo is not None and now - memo[0] < CONTACT_MEMO_SECONDS:
            return memo[1]
        found = await self._look_up(self.transport, user_id)
        self._contacts[user_id] = (now, found)  # failures too: retried after the memo expires
        self._contacts.move_to_end(user_id)
        while len(self._contacts) > self._max_sessions:
            self._contacts.popitem(last=False)
        return found

    async def _look_up(self, transport: ContactLookup, user_id: str) -> Contact:
        try:
            async with asyncio.timeout(self.config.contact_timeout):
                found = await transport.contact(user_id)
        except ContactUnavailable as exc:
            log.warning("contact lookup for %s failed (%s); pairing without it", user_id, exc)
            return NO_CONTACT
        except Exception as exc:  # a timeout included; the message may quote the details
            log.warning("contact lookup for %s failed (%s); pairing without it", user_id, type(exc).__name__)
            return NO_CONTACT
        try:
            # What the service would refuse with INVALID_ARGUMENT, failing the whole request.
            return Contact(
                reported_email(found.email),
                reported_phone(found.phone_number),
                _shown(found.display_name, MAX_SHOWN_NAME),
                _shown(found.handle.removeprefix("@"), MAX_HANDLE),
            )
        except InvalidArgument as exc:
            log.warning("contact lookup for %s: %s field malformed; pairing without it", user_id, exc.field)
            return NO_CONTACT

    async def _redeem(self, msg: Inbound, code: str) -> None:
        redeemed = await self._call(
            self.client.authz.RedeemInvite,
            az.RedeemInviteRequest(
                channel_id=self.config.channel_id,
                user_id=msg.user_id,
                code=code,
                display_name=msg.display_name,
            ),
        )
        log.info("invite from %s: %s", msg.user_id, az.InviteOutcome.Name(redeemed.outcome))
        if redeemed.text:
            await self.transport.send_text(msg.chat_id, redeemed.text)

    # ---- button presses ---------------------------------------------------------

    async def handle_press(self, payload: str, presser_id: str) -> PressResult:
        """Resolve the approval behind a button; the service checks the presser."""
        try:
            resolved = await self._call(
                self.client.authz.ResolveApproval,
                az.ResolveApprovalRequest(callback_payload=payload, actor_id=presser_id),
            )
        except ServiceUnavailable as exc:
            log.error("button press by %s not resolved: %s", presser_id, exc)
            return PressResult(False, UNAVAILABLE)
        except grpc.aio.AioRpcError as exc:
            log.warning("button press by %s refused: %s %s", presser_id, exc.code().name, exc.details())
            return PressResult(False, _refusal(exc.code()))
        approval = resolved.approval
        log.info(
            "approval %s resolved by %s: %s",
            approval.approval_id,
            presser_id,
            cm.ApprovalStatus.Name(approval.status),
        )
        if resolved.requester_text:
            try:
                await self.transport.send_direct(approval.user_id, resolved.requester_text)
            except Exception:
                # The approval stands; only the courtesy message was lost.
                log.exception("could not tell %s the outcome", approval.user_id)
        return PressResult(True, resolved.owner_text, edit=not self.follows_notifications)

    # ---- outbound ---------------------------------------------------------------

    async def send(
        self, target: str, text: str, *, origin: str = "", session_id: str = "", agent_id: str = ""
    ) -> SendResult:
        """Deliver an agent message if ``EvaluateSend`` allows it, to the target the
        service resolved and nothing else (an allow without one is a refusal).

        ``origin`` is trusted as given: it must come from the connector (the chat of
        the turn, or :meth:`origin_of` a session), never from the agent's request.
        ``agent_id`` defaults to the configured one. Raises ServiceUnavailable (nothing
        sent), grpc errors for invalid requests, and DeliveryFailed.
        """
        decision = await self._call(
            self.client.authz.EvaluateSend,
            az.EvaluateSendRequest(
                channel_id=self.config.channel_id,
                agent_id=agent_id or self.config.agent_id,
                session_id=session_id,
                origin=origin,
                target=target,
            ),
        )
        if not decision.allow:
            log.info("send to %s denied: %s", target, decision.reason)
            return SendResult(False, decision.reason, decision.resolved_target)
        resolved = decision.resolved_target
        if not resolved:
            # The service denies such sends itself ("origin" without an origin); should one
            # ever come back allowed, fail closed: never fall back to the raw target.
            log.warning("send to %s allowed without a conversation to deliver to; not delivered", target)
            return SendResult(False, no_destination(target), "")
        try:
            await self.transport.send_text(resolved, text)
        except Exception as exc:
            raise DeliveryFailed(resolved, exc) from exc
        return SendResult(True, "", resolved)

    # ---- service calls ------------------------------------------------------------

    async def _call(self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req) -> Resp:
        """One RPC. The client has retried it if the proto declares it safe to
        repeat (not ResolveApproval, not RedeemInvite); an outage left after that
        is ServiceUnavailable."""
        try:
            return await method(request, timeout=self.config.rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in _UNREACHABLE:
                raise
            raise ServiceUnavailable(f"authz service unavailable: {exc.code().name}") from exc


def no_destination(target: str) -> str:
    """The model-readable refusal when the service named no conversation to deliver to."""
    return f"Failed to send to {target}: there is no conversation to deliver it to"


def _refusal(code: grpc.StatusCode) -> str:
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return NOT_ALLOWED
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
        return INVALID_BUTTON
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return ALREADY_RESOLVED
    return FAILED


StartConnector = Callable[[Transport], Awaitable[Connector]]
"""Given the platform's Transport, build the Connector (and start the send endpoint)."""
