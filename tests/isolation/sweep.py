"""The tenant isolation sweep's world, harness and AuthzService cases (issue #8).

Every RPC of AuthzService and AdminService, enumerated from the service
descriptors (a new RPC without a case fails), is called with tenant B's
keys against tenant A's real objects: channel, user, group, pairing and tool
approval ids, button payloads, a pairing code, a grant, a key id, an agent id,
an idempotency key, tenant approvers. Each call is made twice, once with A's
identifiers and once with made-up ones of the same shape, and:

* the two answers are the same (status code and message, or the response),
  once each identifier the caller sent is replaced by its name: B cannot tell
  whether A's object exists;
* no answer contains any of A's values that B did not send itself;
* A's rows, read as the schema owner before and after, are unchanged.

Each RPC runs in two variants: "foreign" (B has no channel of that name) and
"shared" (B has its own channel with the same name as A's, so the lookups of
users, approvals and codes inside an existing channel are exercised too).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import text_format
from google.protobuf.message import Message

from authz_service.client import Client, connect
from authz_service.domain.invites import format_invite_code, new_invite_code
from authz_service.domain.pairing import CODE_ALPHABET
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from tests.conftest import Dsns, Service, Tenant, make_tenant
from tests.console_helpers import open_console_session

METHODS = [
    f"{name}.{method.name}"
    for module, name in ((az, "AuthzService"), (adm, "AdminService"))
    for method in module.DESCRIPTOR.services_by_name[name].methods
]
VARIANTS = ("foreign", "shared")
APPROVE = cm.APPROVAL_ACTION_APPROVE


def _digits() -> str:
    """A Telegram-shaped user id, long enough never to occur by chance in an answer."""
    return str(10**14 + secrets.randbelow(9 * 10**14))


def _b64_16() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()


def _code(*not_these: str) -> str:
    while (code := "".join(secrets.choice(CODE_ALPHABET) for _ in range(8))) in not_these:
        pass
    return code


@dataclass(frozen=True)
class Ids:
    """Identifiers a caller can name. A's real ones, or made-up ones of the same shape."""

    tenant: str
    channel: str
    owner: str
    user: str  # allowlisted, and an allowed group sender
    paired: str
    blocked: str
    requester: str  # has a pending pairing request
    group: str
    pairing: str  # pending pairing approval
    tool: str  # pending tool approval
    approved_tool: str  # approved by "always allow", not redeemed
    code: str  # the pending pairing's code
    pairing_payload: str
    tool_payload: str
    grant: str
    key: str
    agent: str
    request_key: str
    approver: str  # a tenant-level approver, "telegram:<id>"
    invite: str  # an unused invite id
    invite_code: str  # its code

    def made_up(self, *, channel: str) -> Ids:
        return Ids(
            tenant="t" + secrets.token_hex(6),
            channel=channel,
            owner=_digits(),
            user=_digits(),
            paired=_digits(),
            blocked=_digits(),
            requester=_digits(),
            group="-100" + _digits(),
            pairing="apr_" + _b64_16(),
            tool="apr_" + _b64_16(),
            approved_tool="apr_" + _b64_16(),
            code=_code(self.code),
            pairing_payload="az1a" + _b64_16() + _b64_16(),
            tool_payload="az1a" + _b64_16() + _b64_16(),
            grant="grt_" + secrets.token_urlsafe(16),
            key="".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12)),
            agent="agent-" + secrets.token_hex(4),
            request_key="rk-" + secrets.token_hex(8),
            approver=f"telegram:{_digits()}",
            invite="inv_" + _b64_16(),
            invite_code=format_invite_code(new_invite_code()),
        )


GRANTED_ENV = f"prod-{secrets.token_hex(4)}"
GRANTED_CALL = ("deploy", json.dumps({"env": GRANTED_ENV}))


@dataclass
class World:
    """Tenant A with one of everything, and what B must never learn."""

    tenant: Tenant
    agent: Client
    ids: Ids
    private: frozenset[str]


