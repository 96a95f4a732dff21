"""Reliability under faults (issue #8), proven against real `authz serve`
processes and the real PostgreSQL:

* the database cut in the middle of a load of mixed calls: no decision without
  the database behind it (fail closed), no acknowledged write lost, and the
  service recovers by itself once the database is back;
* the database unreachable without anything announcing it (a partition): cached
  answers stop within a bound, then every call fails closed;
* the service SIGKILLed in the middle of a load and restarted: every
  acknowledged write is there, pending approvals keep their expiry, and no
  multi-row change is half-applied.

The service reaches PostgreSQL through ``tests/pgproxy.py``, a TCP proxy the
test cuts, stalls and restores. The evidence is read back as the schema owner
with plain SQL, never through the service under test. Every write carries a
W3C ``traceparent`` of our own, so its audit event is found by trace id.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import secrets
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import asyncpg
import grpc
import pytest

from authz_service.client import NO_RETRY, Client, connect
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Dsns, Service, Tenant, eventually
from .pgproxy import PgProxy
from .test_lifecycle import NOT_SERVING, SERVING, health_of
from .test_replicas import AUTHZ, free_port

OWNER = "100"
APPROVER = "telegram:42"
# Outcome unknown to the caller: the change may or may not have committed.
UNKNOWN = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# How long a process may take to notice that its sockets were closed under it.
# Only used to decide which answers must already reflect a cut.
NOTICE = 0.25

Metadata = tuple[tuple[str, str], ...]
NONE, ALLOWED, BLOCKED = "none", "allowed", "blocked"
STATUS = {
    cm.APPROVAL_STATUS_PENDING: "pending",
    cm.APPROVAL_STATUS_APPROVED: "approved",
    cm.APPROVAL_STATUS_DENIED: "denied",
    cm.APPROVAL_STATUS_BLOCKED: "blocked",
    cm.APPROVAL_STATUS_EXPIRED: "expired",
}


# --- `authz serve` processes ------------------------------------------------------


@dataclass
class Serve:
    """`authz serve` in its own process; its output is kept for failure messages."""

    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=400))
    _reader: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return self.env["AUTHZ_LISTEN"]

    def log(self) -> str:
        return "".join(self.output)

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *AUTHZ, "serve", env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        assert self.proc.stdout is not None
        ready = asyncio.Event()
        self._reader = asyncio.create_task(self._read(self.proc.stdout, ready))
        async with asyncio.timeout(60):
            await ready.wait()
        # Ready is also set at EOF, and the reader may not have finished yet: judge by the log.
        if "authz service listening on" not in self.log():
            raise AssertionError("authz serve exited during start-up:\n" + self.log())

    async def _read(self, stream: asyncio.StreamReader, ready: asyncio.Event) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace")
            self.output.append(text)
            if "authz service listening on" in text:
                ready.set()
        ready.set()

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        if self._reader is not None:
            await self._reader
        return code


Spawn = Callable[[str], Awaitable[Serve]]


@pytest.fixture
async def spawn(service: Service) -> AsyncIterator[Spawn]:
    """Start `authz serve` against a DSN. It shares the session service's secret
    key, so either may read the other's button payloads."""
    procs: list[Serve] = []
    with tempfile.TemporaryDirectory(prefix="authz-faults-") as home:
        base = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}

        async def start(dsn: str) -> Serve:
            serve = Serve(
                {
                    **base,
                    "AUTHZ_HOME": home,
                    "AUTHZ_DATABASE_URL": dsn,
                    "AUTHZ_SECRET_KEY": service.settings.secret_key,
                    "AUTHZ_LISTEN": f"127.0.0.1:{free_port()}",
                    "AUTHZ_READINESS_INTERVAL_SECONDS": "1",
                    "AUTHZ_DB_TIMEOUT_SECONDS": "2",
                    "AUTHZ_LOG_FORMAT": "text",
                }
            )
            procs.append(serve)
            await serve.start()
            return serve

        try:
            yield start
        finally:
            for serve in procs:
                if serve.proc is not None and serve.proc.returncode is None:
                    await serve.stop()


