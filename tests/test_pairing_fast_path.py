"""Pairing's one-statement paths (migration 0010, issue #6).

RequestPairing for a stranger and the single decision on a request are each
one read and one guarded write. The write must refuse, writing nothing, when
the state the service decided on has moved since the read; the service then
runs the general path. These tests call the guarded writes directly on real
PostgreSQL with state that moved, then check that the RPCs (which take these
paths) still give the general path's answers and audit trail.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import asyncpg
import grpc
import pytest

from authz_service.cache import PairingMemo, StateCache
from authz_service.domain.errors import InvalidArgument, PermissionDenied
from authz_service.domain.model import (
    ApprovalAction,
    ApprovalStatus,
    Channel,
    ChannelPolicy,
    Platform,
    Principal,
    Role,
    SubjectSource,
    SubjectStatus,
)
from authz_service.domain.pairing import Keyring
from authz_service.flows import Context, pairing, resolve
from authz_service.flows.approvals import ResolveTarget
from authz_service.flows.pairing import PairingOutcome
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.store import channels
from authz_service.store import pairing_fast as guarded
from authz_service.store.db import Database
from authz_service.store.pairing_fast import PairingCreateInput, PairingDecideInput

from .conftest import Dsns, Tenant, rpc_error

OWNER = "100"


@pytest.fixture
async def db(dsns: Dsns) -> AsyncIterator[Database]:
    database = await Database.connect(dsns.service, max_size=2)
    yield database
    await database.close()


def channel(t: Tenant, channel_id: str = "tg", platform: Platform = Platform.TELEGRAM) -> Channel:
    """The channel a guarded write was decided on (only its id and platform reach SQL)."""
    return Channel(t.tenant_id, channel_id, platform, ChannelPolicy())


async def policy_and_now(db: Database, tenant_id: str, channel_id: str = "tg") -> tuple[str, datetime]:
    read = await channels.check_state(db, tenant_id, channel_id, "nobody", "")
    assert read is not None
    return read.channel.policy_json, read.now


async def create(
    db: Database,
    t: Tenant,
    policy: str,
    now: datetime,
    user: str,
    *,
    max_pending: int = 10,
    ttl: int = 600,
    platform: Platform = Platform.TELEGRAM,
) -> tuple[str, str]:
    approval_id = "ap" + secrets.token_hex(8)
    new = PairingCreateInput(
        t.tenant_id, channel(t, platform=platform), policy, user, approval_id, "Name", b"seed" * 4, secrets.token_bytes(32),
        now + timedelta(minutes=10), ttl, 1, max_pending, f"telegram:{user}", "trace", {"display_name": "Name"},
    )  # fmt: skip
    outcome = await guarded.create(db, new)
    return outcome, approval_id


async def rows(owner: asyncpg.Connection, t: Tenant, table: str, user: str) -> list[asyncpg.Record]:
    column = "subject" if table == "audit_events" else "user_id"
    return list(
        await owner.fetch(f"SELECT * FROM {table} WHERE tenant_id = $1 AND {column} = $2", t.tenant_id, user)
    )


async def test_create_writes_the_request_and_its_audit_row(
    tenant: Tenant, db: Database, owner: asyncpg.Connection
) -> None:
    await tenant.channel(owner_id=OWNER)
    policy, now = await policy_and_now(db, tenant.tenant_id)
    outcome, approval_id = await create(db, tenant, policy, now, "7")
    assert outcome == "created"
    [approval] = await rows(owner, tenant, "approvals", "7")
    assert (approval["approval_id"], approval["status"], approval["kind"]) == (
        approval_id,
        "pending",
        "pairing",
    )
    assert approval["expires_at"] == now + timedelta(minutes=10)
    [event] = await rows(owner, tenant, "audit_events", "7")
    assert (event["event"], event["actor"], event["approval_id"]) == (
        "pairing.requested",
        "telegram:7",
        approval_id,
    )
    assert json.loads(event["details"]) == {"display_name": "Name"}


async def test_create_refuses_and_writes_nothing_when_the_state_moved(
    tenant: Tenant, db: Database, owner: asyncpg.Connection
) -> None:
    await tenant.channel(owner_id=OWNER)
    policy, now = await policy_and_now(db, tenant.tenant_id)

    # The channel's policy changed after the read.
    await tenant.channel(owner_id=OWNER, max_pending=5)
    assert (await create(db, tenant, policy, now, "1"))[0] == "policy_changed"
    policy, now = await policy_and_now(db, tenant.tenant_id)

    # The user has a standing (allowed or blocked) by now.
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="2"))
    assert (await create(db, tenant, policy, now, "2"))[0] == "state_changed"

    # The user has a pending request by now (even one past its expiry: the general path expires it).
    assert (await create(db, tenant, policy, now, "3"))[0] == "created"
    await owner.execute("UPDATE approvals SET expires_at = now() - interval '1 s' WHERE user_id = '3'")
    assert (await create(db, tenant, policy, now, "3"))[0] == "state_changed"

    # The channel is at its cap of live requests (user 3's request has expired: it does not count).
    for user in ("4", "5", "6", "7"):
        assert (await create(db, tenant, policy, now, user, max_pending=5))[0] == "created"
    assert (await create(db, tenant, policy, now, "8", max_pending=4))[0] == "state_changed"
    assert (await create(db, tenant, policy, now, "8", max_pending=5))[0] == "created"

    # Decided for another platform (it qualifies user ids and approvers), or the
    # platform changed after the read while the policy stayed the same.
    assert (await create(db, tenant, policy, now, "10", platform=Platform.DISCORD))[0] == "policy_changed"

    # The service's clock is off by more than 2 s from the database's: the expiry would be wrong.
    for skew in (-3, 3):
        assert (await create(db, tenant, policy, now + timedelta(seconds=skew), "9"))[0] == "clock_skew"

    for user in ("1", "9", "10"):
        assert await rows(owner, tenant, "approvals", user) == []
        assert await rows(owner, tenant, "audit_events", user) == []
    assert len(await rows(owner, tenant, "approvals", "3")) == 1
    assert [e["event"] for e in await rows(owner, tenant, "audit_events", "2")] == ["user.allowed"]


async def decide(
    db: Database,
    t: Tenant,
    approval_id: str,
    policy: str,
    status: ApprovalStatus,
    ttl: int = 0,
    approvers: tuple[str, ...] | None = None,
    on: Channel | None = None,
) -> object:
    subject = {
        ApprovalStatus.APPROVED: (SubjectStatus.ALLOWED, SubjectSource.PAIRING, ttl),
        ApprovalStatus.BLOCKED: (SubjectStatus.BLOCKED, SubjectSource.ADMIN, 0),
    }.get(status)
    return await guarded.decide(
        db,
        PairingDecideInput(
            t.tenant_id,
            approval_id,
            on or channel(t),
            policy,
            approvers,
            status,
            "key:k1",
            "",
            subject,
            "trace",
            {},
        ),
    )


async def test_decide_approves_with_subject_and_audit_row(
    tenant: Tenant, db: Database, owner: asyncpg.Connection
) -> None:
    await tenant.channel(owner_id=OWNER)
    policy, now = await policy_and_now(db, tenant.tenant_id)
    _, approval_id = await create(db, tenant, policy, now, "7")
    done = await decide(db, tenant, approval_id, policy, ApprovalStatus.APPROVED, ttl=3600, approvers=())
    assert done is not None
    [approval] = await rows(owner, tenant, "approvals", "7")
    assert (approval["status"], approval["resolved_by"], approval["approved_by"]) == (
        "approved",
        "key:k1",
        ["key:k1"],
    )
    [subject] = await rows(owner, tenant, "subjects", "7")
    assert (subject["status"], subject["source"], subject["display_name"]) == ("allowed", "pairing", "Name")
    assert subject["expires_at"] - approval["resolved_at"] == timedelta(hours=1)
    events = [e["event"] for e in await rows(owner, tenant, "audit_events", "7")]
    assert events == ["pairing.requested", "pairing.approved"]


async def test_decide_refuses_and_writes_nothing_when_the_state_moved(
    tenant: Tenant, db: Database, owner: asyncpg.Connection
) -> None:
    await tenant.channel(owner_id=OWNER)
    policy, now = await policy_and_now(db, tenant.tenant_id)
    ids = {}
    for user in ("1", "2", "3", "4", "6"):
        outcome, ids[user] = await create(db, tenant, policy, now, user)
        assert outcome == "created"

    # Blocked after the read (the block's own cancel not yet done): an approve is refused ...
    await owner.execute(
        """INSERT INTO subjects (tenant_id, channel_id, user_id, status, source)
           VALUES ($1, 'tg', '1', 'blocked', 'admin')""",
        tenant.tenant_id,
    )
    assert await decide(db, tenant, ids["1"], policy, ApprovalStatus.APPROVED) is None
    # ... and a deny is not.
    assert await decide(db, tenant, ids["1"], policy, ApprovalStatus.DENIED) is not None

    # Expired after the read.
    await owner.execute(
        "UPDATE approvals SET expires_at = now() - interval '1 s' WHERE approval_id = $1", ids["2"]
    )
    assert await decide(db, tenant, ids["2"], policy, ApprovalStatus.APPROVED) is None

    # A vote was recorded after the read (the general path counts votes).
    await owner.execute(
        "UPDATE approvals SET required_approvals = 2, approved_by = '{telegram:9}' WHERE approval_id = $1",
        ids["3"],
    )
    assert await decide(db, tenant, ids["3"], policy, ApprovalStatus.APPROVED) is None

    # Decided already, or the channel's policy changed after the read.
    assert await decide(db, tenant, ids["4"], policy, ApprovalStatus.DENIED) is not None
    assert await decide(db, tenant, ids["4"], policy, ApprovalStatus.APPROVED) is None
    outcome, ids["5"] = await create(db, tenant, policy, now, "5")
    assert outcome == "created"
    await tenant.channel(owner_id=OWNER, pairing_ttl_seconds=60)
    assert await decide(db, tenant, ids["5"], policy, ApprovalStatus.APPROVED) is None

    # Decided for another channel, or for another platform with the same policy.
    policy, _ = await policy_and_now(db, tenant.tenant_id)
    assert (
        await decide(db, tenant, ids["6"], policy, ApprovalStatus.APPROVED, on=channel(tenant, "dm")) is None
    )
    stale = channel(tenant, platform=Platform.DISCORD)
    assert await decide(db, tenant, ids["6"], policy, ApprovalStatus.APPROVED, on=stale) is None

    # The tenant's approvers changed after the read (they decide who may press, for connector keys).
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=["telegram:500"]))
    assert await decide(db, tenant, ids["6"], policy, ApprovalStatus.APPROVED, approvers=()) is None

    status = {r["user_id"]: r["status"] for r in await owner.fetch(
        "SELECT user_id, status FROM approvals WHERE tenant_id = $1", tenant.tenant_id
    )}  # fmt: skip
    assert status == {
        "1": "denied",
        "2": "pending",
        "3": "pending",
        "4": "denied",
        "5": "pending",
        "6": "pending",
    }
    subjects = {r["user_id"]: r["status"] for r in await owner.fetch(
        "SELECT user_id, status FROM subjects WHERE tenant_id = $1", tenant.tenant_id
    )}  # fmt: skip
    assert subjects == {"1": "blocked"}
    decided = [r["approval_id"] for r in await owner.fetch(
        "SELECT approval_id FROM audit_events WHERE tenant_id = $1 AND event LIKE 'pairing.%' AND event <> 'pairing.requested'",
        tenant.tenant_id,
    )]  # fmt: skip
    assert sorted(decided) == sorted([ids["1"], ids["4"]])


async def test_rpcs_fall_back_to_the_general_path_with_its_answers(tenant: Tenant) -> None:
    """Cases the one-statement paths leave to the general path still answer as
    before: a repeat request, an unauthorized press, a quorum vote."""
    await tenant.channel(owner_id=OWNER, required_approvals=2)
    request = az.RequestPairingRequest(
        channel_id="tg", user_id="42", display_name="Alice", first_message="hi"
    )
    first = await tenant.connector.authz.RequestPairing(request)
    again = await tenant.connector.authz.RequestPairing(request)
    assert (first.outcome, again.outcome) == (az.PAIRING_OUTCOME_CREATED, az.PAIRING_OUTCOME_EXISTING)
    assert again.code == first.code and again.approval_id == first.approval_id

    def approve(actor: str = "") -> az.ResolveApprovalRequest:
        return az.ResolveApprovalRequest(
            approval_id=first.approval_id, action=cm.APPROVAL_ACTION_APPROVE, actor_id=actor
        )

    err = await rpc_error(tenant.connector.authz.ResolveApproval(approve("666")))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    one = await tenant.connector.authz.ResolveApproval(approve(OWNER))
    assert one.approval.status == cm.APPROVAL_STATUS_PENDING and "1 of 2" in one.owner_text
    two = await tenant.approver.authz.ResolveApproval(approve())
    assert two.approval.status == cm.APPROVAL_STATUS_APPROVED
    audit = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest())
    events = [e.event for e in audit.events if e.event.startswith(("pairing.", "approval."))]
    assert events == ["pairing.requested", "approval.unauthorized", "pairing.vote", "pairing.approved"]


async def test_one_statement_paths_see_their_own_tenant_only(
    tenant: Tenant, other_tenant: Tenant, db: Database, owner: asyncpg.Connection
) -> None:
    await tenant.channel(owner_id=OWNER)
    policy, now = await policy_and_now(db, tenant.tenant_id)
    outcome, approval_id = await create(db, tenant, policy, now, "7")
    assert outcome == "created"
    # Another tenant reaches neither the request nor the channel, even with their exact values.
    assert await guarded.approval_state(db, other_tenant.tenant_id, approval_id) is None
    assert await decide(db, other_tenant, approval_id, policy, ApprovalStatus.APPROVED) is None
    assert (await create(db, other_tenant, policy, now, "8"))[0] == "policy_changed"
    state = await guarded.approval_state(db, tenant.tenant_id, approval_id)
    assert state is not None and state.approval.status is ApprovalStatus.PENDING
    assert (state.channel.channel_id, state.channel.platform, state.subject_status) == (
        "tg",
        "telegram",
        None,
    )
    assert (
        await owner.fetchval("SELECT count(*) FROM approvals WHERE tenant_id = $1", other_tenant.tenant_id)
        == 0
    )
    async with db.pool.acquire() as conn:  # the tenant setting died with each statement
        assert await conn.fetchval("SELECT current_setting('authz.tenant', true)") in (None, "")


@pytest.fixture
async def logged(dsns: Dsns) -> AsyncIterator[tuple[Database, list[str]]]:
    """A one-connection Database whose statements are logged, as the server saw them."""
    database = await Database.connect(dsns.service, min_size=1, max_size=1)
    seen: list[str] = []
    async with database.pool.acquire() as conn:
        conn.add_query_logger(lambda record: seen.append(record.query))
    seen.clear()
    yield database, seen
    await database.close()


def context(db: Database, t: Tenant, role: Role, memo: PairingMemo) -> Context:
    principal = Principal(t.tenant_id, role, "k1")
    return Context(db, Keyring(b"k" * 32), principal, "trace", StateCache(), memo=memo)


def functions(seen: list[str]) -> list[str]:
    """The statements, by the SQL function they call (or their first word);
    without asyncpg's one-time type introspection."""
    return [
        m.group(0) if (m := re.search(r"authz_\w+", sql)) else sql.split()[0]
        for sql in seen
        if not any(marker in sql for marker in ("typeinfo_tree", "'jit'", "pg_catalog.pg_type"))
    ]


