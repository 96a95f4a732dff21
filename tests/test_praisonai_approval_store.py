"""``ServiceApprovalStore`` under praisonai-bot's real
``PresentationApprovalBackend`` (our ``ServicePresentationBackend`` subclass):
its pending approvals are rows in the service, approved and denied by
PraisonAI's own button path (``handle_callback``) or anywhere else, still there
after the service or the bot restarts, and the tool runs only if the service
approved it. No LLM, no network."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from praisonai_bot.bots import PresentationApprovalBackend
from praisonaiagents import Agent
from praisonaiagents.approval import ApprovalConfig, ApprovalRequest
from praisonaiagents.approval.protocols import ApprovalStoreProtocol

from authz_service.adapters import ServiceApprovalStore, ServicePresentationBackend
from authz_service.client import Client, connect
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import SECRET_KEY, Dsns, Service, Tenant
from .replicas import Replica, free_port

APPROVER = "42"  # a Telegram user id; the tenant's approver is telegram:42


@pytest.fixture
async def connector_key(tenant: Tenant) -> str:
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[f"telegram:{APPROVER}"]))
    await tenant.channel("tg")
    resp = await tenant.admin.admin.CreateApiKey(
        adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="praisonai-bot", channels=["tg"])
    )
    return resp.secret


@pytest.fixture
async def connector(service: Service, connector_key: str) -> AsyncIterator[Client]:
    client = connect(service.address, connector_key)
    yield client
    await client.close()


def backend(store: ServiceApprovalStore, timeout: float = 60) -> PresentationApprovalBackend:
    # What the user writes. PraisonAI's own actor check stays: the same approver in both places.
    return ServicePresentationBackend(store, allowed_actors=[APPROVER], timeout=timeout)


def request(**kw: Any) -> ApprovalRequest:
    fields: dict[str, Any] = {
        "tool_name": "deploy",
        "arguments": {"env": "prod"},
        "risk_level": "high",
        "session_id": "s-1",
        "approval_id": uuid.uuid4().hex,
    }
    fields.update(kw)
    return ApprovalRequest(**fields)


async def stored(t: Tenant, status: int = cm.APPROVAL_STATUS_PENDING) -> list[cm.Approval]:
    resp = await t.approver.admin.ListApprovals(
        adm.ListApprovalsRequest(kind=cm.APPROVAL_KIND_TOOL, status=status)  # type: ignore[arg-type]
    )
    return list(resp.approvals)


async def one_pending(t: Tenant) -> cm.Approval:
    for _ in range(400):
        found = await stored(t)
        if found:
            assert len(found) == 1
            return found[0]
        await asyncio.sleep(0.025)
    raise AssertionError("nothing was persisted")


def test_the_store_is_a_praisonai_approval_store(connector: Client) -> None:
    assert isinstance(ServiceApprovalStore(connector, channel_id="tg"), ApprovalStoreProtocol)
    with pytest.raises(ValueError, match="channel_id"):
        ServiceApprovalStore(connector, channel_id="")


async def test_persist_stores_the_request_once(tenant: Tenant, connector: Client) -> None:
    store = ServiceApprovalStore(connector, channel_id="tg", agent_id="ops")
    req = request()
    await store.persist(req.approval_id, req, expires_at=time.time() + 60)
    await store.persist(req.approval_id, req, expires_at=time.time() + 60)  # PraisonAI may persist again
    [approval] = await stored(tenant)
    assert approval.tool.request_key == f"praisonai:{req.approval_id}"
    assert (approval.tool.tool_name, json.loads(approval.tool.arguments_json)) == ("deploy", {"env": "prod"})
    assert (approval.tool.agent_id, approval.tool.session_id, approval.channel_id) == ("ops", "s-1", "tg")
    assert approval.tool.risk == cm.RISK_HIGH


async def test_approved_through_praisonais_button_path(tenant: Tenant, connector: Client) -> None:
    b = backend(ServiceApprovalStore(connector, channel_id="tg"))
    req = request()
    task = asyncio.create_task(b.request_approval(req))
    approval = await one_pending(tenant)
    assert await b.handle_callback(req.approval_id, "allow", actor=APPROVER) is True
    decision = await task
    assert decision.approved is True
    [done] = await stored(tenant, cm.APPROVAL_STATUS_APPROVED)
    assert (done.approval_id, done.resolved_by) == (approval.approval_id, f"telegram:{APPROVER}")


async def test_denied_through_praisonais_button_path(tenant: Tenant, connector: Client) -> None:
    b = backend(ServiceApprovalStore(connector, channel_id="tg"))
    req = request()
    task = asyncio.create_task(b.request_approval(req))
    await one_pending(tenant)
    assert await b.handle_callback(req.approval_id, "deny", actor=APPROVER) is True
    assert (await task).approved is False
    [done] = await stored(tenant, cm.APPROVAL_STATUS_DENIED)
    assert done.resolved_by == f"telegram:{APPROVER}"
    assert done.reason == "User clicked deny button"
    assert await b.handle_callback(req.approval_id, "allow", actor=APPROVER) is False  # replay


async def test_a_presser_the_service_refuses_runs_nothing(tenant: Tenant, connector: Client) -> None:
    store = ServiceApprovalStore(connector, channel_id="tg")
    # PraisonAI's own allowlist lets "666" through; the service's approvers do not.
    b = ServicePresentationBackend(store, allowed_actors=[APPROVER, "666"], timeout=60)
    req = request()
    task = asyncio.create_task(b.request_approval(req))
    approval = await one_pending(tenant)
    # PraisonAI tells the presser it could not be processed; the wait goes on.
    assert await b.handle_callback(req.approval_id, "allow", actor="666") is False
    assert not task.done()
    # The service kept the request pending and audited the attempt.
    assert [a.approval_id for a in await stored(tenant)] == [approval.approval_id]
    audit = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="approval.unauthorized"))
    assert [e.actor for e in audit.events] == ["telegram:666"]
    # A real approver still decides it.
    assert await b.handle_callback(req.approval_id, "deny", actor=APPROVER) is True
    assert (await task).approved is False


async def test_plain_praisonai_backend_would_run_a_refused_call(tenant: Tenant, connector: Client) -> None:
    # Why the subclass exists: PraisonAI's own backend ends its waiter with the
    # press, whatever the store recorded.
    b = PresentationApprovalBackend(
        store=ServiceApprovalStore(connector, channel_id="tg"), allowed_actors=["666"], timeout=60
    )
    req = request()
    task = asyncio.create_task(b.request_approval(req))
    await one_pending(tenant)
    await b.handle_callback(req.approval_id, "allow", actor="666")
    assert (await task).approved is True
    assert len(await stored(tenant)) == 1  # still pending in the service


class Tool:
    """A tool PraisonAI runs only after approval; records its runs."""

    def __init__(self) -> None:
        self.runs: list[str] = []

    def deploy(self, env: str) -> str:
        """Deploy to an environment."""
        self.runs.append(env)
        return f"deployed to {env}"


def gated_agent(approvals: PresentationApprovalBackend, tool: Tool) -> Agent:
    return Agent(name="ops", tools=[tool.deploy], approval=ApprovalConfig(backend=approvals, all_tools=True))


async def test_a_deny_made_in_the_service_ends_praisonais_wait(tenant: Tenant, connector: Client) -> None:
    tool = Tool()
    b = backend(ServiceApprovalStore(connector, channel_id="tg"))
    # PraisonAI's own tool path: the approval runs in a loop of its own, in the tool's thread.
    task = asyncio.create_task(
        asyncio.to_thread(gated_agent(b, tool).execute_tool, "deploy", {"env": "prod"})
    )
    approval = await one_pending(tenant)
    # An admin denies it through the admin API (the console and the CLI make the same call).
    await tenant.admin.authz.ResolveApproval(
        az.ResolveApprovalRequest(
            approval_id=approval.approval_id, action=cm.APPROVAL_ACTION_DENY, reason="not on a Friday"
        )
    )
    result: Any = await asyncio.wait_for(task, 30)
    assert result["approval_denied"] is True
    assert "tool call 'deploy' was denied by key:" in result["error"]
    assert result["error"].endswith(": not on a Friday")
    assert tool.runs == []
    # A late press on PraisonAI's prompt is a no-op.
    praisonai_id = approval.tool.request_key.removeprefix("praisonai:")
    assert await b.handle_callback(praisonai_id, "allow", actor=APPROVER) is False


async def test_an_approval_made_in_the_service_runs_the_tool(tenant: Tenant, connector: Client) -> None:
    b = backend(ServiceApprovalStore(connector, channel_id="tg"))
    req = request()
    task = asyncio.create_task(b.request_approval(req))
    approval = await one_pending(tenant)
    await tenant.approver.authz.ResolveApproval(
        az.ResolveApprovalRequest(approval_id=approval.approval_id, action=cm.APPROVAL_ACTION_APPROVE)
    )
    decision = await asyncio.wait_for(task, 30)
    assert decision.approved is True
    assert decision.reason.startswith("tool call 'deploy' was approved by key:")
    assert decision.modified_args == {}


async def test_the_service_down_refuses_at_once() -> None:
    sent: list[Any] = []

    async def post(target: str, presentation: Any) -> None:
        sent.append(presentation)

    tool = Tool()
    down = connect(f"127.0.0.1:{free_port()}", "azk.x.y.z", warn_plaintext=False, timeout=0.5)
    b = ServicePresentationBackend(
        ServiceApprovalStore(down, channel_id="tg"),
        allowed_actors=[APPROVER],
        channel_send_func=post,
        target="123",
        timeout=60,
    )
    # Not the 60 s wait: nothing was stored, so nobody could decide it.
    result: Any = await asyncio.wait_for(
        asyncio.to_thread(gated_agent(b, tool).execute_tool, "deploy", {"env": "prod"}), 30
    )
    assert result["approval_denied"] is True
    assert "tool call 'deploy' was not run: the approval service is unavailable" in result["error"]
    assert tool.runs == []
    assert sent == []  # no prompt for a request nobody can decide


async def test_a_timeout_is_not_an_approval(tenant: Tenant, connector: Client) -> None:
    store = ServiceApprovalStore(connector, channel_id="tg")
    req = request()
    decision = await backend(store, timeout=2).request_approval(req)
    assert decision.approved is False
    assert "not approved in time" in decision.reason or "timed out" in decision.reason
    # The service's expiry is never after PraisonAI's wait ends: no approval
    # can land there once PraisonAI has given up.
    approval = await tenant.approver.admin.GetApproval(
        adm.GetApprovalRequest(approval_id=store.service_id(req.approval_id) or "")
    )
    assert approval.status in (cm.APPROVAL_STATUS_PENDING, cm.APPROVAL_STATUS_EXPIRED)
    lifetime = approval.expires_at.ToDatetime() - approval.created_at.ToDatetime()
    assert 0 < lifetime.total_seconds() <= 2


async def test_a_restarted_bot_rehydrates_and_resolves(
    tenant: Tenant, service: Service, connector: Client, connector_key: str
) -> None:
    first = backend(ServiceApprovalStore(connector, channel_id="tg"))
    req = request()
    waiting = asyncio.create_task(first.request_approval(req))
    approval = await one_pending(tenant)
    waiting.cancel()  # the bot process dies while it waits
    first.handler.cleanup()

    # A new process: a fresh store and backend, an approver key to list with.
    again = ServiceApprovalStore(
        connect(service.address, connector_key), channel_id="tg", lister=tenant.approver
    )
    [(approval_id, restored)] = await again.list_pending()
    assert approval_id == req.approval_id
    assert (restored.tool_name, restored.arguments, restored.risk_level) == (
        "deploy",
        {"env": "prod"},
        "high",
    )
    second = backend(again)
    assert await second.rehydrate() == 1
    assert await second.handle_callback(req.approval_id, "deny", actor=APPROVER) is True
    [done] = await stored(tenant, cm.APPROVAL_STATUS_DENIED)
    assert done.approval_id == approval.approval_id
    # Without an approver key nothing is listed (the connector key reads no requests).
    assert await ServiceApprovalStore(connector, channel_id="tg").list_pending() == []
    await again.client.close()


async def test_approved_after_the_service_restarted_while_pending(
    tenant: Tenant, dsns: Dsns, connector_key: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    env.update(
        AUTHZ_HOME=str(tmp_path),
        AUTHZ_DATABASE_URL=dsns.service,
        AUTHZ_SECRET_KEY=SECRET_KEY,
        AUTHZ_LISTEN=f"127.0.0.1:{free_port()}",
        AUTHZ_LOG_FORMAT="text",
    )
    server = Replica(env)
    await server.start()
    client = connect(server.address, connector_key)
    try:
        b = backend(ServiceApprovalStore(client, channel_id="tg"))
        req = request()
        task = asyncio.create_task(b.request_approval(req))
        approval = await one_pending(tenant)
        await server.stop()
        await server.start()  # same address, same database
        # A press while the bot's channel is still reconnecting is not recorded
        # (ResolveApproval is never retried) and ends nothing: the human presses
        # again. Here a call that waits for the channel goes first.
        await client.authz.CheckUser(
            az.CheckUserRequest(channel_id="tg", user_id="1", chat_kind=cm.CHAT_KIND_DIRECT),
            wait_for_ready=True,
            timeout=20,
        )
        assert await b.handle_callback(req.approval_id, "allow", actor=APPROVER) is True
        assert (await asyncio.wait_for(task, 30)).approved is True
        [done] = await stored(tenant, cm.APPROVAL_STATUS_APPROVED)
        assert done.approval_id == approval.approval_id
    finally:
        await client.close()
        await server.stop()


async def test_a_press_on_the_bots_loop_runs_the_tool_in_praisonais(
    tenant: Tenant, connector: Client
) -> None:
    tool = Tool()
    b = backend(ServiceApprovalStore(connector, channel_id="tg"))
    # The tool (and its approval) run in a loop of PraisonAI's own; the press arrives on the bot's.
    task = asyncio.create_task(
        asyncio.to_thread(gated_agent(b, tool).execute_tool, "deploy", {"env": "prod"})
    )
    approval = await one_pending(tenant)
    praisonai_id = approval.tool.request_key.removeprefix("praisonai:")
    assert await b.handle_callback(praisonai_id, "allow", actor=APPROVER) is True
    assert await asyncio.wait_for(task, 30) == "deployed to prod"
    assert tool.runs == ["prod"]


@pytest.fixture
async def agent_key_client(service: Service, tenant: Tenant) -> AsyncIterator[Client]:
    """The agent's own key (bound to agent "ops"), as its send policy holds."""
    key = await tenant.admin.admin.CreateApiKey(
        adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="ops", agents=["ops"])
    )
    client = connect(service.address, key.secret)
    yield client
    await client.close()


