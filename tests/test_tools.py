"""Tool-call approvals over real gRPC on real PostgreSQL: request, watch,
resolve, redeem, grants, and every way they must fail closed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest

from authz_service.client import NO_RETRY, Client, connect
from authz_service.config import Settings
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.server import start_server
from authz_service.store.db import Database

from .conftest import SECRET_KEY, Dsns, Service, Tenant, rpc_error

APPROVER = "telegram:42"


@pytest.fixture
async def agent(tenant: Tenant, service: Service) -> AsyncIterator[Client]:
    key = await tenant.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="runtime"))
    client = connect(service.address, key.secret)
    yield client
    await client.close()


async def setup(t: Tenant, **agent_approvers: list[str]) -> None:
    await t.channel("tg", owner_id="100")
    await t.admin.admin.SetTenantSettings(
        adm.TenantSettings(
            approvers=[APPROVER],
            agent_approvers={a: adm.ActorList(actors=v) for a, v in agent_approvers.items()},
        )
    )


async def ask(
    agent: Client,
    args: object = None,
    *,
    tool: str = "shell",
    agent_id: str = "ops",
    timeout: int = 60,
    **kw: object,
) -> az.RequestApprovalResponse:
    request = az.RequestApprovalRequest(
        tool_name=tool,
        arguments_json=json.dumps({"cmd": "rm -rf /tmp/cache"} if args is None else args),
        agent_id=agent_id,
        timeout_seconds=timeout,
        **kw,  # type: ignore[arg-type]
    )
    return await agent.authz.RequestApproval(request)


def payload(resp: az.RequestApprovalResponse, action: int) -> str:
    return next(b.callback_payload for b in resp.notification.buttons if b.action == action)


async def press(t: Tenant, data: str, actor: str = APPROVER) -> az.ResolveApprovalResponse:
    return await t.connector.authz.ResolveApproval(
        az.ResolveApprovalRequest(callback_payload=data, actor_id=actor)
    )


async def events(t: Tenant, prefix: str) -> list[adm.AuditEvent]:
    return list((await t.admin.admin.QueryAudit(adm.QueryAuditRequest(event=prefix))).events)


async def status_of(t: Tenant, approval_id: str) -> int:
    return (await t.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=approval_id))).status


async def test_request_is_stored_before_anyone_is_prompted(tenant: Tenant, agent: Client) -> None:
    await setup(tenant)
    resp = await ask(agent, {"b": 1, "a": [1, 2]}, channel_id="tg", summary="clean up")
    a = resp.approval
    assert resp.created and a.status == cm.APPROVAL_STATUS_PENDING and a.kind == cm.APPROVAL_KIND_TOOL
    assert a.tool.arguments_json == '{"a":[1,2],"b":1}'  # canonical: what a decision binds to
    assert len(a.tool.arguments_digest) == 64
    # Agent keys do not learn who approves (issue #15); a connector key does.
    assert list(resp.approvers) == [] and resp.notification.owner_id == ""
    relayed = await ask(tenant.connector, {"b": 2}, channel_id="tg")
    assert list(relayed.approvers) == [APPROVER] and relayed.notification.owner_id == "100"
    # The notification is built from the stored row, with unforgeable buttons.
    assert "shell" in resp.notification.text and "clean up" in resp.notification.text
    assert [b.action for b in resp.notification.buttons] == [
        cm.APPROVAL_ACTION_APPROVE, cm.APPROVAL_ACTION_DENY, cm.APPROVAL_ACTION_ALWAYS_ALLOW]  # fmt: skip
    assert all(len(b.callback_payload.encode()) <= 64 for b in resp.notification.buttons)
    stored = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=a.approval_id))
    assert stored.status == cm.APPROVAL_STATUS_PENDING and stored.tool.arguments_json == a.tool.arguments_json
    assert [e.event for e in await events(tenant, "tool.")] == ["tool.requested", "tool.requested"]


async def test_approve_then_redeem_the_exact_call_once(tenant: Tenant, agent: Client) -> None:
    await setup(tenant)
    resp = await ask(agent, {"cmd": "rm -rf /tmp/cache", "cwd": "/"})
    approval_id = resp.approval.approval_id
    watched: list[str] = []

    async def watch() -> None:
        async for info in agent.watch_approval(approval_id):
            watched.append(info.status)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)  # let the watcher subscribe (it reports "pending" first either way)
    done = await press(tenant, payload(resp, cm.APPROVAL_ACTION_APPROVE))
    assert done.approval.status == cm.APPROVAL_STATUS_APPROVED and done.approval.resolved_by == APPROVER
    assert done.owner_text == f"✅ Approved by {APPROVER}"
    await asyncio.wait_for(watcher, 10)
    assert watched[-1] == "approved" and watched[0] in ("pending", "approved")

    # Same call in another spelling (key order, whitespace) redeems, once.
    first = await agent.redeem_approval(approval_id, "shell", '{ "cwd": "/",  "cmd": "rm -rf /tmp/cache" }')
    assert first.allow and first.approval.approval_id == approval_id
    again = await agent.redeem_approval(approval_id, "shell", {"cmd": "rm -rf /tmp/cache", "cwd": "/"})
    assert not again.allow and "already used" in again.reason


async def test_argument_tampering_after_approval_is_refused(tenant: Tenant, agent: Client) -> None:
    await setup(tenant)
    resp = await ask(agent, {"cmd": "rm -rf /tmp/cache"})
    await press(tenant, payload(resp, cm.APPROVAL_ACTION_APPROVE))
    aid = resp.approval.approval_id
    tampered = await agent.redeem_approval(aid, "shell", {"cmd": "rm -rf /"})
    assert not tampered.allow and "arguments differ" in tampered.reason
    other_tool = await agent.redeem_approval(aid, "python", {"cmd": "rm -rf /tmp/cache"})
    assert not other_tool.allow
    refused = await events(tenant, "tool.redeem_refused")
    assert (
        len(refused) == 2 and json.loads(refused[0].details_json)["arguments_excerpt"] == '{"cmd":"rm -rf /"}'
    )
    # The honest call still works: the tampering did not consume the approval.
    assert (await agent.redeem_approval(aid, "shell", {"cmd": "rm -rf /tmp/cache"})).allow


async def test_unauthorized_actor_changes_nothing_and_is_audited(tenant: Tenant, agent: Client) -> None:
    await setup(tenant)
    resp = await ask(agent, channel_id="tg")
    aid = resp.approval.approval_id
    # The channel owner approves pairings, but is not a tool approver.
    for actor in ("100", "telegram:100", "slack:T1:U1"):
        err = await rpc_error(press(tenant, payload(resp, cm.APPROVAL_ACTION_APPROVE), actor))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await status_of(tenant, aid) == cm.APPROVAL_STATUS_PENDING
    audited = await events(tenant, "approval.unauthorized")
    assert [e.actor for e in audited] == ["telegram:100", "telegram:100", "slack:T1:U1"]
    # An agent key can never resolve, even naming a real approver.
    err = await rpc_error(
        agent.authz.ResolveApproval(
            az.ResolveApprovalRequest(approval_id=aid, action=cm.APPROVAL_ACTION_APPROVE, actor_id="42")
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await status_of(tenant, aid) == cm.APPROVAL_STATUS_PENDING
    # Without a channel, the presser must name their platform.
    loose = await ask(agent, {"x": 1})
    err = await rpc_error(press(tenant, payload(loose, cm.APPROVAL_ACTION_APPROVE), "42"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    ok = await press(tenant, payload(loose, cm.APPROVAL_ACTION_APPROVE), APPROVER)
    assert ok.approval.status == cm.APPROVAL_STATUS_APPROVED


async def test_per_agent_approvers_replace_the_tenant_list(tenant: Tenant, agent: Client) -> None:
    await setup(tenant, ops=["telegram:7"])
    resp = await ask(tenant.connector, agent_id="ops", channel_id="tg")
    assert list(resp.approvers) == ["telegram:7"]
    err = await rpc_error(press(tenant, payload(resp, cm.APPROVAL_ACTION_APPROVE), "42"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await press(tenant, payload(resp, cm.APPROVAL_ACTION_DENY), "7")).approval.status == (
        cm.APPROVAL_STATUS_DENIED
    )
    other = await ask(tenant.connector, agent_id="support", channel_id="tg")
    assert list(other.approvers) == [APPROVER]
    settings = await tenant.admin.admin.GetTenantSettings(adm.GetTenantSettingsRequest())
    assert list(settings.agent_approvers["ops"].actors) == ["telegram:7"]


async def test_timeout_fails_closed(tenant: Tenant, agent: Client) -> None:
    await setup(tenant)
    resp = await ask(agent, timeout=1)
    aid = resp.approval.approval_id
    final = await agent.wait_for_decision(aid, timeout=15)
    assert final.status == "expired"
    redeemed = await agent.redeem_approval(aid, "shell", {"cmd": "rm -rf /tmp/cache"})
    assert not redeemed.allow and "not approved in time" in redeemed.reason
    err = await rpc_error(press(tenant, payload(resp, cm.APPROVAL_ACTION_APPROVE)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await status_of(tenant, aid) == cm.APPROVAL_STATUS_EXPIRED
    assert len(await events(tenant, "tool.expired")) == 1


async def test_deny_is_final_and_redeem_says_who(tenant: Tenant, agent: Client) -> None:
    await setup(tenant)
    resp = await ask(agent)
    aid = resp.approval.approval_id
    await tenant.approver.authz.ResolveApproval(
        az.ResolveApprovalRequest(approval_id=aid, action=cm.APPROVAL_ACTION_DENY, reason="not today")
    )
    info = await agent.wait_for_decision(aid, timeout=10)
    assert (info.status, info.reason) == ("denied", "not today")
    assert info.resolved_by.startswith("key:")
    redeemed = await agent.redeem_approval(aid, "shell", {"cmd": "rm -rf /tmp/cache"})
    assert not redeemed.allow and redeemed.reason == f"tool call 'shell' was denied by {info.resolved_by}"
    err = await rpc_error(press(tenant, payload(resp, cm.APPROVAL_ACTION_APPROVE)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_fifty_concurrent_resolves_have_one_winner(tenant: Tenant, agent: Client) -> None:
    await setup(tenant)
    resp = await ask(agent)
    approve, deny = payload(resp, cm.APPROVAL_ACTION_APPROVE), payload(resp, cm.APPROVAL_ACTION_DENY)
    results = await asyncio.gather(
        *(press(tenant, approve if i % 2 else deny) for i in range(50)), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, az.ResolveApprovalResponse)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1 and len(losers) == 49
    assert all(e.code() == grpc.StatusCode.FAILED_PRECONDITION for e in losers)
    assert await status_of(tenant, resp.approval.approval_id) == winners[0].approval.status
    decided = [e for e in await events(tenant, "tool.") if e.event in ("tool.approved", "tool.denied")]
    assert len(decided) == 1


async def test_always_allow_grants_exactly_that_call_until_revoked(tenant: Tenant, agent: Client) -> None:
    await setup(tenant)
    first = await ask(agent, {"cmd": "df -h"})
    done = await press(tenant, payload(first, cm.APPROVAL_ACTION_ALWAYS_ALLOW))
    assert done.approval.status == cm.APPROVAL_STATUS_APPROVED
    grants = (await tenant.admin.admin.ListGrants(adm.ListGrantsRequest())).grants
    assert (
        len(grants) == 1
        and grants[0].agent_id == "ops"
        and grants[0].tool.arguments_json == '{"cmd":"df -h"}'
    )

    again = await ask(agent, {"cmd": "df -h"})
    assert not again.created and again.approval.status == cm.APPROVAL_STATUS_APPROVED
    assert again.approval.grant_id == grants[0].grant_id and not again.HasField("notification")
    assert (await agent.redeem_approval(again.approval.approval_id, "shell", {"cmd": "df -h"})).allow
    # Not another call, not another agent.
    assert (await ask(agent, {"cmd": "df -h /"})).approval.status == cm.APPROVAL_STATUS_PENDING
    assert (
        await ask(agent, {"cmd": "df -h"}, agent_id="intern")
    ).approval.status == cm.APPROVAL_STATUS_PENDING

    revoked = await tenant.admin.admin.RevokeGrant(adm.RevokeGrantRequest(grant_id=grants[0].grant_id))
    assert revoked.HasField("revoked_at") and revoked.revoked_by.startswith("key:")
    assert (await ask(agent, {"cmd": "df -h"})).approval.status == cm.APPROVAL_STATUS_PENDING
    names = [e.event for e in await events(tenant, "grant.")]
    assert names == ["grant.created", "grant.revoked"]
    assert len(await events(tenant, "tool.auto_approved")) == 1


async def test_request_key_makes_requests_idempotent(tenant: Tenant, agent: Client) -> None:
    await setup(tenant)
    one = await ask(agent, {"cmd": "ls"}, request_key="turn-7")
    two = await ask(agent, {"cmd": "ls"}, request_key="turn-7")
    assert one.created and not two.created and one.approval.approval_id == two.approval.approval_id
    err = await rpc_error(ask(agent, {"cmd": "ls /etc"}, request_key="turn-7"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(await events(tenant, "tool.requested")) == 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tool_name": ""}, "tool_name"),
        ({"tool_name": "rm -rf"}, "tool_name"),
        ({"arguments_json": "{"}, "arguments_json"),
        ({"arguments_json": '{"a": 1, "a": 2}'}, "arguments_json"),
        ({"arguments_json": '{"a": NaN}'}, "arguments_json"),
        ({"arguments_json": "[" * 40 + "]" * 40}, "arguments_json"),
        ({"timeout_seconds": 86401}, "timeout_seconds"),
        ({"risk": 99}, "risk"),
        ({"request_key": "no spaces"}, "request_key"),
        ({"channel_id": "nope"}, "channel"),
        ({"agent_id": "-bad"}, "agent_id"),
    ],
)
async def test_bad_requests_name_the_field(
    tenant: Tenant, agent: Client, fields: dict[str, object], field: str
) -> None:
    await setup(tenant)
    base: dict[str, object] = {"tool_name": "shell", "arguments_json": "{}", "agent_id": "ops"}
    err = await rpc_error(agent.authz.RequestApproval(az.RequestApprovalRequest(**{**base, **fields})))  # type: ignore[arg-type]
    assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert field in (err.details() or "")


async def test_pairing_actions_do_not_apply_to_tool_calls(tenant: Tenant, agent: Client) -> None:
    await setup(tenant)
    resp = await ask(agent)
    err = await rpc_error(
        tenant.approver.authz.ResolveApproval(
            az.ResolveApprovalRequest(approval_id=resp.approval.approval_id, action=cm.APPROVAL_ACTION_BLOCK)
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "block" in (err.details() or "")
    assert await status_of(tenant, resp.approval.approval_id) == cm.APPROVAL_STATUS_PENDING


async def test_other_tenants_cannot_see_or_touch_an_approval(
    tenant: Tenant, other_tenant: Tenant, agent: Client
) -> None:
    await setup(tenant)
    resp = await ask(agent)
    aid = resp.approval.approval_id
    intruder = other_tenant.connector
    for call in (
        intruder.authz.RedeemApproval(az.RedeemApprovalRequest(approval_id=aid, tool_name="shell")),
        other_tenant.approver.authz.ResolveApproval(
            az.ResolveApprovalRequest(approval_id=aid, action=cm.APPROVAL_ACTION_APPROVE)
        ),
        other_tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=aid)),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    stream = intruder.authz.WatchApproval(az.WatchApprovalRequest(approval_id=aid))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stream:
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # Another tenant's button payload does not verify here.
    err = await rpc_error(press(other_tenant, payload(resp, cm.APPROVAL_ACTION_APPROVE)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await status_of(tenant, aid) == cm.APPROVAL_STATUS_PENDING


async def test_watch_approvals_streams_new_requests_and_decisions(tenant: Tenant, agent: Client) -> None:
    await setup(tenant)
    early = await ask(agent, {"n": 0})
    seen: list[tuple[str, int]] = []
    got_backlog, got_decision = asyncio.Event(), asyncio.Event()

    async def follow() -> None:
        async for a in tenant.approver.admin.WatchApprovals(
            adm.WatchApprovalsRequest(kind=cm.APPROVAL_KIND_TOOL)
        ):
            seen.append((a.approval_id, a.status))
            got_backlog.set()
            if a.status == cm.APPROVAL_STATUS_APPROVED:
                got_decision.set()

    task = asyncio.create_task(follow())
    try:
        await asyncio.wait_for(got_backlog.wait(), 10)  # the pending backlog comes first
        late = await ask(agent, {"n": 1})
        await press(tenant, payload(late, cm.APPROVAL_ACTION_APPROVE))
        await asyncio.wait_for(got_decision.wait(), 10)
    finally:
        task.cancel()
    ids = [a for a, _ in seen]
    assert ids[0] == early.approval.approval_id
    assert (late.approval.approval_id, cm.APPROVAL_STATUS_APPROVED) in seen


async def test_unreachable_store_never_yields_an_approval(tenant: Tenant, agent: Client, dsns: Dsns) -> None:
    """A replica that loses its database answers UNAVAILABLE, never a decision."""
    await setup(tenant)
    resp = await ask(agent)
    aid = resp.approval.approval_id
    await tenant.approver.authz.ResolveApproval(
        az.ResolveApprovalRequest(approval_id=aid, action=cm.APPROVAL_ACTION_APPROVE)
    )
    key = await tenant.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="cut"))
    db = await Database.connect(dsns.service)
    settings = Settings.from_env(
        {"AUTHZ_DATABASE_URL": dsns.service, "AUTHZ_SECRET_KEY": SECRET_KEY, "AUTHZ_HOME": "/nonexistent"}
    )
    replica = await start_server(db, settings, listen="127.0.0.1:0")
    cut = connect(f"127.0.0.1:{replica.port}", key.secret, retry=NO_RETRY)
    try:
        await db.pool.close()  # the store is gone for this replica
        for call in (
            cut.redeem_approval(aid, "shell", {"cmd": "rm -rf /tmp/cache"}),
            cut.request_approval("shell", {"cmd": "ls"}, agent_id="ops"),
            cut.wait_for_decision(aid, timeout=10),
        ):
            err = await rpc_error(call)
            assert err.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await cut.close()
        await replica.stop(grace=0)
    # The approval itself is untouched: still approved and never redeemed.
    stored = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=aid))
    assert stored.status == cm.APPROVAL_STATUS_APPROVED and not stored.HasField("redeemed_at")


async def test_a_watch_outlives_the_unary_deadline(tenant: Tenant, service: Service) -> None:
    """Streams get no default deadline: a watch waits for the decision, however long."""
    await setup(tenant)
    key = await tenant.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="slow"))
    short = connect(service.address, key.secret, timeout=0.3)
    try:
        resp = await ask(short)
        watching = asyncio.create_task(short.wait_for_decision(resp.approval.approval_id, timeout=30))
        done, _ = await asyncio.wait({watching}, timeout=1.0)  # three unary deadlines pass
        assert not done
        await press(tenant, payload(resp, cm.APPROVAL_ACTION_APPROVE))
        assert (await watching).status == "approved"
    finally:
        await short.close()