@pytest.fixture
async def proxy(dsns: Dsns) -> AsyncIterator[PgProxy]:
    p = PgProxy(dsns.service)
    await p.start()
    yield p
    await p.close()


# --- load: every call recorded ------------------------------------------------------


@dataclass(frozen=True)
class Call:
    kind: str
    user: str
    started: float
    ended: float
    trace: str
    code: grpc.StatusCode | None  # None: OK
    response: Any

    @property
    def ok(self) -> bool:
        return self.code is None


class Load:
    """Tasks calling a service until stopped; every call is recorded with its
    start, end, trace id and outcome."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def call(self, kind: str, user: str, rpc: Callable[[Metadata], Awaitable[Any]]) -> Call:
        trace = secrets.token_hex(16)
        metadata = (("traceparent", f"00-{trace}-{secrets.token_hex(8)}-01"),)
        started = time.monotonic()
        try:
            response, code = await rpc(metadata), None
        except grpc.aio.AioRpcError as exc:
            response, code = None, exc.code()
        call = Call(kind, user, started, time.monotonic(), trace, code, response)
        self.calls.append(call)
        return call

    def run(self, body: Callable[[], Awaitable[None]], tasks: int = 1) -> None:
        async def loop() -> None:
            while not self._stopping.is_set():
                await body()
                await asyncio.sleep(0.005)

        self._tasks += [asyncio.create_task(loop()) for _ in range(tasks)]

    async def stop(self) -> None:
        self._stopping.set()
        tasks, self._tasks = self._tasks, []
        await asyncio.gather(*tasks)

    def of(self, *kinds: str) -> list[Call]:
        return [c for c in self.calls if c.kind in kinds]


def checker(load: Load, client: Client, users: Sequence[str]) -> Callable[[], Awaitable[None]]:
    async def body() -> None:
        user = random.choice(users)
        await load.call(
            "check",
            user,
            lambda md: client.authz.CheckUser(
                az.CheckUserRequest(channel_id="tg", user_id=user, chat_kind=cm.CHAT_KIND_DIRECT), metadata=md
            ),
        )

    return body


def admin_writer(load: Load, admin: Client, users: Sequence[str]) -> Callable[[], Awaitable[None]]:
    """Allow, block and unblock a writer's own users (one writer per user, so
    each user's calls are sequential and their outcome can be modelled)."""

    async def body() -> None:
        user = random.choice(users)
        op = random.choice(("allow", "block", "unblock"))
        if op == "allow":
            await load.call(op, user, lambda md: admin.admin.AllowUser(
                adm.AllowUserRequest(channel_id="tg", user_id=user), metadata=md))  # fmt: skip
        elif op == "block":
            await load.call(op, user, lambda md: admin.admin.BlockUser(
                adm.BlockUserRequest(channel_id="tg", user_id=user), metadata=md))  # fmt: skip
        else:
            await load.call(op, user, lambda md: admin.admin.UnblockUser(
                adm.UserRef(channel_id="tg", user_id=user), metadata=md))  # fmt: skip

    return body


def button(resp: az.RequestPairingResponse, action: int) -> str:
    return next(b.callback_payload for b in resp.notification.buttons if b.action == action)


