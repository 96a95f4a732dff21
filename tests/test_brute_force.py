"""Brute force and flooding (issue #8).

* Guessing pairing codes (``ResolveApproval`` by channel and code, the CLI's
  ``authz pairing approve CHANNEL CODE``) is limited per channel, per API key
  and per tenant. The counters are rows in PostgreSQL, so the limits hold
  across service processes and restarts; over a limit even the right code is
  refused (fail closed) until the window has passed.
* An unknown user spamming messages creates one pairing request and one owner
  notification; a flood of unknown users fills one channel's cap and nothing
  else.

Invite codes have their own limits per channel and per user, tested with the
invites in tests/test_invites.py.

Most tests run their own in-process server with small limits (same database,
same server key as the session's service, so codes issued there resolve here).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable

import asyncpg
import grpc
import pytest

from authz_service.client import Client, connect
from authz_service.config import ConfigError, Settings
from authz_service.domain.pairing import CODE_ALPHABET
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Dsns, Service, Tenant, rpc_error
from .limits import Limited, start_limited
from .replicas import AUTHZ, new_tenant, two_replicas

OWNER = "100"
EXHAUSTED = re.compile(r"too many failed pairing code attempts; try again in (\d+) s")
APPROVE = cm.APPROVAL_ACTION_APPROVE


@pytest.fixture(scope="module")
async def limited(dsns: Dsns, service: Service) -> AsyncIterator[Limited]:
    """3 failures per channel, 5 per key, 8 per tenant, in 10 minutes."""
    server = await start_limited(
        dsns,
        service,
        code_attempts_per_channel=3,
        code_attempts_per_key=5,
        code_attempts_per_tenant=8,
        code_attempt_window_seconds=600,
    )
    yield server
    await server.running.stop(grace=0)


@pytest.fixture
async def short_window(dsns: Dsns, service: Service) -> AsyncIterator[Limited]:
    """2 failures per channel in a 2-second window; key and tenant limits out of the way."""
    server = await start_limited(
        dsns,
        service,
        code_attempts_per_channel=2,
        code_attempts_per_key=1000,
        code_attempts_per_tenant=1000,
        code_attempt_window_seconds=2,
    )
    yield server
    await server.running.stop(grace=0)


class Keys:
    """Approver keys of one tenant, connected to one server; closed at the end."""

    def __init__(self) -> None:
        self.clients: list[Client] = []

    async def approvers(self, t: Tenant, address: str, n: int) -> list[Client]:
        out = []
        for i in range(n):
            key = await t.admin.admin.CreateApiKey(
                adm.CreateApiKeyRequest(role=adm.ROLE_APPROVER, name=f"k{i}")
            )
            out.append(connect(address, key.secret))
        self.clients += out
        return out

    def on(self, address: str, secret: str) -> Client:
        client = connect(address, secret)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for c in self.clients:
            await c.close()


@pytest.fixture
async def keys() -> AsyncIterator[Keys]:
    k = Keys()
    yield k
    await k.close()


def wrong_code(*not_these: str) -> str:
    while True:
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(8))
        if code not in not_these:
            return code


async def pair(t: Tenant, channel: str, user: str = "42") -> az.RequestPairingResponse:
    resp = await t.connector.authz.RequestPairing(az.RequestPairingRequest(channel_id=channel, user_id=user))
    assert resp.outcome == az.PAIRING_OUTCOME_CREATED
    return resp


def by_code(client: Client, channel: str, code: str) -> Awaitable[az.ResolveApprovalResponse]:
    return client.authz.ResolveApproval(
        az.ResolveApprovalRequest(code=az.CodeRef(channel_id=channel, code=code), action=APPROVE)
    )


async def miss(client: Client, channel: str, *codes: str) -> None:
    """A wrong guess: NOT_FOUND, exactly as for any unknown code."""
    err = await rpc_error(by_code(client, channel, wrong_code(*codes)))
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "no such approval")


async def refused(client: Client, channel: str, code: str) -> int:
    """Over a limit: RESOURCE_EXHAUSTED, whatever the code. Returns the advised wait in seconds."""
    err = await rpc_error(by_code(client, channel, code))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
    m = EXHAUSTED.fullmatch(err.details() or "")
    assert m is not None, err.details()
    return int(m.group(1))


async def approved(client: Client, channel: str, code: str) -> None:
    resp = await by_code(client, channel, code)
    assert resp.approval.status == cm.APPROVAL_STATUS_APPROVED


async def status_of(t: Tenant, approval_id: str) -> int:
    return (await t.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=approval_id))).status


# --- limits per channel, per key, per tenant ------------------------------------------


async def test_code_guesses_are_limited_per_channel(limited: Limited, tenant: Tenant, keys: Keys) -> None:
    for ch in ("c1", "c2"):
        await tenant.channel(ch)
    p1, p2 = await pair(tenant, "c1"), await pair(tenant, "c2")
    k1, k2 = await keys.approvers(tenant, limited.address, 2)

    for _ in range(3):
        await miss(k1, "c1", p1.code)
    # c1 is closed for every key, and for the right code too.
    for client in (k1, k2):
        wait = await refused(client, "c1", p1.code)
        assert 1 <= wait <= 600
        await refused(client, "c1", wrong_code(p1.code))
    assert await status_of(tenant, p1.approval_id) == cm.APPROVAL_STATUS_PENDING
    # Another channel of the same tenant is still usable, by the same key.
    await miss(k1, "c2", p2.code)
    await approved(k1, "c2", p2.code)
    # The approval id is not a code: c1's request can still be resolved by id.
    resolved = await k2.authz.ResolveApproval(
        az.ResolveApprovalRequest(approval_id=p1.approval_id, action=APPROVE)
    )
    assert resolved.approval.status == cm.APPROVAL_STATUS_APPROVED


async def test_code_guesses_are_limited_per_key(limited: Limited, tenant: Tenant, keys: Keys) -> None:
    for ch in ("c1", "c2", "c3", "c4"):
        await tenant.channel(ch)
    p4 = await pair(tenant, "c4")
    k1, k2 = await keys.approvers(tenant, limited.address, 2)

    # Five misses spread over three channels: no channel reaches its limit of 3.
    for ch in ("c1", "c1", "c2", "c2", "c3"):
        await miss(k1, ch)
    # The key is spent: on a fresh channel, even the right code is refused.
    await refused(k1, "c4", p4.code)
    await refused(k1, "c4", wrong_code(p4.code))
    assert await status_of(tenant, p4.approval_id) == cm.APPROVAL_STATUS_PENDING
    # Another key of the tenant is not.
    await approved(k2, "c4", p4.code)


async def test_code_guesses_are_limited_per_tenant(
    limited: Limited, tenant: Tenant, other_tenant: Tenant, keys: Keys
) -> None:
    for ch in ("c1", "c2", "c3", "c4", "c5"):
        await tenant.channel(ch)
    p5 = await pair(tenant, "c5")
    await other_tenant.channel("c5")
    other = await pair(other_tenant, "c5")
    ks = await keys.approvers(tenant, limited.address, 5)

    # Eight misses: two per key and two per channel, under both of those limits.
    for k, ch in zip(ks[:4], ("c1", "c2", "c3", "c4"), strict=True):
        await miss(k, ch)
        await miss(k, ch)
    # The tenant is spent: a fresh key on a fresh channel, and the admin key, are refused.
    await refused(ks[4], "c5", p5.code)
    await refused(keys.on(limited.address, tenant.keys["admin"]), "c5", p5.code)
    assert await status_of(tenant, p5.approval_id) == cm.APPROVAL_STATUS_PENDING
    # Another tenant on the same server is not touched.
    (other_approver,) = await keys.approvers(other_tenant, limited.address, 1)
    await approved(other_approver, "c5", other.code)


# --- fail closed, recovery, audit ---------------------------------------------------------


async def test_exhausted_channel_refuses_the_right_code_until_the_window_has_passed(
    short_window: Limited, tenant: Tenant, keys: Keys, dsns: Dsns, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await tenant.channel("tg", owner_id=OWNER)
    p = await pair(tenant, "tg")
    (k,) = await keys.approvers(tenant, short_window.address, 1)
    guesses = [wrong_code(p.code) for _ in range(3)]

    err = await rpc_error(by_code(k, "ghost", guesses[0]))  # a made-up channel: counted, then pruned
    assert err.code() == grpc.StatusCode.NOT_FOUND
    for g in guesses[1:]:
        err = await rpc_error(by_code(k, "tg", g))
        assert err.code() == grpc.StatusCode.NOT_FOUND
    waits = [await refused(k, "tg", p.code) for _ in range(3)]
    assert all(1 <= w <= 2 for w in waits), waits
    assert await status_of(tenant, p.approval_id) == cm.APPROVAL_STATUS_PENDING

    # Audited once per window (not once per refusal), and never with a guessed code.
    audit = (await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(limit=1000))).events
    exceeded = [e for e in audit if e.event == "pairing.code_attempts_exceeded"]
    assert len(exceeded) == 1
    assert exceeded[0].channel_id == "tg" and exceeded[0].actor.startswith("key:")
    assert json.loads(exceeded[0].details_json)["scopes"] == ["code:channel"]  # the kind, no ids
    trail = " ".join(str(e) for e in audit)
    # Logged, but never with a code (guessed or real).
    logged = [r for r in caplog.records if r.getMessage() == "pairing code attempts exceeded"]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING
    log_text = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for code in (*guesses, p.code):
        assert code not in trail and code not in log_text

    await asyncio.sleep(max(waits) + 0.05)
    await approved(k, "tg", p.code)
    # The next miss prunes counters whose window has ended (the made-up channel's).
    await miss(k, "tg", p.code)
    conn = await asyncpg.connect(dsns.owner)
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('authz.tenant', $1, true)", tenant.tenant_id)
            scopes = {r["scope"] for r in await conn.fetch("SELECT scope FROM attempt_limits")}
    finally:
        await conn.close()
    assert "code:channel:ghost" not in scopes
    assert {"code:channel:tg", "code:tenant"} <= scopes


async def test_code_limit_holds_across_processes_and_restarts(dsns: Dsns) -> None:
    """PraisonAI's lockout was per process. Two `authz serve` processes share
    the counters; guesses alternate between them; a restart forgets nothing."""
    limits = {"AUTHZ_CODE_ATTEMPTS_PER_CHANNEL": "4", "AUTHZ_CODE_ATTEMPTS_PER_KEY": "1000",
              "AUTHZ_CODE_ATTEMPTS_PER_TENANT": "1000"}  # fmt: skip
    async with two_replicas(dsns, **limits) as pair:
        a, b, env = pair.a, pair.b, pair.env
        clients: list[Client] = []
        try:
            admin = await new_tenant(a, pair.operator_key, "bf")
            clients.append(admin)
            conn_key = await admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR))
            appr_key = await admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_APPROVER))
            connector = connect(b.address, conn_key.secret)
            clients.append(connector)
            p = await connector.authz.RequestPairing(az.RequestPairingRequest(channel_id="tg", user_id="42"))
            on_a, on_b = connect(a.address, appr_key.secret), connect(b.address, appr_key.secret)
            clients += [on_a, on_b]

            for client in (on_a, on_b, on_a, on_b):  # two misses per process, four in all
                await miss(client, "tg", p.code)
            for client in (on_a, on_b):
                await refused(client, "tg", p.code)

            assert await a.stop(signal.SIGKILL) == -signal.SIGKILL
            assert await b.stop(signal.SIGKILL) == -signal.SIGKILL
            await asyncio.gather(a.start(), b.start())
            for client in (on_a, on_b):
                await refused(client, "tg", p.code)
            # The CLI fallback an owner types is refused the same way (exit 2, the status named).
            cli = await asyncio.create_subprocess_exec(
                *AUTHZ, "pairing", "approve", "tg", p.code.lower(),
                env={**env, "AUTHZ_ADDRESS": a.address, "AUTHZ_API_KEY": appr_key.secret},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(cli.communicate(), 30)
            assert cli.returncode == 2, (out, err)
            assert EXHAUSTED.search(err.decode()), err
            assert err.decode().startswith("authz: RESOURCE_EXHAUSTED: "), err
            approval = await admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=p.approval_id))
            assert approval.status == cm.APPROVAL_STATUS_PENDING
        finally:
            for c in clients:
                await c.close()


def test_code_limit_settings_are_read_and_validated() -> None:
    base = {"AUTHZ_DATABASE_URL": "postgresql://x@localhost/x", "AUTHZ_SECRET_KEY": "k" * 32}
    defaults = Settings.from_env(base)
    assert (
        defaults.code_attempts_per_channel,
        defaults.code_attempts_per_key,
        defaults.code_attempts_per_tenant,
        defaults.code_attempt_window_seconds,
    ) == (10, 10, 50, 600)
    custom = Settings.from_env(
        {
            **base,
            "AUTHZ_CODE_ATTEMPTS_PER_CHANNEL": "3",
            "AUTHZ_CODE_ATTEMPTS_PER_KEY": "4",
            "AUTHZ_CODE_ATTEMPTS_PER_TENANT": "5",
            "AUTHZ_CODE_ATTEMPT_WINDOW_SECONDS": "6",
        }
    )
    assert (
        custom.code_attempts_per_channel,
        custom.code_attempts_per_key,
        custom.code_attempts_per_tenant,
        custom.code_attempt_window_seconds,
    ) == (3, 4, 5, 6)
    for name, value in (
        ("AUTHZ_CODE_ATTEMPTS_PER_CHANNEL", "0"),  # 0 would refuse every code: a typo, not a policy
        ("AUTHZ_CODE_ATTEMPTS_PER_KEY", "ten"),
        ("AUTHZ_CODE_ATTEMPTS_PER_TENANT", "-1"),
        ("AUTHZ_CODE_ATTEMPT_WINDOW_SECONDS", "86401"),
    ):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({**base, name: value})


# --- spam and floods ------------------------------------------------------------------------


async def test_unknown_user_spamming_creates_one_request_and_one_notification(tenant: Tenant) -> None:
    """100 messages from one unknown user, handled as a connector does
    (CheckUser, then RequestPairing on PAIRING_REQUIRED), all at once."""
    await tenant.channel("tg", owner_id=OWNER)

    async def message() -> az.RequestPairingResponse:
        check = await tenant.connector.authz.CheckUser(
            az.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=cm.CHAT_KIND_DIRECT, text="hi")
        )
        assert check.decision == az.DECISION_PAIRING_REQUIRED
        return await tenant.connector.authz.RequestPairing(
            az.RequestPairingRequest(channel_id="tg", user_id="42", first_message="hi")
        )

    results = await asyncio.gather(*(message() for _ in range(100)))
    assert sum(r.created for r in results) == 1
    assert (
        sorted(r.outcome for r in results)
        == [az.PAIRING_OUTCOME_CREATED] + [az.PAIRING_OUTCOME_EXISTING] * 99
    )
    assert sum(r.HasField("notification") for r in results) == 1  # one owner notification
    assert sum(bool(r.text) for r in results) == 1  # one reply to the user; then silence
    assert len({(r.code, r.approval_id) for r in results}) == 1
    requested = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="pairing.requested"))
    assert len(requested.events) == 1
    pending = await tenant.approver.admin.ListApprovals(adm.ListApprovalsRequest(channel_id="tg"))
    assert [a.user_id for a in pending.approvals] == ["42"]


async def test_flood_of_unknown_users_cannot_exhaust_other_channels_or_tenants(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    cap = 5
    for t, ch in ((tenant, "a"), (tenant, "b"), (other_tenant, "a")):
        await t.channel(ch, owner_id=OWNER, max_pending=cap)
    flood = [str(1000 + i) for i in range(30)]
    results = await asyncio.gather(
        *(
            tenant.connector.authz.RequestPairing(az.RequestPairingRequest(channel_id="a", user_id=u))
            for u in flood
        )
    )
    created = [u for u, r in zip(flood, results, strict=True) if r.created]
    assert len(created) == cap
    turned_away = [r for r in results if not r.created]
    assert {r.outcome for r in turned_away} == {az.PAIRING_OUTCOME_CAPACITY}
    # No code, no approval, no owner notification for anyone over the cap.
    assert not any(r.code or r.approval_id or r.HasField("notification") for r in turned_away)
    assert sum(r.HasField("notification") for r in results) == cap
    # Still full for a newcomer...
    late = await tenant.connector.authz.RequestPairing(
        az.RequestPairingRequest(channel_id="a", user_id="9999")
    )
    assert late.outcome == az.PAIRING_OUTCOME_CAPACITY
    # ...but another channel of the tenant, and the same channel name in another tenant, accept,
    # even the very users the full channel turned away.
    refused_user = next(u for u in flood if u not in created)
    for t, ch, user in (
        (tenant, "b", "9999"),
        (tenant, "b", refused_user),
        (other_tenant, "a", refused_user),
    ):
        resp = await t.connector.authz.RequestPairing(az.RequestPairingRequest(channel_id=ch, user_id=user))
        assert resp.outcome == az.PAIRING_OUTCOME_CREATED and resp.HasField("notification"), (ch, user)
    pending = await tenant.approver.admin.ListApprovals(adm.ListApprovalsRequest(channel_id="a"))
    assert sorted(a.user_id for a in pending.approvals) == sorted(created)
