"""Tenant isolation of keys: a tampered tenant key, tenant keys against tenant management,
the operator key against tenant RPCs.
"""

from __future__ import annotations

import grpc

from authz_service.client import connect
from authz_service.domain.pairing import Keyring
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from tests.conftest import SECRET_KEY, Service, Tenant, rpc_error
from tests.tenant_rows import DIRECT

# --- keys ----------------------------------------------------------------------------


async def test_tampered_tenant_key_is_unauthenticated(
    service: Service, tenant: Tenant, other_tenant: Tenant
) -> None:
    await tenant.channel("tg")
    await other_tenant.channel("tg")
    prefix, tenant_part, key_id, secret, _check = tenant.keys["connector"].split(".")
    assert (prefix, tenant_part) == ("azk", tenant.tenant_id)
    _, b_tenant, b_key_id, b_secret, _ = other_tenant.keys["connector"].split(".")
    parts = {
        "tenant swapped": (other_tenant.tenant_id, key_id, secret),
        "B key id, A secret": (b_tenant, b_key_id, secret),
        "A key id, B secret": (tenant_part, key_id, b_secret),
        "unknown tenant": ("zz-no-such-tenant", key_id, secret),
        "secret truncated": (tenant_part, key_id, secret[:-1]),
    }
    # Each with a check that holds (so the stored hash decides), and in the
    # check-less form of keys made by older builds.
    keyring = Keyring(SECRET_KEY.encode())
    forged = {
        f"{label}, checked": f"azk.{t}.{k}.{s}.{keyring.api_key_check(t, k)}"
        for label, (t, k, s) in parts.items()
    }
    forged |= {f"{label}, legacy": f"azk.{t}.{k}.{s}" for label, (t, k, s) in parts.items()}
    req = az.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=DIRECT)
    for label, key in forged.items():
        client = connect(service.address, key)
        try:
            err = await rpc_error(client.authz.CheckUser(req))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (label, err.code(), err.details())
            err = await rpc_error(client.admin.ListChannels(adm.ListChannelsRequest()))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (label, err.code(), err.details())
        finally:
            await client.close()
    # The genuine key still works.
    genuine = connect(service.address, tenant.keys["connector"])
    try:
        assert (await genuine.authz.CheckUser(req)).decision == az.DECISION_PAIRING_REQUIRED
    finally:
        await genuine.close()


async def test_tenant_keys_cannot_manage_tenants(service: Service, tenant: Tenant) -> None:
    for role in ("admin", "approver", "connector"):
        client = getattr(tenant, role)
        err = await rpc_error(
            client.admin.CreateTenant(adm.CreateTenantRequest(tenant_id=f"{tenant.tenant_id}-x"))
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (role, err.code(), err.details())
        err = await rpc_error(client.admin.ListTenants(adm.ListTenantsRequest()))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (role, err.code(), err.details())
    op = connect(service.address, service.operator_key)
    try:
        listed = {t.tenant_id for t in (await op.admin.ListTenants(adm.ListTenantsRequest())).tenants}
    finally:
        await op.close()
    assert tenant.tenant_id in listed
    assert f"{tenant.tenant_id}-x" not in listed


async def test_operator_key_cannot_call_tenant_rpcs(service: Service, tenant: Tenant) -> None:
    await tenant.channel("tg")
    op = connect(service.address, service.operator_key)
    try:
        calls = {
            "ListChannels": op.admin.ListChannels(adm.ListChannelsRequest()),
            "GetChannel": op.admin.GetChannel(adm.GetChannelRequest(channel_id="tg")),
            "SetChannel": op.admin.SetChannel(
                adm.SetChannelRequest(
                    channel_id="tg", platform=cm.PLATFORM_TELEGRAM, policy=cm.ChannelPolicy()
                )
            ),
            "ListApiKeys": op.admin.ListApiKeys(adm.ListApiKeysRequest()),
            "CreateApiKey": op.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_ADMIN, name="x")),
            "GetTenantSettings": op.admin.GetTenantSettings(adm.GetTenantSettingsRequest()),
            "ListApprovals": op.admin.ListApprovals(adm.ListApprovalsRequest()),
            "QueryAudit": op.admin.QueryAudit(adm.QueryAuditRequest()),
            "CheckUser": op.authz.CheckUser(
                az.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=DIRECT)
            ),
            "EvaluateSend": op.authz.EvaluateSend(
                az.EvaluateSendRequest(channel_id="tg", agent_id="default", target="x")
            ),
        }
        for name, call in calls.items():
            err = await rpc_error(call)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (name, err.code(), err.details())
        # The operator key itself is fine: it can do operator things.
        assert tenant.tenant_id in {
            t.tenant_id for t in (await op.admin.ListTenants(adm.ListTenantsRequest())).tenants
        }
    finally:
        await op.close()
