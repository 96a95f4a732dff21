"""Floods of tool approvals (issue #15 item 9), over real gRPC on real PostgreSQL:
caps on pending tool approvals, paged listings and bounded audit details.
Denied sends are in test_denied_sends.py, audit retention in test_audit_retention.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from authz_service.client import Client
from authz_service.config import ConfigError, Settings
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Dsns, Service, Tenant, rpc_error
from .flood_helpers import Limited, limited
from .policy_helpers import make_cli

APPROVER = "telegram:42"


@pytest.fixture(scope="module")
async def capped(dsns: Dsns, service: Service) -> AsyncIterator[Limited]:
    """3 pending tool approvals per agent, 5 per tenant."""
    server = await limited(
        dsns, service, pending_tool_approvals_per_agent=3, pending_tool_approvals_per_tenant=5
    )
    yield server
    await server.running.stop(grace=1)


async def agent_key(t: Tenant) -> str:
    key = await t.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="runtime"))
    return key.secret


async def ask(
    agent: Client, args: object, *, agent_id: str = "ops", tool: str = "shell"
) -> az.RequestApprovalResponse:
    return await agent.authz.RequestApproval(
        az.RequestApprovalRequest(
            tool_name=tool, arguments_json=json.dumps(args), agent_id=agent_id, timeout_seconds=600
        )
    )


# --- b. caps on pending tool approvals --------------------------------------------------


async def test_pending_tool_approvals_are_capped_per_agent_then_per_tenant(
    tenant: Tenant, capped: Limited
) -> None:
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[APPROVER]))
    agent = capped.client(await agent_key(tenant))
    try:
        first = [await ask(agent, {"n": i}) for i in range(3)]
        err = await rpc_error(ask(agent, {"n": 3}))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "agent ops has 3 pending tool approvals" in (err.details() or "")
        assert "AUTHZ_PENDING_TOOL_APPROVALS_PER_AGENT=3" in (err.details() or "")
        # Another agent still has room, until the tenant's cap.
        await ask(agent, {"n": 0}, agent_id="build")
        await ask(agent, {"n": 1}, agent_id="build")
        err = await rpc_error(ask(agent, {"n": 2}, agent_id="build"))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the tenant has 5 pending tool approvals" in (err.details() or "")
        # Deciding one frees a place (only live pending approvals count).
        resolved = await tenant.admin.authz.ResolveApproval(
            az.ResolveApprovalRequest(
                approval_id=first[0].approval.approval_id, action=cm.APPROVAL_ACTION_DENY
            )
        )
        assert resolved.approval.status == cm.APPROVAL_STATUS_DENIED
        assert (await ask(agent, {"n": 3})).approval.approval_id
        # Nothing was written for a refused request.
        listed = await tenant.admin.admin.ListApprovals(
            adm.ListApprovalsRequest(kind=cm.APPROVAL_KIND_TOOL, status=cm.APPROVAL_STATUS_PENDING)
        )
        assert len(listed.approvals) == 5
    finally:
        await agent.close()


async def test_the_cap_holds_under_concurrent_requests(tenant: Tenant, capped: Limited) -> None:
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[APPROVER]))
    agent = capped.client(await agent_key(tenant))
    try:
        results = await asyncio.gather(*(ask(agent, {"n": i}) for i in range(12)), return_exceptions=True)
        ok = [r for r in results if isinstance(r, az.RequestApprovalResponse)]
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(ok) == 3
        assert len(refused) == 9
        assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    finally:
        await agent.close()


def test_pending_cap_settings_are_read_and_validated() -> None:
    base = {"AUTHZ_DATABASE_URL": "postgresql://x@localhost/x", "AUTHZ_SECRET_KEY": "k" * 32}
    defaults = Settings.from_env(base)
    assert (defaults.pending_tool_approvals_per_agent, defaults.pending_tool_approvals_per_tenant) == (
        20,
        200,
    )
    assert defaults.denied_send_sweep_seconds == 60
    custom = Settings.from_env(
        {
            **base,
            "AUTHZ_PENDING_TOOL_APPROVALS_PER_AGENT": "7",
            "AUTHZ_PENDING_TOOL_APPROVALS_PER_TENANT": "9",
            "AUTHZ_DENIED_SEND_SWEEP_SECONDS": "5",
        }
    )
    assert (custom.pending_tool_approvals_per_agent, custom.pending_tool_approvals_per_tenant) == (7, 9)
    assert custom.denied_send_sweep_seconds == 5
    with pytest.raises(ConfigError):
        Settings.from_env({**base, "AUTHZ_PENDING_TOOL_APPROVALS_PER_AGENT": "0"})


# --- d. listings page ---------------------------------------------------------------------


async def big_requests(t: Tenant, count: int) -> list[str]:
    """``count`` pending tool approvals of about 120 KB each (two agents, under the per-agent cap)."""
    out = []
    for i in range(count):
        arguments = json.dumps({"n": i, "blob": "é" * 60_000}, ensure_ascii=False)
        resp = await t.connector.authz.RequestApproval(
            az.RequestApprovalRequest(
                tool_name="upload", arguments_json=arguments, agent_id=f"a{i % 2}", timeout_seconds=600
            )
        )
        out.append(resp.approval.approval_id)
    return out


async def test_list_approvals_pages_big_approvals_instead_of_failing(tenant: Tenant) -> None:
    made = await big_requests(tenant, 36)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await tenant.admin.admin.ListApprovals(
            adm.ListApprovalsRequest(kind=cm.APPROVAL_KIND_TOOL, page_size=1000, page_token=token)
        )
        pages += 1
        assert 0 < page.ByteSize() <= 4 * 1024 * 1024
        seen.extend(a.approval_id for a in page.approvals)
        token = page.next_page_token
        if not token:
            break
    assert pages >= 3  # bounded by bytes, not only by page_size
    assert sorted(seen) == sorted(made)  # every approval once, none twice
    # Page size is honoured too, newest first across pages.
    first = await tenant.admin.admin.ListApprovals(
        adm.ListApprovalsRequest(kind=cm.APPROVAL_KIND_TOOL, page_size=5)
    )
    assert [a.approval_id for a in first.approvals] == made[::-1][:5]
    second = await tenant.admin.admin.ListApprovals(
        adm.ListApprovalsRequest(kind=cm.APPROVAL_KIND_TOOL, page_size=5, page_token=first.next_page_token)
    )
    assert [a.approval_id for a in second.approvals] == made[::-1][5:10]


async def test_list_approvals_refuses_bad_paging(tenant: Tenant) -> None:
    err = await rpc_error(tenant.admin.admin.ListApprovals(adm.ListApprovalsRequest(page_size=1001)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in (err.details() or "")
    err = await rpc_error(tenant.admin.admin.ListApprovals(adm.ListApprovalsRequest(page_token="bm9wZQ")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (err.details() or "")


async def test_cli_lists_35_big_tool_approvals(service: Service, tenant: Tenant) -> None:
    made = await big_requests(tenant, 36)
    r = await make_cli(service, tenant)("approvals", "list", "--kind", "tool", "--json")
    assert r.code == 0, r.err
    assert [row["approval_id"] for row in json.loads(r.out)] == made[::-1]
    r = await make_cli(service, tenant)(
        "approvals", "list", "--kind", "tool", "--agent", "a1", "--limit", "4", "--json"
    )
    assert r.code == 0, r.err
    assert [row["approval_id"] for row in json.loads(r.out)] == made[::-1][:8:2]


# --- c. the audit keeps a digest and an excerpt -------------------------------------------


async def test_audit_keeps_a_digest_and_an_excerpt_not_the_call(
    tenant: Tenant, owner: asyncpg.Connection
) -> None:
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[APPROVER]))
    arguments = json.dumps({"blob": "é" * 60_000, "cmd": "upload"}, ensure_ascii=False)
    canonical = json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    resp = await tenant.connector.authz.RequestApproval(
        az.RequestApprovalRequest(
            tool_name="upload", arguments_json=arguments, agent_id="ops", timeout_seconds=600
        )
    )
    aid = resp.approval.approval_id
    # The approval row keeps the whole call (what a decision binds to) ...
    assert resp.approval.tool.arguments_json == canonical
    await tenant.admin.authz.ResolveApproval(
        az.ResolveApprovalRequest(approval_id=aid, action=cm.APPROVAL_ACTION_ALWAYS_ALLOW)
    )
    refused = await tenant.connector.authz.RedeemApproval(
        az.RedeemApprovalRequest(approval_id=aid, tool_name="upload", arguments_json=canonical[:-2] + 'x"}')
    )
    assert not refused.allow
    # ... the audit only its digest, size and a bounded excerpt, in every event that names it.
    found = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="tool."))
    grants = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="grant.created"))
    by_event = {e.event: json.loads(e.details_json) for e in [*found.events, *grants.events]}
    for name in ("tool.requested", "grant.created"):
        details = by_event[name]
        assert "arguments" not in details
        assert details["arguments_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
        assert details["arguments_bytes"] == len(canonical.encode())
        assert canonical.startswith(details["arguments_excerpt"].removesuffix("…"))
        assert len(details["arguments_excerpt"].encode()) <= 512 + len("…".encode())
    assert (
        by_event["tool.redeem_refused"]["arguments_sha256"] != by_event["tool.requested"]["arguments_sha256"]
    )
    # As stored: no audit row of this tenant carries the call.
    sizes = await owner.fetch(
        "SELECT event, octet_length(details::text) AS n FROM audit_events WHERE tenant_id = $1",
        tenant.tenant_id,
    )
    assert sizes and max(r["n"] for r in sizes) < 2048, sizes