def pairer(
    load: Load, connector: Client, admin: Client, prefix: str, actions: Sequence[str]
) -> Callable[[], Awaitable[None]]:
    """A fresh user asks to pair; then the owner approves, denies or blocks with
    a button, or an admin blocks the user, or nobody answers (``pending``)."""
    numbers = iter(range(10**6))
    buttons = {"approve": cm.APPROVAL_ACTION_APPROVE, "deny": cm.APPROVAL_ACTION_DENY,
               "block": cm.APPROVAL_ACTION_BLOCK}  # fmt: skip

    async def body() -> None:
        user = f"{prefix}{next(numbers):05d}"
        request = await load.call("request", user, lambda md: connector.authz.RequestPairing(
            az.RequestPairingRequest(channel_id="tg", user_id=user, display_name="Load", first_message="hi"),
            metadata=md))  # fmt: skip
        if not request.ok:
            return
        assert request.response.created, request.response
        action = random.choice(actions)
        if action in buttons:
            payload = button(request.response, buttons[action])
            await load.call("resolve", user, lambda md: connector.authz.ResolveApproval(
                az.ResolveApprovalRequest(callback_payload=payload, actor_id=OWNER), metadata=md))  # fmt: skip
        elif action == "block_user":
            await load.call("block", user, lambda md: admin.admin.BlockUser(
                adm.BlockUserRequest(channel_id="tg", user_id=user), metadata=md))  # fmt: skip

    return body


def tool_asker(load: Load, agent: Client, approver: Client) -> Callable[[], Awaitable[None]]:
    async def body() -> None:
        request = await load.call("tool_request", "", lambda md: agent.authz.RequestApproval(
            az.RequestApprovalRequest(tool_name="shell", arguments_json=json.dumps({"n": secrets.token_hex(4)}),
                                      agent_id="ops", timeout_seconds=600), metadata=md))  # fmt: skip
        if not request.ok:
            return
        action = random.choice(
            (cm.APPROVAL_ACTION_APPROVE, cm.APPROVAL_ACTION_DENY, cm.APPROVAL_ACTION_UNSPECIFIED)
        )
        if action != cm.APPROVAL_ACTION_UNSPECIFIED:
            aid = request.response.approval.approval_id
            await load.call("tool_resolve", "", lambda md: approver.authz.ResolveApproval(
                az.ResolveApprovalRequest(approval_id=aid, action=action), metadata=md))  # fmt: skip

    return body


# --- evidence, read as the schema owner ------------------------------------------------


def apply(op: str, state: str) -> str:
    if op == "allow":
        return state if state == BLOCKED else ALLOWED  # AllowUser refuses a blocked user
    if op == "block":
        return BLOCKED
    assert op == "unblock"
    return NONE if state == BLOCKED else state


def possible_states(calls: Iterable[Call], initial: str = NONE) -> set[str]:
    """What one user's row may be after their calls, in order: an acknowledged
    call fixes the state; one whose outcome is unknown may or may not have
    committed; a refusal changed nothing."""
    states = {initial}
    for c in calls:
        if c.ok:
            if c.kind == "unblock" and not c.response.removed:
                states -= {BLOCKED}  # nothing to unblock: the database says not blocked
            else:
                states = {{"allow": ALLOWED, "block": BLOCKED, "unblock": NONE}[c.kind]}
        elif c.kind == "allow" and c.code == grpc.StatusCode.INVALID_ARGUMENT:
            states &= {BLOCKED}  # refused because the user is blocked
        else:
            assert c.code in UNKNOWN, c
            states |= {apply(c.kind, s) for s in states}
        assert states, f"the database contradicts acknowledged writes at {c}"
    return states


async def subject_states(owner: asyncpg.Connection, tenant_id: str) -> dict[str, str]:
    rows = await owner.fetch("SELECT user_id, status FROM subjects WHERE tenant_id = $1", tenant_id)
    return {r["user_id"]: r["status"] for r in rows}


