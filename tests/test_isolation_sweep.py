"""Tenant isolation sweep (issue #8).

Every RPC of AuthzService and AdminService, enumerated from the service
descriptors (a new RPC without a case here fails), is called with tenant B's
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

Row-level security: for every table that has a ``tenant_id`` column
(enumerated from pg_catalog, so a new table without RLS fails), a query without
a tenant filter, under B's tenant setting, sees none of A's rows.
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

from .conftest import Dsns, Service, Tenant, make_tenant

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

    invite = await a.admin.admin.CreateInvite(adm.CreateInviteRequest(channel_id=channel, permissions=[perm]))

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
    """Every table of the schema with a tenant_id column."""
    rows = await conn.fetch(
        """SELECT c.relname FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
           WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema()
           ORDER BY 1"""
    )
    return [r["relname"] for r in rows]


async def snapshot(conn: asyncpg.Connection, tenant_id: str) -> dict[str, list[tuple[str, ...]]]:
    """Every row of the tenant in every tenant table, as the schema owner."""
    out = {}
    async with conn.transaction():
        # The owner is bound by FORCEd RLS unless it is a superuser: scope it either way.
        await conn.execute("SELECT set_config('authz.tenant', $1, true)", tenant_id)
        for table in await tenant_tables(conn):
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
    ]
    for role in ("connector", "approver", "admin"):
        for target in targets:
            actor: dict[str, Any] = {"actor_id": i.owner} if role == "connector" else {}
            req = az.ResolveApprovalRequest(**target, **actor)
            await r.unary(role, b.roles[role].authz.ResolveApproval, req)
        # The tool approvers' qualified form, for a tool approval without a channel.
        req = az.ResolveApprovalRequest(approval_id=i.approved_tool, action=APPROVE, actor_id=i.approver)
        await r.unary("connector", b.tenant.connector.authz.ResolveApproval, req)


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


@case("AuthzService.RedeemApproval")
async def _redeem_approval(r: Run, b: B) -> None:
    for role in ("agent", "connector"):
        for approval_id in (r.ids.approved_tool, r.ids.tool, r.ids.pairing):
            req = az.RedeemApprovalRequest(
                approval_id=approval_id, tool_name=GRANTED_CALL[0], arguments_json=GRANTED_CALL[1]
            )
            await r.unary(role, b.roles[role].authz.RedeemApproval, req)


# --- AdminService ---------------------------------------------------------------------------


@case("AdminService.CreateTenant")
async def _create_tenant(r: Run, b: B) -> None:
    for role, client in b.roles.items():
        await r.unary(role, client.admin.CreateTenant, adm.CreateTenantRequest(tenant_id=r.ids.tenant))


@case("AdminService.ListTenants")
async def _list_tenants(r: Run, b: B) -> None:
    for role, client in b.roles.items():
        await r.unary(role, client.admin.ListTenants, adm.ListTenantsRequest())


@case("AdminService.GetTenantSettings")
async def _get_tenant_settings(r: Run, b: B) -> None:
    await r.unary("admin", b.tenant.admin.admin.GetTenantSettings, adm.GetTenantSettingsRequest())


@case("AdminService.SetTenantSettings")
async def _set_tenant_settings(r: Run, b: B) -> None:
    req = adm.TenantSettings(
        approvers=[r.ids.approver], agent_approvers={r.ids.agent: adm.ActorList(actors=[r.ids.approver])}
    )
    await r.unary("admin", b.tenant.admin.admin.SetTenantSettings, req)


@case("AdminService.CreateApiKey")
async def _create_api_key(r: Run, b: B) -> None:
    req = adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name=f"like {r.ids.key}")
    await r.unary(
        "admin", b.tenant.admin.admin.CreateApiKey, req,
        lambda resp: (resp.key.role, resp.key.name, len(resp.key.key_id), resp.secret.count(".")),
    )  # fmt: skip


@case("AdminService.ListApiKeys")
async def _list_api_keys(r: Run, b: B) -> None:
    await r.unary(
        "admin", b.tenant.admin.admin.ListApiKeys, adm.ListApiKeysRequest(),
        lambda resp: sorted((k.role, k.name, k.HasField("revoked_at")) for k in resp.keys),
    )  # fmt: skip


@case("AdminService.RevokeApiKey")
async def _revoke_api_key(r: Run, b: B) -> None:
    await r.unary("admin", b.tenant.admin.admin.RevokeApiKey, adm.RevokeApiKeyRequest(key_id=r.ids.key))


@case("AdminService.SetChannel")
async def _set_channel(r: Run, b: B) -> None:
    policy = cm.ChannelPolicy(owner_id=r.ids.owner, approvers=[r.ids.user], agent_id=r.ids.agent)
    req = adm.SetChannelRequest(channel_id=r.ids.channel, platform=cm.PLATFORM_TELEGRAM, policy=policy)
    await r.unary("admin", b.tenant.admin.admin.SetChannel, req)


@case("AdminService.GetChannel")
async def _get_channel(r: Run, b: B) -> None:
    await r.unary("admin", b.tenant.admin.admin.GetChannel, adm.GetChannelRequest(channel_id=r.ids.channel))


@case("AdminService.ListChannels")
async def _list_channels(r: Run, b: B) -> None:
    await r.unary("admin", b.tenant.admin.admin.ListChannels, adm.ListChannelsRequest())


@case("AdminService.DeleteChannel")
async def _delete_channel(r: Run, b: B) -> None:
    await r.unary(
        "admin", b.tenant.admin.admin.DeleteChannel, adm.DeleteChannelRequest(channel_id=r.ids.channel)
    )


@case("AdminService.AllowUser")
async def _allow_user(r: Run, b: B) -> None:
    for user in (r.ids.requester, r.ids.blocked):
        req = adm.AllowUserRequest(
            channel_id=r.ids.channel, user_id=user, display_name="x", permissions=["p"]
        )
        await r.unary("admin", b.tenant.admin.admin.AllowUser, req)


@case("AdminService.RemoveUser")
async def _remove_user(r: Run, b: B) -> None:
    for user in (r.ids.user, r.ids.paired):
        await r.unary(
            "admin", b.tenant.admin.admin.RemoveUser, adm.UserRef(channel_id=r.ids.channel, user_id=user)
        )


@case("AdminService.BlockUser")
async def _block_user(r: Run, b: B) -> None:
    for user in (r.ids.requester, r.ids.user):
        req = adm.BlockUserRequest(channel_id=r.ids.channel, user_id=user, reason="r")
        await r.unary("admin", b.tenant.admin.admin.BlockUser, req)


@case("AdminService.UnblockUser")
async def _unblock_user(r: Run, b: B) -> None:
    req = adm.UserRef(channel_id=r.ids.channel, user_id=r.ids.blocked)
    await r.unary("admin", b.tenant.admin.admin.UnblockUser, req)


@case("AdminService.UnpairUser")
async def _unpair_user(r: Run, b: B) -> None:
    req = adm.UserRef(channel_id=r.ids.channel, user_id=r.ids.paired)
    await r.unary("admin", b.tenant.admin.admin.UnpairUser, req)


@case("AdminService.ListUsers")
async def _list_users(r: Run, b: B) -> None:
    for which in adm.UserFilter.values():
        req = adm.ListUsersRequest(channel_id=r.ids.channel, filter=which)
        await r.unary("admin", b.tenant.admin.admin.ListUsers, req)


def _export(resp: adm.UserExport) -> object:
    doc = json.loads(resp.json)
    del doc["exported_at"]
    return json.dumps(doc, sort_keys=True)


@case("AdminService.ExportUser")
async def _export_user(r: Run, b: B) -> None:
    for user in (r.ids.user, r.ids.requester, r.ids.owner):
        req = adm.UserRef(channel_id=r.ids.channel, user_id=user)
        await r.unary("admin", b.tenant.admin.admin.ExportUser, req, _export)


@case("AdminService.PurgeUser")
async def _purge_user(r: Run, b: B) -> None:
    for user in (r.ids.requester, r.ids.user, r.ids.owner):
        await r.unary(
            "admin", b.tenant.admin.admin.PurgeUser, adm.UserRef(channel_id=r.ids.channel, user_id=user),
            lambda resp: show(adm.PurgeUserResponse(
                subjects_deleted=resp.subjects_deleted, group_senders_deleted=resp.group_senders_deleted,
                approvals_deleted=resp.approvals_deleted, audit_events_anonymized=resp.audit_events_anonymized,
            )),
        )  # fmt: skip


@case("AdminService.AnonymizeUser")
async def _anonymize_user(r: Run, b: B) -> None:
    for user in (r.ids.user, r.ids.requester, r.ids.owner):
        req = adm.UserRef(channel_id=r.ids.channel, user_id=user)
        await r.unary("admin", b.tenant.admin.admin.AnonymizeUser, req)


@case("AdminService.AllowGroupSender")
async def _allow_group_sender(r: Run, b: B) -> None:
    req = adm.GroupSenderRef(channel_id=r.ids.channel, group_id=r.ids.group, user_id=r.ids.user)
    await r.unary("admin", b.tenant.admin.admin.AllowGroupSender, req)


@case("AdminService.RemoveGroupSender")
async def _remove_group_sender(r: Run, b: B) -> None:
    req = adm.GroupSenderRef(channel_id=r.ids.channel, group_id=r.ids.group, user_id=r.ids.user)
    await r.unary("admin", b.tenant.admin.admin.RemoveGroupSender, req)


@case("AdminService.ListGroupSenders")
async def _list_group_senders(r: Run, b: B) -> None:
    for group in (r.ids.group, ""):
        req = adm.ListGroupSendersRequest(channel_id=r.ids.channel, group_id=group)
        await r.unary("admin", b.tenant.admin.admin.ListGroupSenders, req)


@case("AdminService.ListApprovals")
async def _list_approvals(r: Run, b: B) -> None:
    for role in ("approver", "admin"):
        for status in (cm.APPROVAL_STATUS_PENDING, cm.APPROVAL_STATUS_APPROVED):
            for channel in (r.ids.channel, ""):
                req = adm.ListApprovalsRequest(channel_id=channel, status=status, limit=1000)
                await r.unary(role, b.roles[role].admin.ListApprovals, req)


@case("AdminService.GetApproval")
async def _get_approval(r: Run, b: B) -> None:
    for role in ("approver", "admin"):
        for approval_id in (r.ids.pairing, r.ids.tool, r.ids.approved_tool):
            req = adm.GetApprovalRequest(approval_id=approval_id)
            await r.unary(role, b.roles[role].admin.GetApproval, req)


@case("AdminService.WatchApprovals")
async def _watch_approvals(r: Run, b: B) -> None:
    """B watches its tenant's approvals. Notifications naming A's approvals are
    injected (with A's tenant, and forged with B's), then one for B's own
    approval as an end marker: B's stream must yield its own approval only."""
    own = (
        await b.agent.authz.RequestApproval(
            az.RequestApprovalRequest(tool_name="probe", arguments_json="{}", agent_id="b-agent")
        )
    ).approval.approval_id
    call = b.tenant.approver.admin.WatchApprovals(adm.WatchApprovalsRequest())
    seen: list[str] = []
    try:
        async with asyncio.timeout(10):
            stream = call.__aiter__()
            seen.append((await anext(stream)).approval_id)  # the pending list: B's own only
            for tenant_id, approval_id in (
                (r.ids.tenant, r.ids.tool), (r.ids.tenant, r.ids.pairing),
                (b.tenant.tenant_id, r.ids.tool), (b.tenant.tenant_id, r.ids.pairing),
                (b.tenant.tenant_id, r.ids.approved_tool), (b.tenant.tenant_id, own),
            ):  # fmt: skip
                await b.owner_conn.execute(
                    "SELECT pg_notify('authz_approvals', $1)", f"{tenant_id} {approval_id}"
                )
            while len(seen) < 2 or seen[-1] != own:
                seen.append((await anext(stream)).approval_id)
    finally:
        call.cancel()
    await b.tenant.admin.authz.ResolveApproval(
        az.ResolveApprovalRequest(approval_id=own, action=cm.APPROVAL_ACTION_DENY)
    )  # the next run starts with no pending approval
    r.record("approver", adm.WatchApprovalsRequest(), str(["<own>" if s == own else s for s in seen]))


