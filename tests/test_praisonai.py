"""The adapters inside the released PraisonAI packages (the ``praisonai`` extra),
driven through PraisonAI's own code paths with no LLM: its ``send_message``
tool under ``register_send_policy``, and ``Agent(approval=...)`` running a tool
that needs approval. The service is the real one (tests/conftest.py).

The send-policy table is the seed's (PraisonAI's
tests/unit/tools/test_send_message_tool.py, whose own cases also run verbatim
with our policy swapped in: tests/test_praisonai_vendored.py), with our
deliberate difference: with no policy at all only the origin conversation is
allowed (PraisonAI allows everything).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from praisonaiagents import Agent
from praisonaiagents.approval import ApprovalConfig
from praisonaiagents.approval.protocols import ApprovalDecision, ApprovalProtocol, ApprovalRequest
from praisonaiagents.gateway import DeliveryResult, SendDecision, SendPolicyProtocol, TargetInfo
from praisonaiagents.session import context as session
from praisonaiagents.tools import send_message

from authz_service.adapters import SEND_EVALUATION_ERROR, ApprovalBackend, ServiceSendPolicy
from authz_service.client import Client, SyncClient, connect, connect_sync
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import SECRET_KEY, Dsns, Service, Tenant
from .replicas import Replica, free_port

APPROVER = "telegram:42"
DENY, ALLOW = cm.SEND_DEFAULT_DENY, cm.SEND_DEFAULT_ALLOW


def closed_address() -> str:
    """An address nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def seed_denial(target: str) -> str:
    return f"Failed to send to {target}: target '{target}' is not permitted by send_policy"