async def test_a_remembered_channel_saves_the_read_and_a_stale_one_is_never_used(
    tenant: Tenant, owner: asyncpg.Connection, logged: tuple[Database, list[str]]
) -> None:
    db, seen = logged
    await tenant.channel(owner_id=OWNER)
    memo = PairingMemo()
    ctx = context(db, tenant, Role.CONNECTOR, memo)

    first = await pairing.request_pairing(ctx, "tg", "41", "A", "hi")
    second = await pairing.request_pairing(ctx, "tg", "42", "B", "hi")
    assert (first.outcome, second.outcome) == (PairingOutcome.CREATED, PairingOutcome.CREATED)
    assert functions(seen) == ["authz_check_state", "authz_pairing_create", "authz_pairing_create"]
    assert second.expires_at is not None and first.expires_at is not None
    assert abs((second.expires_at - first.expires_at).total_seconds()) < 2

    # Changed elsewhere (another replica; here, straight in the database): this
    # process's memo is stale. The guarded write refuses and the general path
    # answers on the current policy.
    await owner.execute(
        "UPDATE channels SET policy = jsonb_set(policy, '{dm_policy}', '\"allowlist\"') WHERE tenant_id = $1",
        tenant.tenant_id,
    )
    seen.clear()
    third = await pairing.request_pairing(ctx, "tg", "43", "C", "hi")
    assert third.outcome == PairingOutcome.NOT_ACCEPTED
    assert functions(seen)[:2] == ["authz_pairing_create", "BEGIN;"]
    assert memo.channel(tenant.tenant_id, "tg") is None
    assert (
        await owner.fetchval(
            "SELECT count(*) FROM approvals WHERE tenant_id = $1 AND user_id = '43'", tenant.tenant_id
        )
        == 0
    )