@case("AdminService.ListGrants")
async def _list_grants(r: Run, b: B) -> None:
    for role in ("approver", "admin"):
        for agent in (r.ids.agent, ""):
            for include_revoked in (False, True):
                req = adm.ListGrantsRequest(agent_id=agent, include_revoked=include_revoked)
                await r.unary(role, b.roles[role].admin.ListGrants, req)


@case("AdminService.RevokeGrant")
async def _revoke_grant(r: Run, b: B) -> None:
    await r.unary("admin", b.tenant.admin.admin.RevokeGrant, adm.RevokeGrantRequest(grant_id=r.ids.grant))


def _invite(resp: adm.CreateInviteResponse) -> object:
    i = resp.invite
    return (i.channel_id, i.max_uses, i.uses, list(i.permissions), i.note, bool(resp.code), bool(i.invite_id))


@case("AdminService.CreateInvite")
async def _create_invite(r: Run, b: B) -> None:
    req = adm.CreateInviteRequest(channel_id=r.ids.channel, max_uses=2, permissions=["p"], note="n")
    await r.unary("admin", b.tenant.admin.admin.CreateInvite, req, _invite)


@case("AdminService.ListInvites")
async def _list_invites(r: Run, b: B) -> None:
    for channel in (r.ids.channel, ""):
        for include_inactive in (False, True):
            req = adm.ListInvitesRequest(channel_id=channel, include_inactive=include_inactive)
            await r.unary("admin", b.tenant.admin.admin.ListInvites, req)


