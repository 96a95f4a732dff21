"""The agent-runtime adapters against the real in-process service: send
policy, tool approvals (approve, deny, timeout, grants, tampering) and the
ingress guard, and that each fails closed when the service is unreachable."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest

from authz_service.adapters import (
    AUTHZ_UNAVAILABLE,
    SEND_EVALUATION_ERROR,
    ApprovalBackend,
    ApprovalRefused,
    IngressGuard,
    PendingApproval,
    SendDecision,
    ServiceSendPolicy,
    gated,
)
from authz_service.client import Client, connect, connect_sync
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Service, Tenant, eventually
from .grpc_faults import FaultProxy

APPROVER = "telegram:42"
SECRET = "not-a-real-key-but-must-never-be-logged"


def closed_address() -> str:
    """An address nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def denial(target: str) -> str:
    return f"Failed to send to {target}: target '{target}' is not permitted by send_policy"


@pytest.fixture
async def agent_key(tenant: Tenant) -> str:
    resp = await tenant.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="a"))
    return resp.secret


@pytest.fixture
async def agent(service: Service, agent_key: str) -> AsyncIterator[Client]:
    client = connect(service.address, agent_key)
    yield client
    await client.close()


async def with_approvers(t: Tenant) -> None:
    await t.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[APPROVER]))


async def pending_tool_approval(t: Tenant, seen: int = 0) -> cm.Approval:
    """Wait until more than ``seen`` tool approvals are pending; the newest."""
    for _ in range(400):
        resp = await t.admin.admin.ListApprovals(adm.ListApprovalsRequest(kind=cm.APPROVAL_KIND_TOOL))
        if len(resp.approvals) > seen:
            return max(resp.approvals, key=lambda a: a.created_at.ToDatetime())
        await asyncio.sleep(0.025)
    raise AssertionError("no tool approval was requested")


async def resolve(t: Tenant, approval_id: str, action: int, reason: str = "") -> None:
    await t.approver.authz.ResolveApproval(
        az.ResolveApprovalRequest(approval_id=approval_id, action=action, reason=reason)  # type: ignore[arg-type]
    )


async def stored(t: Tenant, approval_id: str) -> cm.Approval:
    return await t.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=approval_id))


# --- send policy -------------------------------------------------------------------


async def test_send_policy_fails_closed_when_the_service_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="authz_service.adapters")
    with connect_sync(closed_address(), SECRET, timeout=1) as client:
        policy = ServiceSendPolicy(client, "tg", agent_id="ops")
        decision = await asyncio.to_thread(policy.evaluate, "origin", origin="telegram")
    assert (decision.allow, decision.reason) == (False, SEND_EVALUATION_ERROR)
    assert "UNAVAILABLE" in caplog.text
    assert SECRET not in caplog.text


async def test_send_policy_fails_closed_on_bad_input(
    tenant: Tenant, service: Service, agent_key: str
) -> None:
    await tenant.channel("tg", send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW))
    with connect_sync(service.address, agent_key) as client:
        ok = ServiceSendPolicy(client, "tg", agent_id="ops")
        allowed = await asyncio.to_thread(ok.evaluate, "slack:#ops")
        assert (allowed.allow, allowed.reason) == (True, "")
        not_a_string = await asyncio.to_thread(ok.evaluate, 42)  # type: ignore[arg-type]
        assert (not_a_string.allow, not_a_string.reason) == (False, SEND_EVALUATION_ERROR)
        with pytest.raises(ValueError, match="agent_id"):
            ServiceSendPolicy(client, "tg", agent_id="")


async def test_send_decision_without_praisonai_is_the_seeds() -> None:
    decision = SendDecision(False, "x")
    with pytest.raises(AttributeError):
        decision.allow = True  # type: ignore[misc]
    assert SendDecision(True) == SendDecision(True, "")


# --- approvals ---------------------------------------------------------------------


