"""Expiry on time (issue #17): the sweep expires lapsed requests and audits
them then; ``pairing list`` never shows a lapsed request as pending."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from authz_service.flows.expiry import sweep
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.store.db import Database

from .conftest import Dsns, Service, Tenant, eventually
from .limits import start_limited
from .policy_helpers import make_cli


async def _lapse(owner: asyncpg.Connection, tenant: Tenant, user: str) -> str:
    resp = await tenant.connector.authz.RequestPairing(
        az.RequestPairingRequest(channel_id="tg", user_id=user)
    )
    await owner.execute(
        "UPDATE approvals SET expires_at = now() - interval '1 s' WHERE tenant_id = $1 AND approval_id = $2",
        tenant.tenant_id, resp.approval_id,
    )  # fmt: skip
    return resp.approval_id


async def _listed(tenant: Tenant, status: cm.ApprovalStatus.ValueType) -> list[str]:
    resp = await tenant.admin.admin.ListApprovals(adm.ListApprovalsRequest(channel_id="tg", status=status))
    return [a.approval_id for a in resp.approvals]


async def _expired_events(tenant: Tenant) -> list[adm.AuditEvent]:
    resp = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="pairing.expired"))
    return list(resp.events)


async def test_a_lapsed_request_is_never_listed_as_pending_and_the_sweep_expires_it_once(
    tenant: Tenant, owner: asyncpg.Connection, dsns: Dsns, service: Service
) -> None:
    await tenant.channel("tg")
    live = (
        await tenant.connector.authz.RequestPairing(az.RequestPairingRequest(channel_id="tg", user_id="7"))
    ).approval_id
    lapsed = await _lapse(owner, tenant, "8")
    cli = make_cli(service, tenant)
    listed = await cli("pairing", "list", "tg", "--json")
    assert listed.code == 0, listed.text
    assert [r["approval_id"] for r in json.loads(listed.out)] == [live]  # never the lapsed one as pending
    assert await _listed(tenant, cm.APPROVAL_STATUS_EXPIRED) == []
    assert await _expired_events(tenant) == []  # not yet audited: nothing has moved it

    db = await Database.connect(dsns.service)
    try:
        # Two replicas at once: the request is expired and audited once.
        # (Other tests' tenants may have lapsed requests too: count this tenant's events.)
        await asyncio.gather(sweep(db), sweep(db))
        await sweep(db)
    finally:
        await db.close()
    [event] = await _expired_events(tenant)
    assert (event.approval_id, event.actor, event.subject) == (lapsed, "system", "8")
    got = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=lapsed))
    assert (got.status, got.resolved_by) == (cm.APPROVAL_STATUS_EXPIRED, "system")
    assert await _listed(tenant, cm.APPROVAL_STATUS_PENDING) == [live]
    assert await _listed(tenant, cm.APPROVAL_STATUS_EXPIRED) == [lapsed]


async def test_the_running_service_expires_requests_on_its_own(
    tenant: Tenant, owner: asyncpg.Connection, dsns: Dsns, service: Service
) -> None:
    await tenant.channel("tg")
    lapsed = await _lapse(owner, tenant, "9")
    sweeper = await start_limited(dsns, service, expiry_sweep_seconds=1)
    try:

        async def audited() -> bool:
            return bool(await _expired_events(tenant))

        await eventually(audited, timeout=15)
    finally:
        await sweeper.running.stop(grace=1)
    [event] = await _expired_events(tenant)
    assert event.approval_id == lapsed