@case("AdminService.RevokeInvite")
async def _revoke_invite(r: Run, b: B) -> None:
    req = adm.RevokeInviteRequest(invite_id=r.ids.invite)
    await r.unary("admin", b.tenant.admin.admin.RevokeInvite, req)


@case("AdminService.QueryAudit")
async def _query_audit(r: Run, b: B) -> None:
    def events(resp: adm.QueryAuditResponse) -> object:
        return [(e.event, e.actor, e.channel_id, e.subject, e.approval_id) for e in resp.events]

    queries: tuple[dict[str, Any], ...] = (
        {"channel_id": r.ids.channel},
        {"user_id": r.ids.user},
        {"user_id": r.ids.requester, "event": "pairing."},
        {"channel_id": r.ids.channel, "user_id": r.ids.blocked},
        {},
    )
    for filters in queries:
        await r.unary(
            "admin", b.tenant.admin.admin.QueryAudit, adm.QueryAuditRequest(limit=1000, **filters), events
        )


# --- the sweep ------------------------------------------------------------------------------


def test_every_rpc_of_both_services_has_a_sweep_case() -> None:
    assert len(METHODS) > 30
    missing = sorted(set(METHODS) - set(CASES))
    stale = sorted(set(CASES) - set(METHODS))
    assert not missing, f"RPCs without a tenant isolation case: {missing}"
    assert not stale, f"cases for RPCs that do not exist: {stale}"