async def run_approved(tenant: Tenant, store: ServiceApprovalStore, tool: Tool) -> tuple[Any, cm.Approval]:
    """PraisonAI's own tool path for ``deploy(env="prod")``; an approver approves
    it in the service. Returns PraisonAI's result and the approval."""
    task = asyncio.create_task(
        asyncio.to_thread(gated_agent(backend(store), tool).execute_tool, "deploy", {"env": "prod"})
    )
    approval = await one_pending(tenant)
    await tenant.approver.authz.ResolveApproval(
        az.ResolveApprovalRequest(approval_id=approval.approval_id, action=cm.APPROVAL_ACTION_APPROVE)
    )
    return await asyncio.wait_for(task, 30), approval


async def test_with_a_redeemer_an_approved_call_is_used_up_before_it_runs(
    tenant: Tenant, connector: Client, agent_key_client: Client
) -> None:
    tool = Tool()
    store = ServiceApprovalStore(connector, channel_id="tg", agent_id="ops", redeemer=agent_key_client)
    result, approval = await run_approved(tenant, store, tool)
    assert tool.runs == ["prod"], result
    got = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=approval.approval_id))
    assert got.HasField("redeemed_at")
    # Used up: the agent's key cannot run the call a second time.
    again = await agent_key_client.authz.RedeemApproval(
        az.RedeemApprovalRequest(
            approval_id=approval.approval_id, tool_name="deploy", arguments_json=json.dumps({"env": "prod"})
        )
    )
    assert not again.allow and "already" in again.reason


async def test_with_a_redeemer_a_refused_redeem_runs_nothing(
    service: Service, tenant: Tenant, connector: Client
) -> None:
    """The approver approves, but the redeem is refused (here: the redeemer is
    another agent's key, which cannot see this agent's calls): the tool does
    not run, and the model reads why."""
    key = await tenant.admin.admin.CreateApiKey(
        adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="billing", agents=["billing"])
    )
    other = connect(service.address, key.secret)
    try:
        tool = Tool()
        store = ServiceApprovalStore(connector, channel_id="tg", agent_id="ops", redeemer=other)
        result, approval = await run_approved(tenant, store, tool)
    finally:
        await other.close()
    assert tool.runs == []
    assert result["approval_denied"] is True and "deploy" in result["error"], result
    got = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=approval.approval_id))
    assert got.status == cm.APPROVAL_STATUS_APPROVED and not got.HasField("redeemed_at")
