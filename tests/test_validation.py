"""Bad input on every RPC is INVALID_ARGUMENT naming the offending field.

Never INTERNAL, never a side effect, and the service stays healthy afterwards.
"""

from __future__ import annotations

import asyncio
import random
import string
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Tenant, rpc_error

LONG_ID = "c" * 10_000
HUGE_TEXT = "x" * 100_000  # > MAX_MESSAGE_TEXT (16384)
VALID_APPROVAL_ID = "apr_" + "A" * 22
# Protobuf accepts unknown ints for open enums; typed Any so the stubs do not object.
UNKNOWN: Any = 99
DIRECT = cm.CHAT_KIND_DIRECT
GROUP = cm.CHAT_KIND_GROUP
OWNER = "100"


def _garbage(seed: int, length: int, alphabet: str = string.ascii_letters + string.digits + "-_") -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(length))


@dataclass(frozen=True)
class Case:
    client: str  # "connector", "approver", "admin"
    service: str  # "authz" or "admin"
    method: str
    request: Message
    field: str


def case(case_id: str, client: str, service: str, method: str, request: Message, field: str) -> Any:
    return pytest.param(Case(client, service, method, request, field), id=case_id)


def check(case_id: str, field: str, **kw: Any) -> Any:
    base: dict[str, Any] = {"channel_id": "tg", "user_id": "42", "chat_kind": DIRECT}
    base.update(kw)
    return case(case_id, "connector", "authz", "CheckUser", az.CheckUserRequest(**base), field)


def pairing(case_id: str, field: str, **kw: Any) -> Any:
    base: dict[str, Any] = {"channel_id": "tg", "user_id": "42"}
    base.update(kw)
    return case(case_id, "connector", "authz", "RequestPairing", az.RequestPairingRequest(**base), field)


def resolve(case_id: str, field: str, client: str = "connector", **kw: Any) -> Any:
    base: dict[str, Any] = {"action": cm.APPROVAL_ACTION_APPROVE, "actor_id": OWNER}
    base.update(kw)
    return case(case_id, client, "authz", "ResolveApproval", az.ResolveApprovalRequest(**base), field)


def send(case_id: str, field: str, **kw: Any) -> Any:
    base: dict[str, Any] = {"channel_id": "tg", "agent_id": "default", "target": "telegram:42"}
    base.update(kw)
    return case(case_id, "connector", "authz", "EvaluateSend", az.EvaluateSendRequest(**base), field)


def admin(case_id: str, method: str, request: Message, field: str) -> Any:
    return case(case_id, "admin", "admin", method, request, field)


def set_channel(case_id: str, field: str, **kw: Any) -> Any:
    base: dict[str, Any] = {
        "channel_id": "ch2",
        "platform": cm.PLATFORM_TELEGRAM,
        "policy": cm.ChannelPolicy(),
    }
    base.update(kw)
    return admin(case_id, "SetChannel", adm.SetChannelRequest(**base), field)