async def test_approved_tool_runs_once_with_the_approved_arguments(tenant: Tenant, agent: Client) -> None:
    await with_approvers(tenant)
    requests: list[PendingApproval] = []
    backend = ApprovalBackend(agent, agent_id="ops", timeout=30, on_request=requests.append)
    ran: list[str] = []

    @gated(backend, "shell", summary="clean the cache")
    async def shell(*, cmd: str) -> str:
        ran.append(cmd)
        return f"ran {cmd}"

    task = asyncio.create_task(shell(cmd="rm -rf /tmp/cache"))
    pending = await pending_tool_approval(tenant)
    assert pending.tool.tool_name == "shell" and pending.tool.arguments_json == '{"cmd":"rm -rf /tmp/cache"}'
    assert pending.tool.agent_id == "ops" and pending.tool.risk == cm.RISK_MEDIUM
    await asyncio.sleep(0.2)
    assert not task.done() and ran == []  # waiting for a human, not running
    await resolve(tenant, pending.approval_id, cm.APPROVAL_ACTION_APPROVE)
    assert await asyncio.wait_for(task, 10) == "ran rm -rf /tmp/cache"
    assert ran == ["rm -rf /tmp/cache"]
    # on_request heard about it with what to show approvers; an agent key is
    # not told who they are (issue #15).
    assert [r.approval_id for r in requests] == [pending.approval_id]
    assert requests[0].approvers == () and requests[0].created
    assert "shell" in requests[0].notification_text and "clean the cache" in requests[0].notification_text
    # The tool ran because the approval was redeemed, exactly once.
    assert (await stored(tenant, pending.approval_id)).HasField("redeemed_at")
    redeemed = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="tool.redeemed"))
    assert [e.approval_id for e in redeemed.events] == [pending.approval_id]


async def test_request_approval_reports_who_approved(tenant: Tenant, agent: Client) -> None:
    await with_approvers(tenant)
    backend = ApprovalBackend(agent, agent_id="ops", timeout=30)
    task = asyncio.create_task(backend.ask("deploy", '{"env": "prod"}', session_id="s-1"))
    pending = await pending_tool_approval(tenant)
    await resolve(tenant, pending.approval_id, cm.APPROVAL_ACTION_APPROVE)
    decision = await asyncio.wait_for(task, 10)
    by = (await stored(tenant, pending.approval_id)).resolved_by
    assert by.startswith("key:")
    assert decision.approved and decision.approval_id == pending.approval_id and decision.resolved_by == by
    assert decision.reason == f"tool call 'deploy' was approved by {by}"


async def test_denied_tool_does_not_run_and_the_reason_names_the_denier(
    tenant: Tenant, agent: Client
) -> None:
    await with_approvers(tenant)
    backend = ApprovalBackend(agent, agent_id="ops", timeout=30)
    ran: list[str] = []

    @gated(backend, "shell")
    async def shell(*, cmd: str) -> str:
        ran.append(cmd)
        return "ran"

    task = asyncio.create_task(shell(cmd="rm -rf /"))
    pending = await pending_tool_approval(tenant)
    await resolve(tenant, pending.approval_id, cm.APPROVAL_ACTION_DENY, reason="not today")
    with pytest.raises(ApprovalRefused) as caught:
        await asyncio.wait_for(task, 10)
    by = (await stored(tenant, pending.approval_id)).resolved_by
    assert by.startswith("key:")
    assert str(caught.value) == f"tool call 'shell' was denied by {by}: not today"
    assert not caught.value.decision.approved and caught.value.decision.resolved_by == by
    assert ran == []
    assert not (await stored(tenant, pending.approval_id)).HasField("redeemed_at")


async def test_timeout_is_not_approved(tenant: Tenant, agent: Client) -> None:
    await with_approvers(tenant)

    def broken_notifier(_: PendingApproval) -> None:
        raise RuntimeError("the chat is down")  # logged; the wait goes on

    backend = ApprovalBackend(agent, agent_id="ops", timeout=1, on_request=broken_notifier)
    ran: list[int] = []

    @gated(backend, "shell")
    async def shell(*, cmd: str) -> None:
        ran.append(1)

    started = time.monotonic()
    with pytest.raises(ApprovalRefused) as caught:
        await shell(cmd="reboot")
    assert time.monotonic() - started < 8
    decision = caught.value.decision
    assert not decision.approved and decision.reason == "tool call 'shell' was not approved in time"
    assert ran == []
    assert (await stored(tenant, decision.approval_id)).status == cm.APPROVAL_STATUS_EXPIRED


async def test_unreachable_service_is_not_approved(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="authz_service.adapters")
    async with connect(closed_address(), SECRET, timeout=1) as down:
        backend = ApprovalBackend(down, agent_id="ops", timeout=5)
        decision = await backend.ask("shell", {"cmd": "ls"})
        ran: list[int] = []

        @gated(backend, "shell")
        async def shell(*, cmd: str) -> None:
            ran.append(1)

        with pytest.raises(ApprovalRefused):
            await shell(cmd="ls")
    assert not decision.approved and decision.approval_id == ""
    assert decision.reason == "tool call 'shell' was not run: the approval service is unavailable"
    assert ran == []
    assert "UNAVAILABLE" in caplog.text and SECRET not in caplog.text