@pytest.fixture(scope="module")
async def world(service: Service) -> AsyncIterator[World]:
    a = await make_tenant(service)
    agent_key = await a.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="agent"))
    agent = connect(service.address, agent_key.secret)
    owner, user, paired, blocked, requester = (_digits() for _ in range(5))
    channel, group, agent_id = (
        "ch" + secrets.token_hex(4),
        "-100" + _digits(),
        "agent-" + secrets.token_hex(4),
    )
    approver, request_key = f"telegram:{owner}", "rk-" + secrets.token_hex(8)
    secret_words = [f"{w}-{secrets.token_hex(4)}" for w in ("Alice", "Bob", "perm", "cmd", "spam", "why")]
    alice, bob, perm, cmd, spam, why = secret_words

    await a.admin.admin.SetTenantSettings(
        adm.TenantSettings(approvers=[approver], agent_approvers={agent_id: adm.ActorList(actors=[approver])})
    )
    await a.channel(
        channel, owner_id=owner, approvers=[user], agent_id=agent_id,
        send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW),
        rate_limit=cm.RateLimit(max_messages_per_hour=1_000_000, burst=1_000_000),
    )  # fmt: skip
    await a.admin.admin.AllowUser(
        adm.AllowUserRequest(channel_id=channel, user_id=user, display_name=alice, permissions=[perm])
    )
    # An allowed message on a rate-limited channel: A has a rate bucket row too.
    await a.connector.authz.CheckUser(
        az.CheckUserRequest(channel_id=channel, user_id=user, chat_kind=cm.CHAT_KIND_DIRECT)
    )
    await a.admin.admin.AllowGroupSender(adm.GroupSenderRef(channel_id=channel, group_id=group, user_id=user))
    await a.admin.admin.BlockUser(adm.BlockUserRequest(channel_id=channel, user_id=blocked, reason=spam))
    first = await a.connector.authz.RequestPairing(
        az.RequestPairingRequest(channel_id=channel, user_id=paired)
    )
    await a.approver.authz.ResolveApproval(
        az.ResolveApprovalRequest(approval_id=first.approval_id, action=APPROVE, reason=why)
    )
    pending = await a.connector.authz.RequestPairing(
        az.RequestPairingRequest(
            channel_id=channel, user_id=requester, display_name=bob, first_message="hello"
        )
    )
    tool = await agent.authz.RequestApproval(
        az.RequestApprovalRequest(
            tool_name="shell", arguments_json=json.dumps({"cmd": cmd}), agent_id=agent_id, channel_id=channel,
            requester_id=user, request_key=request_key,
        )
    )  # fmt: skip
    deploy = await agent.authz.RequestApproval(
        az.RequestApprovalRequest(
            tool_name=GRANTED_CALL[0], arguments_json=GRANTED_CALL[1], agent_id=agent_id
        )
    )
    await a.approver.authz.ResolveApproval(
        az.ResolveApprovalRequest(
            approval_id=deploy.approval.approval_id, action=cm.APPROVAL_ACTION_ALWAYS_ALLOW
        )
    )
    (grant,) = (await a.approver.admin.ListGrants(adm.ListGrantsRequest(agent_id=agent_id))).grants
    # A failed code guess of A's own, so A has rows in every tenant table (attempt counters too).
    with pytest.raises(grpc.aio.AioRpcError) as missed:
        await a.approver.authz.ResolveApproval(
            az.ResolveApprovalRequest(
                code=az.CodeRef(channel_id=channel, code=_code(pending.code)), action=APPROVE
            )
        )
    assert missed.value.code() == grpc.StatusCode.NOT_FOUND

    # A denied send (on a channel that does not exist): a row of send_denials and its audit event.
    denied = await a.connector.authz.EvaluateSend(
        az.EvaluateSendRequest(
            channel_id="nowhere", agent_id=agent_id, session_id="s1", origin="o", target="x"
        )
    )
    assert not denied.allow
    invite = await a.admin.admin.CreateInvite(adm.CreateInviteRequest(channel_id=channel, permissions=[perm]))
    # A notification copy handed out and acknowledged: a row of notification_copies.
    stream = a.connector.authz.WatchNotifications(az.WatchNotificationsRequest(channel_id=channel))
    async with asyncio.timeout(5):
        handed = await anext(aiter(stream))
    stream.cancel()
    await a.connector.authz.AckNotification(
        az.AckNotificationRequest(channel_id=channel, approval_id=handed.approval_id,
                                  approver_id=handed.approver_id, version=handed.version, message_ref="m1")
    )  # fmt: skip
    await open_console_session(service, a.keys["admin"])  # a console_sessions row

    def button(buttons: Any) -> str:
        return next(str(b.callback_payload) for b in buttons if b.action == APPROVE)

    ids = Ids(
        tenant=a.tenant_id, channel=channel, owner=owner, user=user, paired=paired, blocked=blocked,
        requester=requester, group=group, pairing=pending.approval_id, tool=tool.approval.approval_id,
        approved_tool=deploy.approval.approval_id, code=pending.code,
        pairing_payload=button(pending.notification.buttons), tool_payload=button(tool.notification.buttons),
        grant=grant.grant_id, key=a.keys["connector"].split(".")[2], agent=agent_id, request_key=request_key,
        approver=approver, invite=invite.invite.invite_id, invite_code=invite.code,
    )  # fmt: skip
    private = frozenset({*asdict(ids).values(), *secret_words, GRANTED_ENV, a.keys["admin"].split(".")[2]})
    yield World(a, agent, ids, private)
    for c in (a.admin, a.connector, a.approver, agent):
        await c.close()


