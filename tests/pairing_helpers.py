"""Pairing through the RPCs, as the pairing, quorum, renewal and auto-approve tests drive it."""

from __future__ import annotations

from authz_service.flows.expiry import sweep
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.store.db import Database

from .conftest import Dsns, Tenant, connect_as_tenant

OWNER = "100"


async def pair(
    t: Tenant, user: str = "42", channel: str = "tg", name: str = "Alice"
) -> az.RequestPairingResponse:
    return await t.connector.authz.RequestPairing(
        az.RequestPairingRequest(channel_id=channel, user_id=user, display_name=name, first_message="hi")
    )


async def check(
    t: Tenant, user: str = "42", channel: str = "tg", *, consistent: bool = False
) -> az.CheckUserResponse:
    return await t.connector.authz.CheckUser(
        az.CheckUserRequest(
            channel_id=channel, user_id=user, chat_kind=cm.CHAT_KIND_DIRECT, consistent=consistent
        )
    )


def button(resp: az.RequestPairingResponse, action: int) -> str:
    return next(b.callback_payload for b in resp.notification.buttons if b.action == action)


async def press(t: Tenant, payload: str, actor: str = OWNER) -> az.ResolveApprovalResponse:
    return await t.connector.authz.ResolveApproval(
        az.ResolveApprovalRequest(callback_payload=payload, actor_id=actor)
    )


async def events(t: Tenant, prefix: str = "") -> list[adm.AuditEvent]:
    return list((await t.admin.admin.QueryAudit(adm.QueryAuditRequest(event=prefix))).events)


async def expire_now(dsns: Dsns, tenant_id: str, approval_id: str) -> None:
    conn = await connect_as_tenant(dsns.owner, tenant_id)
    try:
        await conn.execute(
            "UPDATE approvals SET expires_at = now() - interval '1 second' WHERE tenant_id = $1 AND approval_id = $2",
            tenant_id, approval_id,
        )  # fmt: skip
    finally:
        await conn.close()


async def sweep_once(dsns: Dsns) -> None:
    """One round of the server's expiry sweep."""
    db = await Database.connect(dsns.service)
    try:
        await sweep(db)
    finally:
        await db.close()


async def expire_pending_and_sweep(dsns: Dsns, tenant_id: str) -> None:
    """Every pending approval of the tenant past its expiry, then one sweep."""
    conn = await connect_as_tenant(dsns.owner, tenant_id)
    try:
        await conn.execute(
            "UPDATE approvals SET expires_at = now() - interval '1 second' WHERE tenant_id = $1 AND status = 'pending'",
            tenant_id,
        )
    finally:
        await conn.close()
    await sweep_once(dsns)
