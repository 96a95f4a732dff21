"""Invite codes (issue #5, pairing lifecycle): CreateInvite / ListInvites /
RevokeInvite (admin), RedeemInvite (connector), the SDK's ``redeem_invite``
and ``authz invites``, over real gRPC and PostgreSQL.

Failed redeems are limited per channel and per user on that channel with the
pairing codes' counters (migration 0005's table, AUTHZ_CODE_ATTEMPTS_PER_CHANNEL
and, per user, AUTHZ_CODE_ATTEMPTS_PER_KEY), so the limits hold across service
processes and restarts.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import grpc
import pytest

from authz_service.client import Client, connect
from authz_service.domain.invites import format_invite_code, new_invite_code
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Dsns, Service, Tenant, connect_as_tenant, rpc_error
from .limits import Limited, start_limited
from .policy_helpers import run_authz
from .replicas import new_tenant, two_replicas

CODE_SHAPE = re.compile(r"[2-9A-HJKMNP-Z]{4}(-[2-9A-HJKMNP-Z]{4}){3}")
ACCEPTED, ALREADY, INVALID = (
    az.INVITE_OUTCOME_ACCEPTED,
    az.INVITE_OUTCOME_ALREADY_ALLOWED,
    az.INVITE_OUTCOME_INVALID,
)
TOO_MANY, REFUSED = az.INVITE_OUTCOME_TOO_MANY_ATTEMPTS, az.INVITE_OUTCOME_REFUSED
INVALID_TEXT = "❌ This invite code is not valid."


async def create(t: Tenant, channel: str = "tg", **fields: object) -> adm.CreateInviteResponse:
    return await t.admin.admin.CreateInvite(adm.CreateInviteRequest(channel_id=channel, **fields))  # type: ignore[arg-type]


def redeem(
    client: Client, code: str, user: str = "42", channel: str = "tg"
) -> Awaitable[az.RedeemInviteResponse]:
    return client.authz.RedeemInvite(
        az.RedeemInviteRequest(channel_id=channel, user_id=user, code=code, display_name="Zoe")
    )


def other_code(*not_these: str) -> str:
    while (code := format_invite_code(new_invite_code())) in not_these:
        pass
    return code


async def check(t: Tenant, user: str = "42", channel: str = "tg") -> az.CheckUserResponse:
    return await t.connector.authz.CheckUser(
        az.CheckUserRequest(channel_id=channel, user_id=user, chat_kind=cm.CHAT_KIND_DIRECT)
    )


async def events(t: Tenant, prefix: str) -> list[adm.AuditEvent]:
    return list((await t.admin.admin.QueryAudit(adm.QueryAuditRequest(event=prefix, limit=1000))).events)


async def invite(t: Tenant, invite_id: str) -> adm.Invite:
    found = (await t.admin.admin.ListInvites(adm.ListInvitesRequest(include_inactive=True))).invites
    [match] = [i for i in found if i.invite_id == invite_id]
    return match


# --- admin ----------------------------------------------------------------------------


async def test_create_list_revoke(tenant: Tenant) -> None:
    await tenant.channel("tg")
    await tenant.channel("other")
    made = await create(tenant, permissions=["beta", "beta", "support"], note="for the Berlin team")
    assert CODE_SHAPE.fullmatch(made.code), made.code
    i = made.invite
    assert i.invite_id.startswith("inv_") and i.channel_id == "tg"
    assert (i.max_uses, i.uses, list(i.permissions), i.note) == (
        1,
        0,
        ["beta", "support"],
        "for the Berlin team",
    )
    assert i.created_by.startswith("key:") and not i.HasField("revoked_at")
    lifetime = i.expires_at.ToSeconds() - i.created_at.ToSeconds()
    assert 7 * 86_400 - 5 <= lifetime <= 7 * 86_400 + 5
    second = await create(tenant, "other", max_uses=50, ttl_seconds=3600)
    assert (second.invite.max_uses, second.invite.expires_at.ToSeconds() - second.invite.created_at.ToSeconds()) == (
        50, 3600)  # fmt: skip

    listed = (await tenant.admin.admin.ListInvites(adm.ListInvitesRequest())).invites
    assert [x.invite_id for x in listed] == [second.invite.invite_id, i.invite_id]  # newest first
    only_tg = (await tenant.admin.admin.ListInvites(adm.ListInvitesRequest(channel_id="tg"))).invites
    assert [x.invite_id for x in only_tg] == [i.invite_id]
    assert all(not x.HasField("revoked_at") for x in listed)

    revoked = await tenant.admin.admin.RevokeInvite(adm.RevokeInviteRequest(invite_id=i.invite_id))
    assert revoked.HasField("revoked_at")
    again = await tenant.admin.admin.RevokeInvite(adm.RevokeInviteRequest(invite_id=i.invite_id))
    assert again.revoked_at == revoked.revoked_at  # idempotent
    active = (await tenant.admin.admin.ListInvites(adm.ListInvitesRequest())).invites
    assert [x.invite_id for x in active] == [second.invite.invite_id]
    everything = (await tenant.admin.admin.ListInvites(adm.ListInvitesRequest(include_inactive=True))).invites
    assert {x.invite_id for x in everything} == {i.invite_id, second.invite.invite_id}

    created = await events(tenant, "invite.created")
    assert [json.loads(e.details_json)["invite_id"] for e in created] == [
        i.invite_id,
        second.invite.invite_id,
    ]
    assert [e.channel_id for e in created] == ["tg", "other"]
    assert len(await events(tenant, "invite.revoked")) == 1  # audited once
    trail = " ".join(str(e) for e in await events(tenant, ""))
    for code in (made.code, second.code):
        assert code not in trail and code.replace("-", "") not in trail


@pytest.mark.parametrize(
    ("fields", "status", "field"),
    [
        ({"max_uses": 10_001}, grpc.StatusCode.INVALID_ARGUMENT, "max_uses"),
        ({"ttl_seconds": 59}, grpc.StatusCode.INVALID_ARGUMENT, "ttl_seconds"),
        ({"ttl_seconds": 90 * 86_400 + 1}, grpc.StatusCode.INVALID_ARGUMENT, "ttl_seconds"),
        ({"note": "x" * 201}, grpc.StatusCode.INVALID_ARGUMENT, "note"),
        ({"permissions": ["no spaces"]}, grpc.StatusCode.INVALID_ARGUMENT, "permissions"),
        ({"permissions": [f"p{i}" for i in range(65)]}, grpc.StatusCode.INVALID_ARGUMENT, "permissions"),
        ({"channel_id": "nope"}, grpc.StatusCode.NOT_FOUND, "nope"),
    ],
    ids=["max-uses", "ttl-short", "ttl-long", "note", "permission", "permissions", "channel"],
)
async def test_create_validates(
    tenant: Tenant, fields: dict[str, object], status: grpc.StatusCode, field: str
) -> None:
    await tenant.channel("tg")
    req = adm.CreateInviteRequest(**{"channel_id": "tg", **fields})  # type: ignore[arg-type]
    err = await rpc_error(tenant.admin.admin.CreateInvite(req))
    assert err.code() == status and field in (err.details() or "")


async def test_roles(tenant: Tenant) -> None:
    await tenant.channel("tg")
    for client in (tenant.connector, tenant.approver):
        err = await rpc_error(client.admin.CreateInvite(adm.CreateInviteRequest(channel_id="tg")))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await rpc_error(redeem(tenant.approver, other_code()))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = await rpc_error(
        tenant.admin.admin.RevokeInvite(adm.RevokeInviteRequest(invite_id="inv_" + "A" * 22))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(tenant.admin.admin.RevokeInvite(adm.RevokeInviteRequest(invite_id="apr_x")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = await rpc_error(redeem(tenant.connector, "not a code"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_codes_are_stored_only_as_keyed_hashes(tenant: Tenant, dsns: Dsns) -> None:
    await tenant.channel("tg")
    made = await create(tenant, note="n")
    canonical = made.code.replace("-", "")
    conn = await connect_as_tenant(dsns.owner, tenant.tenant_id)
    try:
        row = await conn.fetchrow("SELECT * FROM invites WHERE tenant_id = $1", tenant.tenant_id)
        dump = await conn.fetchval("SELECT string_agg(t::text, '') FROM invites t WHERE tenant_id = $1",
                                   tenant.tenant_id)  # fmt: skip
    finally:
        await conn.close()
    assert row is not None and len(bytes(row["code_hash"])) == 32
    for form in (made.code, canonical, canonical.lower()):
        assert form not in dump and form.encode() not in bytes(row["code_hash"])


# --- redeeming ---------------------------------------------------------------------------


async def test_single_use_invite_admits_one_user_with_its_permissions(tenant: Tenant) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_ALLOWLIST)
    made = await create(tenant, permissions=["beta"])
    assert (await check(tenant)).decision == az.DECISION_DENY

    ok = await redeem(tenant.connector, made.code.lower().replace("-", " "))  # as people type it
    assert (ok.outcome, ok.text) == (ACCEPTED, "✅ Invite accepted. You can chat now.")
    allowed = await check(tenant)  # this process's cache saw the write
    assert (allowed.decision, allowed.reason, list(allowed.permissions)) == (
        az.DECISION_ALLOW, "allowlisted", ["beta"])  # fmt: skip
    [user] = (await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))).users
    assert (user.source, user.display_name, user.HasField("expires_at")) == (
        adm.SUBJECT_SOURCE_ADMIN,
        "Zoe",
        False,
    )

    # Already allowed: nothing consumed (there was nothing left anyway).
    again = await redeem(tenant.connector, made.code)
    assert again.outcome == ALREADY and again.text
    # Used up: another user is told what an unknown code tells.
    used = await redeem(tenant.connector, made.code, user="43")
    assert (used.outcome, used.text) == (INVALID, INVALID_TEXT)
    assert (await invite(tenant, made.invite.invite_id)).uses == 1

    [redeemed] = await events(tenant, "invite.redeemed")
    assert (redeemed.actor, redeemed.subject, redeemed.channel_id) == ("telegram:42", "42", "tg")
    assert json.loads(redeemed.details_json)["invite_id"] == made.invite.invite_id


async def test_multi_use_invite_and_pairing_ttl(tenant: Tenant) -> None:
    await tenant.channel("tg", pairing_ttl_seconds=3600)
    made = await create(tenant, max_uses=3)
    outcomes = [(await redeem(tenant.connector, made.code, user=str(100 + n))).outcome for n in range(4)]
    assert outcomes == [ACCEPTED, ACCEPTED, ACCEPTED, INVALID]
    assert (await invite(tenant, made.invite.invite_id)).uses == 3
    users = (await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))).users
    assert sorted(u.user_id for u in users) == ["100", "101", "102"]
    assert all(u.HasField("expires_at") for u in users)  # the channel's pairing expiry applies
    # Used up: no longer listed as active.
    assert (await tenant.admin.admin.ListInvites(adm.ListInvitesRequest())).invites == []


async def test_unknown_expired_used_up_and_revoked_codes_get_one_answer(tenant: Tenant, dsns: Dsns) -> None:
    await tenant.channel("tg")
    await tenant.channel("other")
    expired, revoked, used = await create(tenant), await create(tenant), await create(tenant)
    elsewhere = await create(tenant, "other")
    conn = await connect_as_tenant(dsns.owner, tenant.tenant_id)
    try:
        await conn.execute("UPDATE invites SET expires_at = now() - interval '1 second' WHERE invite_id = $1",
                           expired.invite.invite_id)  # fmt: skip
    finally:
        await conn.close()
    await tenant.admin.admin.RevokeInvite(adm.RevokeInviteRequest(invite_id=revoked.invite.invite_id))
    assert (await redeem(tenant.connector, used.code, user="7")).outcome == ACCEPTED

    answers = set()
    for n, code in enumerate((other_code(), expired.code, revoked.code, used.code, elsewhere.code)):
        resp = await redeem(tenant.connector, code, user=str(200 + n))
        answers.add((resp.outcome, resp.text, resp.retry_after_seconds))
    assert answers == {(INVALID, INVALID_TEXT, 0)}
    # The code of another channel still works there.
    assert (await redeem(tenant.connector, elsewhere.code, channel="other")).outcome == ACCEPTED


async def test_refused_channels_and_users(tenant: Tenant) -> None:
    await tenant.channel("tg")
    await tenant.channel("off", dm_policy=cm.DM_POLICY_DISABLED)
    made = await create(tenant)
    off = await create(tenant, "off")
    await tenant.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id="66"))
    for code, user, channel in ((made.code, "66", "tg"), (off.code, "42", "off"), (made.code, "42", "ghost")):
        resp = await redeem(tenant.connector, code, user=user, channel=channel)
        assert (resp.outcome, resp.text) == (REFUSED, ""), (user, channel)
    assert (await check(tenant, "66")).decision == az.DECISION_BLOCKED
    assert (await invite(tenant, made.invite.invite_id)).uses == 0  # the blocked user consumed nothing
    assert (await redeem(tenant.connector, made.code)).outcome == ACCEPTED


async def test_concurrent_redeems_of_a_single_use_code_admit_exactly_one(tenant: Tenant) -> None:
    for round_ in range(3):  # a channel per round: 7 misses each stay under the channel's limit of 10
        channel = f"c{round_}"
        await tenant.channel(channel)
        made = await create(tenant, channel)
        users = [str(1000 + secrets.randbelow(10**9)) for _ in range(8)]
        results = await asyncio.gather(*(redeem(tenant.connector, made.code, u, channel) for u in users))
        winners = [u for u, r in zip(users, results, strict=True) if r.outcome == ACCEPTED]
        assert len(winners) == 1
        assert sorted(r.outcome for r in results) == [ACCEPTED] + [INVALID] * 7
        assert (await invite(tenant, made.invite.invite_id)).uses == 1
        for u in users:
            decided = (await check(tenant, u, channel)).decision
            assert decided == (az.DECISION_ALLOW if u == winners[0] else az.DECISION_PAIRING_REQUIRED)


async def test_sdk_redeem_invite(tenant: Tenant) -> None:
    await tenant.channel("tg")
    made = await create(tenant)
    bad = await tenant.connector.redeem_invite("tg", "42", other_code(made.code))
    assert (bad.outcome, bad.allowed, bad.text) == ("invalid", False, INVALID_TEXT)
    good = await tenant.connector.redeem_invite("tg", "42", made.code, display_name="Zoe")
    assert (good.outcome, good.allowed, good.retry_after_seconds) == ("accepted", True, 0)
    assert len(good.trace_id) == 32
    assert (await tenant.connector.redeem_invite("tg", "42", made.code)).outcome == "already_allowed"


# --- attempt limits ---------------------------------------------------------------------


@pytest.fixture(scope="module")
async def limited(dsns: Dsns, service: Service) -> AsyncIterator[Limited]:
    """4 failed redeems per channel and 2 per user on a channel, in 10 minutes
    (AUTHZ_CODE_ATTEMPTS_PER_CHANNEL / _PER_KEY)."""
    server = await start_limited(
        dsns, service, code_attempts_per_channel=4, code_attempts_per_key=2,
        code_attempts_per_tenant=1000, code_attempt_window_seconds=600,
    )  # fmt: skip
    yield server
    await server.running.stop(grace=0)


@dataclass
class On:
    """A tenant's connector on the limited server."""

    client: Client
    tenant: Tenant

    async def redeem(self, code: str, user: str = "42", channel: str = "tg") -> az.RedeemInviteResponse:
        return await redeem(self.client, code, user, channel)