async def assert_acknowledged_writes_present(
    owner: asyncpg.Connection, tenant_id: str, calls: list[Call]
) -> int:
    """Every write acknowledged with OK is in the database: its audit event
    (found by our trace id) and the row it changed. Returns how many were checked."""
    events: dict[str, list[tuple[str, str, str]]] = collections.defaultdict(list)
    for r in await owner.fetch(
        "SELECT event, subject, approval_id, trace_id FROM audit_events WHERE tenant_id = $1", tenant_id
    ):
        events[r["trace_id"]].append((r["event"], r["subject"], r["approval_id"]))
    approvals = {
        r["approval_id"]: r
        for r in await owner.fetch("SELECT * FROM approvals WHERE tenant_id = $1", tenant_id)
    }
    checked = 0
    for c in calls:
        if c.kind == "check":
            continue
        if not c.ok:
            if c.code not in UNKNOWN:  # refused: nothing may have been written
                assert not events.get(c.trace), (c, events[c.trace])
            continue
        checked += 1
        got = events.get(c.trace, [])
        if c.kind == "allow":
            assert ("user.allowed", c.user, "") in got, c
        elif c.kind == "block":
            assert ("user.blocked", c.user, "") in got, c
        elif c.kind == "unblock":
            assert (("user.unblocked", c.user, "") in got) == c.response.removed, c
        elif c.kind == "request":
            aid = c.response.approval_id
            assert ("pairing.requested", c.user, aid) in got, c
            row = approvals[aid]
            assert (row["user_id"], row["kind"]) == (c.user, "pairing")
            assert row["expires_at"] == c.response.expires_at.ToDatetime(tzinfo=UTC), c
        elif c.kind == "resolve":
            approval = c.response.approval
            status = STATUS[approval.status]
            assert (f"pairing.{status}", c.user, approval.approval_id) in got, c
            assert approvals[approval.approval_id]["status"] == status, c
        elif c.kind == "tool_request":
            aid = c.response.approval.approval_id
            assert ("tool.requested", "shell", aid) in got, c
            assert approvals[aid]["expires_at"] == c.response.approval.expires_at.ToDatetime(tzinfo=UTC), c
        elif c.kind == "tool_resolve":
            approval = c.response.approval
            status = STATUS[approval.status]
            assert (f"tool.{status}", "shell", approval.approval_id) in got, c
            assert approvals[approval.approval_id]["status"] == status, c
        else:
            raise AssertionError(f"unknown call kind {c.kind}")
    return checked


# The subject row each audited change leaves behind (None: no row).
STATE_EVENTS: dict[str, tuple[str, str] | None] = {
    "user.allowed": ("allowed", "admin"),
    "user.blocked": ("blocked", "admin"),
    "pairing.approved": ("allowed", "pairing"),
    "pairing.blocked": ("blocked", "admin"),
    "user.unblocked": None,
    "user.removed": None,
    "user.unpaired": None,
}
NOT_DECISIONS = {"pairing.requested", "tool.requested", "tool.redeemed", "tool.redeem_refused"}


async def assert_nothing_half_applied(owner: asyncpg.Connection, tenant_id: str) -> None:
    """Every multi-row change is one transaction, so the rows and the audit
    trail agree everywhere, whatever was cut off or killed:

    * each user's subject row is exactly what their last audited change left;
    * each approval was requested once (audited), and its status matches its
      one audited decision (or a block's cancellation), never one without the other;
    * a pending pairing request never belongs to a blocked user.
    """
    events = await owner.fetch(
        "SELECT event, subject, approval_id, details FROM audit_events WHERE tenant_id = $1 ORDER BY event_id",
        tenant_id,
    )
    subjects = {
        r["user_id"]: (r["status"], r["source"])
        for r in await owner.fetch(
            "SELECT user_id, status, source FROM subjects WHERE tenant_id = $1", tenant_id
        )
    }
    implied: dict[str, tuple[str, str] | None] = {}
    cancelled: set[str] = set()
    per_approval: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for e in events:
        if e["event"] in STATE_EVENTS:
            implied[e["subject"]] = STATE_EVENTS[e["event"]]
        if e["event"] == "user.blocked":
            cancelled.update(json.loads(e["details"])["cancelled_approvals"])
        if e["approval_id"]:
            per_approval[e["approval_id"]][e["event"]] += 1
    for user in set(implied) | set(subjects):
        assert subjects.get(user) == implied.get(user), (user, subjects.get(user), implied.get(user))

    approvals = await owner.fetch(
        "SELECT approval_id, kind, user_id, status FROM approvals WHERE tenant_id = $1", tenant_id
    )
    assert {a["approval_id"] for a in approvals} >= set(per_approval)  # no event about a missing row
    for a in approvals:
        kind, status, seen = a["kind"], a["status"], per_approval[a["approval_id"]]
        assert seen[f"{kind}.requested"] == 1, (a, seen)
        decisions = {e: n for e, n in seen.items() if e.startswith(f"{kind}.") and e not in NOT_DECISIONS}
        if status == "pending" or (
            kind == "pairing" and status == "blocked" and a["approval_id"] in cancelled
        ):
            expected = {}
        else:
            expected = {f"{kind}.{status}": 1}
        assert decisions == expected, (dict(a), dict(seen))
        if kind == "pairing" and status == "pending":
            assert subjects.get(a["user_id"], ("",))[0] != "blocked", dict(a)


