"""Shared harness of the fault tests (issue #8), proven against real `authz serve`
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

from authz_service.client import Client
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from tests.conftest import Dsns, Service
from tests.pgproxy import PgProxy
from tests.replicas import AUTHZ, free_port

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