@pytest.fixture(scope="module")
async def owner(dsns: Dsns) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsns.owner)
    yield conn
    await conn.close()


async def tenant_tables(conn: asyncpg.Connection) -> list[str]:
    """Every table of the schema with a tenant_id column. Partitions are reached
    through their table only (the service role holds no privilege on them;
    tests/test_audit_retention.py checks that and their own row-level security)."""
    rows = await conn.fetch(
        """SELECT c.relname FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
           WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND n.nspname = current_schema()
           ORDER BY 1"""
    )
    return [r["relname"] for r in rows]


# Working state the service drains on its own (closed denied-send buckets are
# summarised by a periodic sweep and by the tenant's next denial): its rows may
# vanish between two snapshots whatever the caller did. Its row-level security
# is checked with every other table's (test_rls.py).
DRAINED = frozenset({"send_denials"})


async def snapshot(conn: asyncpg.Connection, tenant_id: str) -> dict[str, list[tuple[str, ...]]]:
    """Every row of the tenant in every tenant table but ``DRAINED``, as the schema owner."""
    out = {}
    async with conn.transaction():
        # The owner is bound by FORCEd RLS unless it is a superuser: scope it either way.
        await conn.execute("SELECT set_config('authz.tenant', $1, true)", tenant_id)
        for table in sorted(set(await tenant_tables(conn)) - DRAINED):
            rows = await conn.fetch(f"SELECT * FROM {table} WHERE tenant_id = $1", tenant_id)
            out[table] = sorted(tuple(str(v) for v in r.values()) for r in rows)
    return out


# --- one run of a case: calls, answers, leak checks ---------------------------------------


def scrub(msg: Message) -> Message:
    """A copy without what differs on every call: trace ids and timestamps."""
    out = type(msg)()
    out.CopyFrom(msg)
    _scrub(out)
    return out


def _scrub(msg: Message) -> None:
    for fd, value in list(msg.ListFields()):
        if fd.name == "trace_id" or (
            fd.message_type and fd.message_type.full_name == "google.protobuf.Timestamp"
        ):
            msg.ClearField(fd.name)
        elif fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            for v in value.values():
                if isinstance(v, Message):
                    _scrub(v)
        elif fd.message_type is not None and fd.is_repeated:
            for item in value:
                _scrub(item)
        elif fd.message_type is not None:
            _scrub(value)


def show(resp: Any) -> str:
    return text_format.MessageToString(scrub(resp), as_one_line=True)