async def decision(client: Client, user: str, consistent: bool = False) -> int:
    resp = await client.authz.CheckUser(
        az.CheckUserRequest(
            channel_id="tg", user_id=user, chat_kind=cm.CHAT_KIND_DIRECT, consistent=consistent
        )
    )
    return int(resp.decision)


# --- the database cut -------------------------------------------------------------


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


# --- an unannounced partition ---------------------------------------------------------


async def test_a_silent_partition_stops_cached_answers_within_a_bound(
    tenant: Tenant, spawn: Spawn, proxy: PgProxy
) -> None:
    """The network between a replica and PostgreSQL goes silent: connections
    stay open, no byte flows, nothing is closed. Another replica blocks a user
    the stalled one has cached as allowed. The stalled replica must stop
    answering from its cache within a bound (its listener's heartbeat times out
    within 3 s, whatever AUTHZ_DB_TIMEOUT_SECONDS), then fail closed until the network heals,
    then answer BLOCKED."""
    await tenant.channel("tg")
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="42"))
    serve = await spawn(proxy.dsn)
    connector = connect(serve.address, tenant.keys["connector"], retry=NO_RETRY, timeout=10)
    try:
        for _ in range(2):
            assert await decision(connector, "42") == az.DECISION_ALLOW
        proxy.stall()
        await tenant.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id="42"))
        answers: list[int | grpc.StatusCode] = []

        async def refused() -> bool:
            try:
                answers.append(await decision(connector, "42"))
            except grpc.aio.AioRpcError as exc:
                answers.append(exc.code())
                return True
            return False

        try:
            await eventually(refused, timeout=30)
        except TimeoutError:
            raise AssertionError(
                f"still answering ALLOW from memory after 30 s ({len(answers)} answers)"
            ) from None
        stale = len(answers) - 1  # stale ALLOWs before the replica noticed
        assert set(answers[:stale]) <= {az.DECISION_ALLOW} and answers[stale] in UNKNOWN, answers
        # From then on, nothing but errors while the partition lasts.
        again = await asyncio.gather(*(decision(connector, "42") for _ in range(4)), return_exceptions=True)
        assert all(isinstance(a, grpc.aio.AioRpcError) and a.code() in UNKNOWN for a in again), again

        async def not_serving() -> bool:
            return bool(await health_of(serve.address) == NOT_SERVING)

        await eventually(not_serving, timeout=10)
        proxy.restore()

        async def blocked() -> bool:
            try:
                return await decision(connector, "42") == az.DECISION_BLOCKED
            except grpc.aio.AioRpcError:
                return False

        await eventually(blocked, timeout=30)

        async def serving() -> bool:
            return bool(await health_of(serve.address) == SERVING)

        await eventually(serving, timeout=10)
    finally:
        await connector.close()


# --- the service killed ----------------------------------------------------------------


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