async def test_a_remembered_request_is_decided_in_one_statement_and_stale_approvers_are_not_used(
    tenant: Tenant, owner: asyncpg.Connection, logged: tuple[Database, list[str]]
) -> None:
    db, seen = logged
    await tenant.channel(owner_id=OWNER)
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=["telegram:500"]))
    memo = PairingMemo()
    requests = context(db, tenant, Role.CONNECTOR, memo)
    created = [await pairing.request_pairing(requests, "tg", user, "N", "hi") for user in ("41", "42", "43")]

    # An approver key: the request's channel is remembered, so one statement.
    seen.clear()
    by_key = await resolve.resolve(
        context(db, tenant, Role.APPROVER, memo), ResolveTarget(approval_id=created[0].approval_id),
        ApprovalAction.APPROVE, "", "",
    )  # fmt: skip
    assert by_key.approval.status is ApprovalStatus.APPROVED and by_key.approval.resolved_by == "key:k1"
    assert functions(seen) == ["authz_pairing_decide"]

    # A tenant approver in chat: the first press also reads the approvers, the next does not.
    seen.clear()
    for result in created[1:]:
        pressed = await resolve.resolve(
            requests, ResolveTarget(approval_id=result.approval_id), ApprovalAction.DENY, "500", ""
        )
        assert pressed.approval.status is ApprovalStatus.DENIED
    assert functions(seen) == ["authz_approval_state", "authz_pairing_decide", "authz_pairing_decide"]

    # The tenant approver is removed elsewhere: their next press is refused and audited.
    fourth = await pairing.request_pairing(requests, "tg", "44", "N", "hi")
    await owner.execute("UPDATE tenants SET approvers = '{}' WHERE tenant_id = $1", tenant.tenant_id)
    with pytest.raises(PermissionDenied):
        await resolve.resolve(
            requests, ResolveTarget(approval_id=fourth.approval_id), ApprovalAction.APPROVE, "500", ""
        )
    row = await owner.fetchrow(
        "SELECT status FROM approvals WHERE tenant_id = $1 AND approval_id = $2",
        tenant.tenant_id,
        fourth.approval_id,
    )
    assert row is not None and row["status"] == "pending"
    assert memo.approvers(tenant.tenant_id) is None
    audited = await owner.fetchval(
        "SELECT count(*) FROM audit_events WHERE tenant_id = $1 AND event = 'approval.unauthorized'",
        tenant.tenant_id,
    )
    assert audited == 1