@dataclass
class Run:
    ids: Ids
    private: frozenset[str]
    outcomes: list[tuple[str, str]] = field(default_factory=list)

    def normalize(self, text: str) -> str:
        for name, value in sorted(asdict(self.ids).items(), key=lambda kv: -len(kv[1])):
            text = text.replace(value, f"<{name}>")
        return text

    def record(self, label: str, request: Any, outcome: str) -> None:
        sent = text_format.MessageToString(request) if isinstance(request, Message) else str(request)
        leaked = sorted(v for v in self.private if v not in sent and v in outcome)
        assert not leaked, f"{label}: the answer reveals {leaked}: {outcome}"
        self.outcomes.append((label, self.normalize(outcome)))

    async def unary(
        self, label: str, method: Callable[[Any], Awaitable[Any]], request: Message,
        summary: Callable[[Any], object] = show,
    ) -> None:  # fmt: skip
        try:
            resp = await method(request)
        except grpc.aio.AioRpcError as exc:
            outcome = f"error {exc.code().name}: {exc.details()}"
        else:
            outcome = f"ok {summary(resp)}"
        self.record(label, request, outcome)

    async def stream(self, label: str, method: Callable[[Any], Any], request: Message) -> None:
        """A watch: its error, or what it yields within a short time."""
        call = method(request)
        items: list[str] = []
        try:
            async with asyncio.timeout(0.5):
                async for item in call:
                    items.append(show(item))
            outcome = f"ended {items}"
        except grpc.aio.AioRpcError as exc:
            outcome = f"error {exc.code().name}: {exc.details()} after {items}"
        except TimeoutError:
            outcome = f"open {items}"
        finally:
            call.cancel()
        self.record(label, request, outcome)


@dataclass
class B:
    """Tenant B (fresh for every case and variant) with a key of each role."""

    tenant: Tenant
    agent: Client
    variant: str
    shared_channel: str
    owner_id: str
    owner_conn: asyncpg.Connection

    @property
    def roles(self) -> dict[str, Client]:
        return {
            "admin": self.tenant.admin,
            "approver": self.tenant.approver,
            "connector": self.tenant.connector,
            "agent": self.agent,
        }

    async def prepare(self) -> None:
        """Shared variant: B's own channel with A's channel's name exists, as first set."""
        if self.variant != "shared":
            return
        try:
            current = await self.tenant.admin.admin.GetChannel(
                adm.GetChannelRequest(channel_id=self.shared_channel)
            )
        except grpc.aio.AioRpcError:
            current = None
        if current is None or current.policy.owner_id != self.owner_id or current.policy.approvers:
            await self.tenant.channel(self.shared_channel, owner_id=self.owner_id)

    async def close(self) -> None:
        for c in (*self.roles.values(),):
            await c.close()