CASES = [
    # --- AuthzService.CheckUser -------------------------------------------------------
    check("empty-channel", "channel_id", channel_id=""),
    check("oversize-channel", "channel_id", channel_id=LONG_ID),
    check("bad-chars-channel", "channel_id", channel_id="tg/../x"),
    check("empty-user", "user_id", user_id=""),
    check("space-user", "user_id", user_id="4 2"),
    check("nul-user", "user_id", user_id="4\x002"),
    check("newline-user", "user_id", user_id="42\n"),
    check("oversize-user", "user_id", user_id="1" * 10_000),
    check("telegram-user-not-numeric", "user_id", user_id="abc"),
    check("unknown-chat-kind", "chat_kind", chat_kind=UNKNOWN),
    check("unspecified-chat-kind", "chat_kind", chat_kind=cm.CHAT_KIND_UNSPECIFIED),
    check("group-without-group-id", "group_id", chat_kind=GROUP),
    check("group-wildcard-group-id", "group_id", chat_kind=GROUP, group_id="*"),
    check("group-id-bad-chars", "group_id", chat_kind=GROUP, group_id="g 1"),
    check("group-id-oversize", "group_id", chat_kind=GROUP, group_id="g" * 10_000),
    check("direct-with-group-id", "group_id", group_id="-100123"),
    check("oversize-text", "text", text=HUGE_TEXT),
    check("control-char-text", "text", text="hi\x07there"),
    check("control-char-display-name", "display_name", display_name="Eve\x1b[31m"),
    check("del-display-name", "display_name", display_name="Eve\x7f"),
    check("oversize-display-name", "display_name", display_name="n" * 257),
    # --- AuthzService.RequestPairing ----------------------------------------------------
    pairing("empty-channel", "channel_id", channel_id=""),
    pairing("oversize-channel", "channel_id", channel_id=LONG_ID),
    pairing("empty-user", "user_id", user_id=""),
    pairing("space-user", "user_id", user_id="4 2"),
    pairing("control-user", "user_id", user_id="42\x01"),
    pairing("telegram-user-not-numeric", "user_id", user_id="abc"),
    pairing("control-char-display-name", "display_name", display_name="Mallory\x00"),
    pairing("oversize-display-name", "display_name", display_name="n" * 1000),
    pairing("oversize-first-message", "first_message", first_message=HUGE_TEXT),
    pairing("control-first-message", "first_message", first_message="\x1b]0;pwn\x07"),
    # --- AuthzService.ResolveApproval ---------------------------------------------------
    resolve("no-target", "target"),
    resolve("empty-approval-id", "approval_id", approval_id=""),
    resolve("short-approval-id", "approval_id", approval_id="apr_short"),
    resolve("oversize-approval-id", "approval_id", approval_id="apr_" + "A" * 10_000),
    resolve("approval-id-bad-chars", "approval_id", approval_id="apr_" + "A" * 21 + "!"),
    resolve("empty-callback", "callback_payload", callback_payload=""),
    resolve("callback-65-bytes", "callback_payload", callback_payload="az1a" + "A" * 61),
    resolve("callback-garbage", "callback_payload", callback_payload=_garbage(1, 48)),
    resolve("callback-garbage-prefixed", "callback_payload", callback_payload="az1a" + _garbage(2, 44)),
    resolve("callback-garbage-short", "callback_payload", callback_payload=_garbage(3, 17)),
    resolve("callback-bad-action-letter", "callback_payload", callback_payload="az1z" + _garbage(4, 44)),
    resolve("callback-non-ascii", "callback_payload", callback_payload="az1a" + "é" * 22 + "A" * 22),
    resolve(
        "callback-garbage-printable",
        "callback_payload",
        callback_payload=_garbage(5, 48, string.printable.strip()),
    ),
    resolve("code-empty-channel", "code.channel_id", code=az.CodeRef(channel_id="", code="ABCD2345")),
    resolve("code-bad-channel", "code.channel_id", code=az.CodeRef(channel_id=LONG_ID, code="ABCD2345")),
    resolve("code-oversize", "code.code", code=az.CodeRef(channel_id="tg", code="A" * 10_000)),
    resolve("code-control-chars", "code.code", code=az.CodeRef(channel_id="tg", code="ABCD\x002345")),
    resolve("code-empty", "code", code=az.CodeRef(channel_id="tg", code="")),
    resolve("code-wrong-alphabet", "code", code=az.CodeRef(channel_id="tg", code="00000000")),
    resolve("unknown-action", "action", approval_id=VALID_APPROVAL_ID, action=UNKNOWN),
    resolve("connector-without-actor", "actor_id", approval_id=VALID_APPROVAL_ID, actor_id=""),
    resolve("actor-with-space", "actor_id", approval_id=VALID_APPROVAL_ID, actor_id="10 0"),
    resolve("actor-control-char", "actor_id", approval_id=VALID_APPROVAL_ID, actor_id="100\n"),
    resolve(
        "approver-actor-control-char",
        "actor_id",
        client="approver",
        approval_id=VALID_APPROVAL_ID,
        actor_id="\x00",
    ),
    resolve("oversize-reason", "reason", approval_id=VALID_APPROVAL_ID, reason="r" * 2000),
    resolve("control-reason", "reason", approval_id=VALID_APPROVAL_ID, reason="ok\x08"),
    # --- AuthzService.EvaluateSend --------------------------------------------------------
    send("empty-channel", "channel_id", channel_id=""),
    send("oversize-channel", "channel_id", channel_id=LONG_ID),
    send("empty-agent", "agent_id", agent_id=""),
    send("bad-agent", "agent_id", agent_id="agent one"),
    send("empty-target", "target", target=""),
    send("blank-target", "target", target="   "),
    send("oversize-target", "target", target="t" * 10_000),
    send("control-target", "target", target="slack:#ops\x00"),
    send("oversize-session", "session_id", session_id="s" * 1000),
    send("control-origin", "origin", origin="telegram:42\x1b"),
    send("unknown-action", "action", action=UNKNOWN),
    # --- AdminService.SetChannel ------------------------------------------------------------
    set_channel("empty-channel", "channel_id", channel_id=""),
    set_channel("oversize-channel", "channel_id", channel_id=LONG_ID),
    set_channel("channel-leading-dot", "channel_id", channel_id=".hidden"),
    set_channel("unknown-platform", "platform", platform=UNKNOWN),
    set_channel("unspecified-platform", "platform", platform=cm.PLATFORM_UNSPECIFIED),
    admin(
        "missing-policy",
        "SetChannel",
        adm.SetChannelRequest(channel_id="ch2", platform=cm.PLATFORM_TELEGRAM),
        "policy",
    ),
    set_channel("unknown-dm-policy", "policy.dm_policy", policy=cm.ChannelPolicy(dm_policy=UNKNOWN)),
    set_channel("unknown-group-policy", "policy.group_policy", policy=cm.ChannelPolicy(group_policy=UNKNOWN)),
    set_channel(
        "unknown-send-default",
        "policy.send_policy",
        policy=cm.ChannelPolicy(send_policy=cm.SendPolicy(default=UNKNOWN)),
    ),
    set_channel("telegram-owner-not-numeric", "policy.owner_id", policy=cm.ChannelPolicy(owner_id="abc")),
    set_channel(
        "telegram-approver-not-numeric", "policy.approvers", policy=cm.ChannelPolicy(approvers=["100", "bob"])
    ),
    set_channel(
        "code-ttl-too-short",
        "policy.pairing_code_ttl_seconds",
        policy=cm.ChannelPolicy(pairing_code_ttl_seconds=5),
    ),
    set_channel("max-pending-too-big", "policy.max_pending", policy=cm.ChannelPolicy(max_pending=10_001)),
    set_channel("bad-agent", "policy.agent_id", policy=cm.ChannelPolicy(agent_id="agent one")),
    set_channel("alias-origin-reserved", "policy.aliases", policy=cm.ChannelPolicy(aliases={"origin": "x"})),
    set_channel(
        "send-allow-control-char",
        "policy.send_policy.allow",
        policy=cm.ChannelPolicy(send_policy=cm.SendPolicy(allow=["slack:#ops\x00"])),
    ),
    # --- AdminService.GetChannel / DeleteChannel -------------------------------------------
    admin("get-empty-channel", "GetChannel", adm.GetChannelRequest(channel_id=""), "channel_id"),
    admin("get-oversize-channel", "GetChannel", adm.GetChannelRequest(channel_id=LONG_ID), "channel_id"),
    admin("get-control-channel", "GetChannel", adm.GetChannelRequest(channel_id="tg\x00"), "channel_id"),
    admin("delete-empty-channel", "DeleteChannel", adm.DeleteChannelRequest(channel_id=""), "channel_id"),
    # --- AdminService.AllowUser -----------------------------------------------------------------
    admin(
        "allow-empty-channel", "AllowUser", adm.AllowUserRequest(channel_id="", user_id="42"), "channel_id"
    ),
    admin("allow-empty-user", "AllowUser", adm.AllowUserRequest(channel_id="tg", user_id=""), "user_id"),
    admin("allow-space-user", "AllowUser", adm.AllowUserRequest(channel_id="tg", user_id="4 2"), "user_id"),
    admin(
        "allow-telegram-user-not-numeric",
        "AllowUser",
        adm.AllowUserRequest(channel_id="tg", user_id="abc"),
        "user_id",
    ),
    admin(
        "allow-control-display-name",
        "AllowUser",
        adm.AllowUserRequest(channel_id="tg", user_id="42", display_name="Eve\x1b[2J"),
        "display_name",
    ),
    admin(
        "allow-bad-permission",
        "AllowUser",
        adm.AllowUserRequest(channel_id="tg", user_id="42", permissions=["read", "rm -rf"]),
        "permissions",
    ),
    admin(
        "allow-too-many-permissions",
        "AllowUser",
        adm.AllowUserRequest(channel_id="tg", user_id="42", permissions=[f"p{i}" for i in range(65)]),
        "permissions",
    ),
    # --- AdminService.BlockUser / RemoveUser / UnblockUser / UnpairUser ---------------------
    admin(
        "block-empty-channel", "BlockUser", adm.BlockUserRequest(channel_id="", user_id="42"), "channel_id"
    ),
    admin(
        "block-control-user", "BlockUser", adm.BlockUserRequest(channel_id="tg", user_id="4\t2"), "user_id"
    ),
    admin(
        "block-telegram-user-not-numeric",
        "BlockUser",
        adm.BlockUserRequest(channel_id="tg", user_id="abc"),
        "user_id",
    ),
    admin(
        "block-oversize-reason",
        "BlockUser",
        adm.BlockUserRequest(channel_id="tg", user_id="42", reason="r" * 5000),
        "reason",
    ),
    admin("remove-empty-user", "RemoveUser", adm.UserRef(channel_id="tg", user_id=""), "user_id"),
    admin("unblock-bad-channel", "UnblockUser", adm.UserRef(channel_id=LONG_ID, user_id="42"), "channel_id"),
    admin("unpair-space-user", "UnpairUser", adm.UserRef(channel_id="tg", user_id="4 2"), "user_id"),
    # --- AdminService.ListUsers ---------------------------------------------------------------
    admin("list-users-empty-channel", "ListUsers", adm.ListUsersRequest(channel_id=""), "channel_id"),
    admin(
        "list-users-unknown-filter",
        "ListUsers",
        adm.ListUsersRequest(channel_id="tg", filter=UNKNOWN),
        "filter",
    ),
    # --- AdminService.AllowGroupSender / RemoveGroupSender / ListGroupSenders -----------------
    admin(
        "group-sender-empty-channel",
        "AllowGroupSender",
        adm.GroupSenderRef(channel_id="", group_id="g1", user_id="42"),
        "channel_id",
    ),
    admin(
        "group-sender-empty-group",
        "AllowGroupSender",
        adm.GroupSenderRef(channel_id="tg", group_id="", user_id="42"),
        "group_id",
    ),
    admin(
        "group-sender-bad-group",
        "AllowGroupSender",
        adm.GroupSenderRef(channel_id="tg", group_id="g 1", user_id="42"),
        "group_id",
    ),
    admin(
        "group-sender-empty-user",
        "AllowGroupSender",
        adm.GroupSenderRef(channel_id="tg", group_id="g1", user_id=""),
        "user_id",
    ),
    admin(
        "group-sender-telegram-user-not-numeric",
        "AllowGroupSender",
        adm.GroupSenderRef(channel_id="tg", group_id="g1", user_id="abc"),
        "user_id",
    ),
    admin(
        "remove-group-sender-bad-group",
        "RemoveGroupSender",
        adm.GroupSenderRef(channel_id="tg", group_id="g\n", user_id="42"),
        "group_id",
    ),
    admin(
        "list-group-senders-bad-group",
        "ListGroupSenders",
        adm.ListGroupSendersRequest(channel_id="tg", group_id="g 1"),
        "group_id",
    ),
    # --- AdminService.CreateApiKey / RevokeApiKey ----------------------------------------------
    admin("key-unknown-role", "CreateApiKey", adm.CreateApiKeyRequest(role=UNKNOWN, name="k"), "role"),
    admin(
        "key-unspecified-role",
        "CreateApiKey",
        adm.CreateApiKeyRequest(role=adm.ROLE_UNSPECIFIED, name="k"),
        "role",
    ),
    admin(
        "key-oversize-name",
        "CreateApiKey",
        adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="n" * 10_000),
        "name",
    ),
    admin(
        "key-control-name",
        "CreateApiKey",
        adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="bot\x00"),
        "name",
    ),
    admin("revoke-empty-key", "RevokeApiKey", adm.RevokeApiKeyRequest(key_id=""), "key_id"),
    admin("revoke-short-key", "RevokeApiKey", adm.RevokeApiKeyRequest(key_id="abc"), "key_id"),
    admin("revoke-uppercase-key", "RevokeApiKey", adm.RevokeApiKeyRequest(key_id="ABCDEFGHIJKL"), "key_id"),
    admin("revoke-oversize-key", "RevokeApiKey", adm.RevokeApiKeyRequest(key_id="a" * 10_000), "key_id"),
    # --- AdminService.ListApprovals / GetApproval ------------------------------------------------
    admin(
        "list-approvals-bad-channel",
        "ListApprovals",
        adm.ListApprovalsRequest(channel_id="bad channel"),
        "channel_id",
    ),
    admin(
        "list-approvals-unknown-status", "ListApprovals", adm.ListApprovalsRequest(status=UNKNOWN), "status"
    ),
    admin("list-approvals-limit", "ListApprovals", adm.ListApprovalsRequest(limit=1001), "limit"),
    admin("get-approval-empty", "GetApproval", adm.GetApprovalRequest(approval_id=""), "approval_id"),
    admin(
        "get-approval-short", "GetApproval", adm.GetApprovalRequest(approval_id="apr_short"), "approval_id"
    ),
    admin(
        "get-approval-oversize",
        "GetApproval",
        adm.GetApprovalRequest(approval_id="apr_" + "A" * 10_000),
        "approval_id",
    ),
    admin(
        "get-approval-no-prefix", "GetApproval", adm.GetApprovalRequest(approval_id="A" * 26), "approval_id"
    ),
    # --- AdminService.QueryAudit ----------------------------------------------------------------
    admin("audit-negative-after", "QueryAudit", adm.QueryAuditRequest(after_event_id=-1), "after_event_id"),
    admin("audit-bad-event", "QueryAudit", adm.QueryAuditRequest(event="Pairing Approved"), "event"),
    admin("audit-oversize-event", "QueryAudit", adm.QueryAuditRequest(event="a" * 65), "event"),
    admin("audit-limit", "QueryAudit", adm.QueryAuditRequest(limit=5000), "limit"),
    admin("audit-bad-channel", "QueryAudit", adm.QueryAuditRequest(channel_id=LONG_ID), "channel_id"),
    admin("audit-bad-user", "QueryAudit", adm.QueryAuditRequest(user_id="4 2"), "user_id"),
    # --- AdminService.SetTenantSettings -------------------------------------------------------------
    admin(
        "settings-unqualified-approver",
        "SetTenantSettings",
        adm.TenantSettings(approvers=["42"]),
        "approvers",
    ),
    admin(
        "settings-unknown-platform",
        "SetTenantSettings",
        adm.TenantSettings(approvers=["irc:42"]),
        "approvers",
    ),
    admin(
        "settings-telegram-not-numeric",
        "SetTenantSettings",
        adm.TenantSettings(approvers=["telegram:42", "telegram:abc"]),
        "approvers",
    ),
    admin("settings-empty-approver", "SetTenantSettings", adm.TenantSettings(approvers=[""]), "approvers"),
    admin(
        "settings-too-many",
        "SetTenantSettings",
        adm.TenantSettings(approvers=[f"telegram:{i + 1}" for i in range(257)]),
        "approvers",
    ),
]