@pytest.fixture
async def on_limited(limited: Limited, tenant: Tenant) -> AsyncIterator[On]:
    client = connect(limited.address, tenant.keys["connector"])
    yield On(client, tenant)
    await client.close()


async def test_wrong_codes_are_limited_per_user(on_limited: On) -> None:
    t = on_limited.tenant
    await t.channel("tg")
    await t.channel("tg2")
    made = await create(t)
    for _ in range(2):
        assert (await on_limited.redeem(other_code(made.code))).outcome == INVALID
    # The user is spent on this channel: even the right code is refused, with a wait.
    for code in (made.code, other_code(made.code)):
        resp = await on_limited.redeem(code)
        assert resp.outcome == TOO_MANY and 1 <= resp.retry_after_seconds <= 600
        assert "Too many invalid invite codes" in resp.text
    assert (await invite(t, made.invite.invite_id)).uses == 0
    assert (await check(t)).decision == az.DECISION_PAIRING_REQUIRED
    # Another user on the channel (2 failures of 4 so far), and the same user elsewhere, are not.
    assert (await on_limited.redeem(made.code, user="43")).outcome == ACCEPTED
    elsewhere = await create(t, "tg2")
    assert (await on_limited.redeem(elsewhere.code, channel="tg2")).outcome == ACCEPTED
    [exceeded] = await events(t, "invite.attempts_exceeded")  # once per window, not per refusal
    assert json.loads(exceeded.details_json)["scopes"] == ["invite:user"]  # the kind: no user id
    assert exceeded.subject == "42"
    trail = " ".join(str(e) for e in await events(t, ""))
    assert made.code not in trail and made.code.replace("-", "") not in trail