class Messenger:
    """PraisonAI's ``OutboundMessengerProtocol``: records what was delivered."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send(self, target: str, text: str, *, media: list[str] | None = None) -> DeliveryResult:
        self.sent.append((target, text))
        return DeliveryResult(ok=True, target=target, summary=f"Delivered to {target}")

    def list_targets(self) -> list[TargetInfo]:
        return [TargetInfo(target="telegram:home", platform="telegram", kind="home", label="Telegram")]


class Turn:
    """One turn of a PraisonAI bot: session context, messenger and send policy
    registered as its gateway does, and an agent with the ``send_message`` tool."""

    def __init__(self, ctx: contextvars.Context, messenger: Messenger, agent_name: str) -> None:
        self.ctx = ctx
        self.messenger = messenger
        self.agent_name = agent_name

    async def send(self, target: str, message: str = "hi", **kw: str) -> str:
        args = {"target": target, "message": message, **kw}
        # A new agent per send: PraisonAI's loop guard remarks on repeated sends in one turn.
        agent = Agent(name=self.agent_name, tools=[send_message])
        # PraisonAI runs sync tools off the bot's loop; the turn's context goes along.
        result = await asyncio.to_thread(self.ctx.run, agent.execute_tool, "send_message", args)
        return str(result)


@pytest.fixture
async def agent_key(tenant: Tenant) -> str:
    """An agent key bound to the agent id "support"."""
    resp = await tenant.admin.admin.CreateApiKey(
        adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="support", agents=["support"])
    )
    return resp.secret


@pytest.fixture
def sync_client(service: Service, agent_key: str) -> Iterator[SyncClient]:
    with connect_sync(service.address, agent_key) as client:
        yield client


MakeTurn = Callable[..., Turn]


@pytest.fixture
def turn(sync_client: SyncClient) -> MakeTurn:
    def make(
        channel: str = "tg",
        platform: str = "telegram",
        chat_id: str = "100",
        user_id: str = "7",
        agent_id: str = "support",
        policy: SendPolicyProtocol | None = None,
    ) -> Turn:
        messenger = Messenger()
        ctx = contextvars.Context()

        def register() -> None:
            session.set_session_context(
                platform=platform,
                chat_id=chat_id,
                user_id=user_id,
                origin=session.Origin(platform=platform, chat_type="direct"),
            )
            session.register_outbound_messenger(messenger)
            session.register_send_policy(
                policy if policy is not None else ServiceSendPolicy(sync_client, channel, agent_id=agent_id)
            )

        ctx.run(register)
        return Turn(ctx, messenger, agent_id)

    return make


# --- send policy ---------------------------------------------------------------------


def test_the_policy_is_a_praisonai_send_policy(sync_client: SyncClient) -> None:
    policy = ServiceSendPolicy(sync_client, "tg", agent_id="support")
    assert isinstance(policy, SendPolicyProtocol)
    with pytest.raises(ValueError, match="agent_id"):
        ServiceSendPolicy(sync_client, "tg", agent_id="")


async def test_evaluate_returns_praisonais_decision(tenant: Tenant, sync_client: SyncClient) -> None:
    await tenant.channel("tg", send_policy=cm.SendPolicy(default=DENY, allow=["ops-alerts"]))
    policy = ServiceSendPolicy(sync_client, "tg", agent_id="support")
    allowed = await asyncio.to_thread(policy.evaluate, "ops-alerts")
    denied = await asyncio.to_thread(policy.evaluate, "slack:#exec")
    assert type(allowed) is SendDecision
    assert (allowed.allow, allowed.reason) == (True, "")
    assert type(denied) is SendDecision
    assert (denied.allow, denied.reason) == (False, "target 'slack:#exec' is not permitted by send_policy")


async def test_no_policy_allows_only_the_origin(tenant: Tenant, turn: MakeTurn) -> None:
    await tenant.channel("tg")
    t = turn()
    assert await t.send("origin") == "Delivered to origin"
    # Stricter than PraisonAI (which allows everything): nobody configured this channel.
    assert await t.send("slack:#exec") == seed_denial("slack:#exec")
    assert t.messenger.sent == [("origin", "hi")]


async def test_default_deny_allows_only_the_listed_targets(tenant: Tenant, turn: MakeTurn) -> None:
    await tenant.channel("tg", send_policy=cm.SendPolicy(default=DENY, allow=["origin", "ops-alerts"]))
    t = turn()
    assert await t.send("origin", "all done") == "Delivered to origin"
    assert await t.send("ops-alerts") == "Delivered to ops-alerts"
    out = await t.send("slack:#exec", "<leaked context>")
    # Exactly the seed's text, the prefix once.
    assert out == seed_denial("slack:#exec")
    assert t.messenger.sent == [("origin", "all done"), ("ops-alerts", "hi")]


async def test_default_allow_with_a_deny_list(tenant: Tenant, turn: MakeTurn) -> None:
    await tenant.channel("tg", send_policy=cm.SendPolicy(default=ALLOW, deny=["slack:#exec"]))
    t = turn()
    assert await t.send("slack:#ops") == "Delivered to slack:#ops"
    assert await t.send("slack:#exec") == seed_denial("slack:#exec")
    # Another spelling of the denied target is the same target.
    assert await t.send("SLACK:#EXEC") == seed_denial("SLACK:#EXEC")
    assert t.messenger.sent == [("slack:#ops", "hi")]


async def test_a_target_in_both_lists_is_denied(tenant: Tenant, turn: MakeTurn) -> None:
    await tenant.channel(
        "tg", send_policy=cm.SendPolicy(default=DENY, allow=["slack:#exec", "origin"], deny=["slack:#exec"])
    )
    t = turn()
    assert await t.send("slack:#exec") == seed_denial("slack:#exec")
    assert await t.send("origin") == "Delivered to origin"
    assert t.messenger.sent == [("origin", "hi")]


async def test_list_is_never_gated(tenant: Tenant, turn: MakeTurn) -> None:
    await tenant.channel("tg", send_policy=cm.SendPolicy(default=DENY))
    t = turn()
    out = await t.send("origin", "", action="list")
    assert json.loads(out)[0]["target"] == "telegram:home"
    assert t.messenger.sent == []


async def test_an_evaluation_error_denies(tenant: Tenant, turn: MakeTurn) -> None:
    await tenant.channel("tg", send_policy=cm.SendPolicy(default=ALLOW))
    t = turn()
    # A digit outside ASCII is an evaluation error on the service.
    target = "telegram:\u0663"
    assert await t.send(target) == f"Failed to send to {target}: {SEND_EVALUATION_ERROR}"
    # An unreachable service denies the same way.
    with connect_sync(closed_address(), "azk.x.y.z", timeout=1) as down:
        lost = turn(policy=ServiceSendPolicy(down, "tg", agent_id="support"))
        assert await lost.send("origin") == f"Failed to send to origin: {SEND_EVALUATION_ERROR}"
    assert t.messenger.sent == lost.messenger.sent == []


async def test_a_platform_name_is_not_the_origin(tenant: Tenant, turn: MakeTurn) -> None:
    """PraisonAI passes ``origin="telegram"``; the origin is the chat instead."""
    await tenant.channel("tg", send_policy=cm.SendPolicy(default=DENY, allow=["origin"]))
    t = turn(chat_id="100")
    assert await t.send("telegram") == seed_denial("telegram")
    assert await t.send("telegram:100") == "Delivered to telegram:100"
    assert await t.send("telegram:200") == seed_denial("telegram:200")
    assert t.messenger.sent == [("telegram:100", "hi")]


async def test_whatsapp_user_ids(tenant: Tenant, turn: MakeTurn) -> None:
    await tenant.channel(
        "wa",
        platform=cm.PLATFORM_WHATSAPP,
        send_policy=cm.SendPolicy(default=DENY, allow=["origin"]),
    )
    t = turn(channel="wa", platform="whatsapp", chat_id="+15551234567", user_id="+15551234567")
    assert await t.send("origin") == "Delivered to origin"
    assert await t.send("whatsapp:+15557654321") == seed_denial("whatsapp:+15557654321")
    assert t.messenger.sent == [("origin", "hi")]


async def test_the_agent_is_the_keys_not_praisonais_user_id(
    tenant: Tenant, service: Service, turn: MakeTurn
) -> None:
    await tenant.channel(
        "tg",
        send_policy=cm.SendPolicy(default=DENY, allow=["origin"]),
        agent_send_policies={"support": cm.SendPolicy(default=DENY, allow=["ops-alerts"])},
    )
    # PraisonAI passes the end user's id as agent_id; "pager" would not match anyway.
    t = turn(user_id="pager")
    assert await t.send("ops-alerts") == "Delivered to ops-alerts"
    assert await t.send("origin") == seed_denial("origin")
    # A key bound to "support" cannot speak for another agent: a denial, never a send.
    other = turn(agent_id="pager")
    assert await other.send("origin") == f"Failed to send to origin: {SEND_EVALUATION_ERROR}"
    audit = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="send.denied"))
    assert {(e.actor, e.subject) for e in audit.events} >= {("agent:support", "origin")}


# --- approvals -----------------------------------------------------------------------


@pytest.fixture
async def approval_key(tenant: Tenant) -> str:
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[APPROVER]))
    resp = await tenant.admin.admin.CreateApiKey(
        adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="ops", agents=["ops"])
    )
    return resp.secret


class Tool:
    """A tool PraisonAI runs only after approval; records its runs."""

    def __init__(self) -> None:
        self.runs: list[str] = []

    def deploy(self, env: str) -> str:
        """Deploy to an environment."""
        self.runs.append(env)
        return f"deployed to {env}"


def gated_agent(backend: ApprovalBackend, tool: Tool) -> Agent:
    return Agent(name="ops", tools=[tool.deploy], approval=ApprovalConfig(backend=backend, all_tools=True))


async def pending(t: Tenant) -> list[cm.Approval]:
    resp = await t.admin.admin.ListApprovals(
        adm.ListApprovalsRequest(kind=cm.APPROVAL_KIND_TOOL, status=cm.APPROVAL_STATUS_PENDING)
    )
    return list(resp.approvals)


async def one_pending(t: Tenant) -> cm.Approval:
    for _ in range(400):
        found = await pending(t)
        if found:
            assert len(found) == 1
            return found[0]
        await asyncio.sleep(0.025)
    raise AssertionError("no tool approval was requested")


async def resolve(t: Tenant, approval_id: str, action: int, reason: str = "") -> None:
    await t.approver.authz.ResolveApproval(
        az.ResolveApprovalRequest(approval_id=approval_id, action=action, reason=reason)  # type: ignore[arg-type]
    )


async def all_tool_approvals(t: Tenant) -> list[cm.Approval]:
    """Every stored tool approval, whatever its status."""
    found: list[cm.Approval] = []
    for status in range(cm.APPROVAL_STATUS_PENDING, cm.APPROVAL_STATUS_EXPIRED + 1):
        resp = await t.admin.admin.ListApprovals(
            adm.ListApprovalsRequest(kind=cm.APPROVAL_KIND_TOOL, status=status)  # type: ignore[arg-type]
        )
        found.extend(resp.approvals)
    return found


@pytest.fixture
async def agent_client(service: Service, approval_key: str) -> AsyncIterator[Client]:
    client = connect(service.address, approval_key)
    yield client
    await client.close()


@pytest.fixture
def backend(agent_client: Client) -> Callable[..., ApprovalBackend]:
    def make(timeout: float = 30.0) -> ApprovalBackend:
        # One client, though PraisonAI asks from a new event loop each time.
        return ApprovalBackend(agent_client, agent_id="ops", timeout=timeout)

    return make


def test_the_backend_is_a_praisonai_approval_backend(backend: Callable[..., ApprovalBackend]) -> None:
    b = backend(timeout=12)
    assert isinstance(b, ApprovalProtocol)
    assert b.timeout == 12.0
    assert b._timeout > 12.0  # PraisonAI's cap on the call: time to hear the expiry too


async def test_request_approval_returns_praisonais_decision(
    tenant: Tenant, backend: Callable[..., ApprovalBackend]
) -> None:
    b = backend()
    request = ApprovalRequest(tool_name="deploy", arguments={"env": "prod"}, risk_level="high")
    task = asyncio.create_task(b.request_approval(request))
    approval = await one_pending(tenant)
    assert json.loads(approval.tool.arguments_json) == {"env": "prod"}
    await resolve(tenant, approval.approval_id, cm.APPROVAL_ACTION_APPROVE)
    decision = await task
    by = (
        await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=approval.approval_id))
    ).resolved_by
    assert type(decision) is ApprovalDecision
    assert decision.approved is True
    assert by and decision.approver == by
    assert decision.metadata == {"approval_id": approval.approval_id}
    assert decision.modified_args == {}


async def test_an_approved_tool_runs_once(tenant: Tenant, backend: Callable[..., ApprovalBackend]) -> None:
    tool = Tool()
    agent = gated_agent(backend(), tool)
    for env in ("staging", "prod"):  # each call on a new event loop
        task = asyncio.create_task(asyncio.to_thread(agent.execute_tool, "deploy", {"env": env}))
        approval = await one_pending(tenant)
        await resolve(tenant, approval.approval_id, cm.APPROVAL_ACTION_APPROVE)
        assert await task == f"deployed to {env}"
    assert tool.runs == ["staging", "prod"]


async def test_a_denied_tool_does_not_run_and_is_asked_once(
    tenant: Tenant, backend: Callable[..., ApprovalBackend]
) -> None:
    tool = Tool()
    agent = gated_agent(backend(), tool)
    task = asyncio.create_task(asyncio.to_thread(agent.execute_tool, "deploy", {"env": "prod"}))
    approval = await one_pending(tenant)
    await resolve(tenant, approval.approval_id, cm.APPROVAL_ACTION_DENY, "not on a Friday")
    result: Any = await task
    assert result["approval_denied"] is True
    assert result["error"].endswith(": not on a Friday")
    assert "tool call 'deploy' was denied by " in result["error"]
    assert tool.runs == []
    assert len(await all_tool_approvals(tenant)) == 1


async def test_a_timed_out_approval_does_not_run(
    tenant: Tenant, backend: Callable[..., ApprovalBackend]
) -> None:
    tool = Tool()
    agent = gated_agent(backend(timeout=1.5), tool)
    result: Any = await asyncio.to_thread(agent.execute_tool, "deploy", {"env": "prod"})
    assert result["approval_denied"] is True
    assert "not approved in time" in result["error"]
    assert tool.runs == []
    [stored] = await all_tool_approvals(tenant)
    assert stored.status == cm.APPROVAL_STATUS_EXPIRED


async def test_the_agent_key_speaks_only_for_its_agent(tenant: Tenant, agent_client: Client) -> None:
    tool = Tool()
    other = ApprovalBackend(agent_client, agent_id="pager", timeout=5)
    result: Any = await asyncio.to_thread(gated_agent(other, tool).execute_tool, "deploy", {"env": "prod"})
    assert result["approval_denied"] is True
    assert "approval service is unavailable" in result["error"]
    assert tool.runs == []
    assert await all_tool_approvals(tenant) == []


@pytest.fixture(autouse=True)
async def _no_leaked_context() -> AsyncIterator[None]:
    # Every turn registers in its own Context; none may leak into the test's.
    yield
    assert session.get_send_policy() is None


async def test_approved_after_the_service_restarted_while_it_waited(
    tenant: Tenant, dsns: Dsns, approval_key: str, tmp_path: Path
) -> None:
    """The request is a stored row: a restart under the wait loses nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    env.update(
        AUTHZ_HOME=str(tmp_path),
        AUTHZ_DATABASE_URL=dsns.service,
        AUTHZ_SECRET_KEY=SECRET_KEY,  # the tenant's keys work on every server of the deployment
        AUTHZ_LISTEN=f"127.0.0.1:{free_port()}",
        AUTHZ_LOG_FORMAT="text",
    )
    server = Replica(env)
    await server.start()
    client = connect(server.address, approval_key)
    try:
        tool = Tool()
        agent = gated_agent(ApprovalBackend(client, agent_id="ops", timeout=60), tool)
        task = asyncio.create_task(asyncio.to_thread(agent.execute_tool, "deploy", {"env": "prod"}))
        approval = await one_pending(tenant)
        await server.stop()
        await server.start()  # same address, same database
        await resolve(tenant, approval.approval_id, cm.APPROVAL_ACTION_APPROVE)
        assert await asyncio.wait_for(task, 30) == "deployed to prod"
        assert tool.runs == ["prod"]
        assert len(await all_tool_approvals(tenant)) == 1
    finally:
        await client.close()
        await server.stop()


async def test_the_same_praisonai_request_is_stored_once(
    tenant: Tenant, backend: Callable[..., ApprovalBackend]
) -> None:
    b = backend(timeout=1)
    request = ApprovalRequest(tool_name="deploy", arguments={"env": "prod"}, risk_level="high")
    first, again = await asyncio.gather(b.request_approval(request), b.request_approval(request))
    assert first.approved is again.approved is False
    assert first.metadata == again.metadata != {}
    assert len(await all_tool_approvals(tenant)) == 1
    unreadable = ApprovalRequest(tool_name="deploy", arguments=42, risk_level="high")
    refused = await b.request_approval(unreadable)
    assert (refused.approved, refused.reason) == (False, "tool call 'deploy' has unreadable arguments")
    assert len(await all_tool_approvals(tenant)) == 1
