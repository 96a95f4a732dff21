"""Tenant isolation: row-level security in the database, and a sweep of every
RPC with another tenant's keys and identifiers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.store.db import Database
from tests.conftest import Dsns, Tenant, rpc_error
from tests.tenant_rows import DIRECT, OWNER, TENANT_TABLES, _counts, _populate, _scoped, _tenants_seen


@pytest.fixture
async def raw(dsns: Dsns) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsns.service)
    yield conn
    await conn.close()


# --- row-level security ---------------------------------------------------------------


async def test_service_role_is_bound_by_rls(raw: asyncpg.Connection) -> None:
    row = await raw.fetchrow(
        "SELECT current_user AS name, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
    )
    assert row is not None
    assert row["name"] == "authz_service"
    assert row["rolsuper"] is False
    assert row["rolbypassrls"] is False
    forced = await raw.fetch(
        "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = ANY($1::text[])",
        list(TENANT_TABLES),
    )
    assert {r["relname"] for r in forced} == set(TENANT_TABLES)
    assert all(r["relrowsecurity"] and r["relforcerowsecurity"] for r in forced), forced


async def test_rls_without_tenant_setting_sees_nothing(
    raw: asyncpg.Connection, tenant: Tenant, other_tenant: Tenant
) -> None:
    await _populate(tenant)
    await _populate(other_tenant)

    assert await raw.fetchval("SELECT current_setting('authz.tenant', true)") in (None, "")
    assert await raw.fetchval("SELECT count(*) FROM subjects") == 0
    assert await _counts(raw) == dict.fromkeys(TENANT_TABLES, 0)
    # Even asking for a tenant by name returns nothing.
    assert await raw.fetchval("SELECT count(*) FROM subjects WHERE tenant_id = $1", tenant.tenant_id) == 0
    # The rows are there: scoped to A, every table has some.
    async with raw.transaction():
        await raw.execute("SELECT set_config('authz.tenant', $1, true)", tenant.tenant_id)
        assert all(n > 0 for n in (await _counts(raw)).values()), await _counts(raw)


async def test_rls_scopes_to_the_transaction_tenant(
    raw: asyncpg.Connection, tenant: Tenant, other_tenant: Tenant
) -> None:
    created_a = await _populate(tenant)
    created_b = await _populate(other_tenant)
    a, b = tenant.tenant_id, other_tenant.tenant_id

    for me, other, my_approval, their_approval in (
        (a, b, created_a, created_b),
        (b, a, created_b, created_a),
    ):
        async with raw.transaction():
            await raw.execute("SELECT set_config('authz.tenant', $1, true)", me)
            for table in TENANT_TABLES:
                assert await _tenants_seen(raw, table) == [me], table
                assert await raw.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", other) == 0
            users = await raw.fetch("SELECT user_id FROM subjects")
            assert [r["user_id"] for r in users] == ["7"]
            approvals = await raw.fetch("SELECT approval_id FROM approvals")
            assert [r["approval_id"] for r in approvals] == [my_approval.approval_id]
            assert (
                await raw.fetchval(
                    "SELECT count(*) FROM approvals WHERE approval_id = $1", their_approval.approval_id
                )
                == 0
            )
            assert await raw.fetchval("SELECT count(*) FROM api_keys") == 3
            assert (
                await raw.fetchval("SELECT count(*) FROM audit_events WHERE event = 'pairing.requested'") == 1
            )

        # Committed: the transaction-local setting is gone on this same connection.
        assert await raw.fetchval("SELECT current_setting('authz.tenant', true)") in (None, "")
        assert await raw.fetchval("SELECT count(*) FROM subjects") == 0
        assert await _counts(raw) == dict.fromkeys(TENANT_TABLES, 0)


async def _fail_inside_tenant(db: Database, tenant_id: str) -> None:
    async with db.tenant(tenant_id) as conn:
        assert await _tenants_seen(conn, "channels") == [tenant_id]
        raise ZeroDivisionError


async def test_tenant_setting_does_not_leak_through_the_pool(
    dsns: Dsns, tenant: Tenant, other_tenant: Tenant
) -> None:
    """The service's own Database with one pooled connection: after a tenant
    transaction commits, the next user of that connection sees no tenant."""
    await _populate(tenant)
    await _populate(other_tenant)
    db = await Database.connect(dsns.service, min_size=1, max_size=1)
    try:
        async with db.tenant(tenant.tenant_id) as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            assert await _tenants_seen(conn, "subjects") == [tenant.tenant_id]
        async with db.pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid
            assert await conn.fetchval("SELECT current_setting('authz.tenant', true)") in (None, "")
            assert await _counts(conn) == dict.fromkeys(TENANT_TABLES, 0)
        # A rolled-back tenant transaction does not leak either.
        with pytest.raises(ZeroDivisionError):
            await _fail_inside_tenant(db, other_tenant.tenant_id)
        async with db.pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid
            assert await _counts(conn) == dict.fromkeys(TENANT_TABLES, 0)
    finally:
        await db.close()


async def test_rls_refuses_writes_into_another_tenant(
    raw: asyncpg.Connection, tenant: Tenant, other_tenant: Tenant
) -> None:
    await _populate(tenant)
    await _populate(other_tenant)
    a, b = tenant.tenant_id, other_tenant.tenant_id

    async def scoped_to_a(sql: str, *args: object) -> str:
        return await _scoped(raw, a, sql, *args)

    # Inserting rows that belong to B while scoped to A violates WITH CHECK.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await scoped_to_a(
            "INSERT INTO channels (tenant_id, channel_id, platform, policy) "
            "VALUES ($1, 'evil', 'telegram', '{}')",
            b,
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await scoped_to_a(
            "INSERT INTO subjects (tenant_id, channel_id, user_id, status, source) "
            "VALUES ($1, 'tg', '666', 'allowed', 'admin')",
            b,
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await scoped_to_a(
            "INSERT INTO audit_events (tenant_id, event) VALUES ($1, 'forged')",
            b,
        )
    # Moving A's own row into B violates WITH CHECK too.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await scoped_to_a("UPDATE subjects SET tenant_id = $1 WHERE tenant_id = $2", b, a)
    # B's rows are invisible to UPDATE and DELETE: nothing matches.
    assert await scoped_to_a("UPDATE channels SET policy = '{}' WHERE tenant_id = $1", b) == "UPDATE 0"
    assert await scoped_to_a("DELETE FROM subjects WHERE tenant_id = $1", b) == "DELETE 0"
    assert await scoped_to_a("DELETE FROM api_keys WHERE tenant_id = $1", b) == "DELETE 0"
    assert await scoped_to_a("DELETE FROM tenants WHERE tenant_id = $1", b) == "DELETE 0"

    # B is intact, seen through B's own API.
    channels = await other_tenant.admin.admin.ListChannels(adm.ListChannelsRequest())
    assert [c.channel_id for c in channels.channels] == ["tg"]
    assert channels.channels[0].policy.owner_id == OWNER
    users = await other_tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))
    assert [u.user_id for u in users.users] == ["7"]
    keys = await other_tenant.admin.admin.ListApiKeys(adm.ListApiKeysRequest())
    assert len(keys.keys) == 3
    audit = await other_tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(limit=1000))
    assert "forged" not in {e.event for e in audit.events}
    # And nothing landed in A either.
    a_channels = await tenant.admin.admin.ListChannels(adm.ListChannelsRequest())
    assert [c.channel_id for c in a_channels.channels] == ["tg"]


async def test_audit_events_are_append_only(raw: asyncpg.Connection, dsns: Dsns, tenant: Tenant) -> None:
    await _populate(tenant)
    a = tenant.tenant_id
    for sql in (
        "UPDATE audit_events SET event = 'rewritten' WHERE tenant_id = $1",
        "DELETE FROM audit_events WHERE tenant_id = $1",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await _scoped(raw, a, sql, a)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await _scoped(raw, a, "TRUNCATE audit_events")

    # Even the schema owner is stopped by the trigger.
    owner = await asyncpg.connect(dsns.owner)
    try:
        for sql in (
            "UPDATE audit_events SET event = 'rewritten' WHERE tenant_id = $1",
            "DELETE FROM audit_events WHERE tenant_id = $1",
        ):
            with pytest.raises(asyncpg.PostgresError, match="append-only"):
                await _scoped(owner, a, sql, a)
    finally:
        await owner.close()

    audit = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(limit=1000))
    events = [e.event for e in audit.events]
    assert "pairing.requested" in events
    assert "rewritten" not in events


# --- cross-tenant sweep -------------------------------------------------------------------


async def test_other_tenant_cannot_see_or_touch_anything(tenant: Tenant, other_tenant: Tenant) -> None:
    a, b = tenant, other_tenant
    await a.channel(
        "tg", cm.PLATFORM_TELEGRAM, owner_id=OWNER, send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW)
    )
    created = await a.connector.authz.RequestPairing(
        az.RequestPairingRequest(channel_id="tg", user_id="42", display_name="Bob")
    )
    assert created.outcome == az.PAIRING_OUTCOME_CREATED
    approval_id, code = created.approval_id, created.code
    assert created.HasField("notification")
    payloads = {btn.action: btn.callback_payload for btn in created.notification.buttons}
    assert set(payloads) == {cm.APPROVAL_ACTION_APPROVE, cm.APPROVAL_ACTION_DENY, cm.APPROVAL_ACTION_BLOCK}
    a_sends = await a.connector.authz.EvaluateSend(
        az.EvaluateSendRequest(channel_id="tg", agent_id="default", target="telegram:42")
    )
    assert a_sends.allow  # A's channel allows sends, so B's denial below is isolation, not policy.
    a_keys = [k.key_id for k in (await a.admin.admin.ListApiKeys(adm.ListApiKeysRequest())).keys]
    assert len(a_keys) == 3

    # --- AuthzService with B's keys --------------------------------------------------------
    check = await b.connector.authz.CheckUser(
        az.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=DIRECT)
    )
    assert check.decision == az.DECISION_DENY
    assert check.reason == "channel_not_configured"

    err = await rpc_error(
        b.connector.authz.RequestPairing(az.RequestPairingRequest(channel_id="tg", user_id="42"))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()

    for client in (b.connector, b.approver, b.admin):
        err = await rpc_error(
            client.authz.ResolveApproval(
                az.ResolveApprovalRequest(
                    approval_id=approval_id, action=cm.APPROVAL_ACTION_APPROVE, actor_id=OWNER
                )
            )
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()

    # A's genuine payload, presented by B, is indistinguishable from a tampered one.
    err_b = await rpc_error(
        b.connector.authz.ResolveApproval(
            az.ResolveApprovalRequest(callback_payload=payloads[cm.APPROVAL_ACTION_APPROVE], actor_id=OWNER)
        )
    )
    assert err_b.code() == grpc.StatusCode.INVALID_ARGUMENT, err_b.details()
    assert "callback_payload" in (err_b.details() or "")
    p = payloads[cm.APPROVAL_ACTION_APPROVE]
    tampered = p[:10] + ("x" if p[10] != "x" else "y") + p[11:]
    err_t = await rpc_error(
        a.connector.authz.ResolveApproval(
            az.ResolveApprovalRequest(callback_payload=tampered, actor_id=OWNER)
        )
    )
    assert err_t.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err_b.details() == err_t.details()

    err = await rpc_error(
        b.connector.authz.ResolveApproval(
            az.ResolveApprovalRequest(
                code=az.CodeRef(channel_id="tg", code=code), action=cm.APPROVAL_ACTION_APPROVE, actor_id=OWNER
            )
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()

    send = await b.connector.authz.EvaluateSend(
        az.EvaluateSendRequest(channel_id="tg", agent_id="default", target="telegram:42")
    )
    assert send.allow is False

    # --- AdminService with B's admin key --------------------------------------------------
    not_found_calls = {
        "GetChannel": b.admin.admin.GetChannel(adm.GetChannelRequest(channel_id="tg")),
        "ListUsers": b.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg")),
        "AllowUser": b.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="42")),
        "BlockUser": b.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id="42")),
        "UnpairUser": b.admin.admin.UnpairUser(adm.UserRef(channel_id="tg", user_id="42")),
        "RemoveUser": b.admin.admin.RemoveUser(adm.UserRef(channel_id="tg", user_id="42")),
        "UnblockUser": b.admin.admin.UnblockUser(adm.UserRef(channel_id="tg", user_id="42")),
        "AllowGroupSender": b.admin.admin.AllowGroupSender(
            adm.GroupSenderRef(channel_id="tg", group_id="-1001", user_id="42")
        ),
        "ListGroupSenders": b.admin.admin.ListGroupSenders(adm.ListGroupSendersRequest(channel_id="tg")),
        "GetApproval(admin)": b.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=approval_id)),
        "GetApproval(approver)": b.approver.admin.GetApproval(
            adm.GetApprovalRequest(approval_id=approval_id)
        ),
    }
    for name, call in not_found_calls.items():
        err = await rpc_error(call)
        assert err.code() == grpc.StatusCode.NOT_FOUND, (name, err.code(), err.details())

    for key_id in a_keys:
        err = await rpc_error(b.admin.admin.RevokeApiKey(adm.RevokeApiKeyRequest(key_id=key_id)))
        assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()

    deleted = await b.admin.admin.DeleteChannel(adm.DeleteChannelRequest(channel_id="tg"))
    assert deleted.deleted is False
    assert list((await b.admin.admin.ListChannels(adm.ListChannelsRequest())).channels) == []

    for status in (cm.APPROVAL_STATUS_UNSPECIFIED, cm.APPROVAL_STATUS_PENDING, cm.APPROVAL_STATUS_APPROVED):
        for client in (b.admin, b.approver):
            req = adm.ListApprovalsRequest(status=status)
            assert list((await client.admin.ListApprovals(req)).approvals) == []
            # A's channel is, to B, a channel that does not exist.
            err = await rpc_error(
                client.admin.ListApprovals(adm.ListApprovalsRequest(channel_id="tg", status=status))
            )
            assert err.code() == grpc.StatusCode.NOT_FOUND and err.details() == "channel 'tg' not found"

    b_audit = (await b.admin.admin.QueryAudit(adm.QueryAuditRequest(limit=1000))).events
    assert b_audit, "B has its own events (tenant and key creation)"
    assert all(e.approval_id != approval_id for e in b_audit)
    assert {e.event for e in b_audit} <= {"tenant.created", "key.created", "send.denied"}, [
        e.event for e in b_audit
    ]
    assert not {e.subject for e in b_audit} & set(a_keys)
    assert (
        list((await b.admin.admin.QueryAudit(adm.QueryAuditRequest(event="pairing.", limit=1000))).events)
        == []
    )
    # The filter would have found it in A: the check above is not vacuous.
    a_audit = (await a.admin.admin.QueryAudit(adm.QueryAuditRequest(event="pairing.", limit=1000))).events
    assert [e.approval_id for e in a_audit] == [approval_id]

    # --- A is unchanged ---------------------------------------------------------------------
    approval = await a.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=approval_id))
    assert approval.status == cm.APPROVAL_STATUS_PENDING
    assert approval.resolved_by == ""
    assert list((await a.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))).users) == []
    channel = await a.admin.admin.GetChannel(adm.GetChannelRequest(channel_id="tg"))
    assert channel.policy.owner_id == OWNER
    keys = (await a.admin.admin.ListApiKeys(adm.ListApiKeysRequest())).keys
    assert sorted(k.key_id for k in keys) == sorted(a_keys)
    assert not any(k.HasField("revoked_at") for k in keys)
    again = await a.connector.authz.RequestPairing(az.RequestPairingRequest(channel_id="tg", user_id="42"))
    assert again.outcome == az.PAIRING_OUTCOME_EXISTING
    assert (again.approval_id, again.code) == (approval_id, code)
    check = await a.connector.authz.CheckUser(
        az.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=DIRECT)
    )
    assert check.decision == az.DECISION_PAIRING_REQUIRED

    # A's payload was genuine all along: A can use it, and B still sees nothing.
    resolved = await a.connector.authz.ResolveApproval(
        az.ResolveApprovalRequest(callback_payload=payloads[cm.APPROVAL_ACTION_APPROVE], actor_id=OWNER)
    )
    assert resolved.approval.status == cm.APPROVAL_STATUS_APPROVED
    check = await a.connector.authz.CheckUser(
        az.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=DIRECT)
    )
    assert check.decision == az.DECISION_ALLOW
    check = await b.connector.authz.CheckUser(
        az.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=DIRECT)
    )
    assert (check.decision, check.reason) == (az.DECISION_DENY, "channel_not_configured")


async def test_same_channel_name_in_two_tenants_stays_separate(tenant: Tenant, other_tenant: Tenant) -> None:
    a, b = tenant, other_tenant
    await a.channel("tg", cm.PLATFORM_TELEGRAM, owner_id=OWNER)
    await b.channel("tg", cm.PLATFORM_TELEGRAM, owner_id=OWNER)
    created_a = await a.connector.authz.RequestPairing(
        az.RequestPairingRequest(channel_id="tg", user_id="42")
    )
    assert created_a.outcome == az.PAIRING_OUTCOME_CREATED

    # B's pairing for the same user on its own "tg" is a separate request with its own code.
    created_b = await b.connector.authz.RequestPairing(
        az.RequestPairingRequest(channel_id="tg", user_id="42")
    )
    assert created_b.outcome == az.PAIRING_OUTCOME_CREATED
    assert created_b.approval_id != created_a.approval_id

    # A's code does not redeem on B's same-named channel (unless the codes collide by chance).
    if created_a.code != created_b.code:
        err = await rpc_error(
            b.connector.authz.ResolveApproval(
                az.ResolveApprovalRequest(
                    code=az.CodeRef(channel_id="tg", code=created_a.code),
                    action=cm.APPROVAL_ACTION_APPROVE,
                    actor_id=OWNER,
                )
            )
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()

    # A approves: B's user 42 is unaffected; B blocks: A's user 42 is unaffected.
    await a.approver.authz.ResolveApproval(
        az.ResolveApprovalRequest(approval_id=created_a.approval_id, action=cm.APPROVAL_ACTION_APPROVE)
    )
    req = az.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=DIRECT)
    assert (await a.connector.authz.CheckUser(req)).decision == az.DECISION_ALLOW
    assert (await b.connector.authz.CheckUser(req)).decision == az.DECISION_PAIRING_REQUIRED
    await b.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id="42"))
    assert (await b.connector.authz.CheckUser(req)).decision == az.DECISION_BLOCKED
    assert (await a.connector.authz.CheckUser(req)).decision == az.DECISION_ALLOW
    b_approval = await b.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=created_b.approval_id))
    assert b_approval.status != cm.APPROVAL_STATUS_APPROVED
    a_users = (await a.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))).users
    assert [(u.user_id, u.status) for u in a_users] == [("42", adm.SUBJECT_STATUS_ALLOWED)]