async def test_a_broken_watch_is_resumed(tenant: Tenant, service: Service, agent_key: str) -> None:
    """The stream ends under the wait, as when the service restarts: the client watches again."""
    await with_approvers(tenant)
    watch = "/authz.v1.AuthzService/WatchApproval"

    async def watches(n: int) -> None:
        async def seen() -> bool:
            return proxy.attempts[watch] >= n

        await eventually(seen)

    async with FaultProxy(service.address) as proxy, connect(proxy.address, agent_key) as agent:
        backend = ApprovalBackend(agent, agent_id="ops", timeout=30)
        task = asyncio.create_task(backend.ask("shell", {"cmd": "uptime"}))
        pending = await pending_tool_approval(tenant)
        await watches(1)
        proxy.break_streams()
        await watches(2)
        await resolve(tenant, pending.approval_id, cm.APPROVAL_ACTION_APPROVE)
        decision = await asyncio.wait_for(task, 10)
    assert decision.approved and decision.approval_id == pending.approval_id


async def test_arguments_changed_while_waiting_are_refused(tenant: Tenant, agent: Client) -> None:
    await with_approvers(tenant)
    backend = ApprovalBackend(agent, agent_id="ops", timeout=30)
    ran: list[list[str]] = []

    @gated(backend, "rm")
    async def rm(*, paths: list[str]) -> None:
        ran.append(list(paths))

    paths = ["/tmp/a"]
    task = asyncio.create_task(rm(paths=paths))
    pending = await pending_tool_approval(tenant)
    paths.append("/etc/passwd")  # the call changes after the human looked at it
    await resolve(tenant, pending.approval_id, cm.APPROVAL_ACTION_APPROVE)
    with pytest.raises(ApprovalRefused) as caught:
        await asyncio.wait_for(task, 10)
    assert "arguments differ" in str(caught.value)
    assert ran == []


async def test_always_allow_grant_runs_without_asking_until_revoked(tenant: Tenant, agent: Client) -> None:
    await with_approvers(tenant)
    asked: list[str] = []
    backend = ApprovalBackend(
        agent, agent_id="ops", timeout=30, on_request=lambda p: asked.append(p.approval_id)
    )
    ran: list[str] = []

    @gated(backend, "shell")
    async def shell(*, cmd: str) -> None:
        ran.append(cmd)

    task = asyncio.create_task(shell(cmd="df -h"))
    first = await pending_tool_approval(tenant)
    await resolve(tenant, first.approval_id, cm.APPROVAL_ACTION_ALWAYS_ALLOW)
    await asyncio.wait_for(task, 10)

    await shell(cmd="df -h")  # the grant approves it: no human, no wait
    assert ran == ["df -h", "df -h"] and asked == [first.approval_id]
    decision = await backend.ask("shell", {"cmd": "df -h"})
    assert decision.approved and decision.reason == "tool call 'shell' was approved by a standing grant"
    assert decision.resolved_by.startswith("grant:")

    grants = (await tenant.admin.admin.ListGrants(adm.ListGrantsRequest())).grants
    await tenant.admin.admin.RevokeGrant(adm.RevokeGrantRequest(grant_id=grants[0].grant_id))
    short = ApprovalBackend(agent, agent_id="ops", timeout=1)
    after = await short.ask("shell", {"cmd": "df -h"})
    assert not after.approved and after.reason == "tool call 'shell' was not approved in time"


async def test_gated_tool_takes_keyword_arguments_only(tenant: Tenant, agent: Client) -> None:
    backend = ApprovalBackend(agent, agent_id="ops", timeout=5)
    ran: list[str] = []

    @gated(backend, "shell")
    async def shell(cmd: str) -> None:
        ran.append(cmd)

    with pytest.raises(TypeError, match="keyword arguments only"):
        await shell("ls")
    assert ran == []
    listed = await tenant.admin.admin.ListApprovals(adm.ListApprovalsRequest(kind=cm.APPROVAL_KIND_TOOL))
    assert list(listed.approvals) == []  # nothing was asked
    assert shell.__name__ == "shell"