async def test_wrong_codes_are_limited_per_channel(on_limited: On) -> None:
    t = on_limited.tenant
    await t.channel("tg")
    await t.channel("tg2")
    made = await create(t)
    for user in ("1", "1", "2", "2"):  # two users, each at their own limit, fill the channel's
        assert (await on_limited.redeem(other_code(made.code), user=user)).outcome == INVALID
    refused = await on_limited.redeem(made.code, user="3")  # a fresh user with the right code
    assert refused.outcome == TOO_MANY and refused.retry_after_seconds >= 1
    assert (await invite(t, made.invite.invite_id)).uses == 0
    exceeded = await events(t, "invite.attempts_exceeded")
    assert [json.loads(e.details_json)["scopes"] for e in exceeded] == [["invite:channel"]]
    # Another channel of the tenant is open.
    other = await create(t, "tg2")
    assert (await on_limited.redeem(other.code, user="3", channel="tg2")).outcome == ACCEPTED
    # Already allowed users are not affected by the limit (nothing is looked up).
    assert (await on_limited.redeem(other_code(), user="3", channel="tg2")).outcome == ALREADY


async def test_invite_limits_hold_across_processes_and_restarts(dsns: Dsns) -> None:
    settings = {"AUTHZ_CODE_ATTEMPTS_PER_CHANNEL": "100", "AUTHZ_CODE_ATTEMPTS_PER_KEY": "4"}
    async with two_replicas(dsns, **settings) as pair:
        a, b = pair.a, pair.b
        clients: list[Client] = []
        try:
            admin = await new_tenant(a, pair.operator_key, "iv")
            clients.append(admin)
            made = await admin.admin.CreateInvite(adm.CreateInviteRequest(channel_id="tg"))
            key = (await admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR))).secret
            on_a, on_b = connect(a.address, key), connect(b.address, key)
            clients += [on_a, on_b]
            for client in (on_a, on_b, on_a, on_b):  # two misses per process, four in all
                assert (await redeem(client, other_code(made.code))).outcome == INVALID
            for client in (on_a, on_b):
                assert (await redeem(client, made.code)).outcome == TOO_MANY

            assert await a.stop(signal.SIGKILL) == -signal.SIGKILL
            assert await b.stop(signal.SIGKILL) == -signal.SIGKILL
            await asyncio.gather(a.start(), b.start())
            for client in (on_a, on_b):
                assert (await redeem(client, made.code)).outcome == TOO_MANY
            # Another user is unaffected, on either process.
            assert (await redeem(on_b, made.code, user="43")).outcome == ACCEPTED
        finally:
            for c in clients:
                await c.close()