async def _tenant_b(service: Service, world: World, variant: str, owner: asyncpg.Connection) -> B:
    t = await make_tenant(service)
    key = await t.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="agent"))
    return B(t, connect(service.address, key.secret), variant, world.ids.channel, _digits(), owner)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rpc", METHODS)
async def test_other_tenant_learns_nothing_and_changes_nothing(
    rpc: str, variant: str, world: World, service: Service, owner: asyncpg.Connection
) -> None:
    sweep = CASES.get(rpc)
    assert sweep is not None, f"no tenant isolation case for {rpc}: add one to CASES"
    a_before = await snapshot(owner, world.ids.tenant)
    b = await _tenant_b(service, world, variant, owner)
    # In the shared variant B owns a channel of that name: it is B's to see, not a leak.
    private = world.private - {world.ids.channel} if variant == "shared" else world.private
    made_up = world.ids.made_up(
        channel=world.ids.channel if variant == "shared" else "ch" + secrets.token_hex(4)
    )
    real, fake = Run(world.ids, private), Run(made_up, private)
    try:
        for run in (real, fake):
            await b.prepare()
            await sweep(run, b)
    finally:
        await b.close()
    assert real.outcomes, "the case made no call"
    assert len(real.outcomes) == len(fake.outcomes)
    for (label, got), (_, expected) in zip(real.outcomes, fake.outcomes, strict=True):
        assert got == expected, f"{rpc} as {label}: A's objects answer differently from made-up ones"
    assert await snapshot(owner, world.ids.tenant) == a_before, f"{rpc} ({variant}) changed tenant A's rows"


