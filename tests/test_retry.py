"""The SDK's one retry rule, checked against the contract: the rpcs the proto
declares safe to repeat (``idempotency_level``) are the ones both clients
retry after UNAVAILABLE, and no other. Faults are injected by a real gRPC
proxy in front of the real service (``grpc_faults.FaultProxy``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.descriptor_pb2 import MethodOptions
from google.protobuf.message_factory import GetMessageClass

from authz_service.client import IDEMPOTENT_METHODS, Client, RetryPolicy, connect, connect_sync
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Service, Tenant, eventually, rpc_error
from .grpc_faults import FaultProxy

FAST = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.02)
APPROVER = "telegram:42"
REQUEST_APPROVAL = "/authz.v1.AuthzService/RequestApproval"
RESOLVE_APPROVAL = "/authz.v1.AuthzService/ResolveApproval"
WATCH_APPROVAL = "/authz.v1.AuthzService/WatchApproval"


def path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


UNARY = [
    m
    for f in (az, adm)
    for s in f.DESCRIPTOR.services_by_name.values()
    for m in s.methods
    if not m.server_streaming
]
# Written from the descriptors here, not from the SDK: what the SDK does is what is tested.
DECLARED = {
    path(m)
    for f in (az, adm)
    for s in f.DESCRIPTOR.services_by_name.values()
    for m in s.methods
    if m.GetOptions().idempotency_level in (MethodOptions.NO_SIDE_EFFECTS, MethodOptions.IDEMPOTENT)
}


def test_the_declared_set_is_the_sdks_and_never_acts_twice() -> None:
    assert set(IDEMPOTENT_METHODS) == DECLARED
    # The calls whose repeat would act twice stay undeclared.
    for name in ("ResolveApproval", "RedeemApproval", "RedeemInvite"):
        assert f"/authz.v1.AuthzService/{name}" not in DECLARED
    for name in ("CreateTenant", "CreateApiKey", "CreateInvite"):
        assert f"/authz.v1.AdminService/{name}" not in DECLARED


@pytest.fixture
async def proxy(service: Service) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(service.address) as p:
        yield p


@pytest.fixture
async def agent_key(tenant: Tenant) -> str:
    key = await tenant.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="runtime"))
    return key.secret


def key_for(method: MethodDescriptor, tenant: Tenant, service: Service) -> str:
    if method.name in ("CreateTenant", "ListTenants"):
        return service.operator_key
    return tenant.keys["connector" if method.containing_service.name == "AuthzService" else "admin"]


async def status_through(client: Client, method: MethodDescriptor) -> grpc.StatusCode:
    stub: Any = client.authz if method.containing_service.name == "AuthzService" else client.admin
    request = GetMessageClass(method.input_type)()
    try:
        await getattr(stub, method.name)(request)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def sync_status_through(address: str, key: str, method: MethodDescriptor) -> grpc.StatusCode:
    with connect_sync(address, key, retry=FAST) as client:
        stub: Any = client.authz if method.containing_service.name == "AuthzService" else client.admin
        try:
            getattr(stub, method.name)(GetMessageClass(method.input_type)())
        except grpc.RpcError as exc:
            return exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.OK


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_exactly_the_declared_calls_are_retried_after_unavailable(
    flavour: str, proxy: FaultProxy, tenant: Tenant, service: Service
) -> None:
    """Each unary rpc's first attempt meets an unreachable service. A declared
    one is tried again and reaches the service (its answer, whatever it is, is
    not UNAVAILABLE); any other fails at once with UNAVAILABLE."""
    for method in UNARY:
        proxy.fail(path(method))
        key = key_for(method, tenant, service)
        if flavour == "async":
            async with connect(proxy.address, key, retry=FAST) as client:
                code = await status_through(client, method)
        else:
            code = await asyncio.to_thread(sync_status_through, proxy.address, key, method)
        retried = path(method) in DECLARED
        assert (proxy.attempts[path(method)], code == grpc.StatusCode.UNAVAILABLE) == (
            (2, False) if retried else (1, True)
        ), method.name


async def test_retries_stop_after_the_policys_attempts(proxy: FaultProxy, tenant: Tenant) -> None:
    proxy.fail("/authz.v1.AuthzService/CheckUser", 10)
    async with connect(proxy.address, tenant.keys["connector"], retry=FAST) as client:
        err = await rpc_error(client.check_user("tg", "1"))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert proxy.attempts["/authz.v1.AuthzService/CheckUser"] == FAST.attempts


async def setup(t: Tenant) -> None:
    await t.channel("tg", owner_id="100")
    await t.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[APPROVER]))


def tool_call() -> az.RequestApprovalRequest:
    """A raw request without a request_key: the SDK gives it one."""
    return az.RequestApprovalRequest(
        tool_name="shell", arguments_json=json.dumps({"cmd": "ls"}), agent_id="ops", timeout_seconds=60
    )


async def test_a_lost_request_approval_answer_is_retried_into_the_same_request(
    proxy: FaultProxy, tenant: Tenant, agent_key: str
) -> None:
    await setup(tenant)
    proxy.fail(REQUEST_APPROVAL, lost_answer=True)  # stored, but the caller never hears it
    async with connect(proxy.address, agent_key, retry=FAST) as agent:
        resp = await agent.authz.RequestApproval(tool_call())
    assert proxy.attempts[REQUEST_APPROVAL] == 2
    assert not resp.created  # the retry found the first attempt's request
    listed = await tenant.admin.admin.ListApprovals(adm.ListApprovalsRequest(kind=cm.APPROVAL_KIND_TOOL))
    assert [a.approval_id for a in listed.approvals] == [resp.approval.approval_id]


async def test_a_lost_resolve_answer_is_not_repeated(
    proxy: FaultProxy, tenant: Tenant, agent_key: str
) -> None:
    """Why ResolveApproval is undeclared: it acted, and a repeat would be refused
    as already resolved. The caller sees UNAVAILABLE and can look."""
    await setup(tenant)
    async with connect(proxy.address, agent_key, retry=FAST) as agent:
        asked = await agent.authz.RequestApproval(tool_call())
    proxy.fail(RESOLVE_APPROVAL, lost_answer=True)
    async with connect(proxy.address, tenant.keys["approver"], retry=FAST) as approver:
        err = await rpc_error(
            approver.authz.ResolveApproval(
                az.ResolveApprovalRequest(
                    approval_id=asked.approval.approval_id, action=cm.APPROVAL_ACTION_APPROVE
                )
            )
        )
    assert err.code() == grpc.StatusCode.UNAVAILABLE and proxy.attempts[RESOLVE_APPROVAL] == 1
    stored = await tenant.admin.admin.GetApproval(
        adm.GetApprovalRequest(approval_id=asked.approval.approval_id)
    )
    assert stored.status == cm.APPROVAL_STATUS_APPROVED


async def test_a_broken_watch_is_followed_to_the_decision(
    proxy: FaultProxy, tenant: Tenant, agent_key: str
) -> None:
    await setup(tenant)
    async with connect(proxy.address, agent_key, retry=FAST) as agent:
        asked = await agent.authz.RequestApproval(tool_call())
        aid = asked.approval.approval_id
        waiting = asyncio.create_task(agent.wait_for_decision(aid, timeout=20))

        async def watching() -> bool:
            return proxy.attempts[WATCH_APPROVAL] == 1

        await eventually(watching)
        await asyncio.sleep(0.1)  # the first state has been sent
        proxy.break_streams()  # as when the service restarts

        async def watching_again() -> bool:
            return proxy.attempts[WATCH_APPROVAL] >= 2

        await eventually(watching_again)
        await tenant.approver.authz.ResolveApproval(
            az.ResolveApprovalRequest(approval_id=aid, action=cm.APPROVAL_ACTION_APPROVE)
        )
        decided = await waiting
    assert decided.status == "approved"