RPCS_COVERED = {c.values[0].method for c in CASES}


async def _prepare(tenant: Tenant) -> None:
    await tenant.channel("tg", cm.PLATFORM_TELEGRAM, owner_id=OWNER)


async def _call(tenant: Tenant, c: Case) -> Any:
    client = getattr(tenant, c.client)
    stub = client.authz if c.service == "authz" else client.admin
    return await getattr(stub, c.method)(c.request)


def test_every_rpc_is_covered() -> None:
    required = {
        "CheckUser",
        "RequestPairing",
        "ResolveApproval",
        "EvaluateSend",
        "SetChannel",
        "GetChannel",
        "AllowUser",
        "BlockUser",
        "ListUsers",
        "AllowGroupSender",
        "CreateApiKey",
        "RevokeApiKey",
        "ListApprovals",
        "GetApproval",
        "QueryAudit",
        "SetTenantSettings",
    }
    assert required <= RPCS_COVERED, required - RPCS_COVERED


@pytest.mark.parametrize("c", CASES)
async def test_bad_input_is_invalid_argument(tenant: Tenant, c: Case) -> None:
    await _prepare(tenant)
    err = await rpc_error(_call(tenant, c))
    assert err.code() != grpc.StatusCode.INTERNAL, err.details()
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    details = err.details() or ""
    assert c.field in details, details
    # The message names the field up front, and never echoes a huge value back.
    assert details.startswith(c.field) or f" {c.field}" in details, details
    assert len(details) < 1000, len(details)