# --- CLI --------------------------------------------------------------------------------


async def test_cli_create_list_revoke(service: Service, tenant: Tenant) -> None:
    await tenant.channel("tg")

    async def cli(*argv: str) -> tuple[int, str, str]:
        r = await run_authz(*argv, "--address", service.address, "--api-key", tenant.keys["admin"])
        return r.code, r.out, r.err

    code, out, _ = await cli("invites", "create", "tg", "--max-uses", "5", "--ttl", "2d",
                             "--permission", "beta", "--note", "team")  # fmt: skip
    assert code == 0
    shown = CODE_SHAPE.findall(out)
    [line] = [ln.strip() for ln in out.splitlines() if CODE_SHAPE.fullmatch(ln.strip())]
    assert shown and "shown only this once" in out and "5 uses" in out
    invite_id = re.search(r"invite (inv_\S+)", out).group(1)  # type: ignore[union-attr]

    code, out, _ = await cli("invites", "list", "--json")
    [row] = json.loads(out)
    assert (row["invite_id"], row["uses"], row["status"], row["permissions"], row["note"]) == (
        invite_id, "0/5", "active", ["beta"], "team")  # fmt: skip
    assert line not in out  # never shown again

    assert (await redeem(tenant.connector, line)).outcome == ACCEPTED
    code, out, _ = await cli("invites", "list", "tg")
    assert code == 0 and "1/5" in out and invite_id in out

    code, out, _ = await cli("invites", "revoke", invite_id)
    assert code == 0 and f"revoked invite {invite_id}" in out
    code, out, _ = await cli("invites", "list")
    assert out.strip() == "(none)"
    code, out, _ = await cli("invites", "list", "--all", "--json")
    assert json.loads(out)[0]["status"] == "revoked"

    code, _, err = await cli("invites", "create", "tg", "--ttl", "10s")
    assert code == 2 and "INVALID_ARGUMENT" in err and "ttl_seconds" in err
    code, _, err = await cli("invites", "revoke", "inv_" + "A" * 22)
    assert code == 2 and "NOT_FOUND" in err