def test_backend_rejects_a_bad_timeout() -> None:
    for bad in (0, -1, 86401):
        with pytest.raises(ValueError, match="timeout"):
            ApprovalBackend(None, agent_id="ops", timeout=bad)  # type: ignore[arg-type]


# --- ingress -----------------------------------------------------------------------


async def test_ingress_guard_allows_asks_to_pair_and_fails_closed(tenant: Tenant, agent: Client) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING, agent_id="support")
    await tenant.admin.admin.AllowUser(
        adm.AllowUserRequest(channel_id="tg", user_id="777", permissions=["read"])
    )
    guard = IngressGuard(agent, "tg")

    allowed = await guard.check("777", text="hi", display_name="Ann")
    assert allowed.allowed and allowed.decision == "allow"
    assert allowed.agent_id == "support" and allowed.permissions == ("read",)

    stranger = await guard.check("555", text="hi")
    assert not stranger.allowed and stranger.decision == "pairing_required"

    async with connect(closed_address(), SECRET, timeout=1) as down:
        failed = await IngressGuard(down, "tg").check("777", text="hi")
    assert not failed.allowed
    assert (failed.decision, failed.reason, failed.text) == ("deny", AUTHZ_UNAVAILABLE, "")
    assert failed.reason == "authz_unavailable"


def test_adapters_import_and_decide_without_praisonai() -> None:
    """PraisonAI is optional: without it the module imports and returns its own types."""
    code = (
        "import sys; sys.modules['praisonaiagents'] = sys.modules['praisonai_bot'] = None\n"
        "from authz_service.adapters import SendDecision, send_decision\n"
        "d = send_decision(False, 'no')\n"
        "assert type(d) is SendDecision and (d.allow, d.reason) == (False, 'no'), d\n"
        "assert 'praisonaiagents' not in {m.split('.')[0] for m in sys.modules if sys.modules[m]}\n"
        "from authz_service.adapters import ServicePresentationBackend\n"
        "try:\n"
        "    ServicePresentationBackend(None)\n"
        "except ImportError as exc:\n"
        "    assert 'praisonai' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('made without praisonai-bot')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_one_client_serves_several_event_loops(tenant: Tenant, agent: Client) -> None:
    """A runtime that runs each call in a new loop (asyncio.run) shares one client."""
    await with_approvers(tenant)
    await tenant.channel("tg", send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_DENY, allow=["ops"]))

    def in_a_new_loop(target: str) -> bool | None:
        async def call() -> bool | None:
            return (await agent.evaluate_send("tg", target, agent_id="ops")).allow

        return asyncio.run(call())

    assert await asyncio.to_thread(in_a_new_loop, "ops") is True
    assert await asyncio.to_thread(in_a_new_loop, "slack:#exec") is False
    # ...and the loop it was made on, still.
    assert (await agent.evaluate_send("tg", "ops", agent_id="ops")).allow is True


async def test_request_approval_says_whether_it_created_the_request(tenant: Tenant, agent: Client) -> None:
    await with_approvers(tenant)
    first = await agent.request_approval("shell", {"cmd": "ls"}, agent_id="ops", request_key="turn-1")
    assert first.created is True
    assert first.approval.pending
    assert first.approvers == ()  # never shown to agent keys
    assert "shell" in first.notification_text
    # A key that delivers approvals sees who may decide.
    connector = await tenant.connector.request_approval(
        "shell", {"cmd": "ls"}, agent_id="ops", request_key="turn-1"
    )
    assert connector.approvers == (APPROVER,)
    again = await agent.request_approval("shell", {"cmd": "ls"}, agent_id="ops", request_key="turn-1")
    assert (again.created, again.approval.approval_id) == (False, first.approval.approval_id)
    assert again.notification_text == ""


async def test_a_runtime_without_praisonai_gives_the_origin(
    tenant: Tenant, service: Service, agent_key: str
) -> None:
    await tenant.channel("tg", send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_DENY, allow=["origin"]))
    with connect_sync(service.address, agent_key) as client:
        policy = ServiceSendPolicy(client, "tg", agent_id="ops", origin=lambda: "telegram:100")
        assert (await asyncio.to_thread(policy.evaluate, "telegram:100")).allow is True
        # The keyword is never the origin (PraisonAI passes a platform name there).
        denied = await asyncio.to_thread(policy.evaluate, "telegram:200", origin="telegram:200")
        assert (denied.allow, denied.reason) == (
            False,
            "target 'telegram:200' is not permitted by send_policy",
        )