# --- a connector key bound to channels (issue #15) ------------------------------------------


def _names_a_channel_or_approval(message: Any, seen: frozenset[str] = frozenset()) -> bool:
    for fd in message.fields:
        if fd.name in ("channel_id", "approval_id", "callback_payload"):
            return True
        nested = fd.message_type
        if (
            nested is not None
            and nested.full_name not in seen
            and _names_a_channel_or_approval(nested, seen | {message.full_name})
        ):
            return True
    return False


# Every AuthzService RPC whose request names a channel or an approval (from the
# descriptors, so a new one is swept): all of them are channel-scoped.
CHANNEL_SCOPED = [
    f"AuthzService.{m.name}"
    for m in az.DESCRIPTOR.services_by_name["AuthzService"].methods
    if _names_a_channel_or_approval(m.input_type)
]


def _outside_its_channels(
    before: dict[str, list[tuple[str, ...]]], after: dict[str, list[tuple[str, ...]]], channel: str
) -> list[str]:
    """Tables where the bound key changed what it must not. It may add audit
    events (a denied send is audited) and count failed code guesses against
    itself and the tenant, never against A's channel."""
    changed = []
    for table, rows in before.items():
        if table == "audit_events":
            ok = set(rows) <= set(after[table])
        elif table == "attempt_limits":
            ok = [r for r in rows if f"code:channel:{channel}" in r] == [
                r for r in after[table] if f"code:channel:{channel}" in r
            ]
        else:
            ok = rows == after[table]
        if not ok:
            changed.append(table)
    return changed


def test_the_bound_key_sweep_covers_every_channel_scoped_rpc() -> None:
    assert {
        "AuthzService.RequestPairing",
        "AuthzService.ResolveApproval",
        "AuthzService.RedeemApproval",
    } <= set(CHANNEL_SCOPED)
    assert set(CHANNEL_SCOPED) <= set(CASES)


@pytest.mark.parametrize("rpc", CHANNEL_SCOPED)
async def test_a_bound_connector_key_sees_other_channels_as_made_up(
    rpc: str, world: World, service: Service, owner: asyncpg.Connection
) -> None:
    """A connector key of tenant A bound to another channel of A, in place of
    B's connector: A's channel and its approvals answer as made-up ones, and
    nothing of A's changes (B's other roles run alongside, as in the sweep)."""
    a = world.tenant
    own_channel = "bound" + secrets.token_hex(4)
    await a.channel(own_channel, owner_id=_digits())
    made = await a.admin.admin.CreateApiKey(
        adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="bound", channels=[own_channel])
    )
    a_before = await snapshot(owner, world.ids.tenant)
    b = await _tenant_b(service, world, "bound", owner)
    await b.tenant.connector.close()
    b.tenant = Tenant(b.tenant.tenant_id, b.tenant.admin, connect(service.address, made.secret),
                      b.tenant.approver, b.tenant.keys)  # fmt: skip
    made_up = world.ids.made_up(channel="ch" + secrets.token_hex(4))
    real, fake = Run(world.ids, world.private), Run(made_up, world.private)
    try:
        for run in (real, fake):
            await CASES[rpc](run, b)
    finally:
        await b.close()
    bound_calls = [(label, got) for label, got in real.outcomes if label == "connector"]
    assert bound_calls, "the case made no call with the connector key"
    for (label, got), (_, expected) in zip(real.outcomes, fake.outcomes, strict=True):
        assert got == expected, (
            f"{rpc} as {label}: A's objects answer the bound key differently from made-up ones"
        )
    changed = _outside_its_channels(a_before, await snapshot(owner, world.ids.tenant), world.ids.channel)
    await a.admin.admin.RevokeApiKey(adm.RevokeApiKeyRequest(key_id=made.key.key_id))
    assert not changed, f"{rpc}: the bound key changed {changed} of tenant A"


