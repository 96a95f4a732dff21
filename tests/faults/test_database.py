"""Reliability under faults (issue #8): the database cut in the middle of a
load of mixed calls: no decision without the database behind it (fail closed),
no acknowledged write lost, and the service recovers by itself once the
database is back.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import grpc

from authz_service.client import NO_RETRY, connect
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from tests.conftest import Tenant, eventually
from tests.health import NOT_SERVING, SERVING, health_of
from tests.pgproxy import PgProxy

from .load import (
    NONE,
    NOTICE,
    OWNER,
    UNKNOWN,
    Load,
    Spawn,
    admin_writer,
    assert_acknowledged_writes_present,
    assert_nothing_half_applied,
    checker,
    decision,
    pairer,
    possible_states,
    subject_states,
)


async def test_database_cut_mid_load_fails_closed_keeps_acknowledged_writes_and_recovers(
    tenant: Tenant, spawn: Spawn, proxy: PgProxy, owner: asyncpg.Connection
) -> None:
    """A replica behind a proxy runs a mixed load (CheckUser for allowed and
    blocked users, AllowUser/BlockUser/UnblockUser, RequestPairing and
    ResolveApproval); the proxy is cut (PostgreSQL gone: every connection
    closed, new ones refused) right after a block, held, and restored.

    * No answer contradicts the database: an allowed user is never BLOCKED, a
      blocked one never ALLOW, including a user blocked just before the cut
      and one blocked by another replica during it (that notification is lost).
    * While the database is gone nothing is answered from memory: every call
      fails (UNAVAILABLE), and readiness reports NOT_SERVING.
    * Every OK-acknowledged write is in the database, and nothing is half-applied.
    * After the database returns, the replica answers correctly again by itself.
    """
    await tenant.channel("tg", owner_id=OWNER, max_pending=1000)
    allowed = [f"10{i}" for i in range(4)]
    blocked = [f"20{i}" for i in range(4)]
    x, y = "301", "302"  # x: blocked just before the cut; y: blocked by another replica during it
    for user in (*allowed, *blocked, x, y):
        await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id=user))

    serve = await spawn(proxy.dsn)
    connector = connect(serve.address, tenant.keys["connector"], retry=NO_RETRY, timeout=5)
    admin = connect(serve.address, tenant.keys["admin"], retry=NO_RETRY, timeout=5)
    load = Load()
    try:
        # The replica caches everyone as allowed; then the other service (no
        # proxy) blocks some: the replica can only learn it through NOTIFY.
        for user in (*allowed, *blocked, x, y):
            for _ in range(2):
                assert await decision(connector, user) == az.DECISION_ALLOW
        for user in blocked:
            await tenant.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id=user))

        async def blocks_seen() -> bool:
            return all([await decision(connector, u) == az.DECISION_BLOCKED for u in blocked])

        await eventually(blocks_seen)

        load.run(checker(load, connector, [*allowed, *blocked, x, y]), tasks=4)
        for k in range(2):
            load.run(admin_writer(load, admin, [f"4{k}{i}" for i in range(3)]))
            load.run(pairer(load, connector, admin, f"5{k}", ("approve", "deny", "block")))
        await asyncio.sleep(0.7)

        block_x = await load.call("block", x, lambda md: admin.admin.BlockUser(
            adm.BlockUserRequest(channel_id="tg", user_id=x), metadata=md))  # fmt: skip
        assert block_x.ok
        await proxy.cut()
        cut_at = time.monotonic()

        async def not_serving() -> bool:
            return bool(await health_of(serve.address) == NOT_SERVING)

        await eventually(not_serving, timeout=10)
        # Now the replica has surely noticed. Another replica blocks y; this one misses the NOTIFY.
        await tenant.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id=y))
        y_blocked_at = time.monotonic()
        await asyncio.sleep(1.0)  # the load keeps calling into the outage
        restored_at = time.monotonic()
        proxy.restore()

        async def back() -> bool:
            if await health_of(serve.address) != SERVING:
                return False
            try:
                return await decision(connector, allowed[0]) == az.DECISION_ALLOW
            except grpc.aio.AioRpcError:
                return False

        await eventually(back, timeout=30)
        # Answering again means answering right: the NOTIFY about y was lost,
        # so only starting the cache from empty on reconnection can explain BLOCKED.
        for user in allowed:
            assert await decision(connector, user) == az.DECISION_ALLOW, user
        for user in (*blocked, x, y):
            assert await decision(connector, user) == az.DECISION_BLOCKED, user
        await asyncio.sleep(0.5)  # the load runs on against the recovered replica
    finally:
        await load.stop()
        await connector.close()
        await admin.close()

    # 1. No answer without the database's truth behind it.
    checks = load.of("check")
    for c in checks:
        if not c.ok:
            assert c.code in UNKNOWN, c  # an outage is UNAVAILABLE, never INTERNAL
            continue
        got = c.response.decision
        blocked_in_db = (
            c.user in blocked
            or (c.user == x and c.started >= cut_at + NOTICE)  # the cut had been noticed
            or (c.user == y and c.started >= y_blocked_at)
        )
        if c.user in allowed:
            assert got == az.DECISION_ALLOW, c
        elif blocked_in_db:
            assert got == az.DECISION_BLOCKED, c
    # 2. During the outage nothing was answered from memory, and nothing acknowledged.
    outage = [c for c in load.calls if c.started >= cut_at + NOTICE and c.ended <= restored_at]
    assert len([c for c in outage if c.kind == "check"]) >= 10, "the load did not run into the outage"
    assert [c for c in outage if c.ok] == []
    assert {c.code for c in outage} <= UNKNOWN
    # 3. Writes were acknowledged before and after the outage, and every one of them is there.
    writes = [c for c in load.calls if c.kind != "check" and c.ok]
    assert any(c.ended < cut_at for c in writes) and any(c.started > restored_at for c in writes)
    assert await assert_acknowledged_writes_present(owner, tenant.tenant_id, load.calls) == len(writes)
    states = await subject_states(owner, tenant.tenant_id)
    for user in {c.user for c in load.of("allow", "block", "unblock") if c.user.startswith("4")}:
        calls = [c for c in load.calls if c.user == user and c.kind != "check"]
        assert states.get(user, NONE) in possible_states(calls), (user, states.get(user), calls)
    await assert_nothing_half_applied(owner, tenant.tenant_id)