async def test_bad_input_has_no_side_effects_and_service_stays_healthy(tenant: Tenant) -> None:
    await _prepare(tenant)
    before = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(limit=1000))
    keys_before = await tenant.admin.admin.ListApiKeys(adm.ListApiKeysRequest())

    cases: list[Case] = [p.values[0] for p in CASES]
    results = await asyncio.gather(*(_call(tenant, c) for c in cases), return_exceptions=True)
    codes: dict[str, list[str]] = {}
    for c, r in zip(cases, results, strict=True):
        assert isinstance(r, grpc.aio.AioRpcError), f"{c.method} {c.request} succeeded"
        codes.setdefault(r.code().name, []).append(c.method)
    assert set(codes) == {"INVALID_ARGUMENT"}, codes

    # Nothing was written: no audit event, no key, no channel, no user, no approval.
    after = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(limit=1000))
    assert [e.event_id for e in after.events] == [e.event_id for e in before.events]
    keys_after = await tenant.admin.admin.ListApiKeys(adm.ListApiKeysRequest())
    assert [k.key_id for k in keys_after.keys] == [k.key_id for k in keys_before.keys]
    channels = await tenant.admin.admin.ListChannels(adm.ListChannelsRequest())
    assert [c.channel_id for c in channels.channels] == ["tg"]
    assert list((await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))).users) == []
    assert list((await tenant.admin.admin.ListApprovals(adm.ListApprovalsRequest())).approvals) == []
    assert list((await tenant.admin.admin.GetTenantSettings(adm.GetTenantSettingsRequest())).approvers) == []

    # And good calls still work.
    resp = await tenant.connector.authz.CheckUser(
        az.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=DIRECT, text="hello")
    )
    assert resp.decision == az.DECISION_PAIRING_REQUIRED
    assert resp.reason == "pairing_required"
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="42"))
    resp = await tenant.connector.authz.CheckUser(
        az.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=DIRECT, text="hello")
    )
    assert resp.decision == az.DECISION_ALLOW


async def test_genuine_payload_with_conflicting_action_is_invalid_argument(tenant: Tenant) -> None:
    """A real button payload for APPROVE sent with action=DENY names `action`, and does not resolve."""
    await _prepare(tenant)
    created = await tenant.connector.authz.RequestPairing(
        az.RequestPairingRequest(channel_id="tg", user_id="42")
    )
    assert created.created
    approve = next(b for b in created.notification.buttons if b.action == cm.APPROVAL_ACTION_APPROVE)
    err = await rpc_error(
        tenant.connector.authz.ResolveApproval(
            az.ResolveApprovalRequest(
                callback_payload=approve.callback_payload, action=cm.APPROVAL_ACTION_DENY, actor_id=OWNER
            )
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "action" in (err.details() or "")
    # A flipped character of the same payload is indistinguishable from garbage.
    p = approve.callback_payload
    tampered = p[:-1] + ("A" if p[-1] != "A" else "B")
    err = await rpc_error(
        tenant.connector.authz.ResolveApproval(
            az.ResolveApprovalRequest(callback_payload=tampered, actor_id=OWNER)
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "callback_payload" in (err.details() or "")
    approval = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=created.approval_id))
    assert approval.status == cm.APPROVAL_STATUS_PENDING
