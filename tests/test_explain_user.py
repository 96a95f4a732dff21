"""ExplainUser and `authz users show` (#17 item 8): CheckUser's decision for a
user, made by the same code, without its effects (no rate token, no pairing
request, nothing written or audited)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import grpc
import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Service, Tenant, rpc_error
from .pairing_helpers import OWNER, button, pair, press
from .policy_helpers import Cli, make_cli

PAIRED, BLOCKED, STRANGER, LISTED = "42", "66", "77", "88"
ROUTE = cm.Binding(
    user_id=PAIRED,
    agent_id="billing",
    permissions=["invoices"],
    tools=cm.ToolList(allowed=["lookup"], denied=["refund"]),
)


@pytest.fixture
def cli(service: Service, tenant: Tenant) -> Cli:
    return make_cli(service, tenant)


async def explain(t: Tenant, user: str, channel: str = "tg", **kw: Any) -> adm.ExplainUserResponse:
    req = adm.ExplainUserRequest(channel_id=channel, user_id=user, **kw)
    return await t.admin.admin.ExplainUser(req)


async def check(t: Tenant, user: str, channel: str = "tg", **kw: Any) -> az.CheckUserResponse:
    kw.setdefault("chat_kind", cm.CHAT_KIND_DIRECT)
    return await t.connector.authz.CheckUser(az.CheckUserRequest(channel_id=channel, user_id=user, **kw))


async def world(t: Tenant, **policy: Any) -> None:
    """On "tg": PAIRED paired (routed by ROUTE), BLOCKED blocked, LISTED allowlisted."""
    await t.channel(owner_id=OWNER, agent_id="support", bindings=[ROUTE], **policy)
    await press(t, button(await pair(t, PAIRED), cm.APPROVAL_ACTION_APPROVE))
    await t.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id=BLOCKED))
    await t.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id=LISTED, permissions=["read"]))


async def counts(owner: asyncpg.Connection, tenant_id: str) -> dict[str, int]:
    out = {}
    for table in ("rate_buckets", "approvals", "audit_events", "subjects"):
        out[table] = await owner.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", tenant_id)
    return out


@pytest.mark.parametrize(
    ("user", "kw", "expected"),
    [
        (PAIRED, {}, (az.DECISION_ALLOW, "paired")),
        (LISTED, {}, (az.DECISION_ALLOW, "allowlisted")),
        (BLOCKED, {}, (az.DECISION_BLOCKED, "user_blocked")),
        (STRANGER, {}, (az.DECISION_PAIRING_REQUIRED, "pairing_required")),
        (OWNER, {}, (az.DECISION_ALLOW, "approver")),
        (
            PAIRED,
            {"chat_kind": cm.CHAT_KIND_GROUP, "group_id": "-100"},
            (az.DECISION_DENY, "mention_required"),
        ),
    ],
)
async def test_the_same_decision_and_reason_as_check_user(
    tenant: Tenant, user: str, kw: dict[str, Any], expected: tuple[int, str]
) -> None:
    await world(tenant)
    got = await explain(tenant, user, **kw)
    real = await check(tenant, user, **kw)
    assert (got.check.decision, got.check.reason) == (real.decision, real.reason) == expected
    assert (got.check.agent_id, list(got.check.permissions), got.check.text) == (
        real.agent_id, list(real.permissions), real.text)  # fmt: skip


async def test_the_route_standing_and_requests_are_explained(tenant: Tenant) -> None:
    await world(tenant)
    paired = await explain(tenant, PAIRED)
    assert (paired.check.agent_id, list(paired.check.permissions)) == ("billing", ["invoices"])
    assert (list(paired.check.tools.allowed), list(paired.check.tools.denied)) == (["lookup"], ["refund"])
    assert paired.binding.user_id == PAIRED and paired.binding.agent_id == "billing"
    assert (
        paired.subject.status == adm.SUBJECT_STATUS_ALLOWED
        and paired.subject.source == adm.SUBJECT_SOURCE_PAIRING
    )
    assert list(paired.pending) == []

    listed = await explain(tenant, LISTED)
    assert not listed.HasField("binding") and listed.check.agent_id == "support"
    assert list(listed.check.permissions) == ["read"]

    await pair(tenant, STRANGER)
    stranger = await explain(tenant, STRANGER)
    assert not stranger.HasField("subject")
    assert [(a.user_id, a.status) for a in stranger.pending] == [(STRANGER, cm.APPROVAL_STATUS_PENDING)]


async def test_explaining_takes_no_token_makes_no_request_and_writes_nothing(
    tenant: Tenant, owner: asyncpg.Connection
) -> None:
    await world(tenant, rate_limit=cm.RateLimit(max_messages_per_hour=1, burst=1))
    before = await counts(owner, tenant.tenant_id)
    for _ in range(5):
        assert (await explain(tenant, PAIRED)).check.decision == az.DECISION_ALLOW
        assert (await explain(tenant, STRANGER)).check.decision == az.DECISION_PAIRING_REQUIRED
    assert await counts(owner, tenant.tenant_id) == before  # no bucket, no approval, no audit event
    assert before["rate_buckets"] == 0

    # CheckUser takes the one token; explain now says what CheckUser would say next.
    assert (await check(tenant, PAIRED)).decision == az.DECISION_ALLOW
    bucket = "SELECT tokens, updated_at FROM rate_buckets WHERE tenant_id = $1"
    taken = await owner.fetch(bucket, tenant.tenant_id)
    limited = await explain(tenant, PAIRED)
    assert (limited.check.decision, limited.check.reason) == (az.DECISION_RATE_LIMITED, "user_rate_limited")
    assert limited.check.retry_after_seconds > 0
    assert await owner.fetch(bucket, tenant.tenant_id) == taken  # the bucket untouched
    real = await check(tenant, PAIRED)
    assert (real.decision, real.reason) == (limited.check.decision, limited.check.reason)


async def test_unknown_channel_and_roles(tenant: Tenant) -> None:
    await world(tenant)
    err = await rpc_error(explain(tenant, PAIRED, channel="nope"))
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "channel 'nope' not found")
    err = await rpc_error(
        tenant.connector.admin.ExplainUser(adm.ExplainUserRequest(channel_id="tg", user_id=PAIRED))
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await rpc_error(explain(tenant, "not a user id"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_users_show(tenant: Tenant, cli: Cli, owner: asyncpg.Connection) -> None:
    await world(tenant)
    before = await counts(owner, tenant.tenant_id)
    r = await cli("users", "show", "tg", PAIRED)
    assert r.code == 0, r.err
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in r.out.splitlines()) if v}
    assert fields["decision"] == "allow (paired) in a direct message"
    assert fields["status"] == "paired" and fields["expires"] == "never"
    assert fields["agent"] == f"billing via binding user {PAIRED}, group *"
    assert (fields["permissions"], fields["tools allowed"], fields["tools denied"]) == (
        "invoices",
        "lookup",
        "refund",
    )
    assert "pairing.approved" in r.out and "pairing.requested" in r.out  # the recent audit

    doc = json.loads((await cli("users", "show", "tg", STRANGER, "--json")).out)
    assert (doc["decision"], doc["reason"], doc["standing"]) == ("pairing_required", "pairing_required", None)
    assert doc["pending"] == [] and doc["recent_audit"] == []
    assert await counts(owner, tenant.tenant_id) == before

    blocked = await cli("users", "show", "tg", BLOCKED, "--group", "-100")
    assert "blocked (user_blocked) in group -100" in blocked.out

    missing = await cli("users", "show", "nope", PAIRED)
    assert missing.code != 0 and "channel 'nope' not found" in missing.err