async def test_a_remembered_platform_that_changed_is_never_used(
    tenant: Tenant, owner: asyncpg.Connection, logged: tuple[Database, list[str]]
) -> None:
    """The platform qualifies user ids and approvers ("telegram:5000500"), and a
    channel can change platform with its policy unchanged: the guarded writes
    compare it too."""
    db, _ = logged
    await tenant.channel(owner_id="1000001")
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=["telegram:5000500"]))
    memo = PairingMemo()
    ctx = context(db, tenant, Role.CONNECTOR, memo)
    first = await pairing.request_pairing(ctx, "tg", "41", "A", "hi")
    second = await pairing.request_pairing(ctx, "tg", "42", "B", "hi")
    denied = await resolve.resolve(
        ctx, ResolveTarget(approval_id=first.approval_id), ApprovalAction.DENY, "5000500", ""
    )
    assert denied.approval.status is ApprovalStatus.DENIED  # the memo now holds the channel and the approvers

    await tenant.channel(platform=cm.PLATFORM_DISCORD, owner_id="1000001")
    with pytest.raises(PermissionDenied):  # discord:5000500 is nobody's approver
        await resolve.resolve(
            ctx, ResolveTarget(approval_id=second.approval_id), ApprovalAction.APPROVE, "5000500", ""
        )
    with pytest.raises(InvalidArgument):  # not a Discord user id
        await pairing.request_pairing(ctx, "tg", "43", "C", "hi")
    status = await owner.fetchval("SELECT status FROM approvals WHERE approval_id = $1", second.approval_id)
    assert status == "pending"
    assert (
        await owner.fetchval(
            "SELECT count(*) FROM approvals WHERE tenant_id = $1 AND user_id = '43'", tenant.tenant_id
        )
        == 0
    )
