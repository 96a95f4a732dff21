"""Reliability under faults (issue #8): the service SIGKILLed in the middle of
a load and restarted: every acknowledged write is there, pending approvals
keep their expiry, and no multi-row change is half-applied.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time

import asyncpg

from authz_service.client import NO_RETRY, Client, connect
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from tests.conftest import Dsns, Tenant, eventually
from tests.replicas import free_port

from .load import (
    APPROVER,
    NONE,
    OWNER,
    UNKNOWN,
    Load,
    Spawn,
    admin_writer,
    assert_acknowledged_writes_present,
    assert_nothing_half_applied,
    decision,
    pairer,
    possible_states,
    subject_states,
    tool_asker,
)


async def test_sigkill_mid_load_keeps_every_acknowledged_write_and_half_applies_nothing(
    tenant: Tenant, spawn: Spawn, dsns: Dsns, owner: asyncpg.Connection
) -> None:
    """`authz serve` is SIGKILLed at a random point of a mixed write load
    (pairing requests and their approve/deny/block buttons, admin blocks of
    pending users, allow/block/unblock, tool-call requests and decisions), then
    restarted. Every acknowledged write is there; pending approvals keep their
    original expiry and code; no change is half-applied; the restarted service
    decides from what was committed."""
    await tenant.channel("tg", owner_id=OWNER, max_pending=1000)
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[APPROVER]))
    agent_key = await tenant.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="a"))
    serve = await spawn(dsns.service)

    def clients() -> tuple[Client, Client, Client, Client]:
        return (
            connect(serve.address, tenant.keys["connector"], retry=NO_RETRY, timeout=5),
            connect(serve.address, tenant.keys["admin"], retry=NO_RETRY, timeout=5),
            connect(serve.address, agent_key.secret, retry=NO_RETRY, timeout=5),
            connect(serve.address, tenant.keys["approver"], retry=NO_RETRY, timeout=5),
        )

    connector, admin, agent, approver = clients()
    load = Load()
    try:
        for k in range(2):
            load.run(admin_writer(load, admin, [f"4{k}{i}" for i in range(3)]))
        for k in range(3):
            load.run(
                pairer(load, connector, admin, f"5{k}", ("approve", "deny", "block", "block_user", "pending"))
            )
        load.run(tool_asker(load, agent, approver))

        async def enough_load() -> bool:  # a slow machine needs longer to get there
            return sum(1 for c in load.calls if c.ok) >= 20

        await eventually(enough_load, timeout=60)
        await asyncio.sleep(random.uniform(0.0, 1.0))  # then kill at a random point
        assert await serve.stop(signal.SIGKILL) == -signal.SIGKILL
        killed_at = time.monotonic()
    finally:
        await load.stop()
        for client in (connector, admin, agent, approver):
            await client.close()
    writes = [c for c in load.calls if c.ok]
    assert len(writes) >= 20, "too little load before the kill"
    assert any(c.code in UNKNOWN for c in load.calls if c.started < killed_at), "nothing was in flight"

    # A fresh port: the killed server's may have been handed out since (an ephemeral
    # port of some other connection), and the restart would then fail to bind.
    serve.env["AUTHZ_LISTEN"] = f"127.0.0.1:{free_port()}"
    await serve.start()
    connector, admin, agent, approver = clients()
    try:
        assert await assert_acknowledged_writes_present(owner, tenant.tenant_id, load.calls) == len(writes)
        await assert_nothing_half_applied(owner, tenant.tenant_id)
        states = await subject_states(owner, tenant.tenant_id)
        for user in {c.user for c in load.of("allow", "block", "unblock") if c.user.startswith("4")}:
            calls = [c for c in load.calls if c.user == user]
            assert states.get(user, NONE) in possible_states(calls), (user, states.get(user), calls)

        # Pending approvals survived with their expiry; a repeat request gets the same code.
        rows = await owner.fetch(
            "SELECT approval_id, status FROM approvals WHERE tenant_id = $1", tenant.tenant_id
        )
        status = {r["approval_id"]: r["status"] for r in rows}
        pending = [c for c in load.of("request") if c.ok and status[c.response.approval_id] == "pending"]
        assert pending, "no acknowledged request was left pending"
        for c in pending:
            again = await admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=c.response.approval_id))
            assert again.status == cm.APPROVAL_STATUS_PENDING
            assert again.expires_at == c.response.expires_at
            repeat = await connector.authz.RequestPairing(
                az.RequestPairingRequest(channel_id="tg", user_id=c.user)
            )
            assert repeat.outcome == az.PAIRING_OUTCOME_EXISTING
            assert (repeat.approval_id, repeat.code, repeat.expires_at) == (
                c.response.approval_id, c.response.code, c.response.expires_at)  # fmt: skip
        for c in load.of("tool_request"):
            if c.ok and status[c.response.approval.approval_id] == "pending":
                again = await admin.admin.GetApproval(
                    adm.GetApprovalRequest(approval_id=c.response.approval.approval_id)
                )
                assert again.expires_at == c.response.approval.expires_at

        # The restarted service decides from what was committed.
        expected = {"allowed": az.DECISION_ALLOW, "blocked": az.DECISION_BLOCKED}
        for user, state in (await subject_states(owner, tenant.tenant_id)).items():
            assert await decision(connector, user) == expected[state], user
    finally:
        for client in (connector, admin, agent, approver):
            await client.close()