async def test_injected_notifications_do_reach_the_owning_tenant(
    world: World, owner: asyncpg.Connection
) -> None:
    """The control for the WatchApprovals case: the notification it injects for
    A's approval does wake A's own watcher, so B's silence is isolation."""
    call = world.tenant.approver.admin.WatchApprovals(adm.WatchApprovalsRequest())
    try:
        async with asyncio.timeout(10):
            stream = call.__aiter__()
            pending = {(await anext(stream)).approval_id for _ in range(2)}
            assert pending == {world.ids.pairing, world.ids.tool}
            await owner.execute(
                "SELECT pg_notify('authz_approvals', $1)", f"{world.ids.tenant} {world.ids.tool}"
            )
            assert (await anext(stream)).approval_id == world.ids.tool
    finally:
        call.cancel()


# --- row-level security ---------------------------------------------------------------------


@pytest.fixture
async def service_conn(dsns: Dsns) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsns.service)
    yield conn
    await conn.close()


async def test_a_query_without_tenant_filter_sees_no_other_tenant_in_any_table(
    world: World, other_tenant: Tenant, owner: asyncpg.Connection, service_conn: asyncpg.Connection
) -> None:
    tables = await tenant_tables(owner)
    # The enumeration finds what it must (and whatever is added later).
    assert {"tenants", "api_keys", "channels", "subjects", "group_senders", "approvals", "audit_events",
            "tool_grants", "attempt_limits", "invites"} <= set(tables)  # fmt: skip
    a, b = world.ids.tenant, other_tenant.tenant_id
    await other_tenant.channel("tg")
    rls = {
        r["relname"]: (r["relrowsecurity"], r["relforcerowsecurity"], r["policies"])
        for r in await owner.fetch(
            """SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
                      (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies
               FROM pg_class c WHERE c.relname = ANY($1::text[]) AND c.relnamespace = to_regnamespace(current_schema())""",
            tables,
        )
    }
    assert role_is_bound(await service_conn.fetchrow(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"))  # fmt: skip
    for table in tables:
        assert rls[table][:2] == (True, True), f"{table}: row-level security is not enabled and forced"
        assert rls[table][2] >= 1, f"{table}: no row-level security policy"
        # Under B's setting, a query that forgets the tenant filter sees B's rows only.
        async with service_conn.transaction():
            await service_conn.execute("SELECT set_config('authz.tenant', $1, true)", b)
            seen = {r["tenant_id"] for r in await service_conn.fetch(f"SELECT tenant_id FROM {table}")}
            assert seen <= {b}, f"{table}: tenant {b} sees rows of {sorted(seen - {b})}"
            assert await service_conn.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", a) == 0
        # With no setting at all: nothing.
        assert await service_conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        # A's rows are there (so the checks above are not vacuous): A sees them under its own setting.
        async with service_conn.transaction():
            await service_conn.execute("SELECT set_config('authz.tenant', $1, true)", a)
            assert await service_conn.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", a) > 0, (
                f"{table}: tenant A has no rows here; give the sweep's world one"
            )


def role_is_bound(row: asyncpg.Record | None) -> bool:
    return row is not None and not row["rolsuper"] and not row["rolbypassrls"]
