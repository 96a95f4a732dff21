"""API keys: authentication, roles, rotation, hashing; health and reflection."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from authz_service.client import connect
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.store.db import Database, UnsafeDatabaseRole

from .conftest import Dsns, Service, Tenant, connect_as_tenant, rpc_error

CHECK = az.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=cm.CHAT_KIND_DIRECT)


async def test_missing_and_wrong_keys_are_unauthenticated(service: Service, tenant: Tenant) -> None:
    channel = grpc.aio.insecure_channel(service.address)
    try:
        from authz_service.gen.authz.v1 import authz_pb2_grpc

        stub = authz_pb2_grpc.AuthzServiceStub(channel)
        err = await rpc_error(stub.CheckUser(CHECK))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await channel.close(None)
    good = tenant.keys["connector"]
    for bad in (good[:-1] + ("A" if good[-1] != "A" else "B"), "azk.x.y.z", "garbage", good + "x"):
        c = connect(service.address, bad)
        err = await rpc_error(c.authz.CheckUser(CHECK))
        await c.close()
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, bad


async def test_roles_are_enforced(service: Service, tenant: Tenant) -> None:
    err = await rpc_error(tenant.connector.admin.ListChannels(adm.ListChannelsRequest()))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await rpc_error(tenant.approver.authz.CheckUser(CHECK))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await tenant.approver.admin.ListApprovals(adm.ListApprovalsRequest())).approvals is not None
    err = await rpc_error(
        tenant.approver.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="42"))
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    # Admin keys may act as connectors.
    assert (await tenant.admin.authz.CheckUser(CHECK)).decision == az.DECISION_DENY


async def test_rotation_with_several_live_keys(service: Service, tenant: Tenant) -> None:
    new = await tenant.admin.admin.CreateApiKey(
        adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="rotated")
    )
    fresh = connect(service.address, new.secret)
    assert (await fresh.authz.CheckUser(CHECK)).decision == az.DECISION_DENY
    assert (await tenant.connector.authz.CheckUser(CHECK)).decision == az.DECISION_DENY  # old key still live
    old_id = tenant.keys["connector"].split(".")[2]
    await tenant.admin.admin.RevokeApiKey(adm.RevokeApiKeyRequest(key_id=old_id))
    err = await rpc_error(tenant.connector.authz.CheckUser(CHECK))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (await fresh.authz.CheckUser(CHECK)).decision == az.DECISION_DENY
    await fresh.close()
    keys = (await tenant.admin.admin.ListApiKeys(adm.ListApiKeysRequest())).keys
    assert {k.key_id for k in keys if k.HasField("revoked_at")} == {old_id}


async def test_keys_are_stored_hashed(tenant: Tenant, dsns: Dsns) -> None:
    conn = await connect_as_tenant(dsns.owner, tenant.tenant_id)
    try:
        dump = await conn.fetchval(
            "SELECT string_agg(k::text, '') FROM api_keys k WHERE tenant_id = $1", tenant.tenant_id
        )
    finally:
        await conn.close()
    for secret in tenant.keys.values():
        assert secret.split(".")[3] not in dump


@pytest.mark.superuser
async def test_service_refuses_a_role_that_bypasses_rls(dsns: Dsns) -> None:
    with pytest.raises(UnsafeDatabaseRole, match="row-level security"):
        await Database.connect(dsns.admin)


async def test_health_and_reflection(service: Service) -> None:
    channel = grpc.aio.insecure_channel(service.address)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "authz.v1.AuthzService", "authz.v1.AdminService"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = refl.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        answer = await call.read()
        await call.done_writing()
        names = {s.name for s in answer.list_services_response.service}
        assert {"authz.v1.AuthzService", "authz.v1.AdminService", "grpc.health.v1.Health"} <= names
    finally:
        await channel.close(None)