Case = Callable[[Run, B], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        assert name not in CASES, name
        CASES[name] = fn
        return fn

    return register


# --- AuthzService ---------------------------------------------------------------------------


@case("AuthzService.CheckUser")
async def _check_user(r: Run, b: B) -> None:
    i = r.ids
    for role in ("connector", "agent"):
        check = b.roles[role].authz.CheckUser
        for user in (i.user, i.paired, i.blocked, i.requester):
            await r.unary(
                role,
                check,
                az.CheckUserRequest(channel_id=i.channel, user_id=user, chat_kind=cm.CHAT_KIND_DIRECT),
            )
        await r.unary(
            role, check,
            az.CheckUserRequest(channel_id=i.channel, user_id=i.user, chat_kind=cm.CHAT_KIND_GROUP, group_id=i.group,
                                mentioned=True, consistent=True),
        )  # fmt: skip


def _pairing(resp: az.RequestPairingResponse) -> object:
    return (resp.outcome, resp.created, bool(resp.code), bool(resp.approval_id), resp.notification.owner_id)


@case("AuthzService.RequestPairing")
async def _request_pairing(r: Run, b: B) -> None:
    for user in (r.ids.requester, r.ids.user, r.ids.blocked, r.ids.paired):
        req = az.RequestPairingRequest(channel_id=r.ids.channel, user_id=user, first_message="hi")
        await r.unary("connector", b.tenant.connector.authz.RequestPairing, req, _pairing)


@case("AuthzService.ResolveApproval")
async def _resolve_approval(r: Run, b: B) -> None:
    i = r.ids
    targets: list[dict[str, Any]] = [
        {"approval_id": i.pairing, "action": APPROVE},
        {"approval_id": i.tool, "action": APPROVE},
        {"approval_id": i.approved_tool, "action": cm.APPROVAL_ACTION_DENY},
        {"callback_payload": i.pairing_payload},
        {"callback_payload": i.tool_payload},
        {"code": az.CodeRef(channel_id=i.channel, code=i.code), "action": APPROVE},
        {"user": az.RequesterRef(channel_id=i.channel, user_id=i.requester), "action": APPROVE},
    ]
    for role in ("connector", "approver", "admin"):
        for target in targets:
            actor: dict[str, Any] = {"actor_id": i.owner} if role == "connector" else {}
            req = az.ResolveApprovalRequest(**target, **actor)
            await r.unary(role, b.roles[role].authz.ResolveApproval, req)
        # The tool approvers' qualified form, for a tool approval without a channel.
        req = az.ResolveApprovalRequest(approval_id=i.approved_tool, action=APPROVE, actor_id=i.approver)
        await r.unary("connector", b.tenant.connector.authz.ResolveApproval, req)


@case("AuthzService.RunChatCommand")
async def _run_chat_command(r: Run, b: B) -> None:
    # A's owner's commands on A's channel: B acts on nothing and learns nothing.
    i = r.ids
    for role in ("connector", "admin"):
        for text in (f"/approve {i.code}", f"/approve {i.requester}", f"/block {i.user}", f"/unpair {i.paired}",
                     f"/unblock {i.blocked}", "/pending", "/users", "hello"):  # fmt: skip
            req = az.RunChatCommandRequest(channel_id=i.channel, actor_id=i.owner, text=text)
            await r.unary(role, b.roles[role].authz.RunChatCommand, req)


@case("AuthzService.RedeemInvite")
async def _redeem_invite(r: Run, b: B) -> None:
    # A's code on A's channel name, for users A knows: B's answer is that of a made-up code.
    for role in ("connector", "admin"):
        for user in (r.ids.requester, r.ids.blocked):
            req = az.RedeemInviteRequest(channel_id=r.ids.channel, user_id=user, code=r.ids.invite_code)
            await r.unary(role, b.roles[role].authz.RedeemInvite, req)


@case("AuthzService.EvaluateSend")
async def _evaluate_send(r: Run, b: B) -> None:
    i = r.ids
    for role in ("connector", "agent"):
        for target in (f"telegram:{i.user}", f"telegram:{i.group}"):
            req = az.EvaluateSendRequest(
                channel_id=i.channel, agent_id=i.agent, origin=f"telegram:{i.requester}", target=target
            )
            await r.unary(role, b.roles[role].authz.EvaluateSend, req)


def _tool_request(resp: az.RequestApprovalResponse) -> object:
    a = resp.approval
    return (
        resp.created, a.kind, a.status, a.channel_id, a.user_id, bool(a.grant_id), a.tool.tool_name,
        a.tool.arguments_json, a.tool.agent_id, list(resp.approvers), resp.HasField("notification"),
    )  # fmt: skip


@case("AuthzService.RequestApproval")
async def _request_approval(r: Run, b: B) -> None:
    i = r.ids
    for role in ("agent", "connector"):
        ask = b.roles[role].authz.RequestApproval
        # A's standing grant for this agent and this exact call must not approve B's request.
        await r.unary(role, ask, az.RequestApprovalRequest(
            tool_name=GRANTED_CALL[0], arguments_json=GRANTED_CALL[1], agent_id=i.agent), _tool_request)  # fmt: skip
        # A's idempotency key, with another call: B gets its own request, not A's (nor a conflict).
        for channel in ("", i.channel):
            await r.unary(role, ask, az.RequestApprovalRequest(
                tool_name="shell", arguments_json=json.dumps({"cmd": f"ls {role}"}), agent_id=i.agent,
                channel_id=channel, requester_id=i.user, request_key=f"{i.request_key}{channel and '.c'}.{role}",
            ), _tool_request)  # fmt: skip
        await r.unary(role, ask, az.RequestApprovalRequest(
            tool_name="shell", arguments_json='{"cmd": "pwd"}', agent_id=i.agent, request_key=i.request_key,
        ), _tool_request)  # fmt: skip


@case("AuthzService.WatchApproval")
async def _watch_approval(r: Run, b: B) -> None:
    for role in ("agent", "connector", "approver"):
        for approval_id in (r.ids.tool, r.ids.approved_tool, r.ids.pairing):
            await r.stream(
                role, b.roles[role].authz.WatchApproval, az.WatchApprovalRequest(approval_id=approval_id)
            )


@case("AuthzService.WatchNotifications")
async def _watch_notifications(r: Run, b: B) -> None:
    for role in ("connector", "admin"):
        req = az.WatchNotificationsRequest(channel_id=r.ids.channel)
        await r.stream(role, b.roles[role].authz.WatchNotifications, req)


@case("AuthzService.AckNotification")
async def _ack_notification(r: Run, b: B) -> None:
    # A's copies (approval and approver ids), acknowledged on A's channel name.
    i = r.ids
    for role in ("connector", "admin"):
        for approval_id, approver in ((i.pairing, i.owner), (i.pairing, i.user), (i.tool, i.owner)):
            for result in ({"message_ref": "m2"}, {"failure": "chat_not_found"}):
                req = az.AckNotificationRequest(
                    channel_id=i.channel, approval_id=approval_id, approver_id=approver, version=1, **result
                )
                await r.unary(role, b.roles[role].authz.AckNotification, req)


@case("AuthzService.WatchChanges")
async def _watch_changes(r: Run, b: B) -> None:
    """B's connector and agent keys watch changes. Notifications naming A's
    channel, user and tenant are injected (with A's tenant, and forged with B's
    channel names under A's tenant), then one for B's own marker channel: B's
    stream must yield the marker only."""
    i = r.ids
    for role in ("connector", "agent"):
        call = b.roles[role].authz.WatchChanges(az.WatchChangesRequest())
        seen: list[str] = []
        try:
            async with asyncio.timeout(10):
                stream = call.__aiter__()
                await anext(stream)  # the first, empty batch: the stream is registered
                for payload in (
                    f"subjects {i.tenant} {i.channel} {i.user}", f"group_senders {i.tenant} {i.channel} {i.user}",
                    f"channels {i.tenant} {i.channel}", f"tenants {i.tenant}",
                    f"subjects {b.tenant.tenant_id} edge-marker {role}",
                ):  # fmt: skip
                    await b.owner_conn.execute("SELECT pg_notify('authz_changes', $1)", payload)
                while not seen or seen[-1] != f"edge-marker/{role}":
                    batch = await anext(stream)
                    seen.extend(
                        f"{x.channel_id}/{x.user_id}{'/all' if x.all else ''}" for x in batch.invalidations
                    )
        finally:
            call.cancel()
        r.record(role, az.WatchChangesRequest(), str(seen))


@case("AuthzService.RedeemApproval")
async def _redeem_approval(r: Run, b: B) -> None:
    for role in ("agent", "connector"):
        for approval_id in (r.ids.approved_tool, r.ids.tool, r.ids.pairing):
            req = az.RedeemApprovalRequest(
                approval_id=approval_id, tool_name=GRANTED_CALL[0], arguments_json=GRANTED_CALL[1]
            )
            await r.unary(role, b.roles[role].authz.RedeemApproval, req)


async def _tenant_b(service: Service, world: World, variant: str, owner: asyncpg.Connection) -> B:
    """Tenant B, with the variant's channel and an agent key of its own."""
    t = await make_tenant(service)
    key = await t.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="agent"))
    return B(t, connect(service.address, key.secret), variant, world.ids.channel, _digits(), owner)
