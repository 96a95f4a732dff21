"""Races (issue #8) over real gRPC on real PostgreSQL, beyond the ones in
test_pairing.py and test_tools.py (concurrent RequestPairing, racing resolves,
block during pairing):

* a decision racing the expiry: many callers around the instant a request
  expires get exactly one outcome, audited once: approved (or denied) before
  the expiry, or expired; never both;
* allowlist edits during a CheckUser load served from the cache: no answer
  shows a state that was not (yet) written, a consistent read is linearizable,
  and once the change notification reached the process no answer is stale.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from asyncpg.pool import PoolConnectionProxy

from authz_service.client import connect
from authz_service.config import Settings
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.server import RunningServer, start_server
from authz_service.store.db import Database

from .conftest import SECRET_KEY, Dsns, Service, Tenant, eventually
from .pgproxy import PgProxy

OWNER = "100"
APPROVER = "telegram:42"
STATUS = {
    cm.APPROVAL_STATUS_APPROVED: "approved",
    cm.APPROVAL_STATUS_DENIED: "denied",
}
# Where the callers aim, relative to the expiry: well before (0.6 s: room for a
# loaded host), at it, well after.
AIMS = (-0.6, -0.02, -0.005, 0.0, 0.005, 0.02, 0.3)
T = TypeVar("T")


@pytest.fixture
async def owner(dsns: Dsns, tenant: Tenant) -> AsyncIterator[asyncpg.Pool]:
    """The schema owner, to set expiries and read the evidence (several races at once),
    scoped to the tenant on every acquire (row-level security binds a non-superuser owner)."""

    async def scoped(conn: PoolConnectionProxy[asyncpg.Record]) -> None:
        await conn.execute("SELECT set_config('authz.tenant', $1, false)", tenant.tenant_id)

    pool = await asyncpg.create_pool(dsns.owner, min_size=1, max_size=4, setup=scoped)
    yield pool
    await pool.close()


async def expire_in_one_second(owner: asyncpg.Pool, tenant_id: str, approval_id: str) -> float:
    """Give a pending approval 1 s to live (by the database clock); return
    that instant on the local monotonic clock."""
    before = time.monotonic()
    await owner.execute(
        "UPDATE approvals SET expires_at = now() + interval '1 second' WHERE tenant_id = $1 AND approval_id = $2",
        tenant_id, approval_id,
    )  # fmt: skip
    return (before + time.monotonic()) / 2 + 1.0


async def at(instant: float, call: Callable[[], Awaitable[T]]) -> T | grpc.aio.AioRpcError:
    await asyncio.sleep(max(0.0, instant - time.monotonic()))
    try:
        return await call()
    except grpc.aio.AioRpcError as exc:
        return exc


async def decisions_of(owner: asyncpg.Pool, tenant_id: str, approval_id: str) -> dict[str, int]:
    rows = await owner.fetch(
        "SELECT event FROM audit_events WHERE tenant_id = $1 AND approval_id = $2", tenant_id, approval_id
    )
    seen = collections.Counter(r["event"] for r in rows)
    return {e: n for e, n in seen.items() if e not in ("pairing.requested", "tool.requested")}


def button(resp: Any, action: int) -> str:
    payload: str = next(b.callback_payload for b in resp.notification.buttons if b.action == action)
    return payload


async def test_pairing_resolves_racing_the_expiry_have_one_outcome_audited_once(
    tenant: Tenant, service: Service, owner: asyncpg.Pool
) -> None:
    """Pairing requests get 1 s to live; then, per request, 24 button presses
    (approve and deny), 4 repeated RequestPairing calls of the same user and 4
    CheckUser calls all land within a few milliseconds of one aim around its
    expiry (one request per aim, all at once). Exactly one thing happens to
    each request: one decision strictly before the expiry (by the database
    clock), or the expiry; and exactly one audit event says which. The user is
    allowed only if it was approved, and a repeat creates at most one new
    request, only once the old one is over. No call deadlocks (ABORTED): the
    channel lock is FOR NO KEY UPDATE, and RequestPairing locks the live request
    before reading the subject, so it never re-requests a user just approved."""
    await tenant.channel("tg", owner_id=OWNER, max_pending=100)
    # A generous deadline: a call stuck behind a lock (or a deadlock's 1 s
    # detection) must end with the service's answer, not ours.
    connector = connect(service.address, tenant.keys["connector"], timeout=60)

    async def race(n: int, aim: float) -> str:
        user = f"7{n}"
        resp = await connector.authz.RequestPairing(
            az.RequestPairingRequest(channel_id="tg", user_id=user, display_name="Racer")
        )
        aid = resp.approval_id
        expiry = await expire_in_one_second(owner, tenant.tenant_id, aid)
        approve, deny = button(resp, cm.APPROVAL_ACTION_APPROVE), button(resp, cm.APPROVAL_ACTION_DENY)

        def jitter() -> float:
            return expiry + aim + random.uniform(-0.005, 0.005)

        def press(payload: str) -> Callable[[], Awaitable[az.ResolveApprovalResponse]]:
            return lambda: connector.authz.ResolveApproval(
                az.ResolveApprovalRequest(callback_payload=payload, actor_id=OWNER)
            )

        def repeat() -> Awaitable[az.RequestPairingResponse]:
            return connector.authz.RequestPairing(az.RequestPairingRequest(channel_id="tg", user_id=user))

        def check() -> Awaitable[az.CheckUserResponse]:
            return connector.authz.CheckUser(
                az.CheckUserRequest(channel_id="tg", user_id=user, chat_kind=cm.CHAT_KIND_DIRECT)
            )

        resolved, repeated, checked = await asyncio.gather(
            asyncio.gather(*(at(jitter(), press(approve if i % 3 else deny)) for i in range(24))),
            asyncio.gather(*(at(jitter(), repeat) for _ in range(4))),
            asyncio.gather(*(at(jitter(), check) for _ in range(4))),
        )
        winners = [r for r in resolved if isinstance(r, az.ResolveApprovalResponse)]
        losers = [r for r in resolved if isinstance(r, grpc.aio.AioRpcError)]
        assert len(winners) <= 1 and len(winners) + len(losers) == 24
        assert {e.code() for e in losers} <= {grpc.StatusCode.FAILED_PRECONDITION}

        row = await owner.fetchrow(
            "SELECT status, resolved_at, expires_at FROM approvals WHERE tenant_id = $1 AND approval_id = $2",
            tenant.tenant_id, aid,
        )  # fmt: skip
        assert row is not None
        decided = await decisions_of(owner, tenant.tenant_id, aid)
        if winners:
            status = STATUS[winners[0].approval.status]
            assert row["status"] == status and row["resolved_at"] < row["expires_at"]
            assert decided == {f"pairing.{status}": 1}, decided
        else:
            assert row["status"] == "expired" and row["resolved_at"] >= row["expires_at"]
            assert decided == {"pairing.expired": 1}, decided
        outcome: str = row["status"]

        subject = await owner.fetchrow(
            "SELECT status, source FROM subjects WHERE tenant_id = $1 AND user_id = $2",
            tenant.tenant_id,
            user,
        )
        assert (subject is not None) == (outcome == "approved")
        assert subject is None or (subject["status"], subject["source"]) == ("allowed", "pairing")
        answered = [r for r in repeated if isinstance(r, az.RequestPairingResponse)]
        assert len(answered) == len(repeated), repeated
        created = {r.approval_id for r in answered if r.created}
        existing = {r.approval_id for r in answered if r.outcome == az.PAIRING_OUTCOME_EXISTING}
        assert len(created) <= 1 and aid not in created and existing <= {aid} | created
        assert not (outcome == "approved" and created), "a request was created for a user just approved"
        for c in checked:
            assert isinstance(c, az.CheckUserResponse), c
            allowed = {az.DECISION_PAIRING_REQUIRED} | (
                {az.DECISION_ALLOW} if outcome == "approved" else set()
            )
            assert c.decision in allowed, c
        return outcome

    try:
        outcomes = await asyncio.gather(*(race(n, aim) for n, aim in enumerate(AIMS)))
    finally:
        await connector.close()
    # The aims well before and well after the expiry make sure both sides were exercised.
    assert outcomes[0] in ("approved", "denied") and outcomes[-1] == "expired", outcomes


async def test_tool_resolves_and_redeems_racing_the_expiry_have_one_outcome(
    tenant: Tenant, service: Service, owner: asyncpg.Pool
) -> None:
    """The same race for tool-call approvals: per approval, 16 approver
    decisions and 8 redeems of the approved call around its expiry. One
    outcome, audited once; at most one redeem is allowed, and only of a call
    approved before the expiry."""
    await tenant.channel("tg", owner_id=OWNER)
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[APPROVER]))
    key = await tenant.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="racer"))
    agent = connect(service.address, key.secret)

    async def race(n: int, aim: float) -> str:
        args = json.dumps({"cmd": "ls", "round": n})
        resp = await agent.authz.RequestApproval(
            az.RequestApprovalRequest(
                tool_name="shell", arguments_json=args, agent_id="ops", timeout_seconds=60
            )
        )
        aid = resp.approval.approval_id
        expiry = await expire_in_one_second(owner, tenant.tenant_id, aid)

        def jitter() -> float:
            return expiry + aim + random.uniform(-0.005, 0.005)

        def resolve(
            action: cm.ApprovalAction.ValueType,
        ) -> Callable[[], Awaitable[az.ResolveApprovalResponse]]:
            return lambda: tenant.approver.authz.ResolveApproval(
                az.ResolveApprovalRequest(approval_id=aid, action=action)
            )

        def redeem() -> Awaitable[az.RedeemApprovalResponse]:
            return agent.authz.RedeemApproval(
                az.RedeemApprovalRequest(approval_id=aid, tool_name="shell", arguments_json=args)
            )

        actions = [cm.APPROVAL_ACTION_APPROVE] * 12 + [cm.APPROVAL_ACTION_DENY] * 4
        resolved, redeemed = await asyncio.gather(
            asyncio.gather(*(at(jitter(), resolve(a)) for a in actions)),
            asyncio.gather(*(at(jitter(), redeem) for _ in range(8))),
        )
        winners = [r for r in resolved if isinstance(r, az.ResolveApprovalResponse)]
        losers = [r for r in resolved if isinstance(r, grpc.aio.AioRpcError)]
        assert len(winners) <= 1 and len(winners) + len(losers) == len(actions)
        assert {e.code() for e in losers} == {grpc.StatusCode.FAILED_PRECONDITION}, losers
        row = await owner.fetchrow(
            "SELECT status, resolved_at, expires_at, redeemed_at FROM approvals"
            " WHERE tenant_id = $1 AND approval_id = $2",
            tenant.tenant_id, aid,
        )  # fmt: skip
        assert row is not None
        decided = await decisions_of(owner, tenant.tenant_id, aid)
        assert all(isinstance(r, az.RedeemApprovalResponse) for r in redeemed), redeemed
        allowed = [r for r in redeemed if isinstance(r, az.RedeemApprovalResponse) and r.allow]
        if winners:
            status = STATUS[winners[0].approval.status]
            assert row["status"] == status and row["resolved_at"] < row["expires_at"]
            expected = {f"tool.{status}": 1}
        else:
            assert row["status"] == "expired" and row["resolved_at"] >= row["expires_at"]
            expected = {"tool.expired": 1}
        assert len(allowed) <= 1 and (not allowed or row["status"] == "approved")
        assert (row["redeemed_at"] is not None) == bool(allowed)
        expected |= {"tool.redeemed": len(allowed), "tool.redeem_refused": len(redeemed) - len(allowed)}
        assert decided == {e: n for e, n in expected.items() if n}, decided
        outcome: str = row["status"]
        return outcome

    try:
        outcomes = await asyncio.gather(*(race(n, aim) for n, aim in enumerate(AIMS)))
    finally:
        await agent.close()
    assert outcomes[0] in ("approved", "denied") and outcomes[-1] == "expired", outcomes


# --- allowlist edits during a CheckUser load ---------------------------------------------


@dataclass
class Write:
    state: str
    started: float
    acked: float = math.inf
    settled: float = math.inf  # the change notification had reached the checking process


@dataclass(frozen=True)
class Seen:
    state: str
    started: float
    ended: float
    consistent: bool


STATE_OF = {
    az.DECISION_ALLOW: "allowed",
    az.DECISION_BLOCKED: "blocked",
    az.DECISION_PAIRING_REQUIRED: "none",
}


@pytest.fixture
async def own_cache(dsns: Dsns) -> AsyncIterator[RunningServer]:
    """A second server with a cache of its own: it learns every change the
    session service makes only through NOTIFY, like another replica. Its
    queries travel a slow path (every answer held 5 ms by a proxy) while its
    notifications come directly, so a read that began before a change often
    returns after the change was announced: the fill it would make is stale."""
    slow = PgProxy(dsns.service)
    await slow.start()
    slow.delay = 0.005
    settings = Settings.from_env(
        {"AUTHZ_DATABASE_URL": dsns.service, "AUTHZ_SECRET_KEY": SECRET_KEY, "AUTHZ_HOME": "/nonexistent"}
    )
    db = await Database.connect(slow.dsn)
    db.dsn = dsns.service  # the listener's own connection, outside the pool: the fast path
    running = await start_server(db, settings, listen="127.0.0.1:0")
    yield running
    await running.stop(grace=0)
    await slow.close()


async def test_allowlist_edits_during_a_cached_check_load(tenant: Tenant, own_cache: RunningServer) -> None:
    """One user's state is flipped over and over on the session service (allow,
    remove, block, unblock, pair and approve, unpair) while 8 tasks ask a second
    server about that user: 6 through its cache, 2 with ``consistent``. Each
    write waits until its change notification reached the second server.

    * No answer shows a state that was never written, nor one before its write began.
    * A cached answer that began after a change's notification arrived is never older than that change.
    * A consistent answer that began after a change was acknowledged is never older than it.
    """
    await tenant.channel("tg", owner_id=OWNER)
    user = "42"
    cache = own_cache.cache
    client = connect(f"127.0.0.1:{own_cache.port}", tenant.keys["connector"])
    writes = [Write("none", -math.inf, -math.inf, -math.inf)]
    seen: list[Seen] = []
    done = asyncio.Event()

    async def ask(consistent: bool) -> None:
        while not done.is_set():
            started = time.monotonic()
            resp = await client.authz.CheckUser(
                az.CheckUserRequest(
                    channel_id="tg", user_id=user, chat_kind=cm.CHAT_KIND_DIRECT, consistent=consistent
                )
            )
            seen.append(Seen(STATE_OF[resp.decision], started, time.monotonic(), consistent))
            await asyncio.sleep(0)

    async def write(state: str, rpc: Callable[[], Awaitable[Any]]) -> Any:
        generation = cache.generation
        w = Write(state, time.monotonic())
        writes.append(w)
        result = await rpc()
        w.acked = time.monotonic()

        async def notified() -> bool:
            return cache.generation > generation

        await eventually(notified)
        w.settled = time.monotonic()
        await asyncio.sleep(0.1)  # a quiet moment: the askers fill the cache and hit it
        return result

    admin, connector = tenant.admin.admin, tenant.connector.authz
    ref = adm.UserRef(channel_id="tg", user_id=user)
    askers = [asyncio.create_task(ask(consistent=i >= 6)) for i in range(8)]
    hits = cache.hits
    try:
        await asyncio.sleep(0.1)
        for _ in range(5):
            await write(
                "allowed", lambda: admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id=user))
            )
            assert (await write("none", lambda: admin.RemoveUser(ref))).removed
            await write(
                "blocked", lambda: admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id=user))
            )
            assert (await write("none", lambda: admin.UnblockUser(ref))).removed
            pairing = await connector.RequestPairing(az.RequestPairingRequest(channel_id="tg", user_id=user))
            assert pairing.created
            payload = button(pairing, cm.APPROVAL_ACTION_APPROVE)
            approve = az.ResolveApprovalRequest(callback_payload=payload, actor_id=OWNER)
            await write("allowed", functools.partial(connector.ResolveApproval, approve))
            assert (await write("none", lambda: admin.UnpairUser(ref))).removed
    finally:
        done.set()
        await asyncio.gather(*askers)
        await client.close()

    assert cache.hits - hits >= 100, "the load was not served from the cache"
    assert len([s for s in seen if s.consistent]) >= 30
    for s in seen:
        # The writes this answer may show: begun before it ended, and not yet
        # superseded when it began (notified here for the cache, acknowledged
        # for a consistent read).
        possible = {
            w.state
            for w, after in zip(writes, [*writes[1:], None], strict=True)
            if w.started <= s.ended
            and (after is None or (after.acked if s.consistent else after.settled) > s.started)
        }
        assert s.state in possible, (s, possible)
