"""Data rights over real gRPC on real PostgreSQL: export, purge and anonymise
one user, and the audit trail's append-only trigger that still guards them.

Rows are checked with direct SQL as the schema owner, scoped to the test's
tenant (the transaction-local ``authz.tenant`` is set as well, so the checks
hold whether or not the owner bypasses row-level security)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from authz_service.client import Client, connect
from authz_service.domain.pairing import Keyring
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Dsns, Service, Tenant, rpc_error
from .policy_helpers import run_authz

OWNER = "100"
USER = "734918265"  # long enough not to turn up by chance in timestamps or ids
NAME = "Zelda Quintessa"
OTHER = "555000111"
OTHER_NAME = "Otto Normal"
EMAIL = "zelda@example.org"
FIRST_MESSAGE = "hello from zelda"
GROUP = "-1001"
PSEUDONYM = re.compile(r"anon:[0-9a-f]{16}")
TABLES = ("subjects", "group_senders", "approvals")


@dataclass(frozen=True)
class Built:
    pairing_id: str
    tool_id: str
    code: str


@pytest.fixture
async def agents(service: Service, tenant: Tenant, other_tenant: Tenant) -> AsyncIterator[dict[str, Client]]:
    out: dict[str, Client] = {}
    for t in (tenant, other_tenant):
        key = await t.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="runtime"))
        out[t.tenant_id] = connect(service.address, key.secret)
    yield out
    for c in out.values():
        await c.close()


def _button(resp: az.RequestPairingResponse, action: int) -> str:
    return next(b.callback_payload for b in resp.notification.buttons if b.action == action)


async def build(t: Tenant, agent: Client) -> Built:
    """On channel "tg", USER: paired via the owner's button (with a reason naming
    them), a group sender, the requester of an approved tool call, and the actor
    of a refused button press on OTHER's pairing request. OTHER: allowlisted, a
    group sender, with a pending pairing request. On channel "tg2" USER is
    allowlisted too: the same person, but a standing of its own."""
    await t.channel("tg", owner_id=OWNER)
    pairing = await t.connector.authz.RequestPairing(
        az.RequestPairingRequest(
            channel_id="tg", user_id=USER, display_name=NAME, first_message=FIRST_MESSAGE
        )
    )
    assert pairing.outcome == az.PAIRING_OUTCOME_CREATED
    approved = await t.connector.authz.ResolveApproval(
        az.ResolveApprovalRequest(
            callback_payload=_button(pairing, cm.APPROVAL_ACTION_APPROVE), actor_id=OWNER, reason=f"hi {NAME}"
        )
    )
    assert approved.approval.status == cm.APPROVAL_STATUS_APPROVED
    await t.admin.admin.AllowGroupSender(adm.GroupSenderRef(channel_id="tg", group_id=GROUP, user_id=USER))
    tool = await agent.authz.RequestApproval(
        az.RequestApprovalRequest(
            tool_name="email.send",
            arguments_json=json.dumps({"to": EMAIL, "body": f"Dear {NAME}"}),
            agent_id="ops",
            channel_id="tg",
            requester_id=USER,
            timeout_seconds=60,
            request_key="req-zelda-1",
        )
    )
    await t.admin.authz.ResolveApproval(
        az.ResolveApprovalRequest(
            approval_id=tool.approval.approval_id, action=cm.APPROVAL_ACTION_APPROVE, reason=f"ok for {NAME}"
        )
    )
    # OTHER's data, which no operation on USER may touch.
    other = await t.connector.authz.RequestPairing(
        az.RequestPairingRequest(channel_id="tg", user_id=OTHER, display_name=OTHER_NAME)
    )
    assert other.outcome == az.PAIRING_OUTCOME_CREATED
    await t.admin.admin.AllowUser(
        adm.AllowUserRequest(channel_id="tg", user_id=OTHER, display_name=OTHER_NAME)
    )
    await t.admin.admin.AllowGroupSender(adm.GroupSenderRef(channel_id="tg", group_id=GROUP, user_id=OTHER))
    # USER presses OTHER's Approve button without being an approver: refused, and audited
    # with USER as the actor.
    err = await rpc_error(
        t.connector.authz.ResolveApproval(
            az.ResolveApprovalRequest(
                callback_payload=_button(other, cm.APPROVAL_ACTION_APPROVE), actor_id=USER
            )
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    await t.channel("tg2", owner_id=OWNER)
    await t.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg2", user_id=USER, display_name=NAME))
    return Built(pairing.approval_id, tool.approval.approval_id, pairing.code)


async def check(t: Tenant, user: str = USER) -> az.CheckUserResponse:
    return await t.connector.authz.CheckUser(
        az.CheckUserRequest(channel_id="tg", user_id=user, chat_kind=cm.CHAT_KIND_DIRECT)
    )


async def export(t: Tenant, user: str = USER, channel: str = "tg") -> dict[str, Any]:
    resp = await t.admin.admin.ExportUser(adm.UserRef(channel_id=channel, user_id=user))
    doc: dict[str, Any] = json.loads(resp.json)
    return doc


async def scoped(conn: asyncpg.Connection, tenant_id: str, sql: str, *args: object) -> list[asyncpg.Record]:
    async with conn.transaction():
        await conn.execute("SELECT set_config('authz.tenant', $1, true)", tenant_id)
        return await conn.fetch(sql, *args)


async def user_rows(
    conn: asyncpg.Connection, tenant_id: str, user: str, channel: str = "tg"
) -> dict[str, int]:
    out = {}
    for table in TABLES:
        rows = await scoped(
            conn,
            tenant_id,
            f"SELECT count(*) AS n FROM {table} WHERE tenant_id = $1 AND user_id = $2 AND channel_id = $3",
            tenant_id,
            user,
            channel,
        )
        out[table] = rows[0]["n"]
    return out


async def audit_rows(conn: asyncpg.Connection, tenant_id: str) -> list[dict[str, Any]]:
    rows = await scoped(
        conn, tenant_id, "SELECT * FROM audit_events WHERE tenant_id = $1 ORDER BY event_id", tenant_id
    )
    return [{**dict(r), "details": json.loads(r["details"])} for r in rows]


def mentions(row: dict[str, Any], *needles: str) -> bool:
    text = " ".join((row["actor"], row["subject"], json.dumps(row["details"], ensure_ascii=False)))
    return any(n in text for n in needles)


# --- the pseudonym (pure) ---------------------------------------------------------------


def test_pseudonym_is_stable_keyed_and_tenant_bound() -> None:
    ring = Keyring(b"k" * 32)
    p = ring.pseudonym("acme", "telegram", USER)
    assert PSEUDONYM.fullmatch(p)
    assert ring.pseudonym("acme", "telegram", USER) == p
    assert ring.pseudonym("other", "telegram", USER) != p
    assert ring.pseudonym("acme", "discord", USER) != p
    assert ring.pseudonym("acme", "telegram", OTHER) != p
    assert Keyring(b"j" * 32).pseudonym("acme", "telegram", USER) != p  # needs the server key
    assert USER not in p


# --- export -------------------------------------------------------------------------------


async def test_export_holds_everything_about_the_user_and_no_key_material(
    tenant: Tenant, other_tenant: Tenant, agents: dict[str, Client], owner: asyncpg.Connection
) -> None:
    built = await build(tenant, agents[tenant.tenant_id])
    await build(other_tenant, agents[other_tenant.tenant_id])
    resp = await tenant.admin.admin.ExportUser(adm.UserRef(channel_id="tg", user_id=USER))
    doc = json.loads(resp.json)

    assert (doc["channel_id"], doc["platform"], doc["user_id"]) == ("tg", "telegram", USER)
    s = doc["subject"]
    assert (s["user_id"], s["status"], s["source"], s["display_name"]) == (USER, "allowed", "pairing", NAME)
    assert [(g["group_id"], g["user_id"]) for g in doc["group_senders"]] == [(GROUP, USER)]

    approvals = {a["approval_id"]: a for a in doc["approvals"]}
    assert set(approvals) == {built.pairing_id, built.tool_id}
    pairing, tool = approvals[built.pairing_id], approvals[built.tool_id]
    assert (pairing["kind"], pairing["status"], pairing["display_name"]) == ("pairing", "approved", NAME)
    assert (pairing["resolved_by"], pairing["reason"]) == (f"telegram:{OWNER}", f"hi {NAME}")
    assert (tool["kind"], tool["tool_name"], tool["user_id"], tool["status"]) == (
        "tool", "email.send", USER, "approved")  # fmt: skip
    assert EMAIL in tool["arguments"]
    for a in doc["approvals"]:
        assert not {"code_seed", "code_hash", "request_key", "tenant_id"} & set(a), sorted(a)

    # No key material anywhere in the document: not the code, its seed or its keyed
    # hash, not the agent's request key, not an API key.
    secrets = await scoped(
        owner, tenant.tenant_id,
        "SELECT code_seed, code_hash FROM approvals WHERE tenant_id = $1 AND approval_id = $2",
        tenant.tenant_id, built.pairing_id,
    )  # fmt: skip
    seed, code_hash = bytes(secrets[0]["code_seed"]), bytes(secrets[0]["code_hash"])
    assert len(seed) == 16 and len(code_hash) == 32
    for needle in (seed.hex(), code_hash.hex(), built.code, "req-zelda-1"):
        assert needle.lower() not in resp.json.lower(), needle
    for key in tenant.keys.values():
        assert key.split(".")[3] not in resp.json

    # Audit: every event about USER on the channel (as subject, requester or actor,
    # or about their approvals), and nothing about anyone else.
    events = doc["audit_events"]
    names = sorted(e["event"] for e in events)
    assert names == sorted([
        "pairing.requested", "pairing.approved", "group_sender.added", "tool.requested", "tool.approved",
        "approval.unauthorized",
    ]), names  # fmt: skip
    for e in events:
        assert (
            e["subject"] == USER
            or e["actor"] == f"telegram:{USER}"
            or e["approval_id"] in approvals
            or e["details"].get("requester_id") == USER
        ), e
        assert OTHER_NAME not in json.dumps(e)
    requested = next(e for e in events if e["event"] == "pairing.requested")
    assert requested["details"]["display_name"] == NAME and requested["actor"] == f"telegram:{USER}"
    unauthorized = next(e for e in events if e["event"] == "approval.unauthorized")
    assert (unauthorized["actor"], unauthorized["subject"], unauthorized["channel_id"]) == (
        f"telegram:{USER}", OTHER, "tg")  # fmt: skip
    # One channel's data: USER's standing on "tg2" is not part of it.
    assert {e["channel_id"] for e in events} == {"tg"}
    # Only this tenant's events: the other tenant built the same user, with other approval ids.
    other_ids = {a["approval_id"] for a in (await export(other_tenant))["approvals"]}
    assert other_ids and not other_ids & {e["approval_id"] for e in events}

    # The export itself is audited.
    exported = (await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="user.exported"))).events
    assert [(e.subject, e.channel_id) for e in exported] == [(USER, "tg")]


async def test_export_of_a_user_with_no_data_is_an_empty_document(tenant: Tenant) -> None:
    await tenant.channel("tg")
    doc = await export(tenant, user="42")
    assert doc["subject"] is None
    assert (doc["group_senders"], doc["approvals"], doc["audit_events"]) == ([], [], [])
    assert (doc["channel_id"], doc["user_id"]) == ("tg", "42")


async def test_requests_are_validated(tenant: Tenant) -> None:
    await tenant.channel("tg")
    for method in ("ExportUser", "PurgeUser", "AnonymizeUser"):
        call = getattr(tenant.admin.admin, method)
        err = await rpc_error(call(adm.UserRef(channel_id="nope", user_id="42")))
        assert err.code() == grpc.StatusCode.NOT_FOUND, (method, err.details())
        # Shape, then the channel's platform: a Telegram id is numeric.
        for ref, field in (
            (adm.UserRef(channel_id="tg", user_id="U0456DEF"), "user_id"),
            (adm.UserRef(channel_id="tg", user_id=""), "user_id"),
            (adm.UserRef(channel_id="tg", user_id="x" * 65), "user_id"),
            (adm.UserRef(channel_id="bad channel", user_id="42"), "channel_id"),
        ):
            err = await rpc_error(call(ref))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, ref, err.details())
            assert field in (err.details() or "")
        for client in (tenant.connector, tenant.approver):
            err = await rpc_error(getattr(client.admin, method)(adm.UserRef(channel_id="tg", user_id="42")))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (method, err.details())


# --- purge --------------------------------------------------------------------------------


async def test_purge_erases_the_user_and_keeps_the_trail_under_a_pseudonym(
    tenant: Tenant, other_tenant: Tenant, agents: dict[str, Client], owner: asyncpg.Connection
) -> None:
    t = tenant.tenant_id
    built = await build(tenant, agents[t])
    await build(other_tenant, agents[other_tenant.tenant_id])
    assert (await check(tenant)).decision == az.DECISION_ALLOW
    assert await user_rows(owner, t, USER) == {"subjects": 1, "group_senders": 1, "approvals": 2}
    before = await audit_rows(owner, t)
    on_tg = [b for b in before if b["channel_id"] in ("tg", "")]
    touched = [b for b in on_tg if mentions(b, USER, NAME, EMAIL)]
    assert len(touched) == 6, [b["event"] for b in touched]  # the checks below are not vacuous
    other_events = [b for b in before if b["subject"] == OTHER and b["event"] != "approval.unauthorized"]
    other_rows = await user_rows(owner, t, OTHER)
    assert other_rows == {"subjects": 1, "group_senders": 1, "approvals": 1} and other_events

    r = await tenant.admin.admin.PurgeUser(adm.UserRef(channel_id="tg", user_id=USER))
    assert (r.subjects_deleted, r.group_senders_deleted, r.approvals_deleted) == (1, 1, 2)
    assert r.audit_events_anonymized == len(touched)
    assert PSEUDONYM.fullmatch(r.pseudonym)

    # Gone from every table...
    assert await user_rows(owner, t, USER) == {"subjects": 0, "group_senders": 0, "approvals": 0}
    # ...and the trail is whole: the same events, one more ("user.purged"), and no row
    # of the channel names the user or holds their personal data any more.
    after = await audit_rows(owner, t)
    assert len(after) == len(before) + 1
    purged = after[-1]
    assert (purged["event"], purged["subject"], purged["channel_id"]) == ("user.purged", r.pseudonym, "tg")
    assert purged["details"] == {"subjects": 1, "group_senders": 1, "approvals": 2, "audit_events": 6}
    for row in after:
        if row["channel_id"] != "tg2":
            assert not mentions(row, USER, NAME, EMAIL, FIRST_MESSAGE), row
    fixed = ("event_id", "at", "event", "channel_id", "approval_id", "trace_id")
    assert [tuple(a[k] for k in fixed) for a in after[:-1]] == [tuple(b[k] for k in fixed) for b in before]
    by_event: dict[str, dict[str, Any]] = {}
    for a in after:  # the first of each name: OTHER's pairing request came later
        if a["channel_id"] == "tg":
            by_event.setdefault(a["event"], a)
    requested = by_event["pairing.requested"]
    assert requested["approval_id"] == built.pairing_id
    assert (requested["actor"], requested["subject"]) == (r.pseudonym, r.pseudonym)
    assert "display_name" not in requested["details"] and "expires_at" in requested["details"]
    approved = by_event["pairing.approved"]
    assert approved["actor"] == f"telegram:{OWNER}" and approved["subject"] == r.pseudonym  # the owner stays
    assert "reason" not in approved["details"]
    tool_requested = by_event["tool.requested"]
    assert tool_requested["details"]["requester_id"] == r.pseudonym
    assert "arguments_excerpt" not in tool_requested["details"] and tool_requested["subject"] == "email.send"
    assert tool_requested["approval_id"] == built.tool_id
    unauthorized = by_event["approval.unauthorized"]
    assert (unauthorized["actor"], unauthorized["subject"]) == (r.pseudonym, OTHER)

    # OTHER, on the same channel, is untouched.
    assert await user_rows(owner, t, OTHER) == other_rows
    assert [
        a for a in after if a["subject"] == OTHER and a["event"] != "approval.unauthorized"
    ] == other_events
    assert (await check(tenant, OTHER)).decision == az.DECISION_ALLOW
    # The user is unknown again: pairing required.
    assert (await check(tenant)).decision == az.DECISION_PAIRING_REQUIRED
    empty = await export(tenant)
    assert (empty["subject"], empty["group_senders"], empty["approvals"], empty["audit_events"]) == (
        None, [], [], [])  # fmt: skip

    # The other tenant's user with the same id is untouched.
    o = other_tenant.tenant_id
    assert await user_rows(owner, o, USER) == {"subjects": 1, "group_senders": 1, "approvals": 2}
    assert sum(mentions(row, NAME) for row in await audit_rows(owner, o)) >= 2
    assert (await check(other_tenant)).decision == az.DECISION_ALLOW

    # Purging again is idempotent: nothing found, same pseudonym, the trail unchanged
    # but for the record of the request.
    again = await tenant.admin.admin.PurgeUser(adm.UserRef(channel_id="tg", user_id=USER))
    assert (again.subjects_deleted, again.group_senders_deleted, again.approvals_deleted) == (0, 0, 0)
    assert (again.audit_events_anonymized, again.pseudonym) == (0, r.pseudonym)
    final = await audit_rows(owner, t)
    assert final[: len(after)] == after
    assert [(e["event"], e["subject"]) for e in final[len(after) :]] == [("user.purged", r.pseudonym)]

    # A standing is per channel: "tg2" still holds the user, until purged too, under the
    # same pseudonym (the same person on the same platform). Then nothing names them.
    assert await user_rows(owner, t, USER, "tg2") == {"subjects": 1, "group_senders": 0, "approvals": 0}
    assert any(a["channel_id"] == "tg2" and a["subject"] == USER for a in final)
    second = await tenant.admin.admin.PurgeUser(adm.UserRef(channel_id="tg2", user_id=USER))
    assert (second.subjects_deleted, second.audit_events_anonymized, second.pseudonym) == (1, 1, r.pseudonym)
    for row in await audit_rows(owner, t):
        assert not mentions(row, USER, NAME, EMAIL), row

    # Tenant-bound: the same user purged in another tenant gets another pseudonym.
    theirs = await other_tenant.admin.admin.PurgeUser(adm.UserRef(channel_id="tg", user_id=USER))
    assert theirs.approvals_deleted == 2 and PSEUDONYM.fullmatch(theirs.pseudonym)
    assert theirs.pseudonym != r.pseudonym


async def test_purge_of_a_user_with_no_data_returns_zero_counts(
    tenant: Tenant, owner: asyncpg.Connection
) -> None:
    await tenant.channel("tg")
    r = await tenant.admin.admin.PurgeUser(adm.UserRef(channel_id="tg", user_id="42"))
    counts = (r.subjects_deleted, r.group_senders_deleted, r.approvals_deleted, r.audit_events_anonymized)
    assert counts == (0, 0, 0, 0) and PSEUDONYM.fullmatch(r.pseudonym)
    events = [(e["event"], e["subject"]) for e in await audit_rows(owner, tenant.tenant_id)]
    assert events[-1] == ("user.purged", r.pseudonym)


async def test_purge_wakes_a_watcher_of_a_deleted_approval(tenant: Tenant, agents: dict[str, Client]) -> None:
    agent = agents[tenant.tenant_id]
    await tenant.channel("tg")
    resp = await agent.authz.RequestApproval(
        az.RequestApprovalRequest(
            tool_name="shell", arguments_json="{}", agent_id="ops", channel_id="tg", requester_id=USER,
            timeout_seconds=600,
        )
    )  # fmt: skip
    stream = agent.authz.WatchApproval(az.WatchApprovalRequest(approval_id=resp.approval.approval_id))
    first = await stream.read()
    assert isinstance(first, cm.Approval) and first.status == cm.APPROVAL_STATUS_PENDING
    purged = await tenant.admin.admin.PurgeUser(adm.UserRef(channel_id="tg", user_id=USER))
    assert purged.approvals_deleted == 1
    # Woken by the notification (not the 15 s fallback, nor the 10 minutes to expiry): it is gone.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(stream.read(), 5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_purge_leaves_no_invite_attempt_counter_or_audit_detail_with_the_number(
    tenant: Tenant, owner: asyncpg.Connection
) -> None:
    """On WhatsApp the user id is the phone number. Wrong invite codes are counted
    per user (scope ``invite:user:<channel>:<number>``) and the first refusal is
    audited: after a purge neither the counter nor any audit detail holds it."""
    t, number, other = tenant.tenant_id, "+4915734918265", "+4915700000001"
    await tenant.channel("wa", platform=cm.PLATFORM_WHATSAPP)
    made = await tenant.admin.admin.CreateInvite(adm.CreateInviteRequest(channel_id="wa"))
    wrong = "2345-6789-ABCD-EFGH" if made.code != "2345-6789-ABCD-EFGH" else "3456-789A-BCDE-FGHJ"

    async def redeem(user: str) -> int:
        req = az.RedeemInviteRequest(channel_id="wa", user_id=user, code=wrong, display_name=NAME)
        return (await tenant.connector.authz.RedeemInvite(req)).outcome

    outcomes = [await redeem(number) for _ in range(11)]  # the default limit is 10 per window
    assert outcomes == [az.INVITE_OUTCOME_INVALID] * 10 + [az.INVITE_OUTCOME_TOO_MANY_ATTEMPTS]
    assert await redeem(other) == az.INVITE_OUTCOME_TOO_MANY_ATTEMPTS  # the channel is spent too
    counters = "SELECT scope FROM attempt_limits WHERE tenant_id = $1"
    assert {r["scope"] for r in await scoped(owner, t, counters, t)} == {
        "invite:channel:wa", f"invite:user:wa:{number}", f"invite:user:wa:{other}",
    }  # fmt: skip
    [exceeded] = [a for a in await audit_rows(owner, t) if a["event"] == "invite.attempts_exceeded"]
    assert (exceeded["subject"], exceeded["details"]["scopes"]) == (number, ["invite:channel", "invite:user"])
    assert number not in json.dumps(exceeded["details"])  # the subject names the user, nothing else

    r = await tenant.admin.admin.PurgeUser(adm.UserRef(channel_id="wa", user_id=number))
    # The user's counter is gone; the channel's (no user in it) and another user's stay.
    assert {r["scope"] for r in await scoped(owner, t, counters, t)} == {
        "invite:channel:wa", f"invite:user:wa:{other}",
    }  # fmt: skip
    after = await audit_rows(owner, t)
    assert [a["subject"] for a in after if a["event"] == "invite.attempts_exceeded"] == [r.pseudonym]
    for row in after:
        assert not mentions(row, number), row


# --- anonymise ----------------------------------------------------------------------------


async def test_anonymize_keeps_access_but_no_personal_data(
    tenant: Tenant, other_tenant: Tenant, agents: dict[str, Client], owner: asyncpg.Connection
) -> None:
    t = tenant.tenant_id
    built = await build(tenant, agents[t])
    await build(other_tenant, agents[other_tenant.tenant_id])
    before = await audit_rows(owner, t)

    r = await tenant.admin.admin.AnonymizeUser(adm.UserRef(channel_id="tg", user_id=USER))
    # The subject row; the pairing request (name, reason) and the decided tool call
    # (reason, arguments).
    assert (r.subjects_updated, r.approvals_updated) == (1, 2)
    assert r.audit_events_anonymized == sum(mentions(b, NAME, EMAIL) for b in before) == 4

    assert (await check(tenant)).decision == az.DECISION_ALLOW  # access unchanged
    assert await user_rows(owner, t, USER) == {"subjects": 1, "group_senders": 1, "approvals": 2}
    for table in ("subjects", "approvals"):
        rows = await scoped(
            owner, t, f"SELECT display_name FROM {table} WHERE tenant_id = $1 AND user_id = $2 AND channel_id = 'tg'",
            t, USER,
        )  # fmt: skip
        assert rows and all(row["display_name"] == "" for row in rows), table
    after = await audit_rows(owner, t)
    assert len(after) == len(before) + 1
    assert (after[-1]["event"], after[-1]["subject"]) == ("user.anonymized", USER)
    for row in after:
        assert not mentions(row, NAME, EMAIL), row
    # Actor, subject and requester are kept: the trail still says whose events these are.
    for a, b in zip(after, before, strict=False):
        assert (a["event_id"], a["actor"], a["subject"]) == (b["event_id"], b["actor"], b["subject"])
    requested = next(a for a in after if a["event"] == "pairing.requested")
    assert (requested["actor"], requested["subject"]) == (f"telegram:{USER}", USER)
    assert next(a for a in after if a["event"] == "tool.requested")["details"]["requester_id"] == USER
    # The export agrees.
    doc = await export(tenant)
    assert (
        doc["subject"]["display_name"] == "" and NAME not in json.dumps(doc) and EMAIL not in json.dumps(doc)
    )
    tool = next(a for a in doc["approvals"] if a["kind"] == "tool")
    assert (tool["status"], tool["arguments"], tool["reason"]) == ("approved", "", "")
    # The approved call still redeems: only its digest is needed.
    call = json.dumps({"to": EMAIL, "body": f"Dear {NAME}"})
    redeemed = await agents[t].authz.RedeemApproval(
        az.RedeemApprovalRequest(approval_id=built.tool_id, tool_name="email.send", arguments_json=call)
    )
    assert redeemed.allow, redeemed.reason
    # OTHER keeps their name; the other tenant keeps everything.
    other = await scoped(
        owner, t, "SELECT display_name FROM subjects WHERE tenant_id = $1 AND user_id = $2", t, OTHER
    )
    assert [row["display_name"] for row in other] == [OTHER_NAME]
    theirs = await export(other_tenant)
    assert theirs["subject"]["display_name"] == NAME

    again = await tenant.admin.admin.AnonymizeUser(adm.UserRef(channel_id="tg", user_id=USER))
    assert (again.subjects_updated, again.approvals_updated, again.audit_events_anonymized) == (0, 0, 0)

    # A standing is per channel: "tg2" keeps the name until anonymised too; then no
    # display name of the user remains anywhere in the tenant.
    names = "SELECT display_name FROM subjects WHERE tenant_id = $1 AND user_id = $2 ORDER BY channel_id"
    assert [row["display_name"] for row in await scoped(owner, t, names, t, USER)] == ["", NAME]
    tg2 = await tenant.admin.admin.AnonymizeUser(adm.UserRef(channel_id="tg2", user_id=USER))
    assert (tg2.subjects_updated, tg2.approvals_updated) == (1, 0)
    assert [row["display_name"] for row in await scoped(owner, t, names, t, USER)] == ["", ""]
    assert (await check(tenant)).decision == az.DECISION_ALLOW
    for row in await audit_rows(owner, t):
        assert not mentions(row, NAME, EMAIL), row


# --- the append-only trigger --------------------------------------------------------------


@pytest.fixture
async def service_conn(dsns: Dsns) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsns.service)
    yield conn
    await conn.close()


async def attempt(conn: asyncpg.Connection, tenant_id: str, sql: str, *args: object, anonymize: bool) -> str:
    """Run one statement as the store would, then roll back. Returns its status tag."""
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute("SELECT set_config('authz.tenant', $1, true)", tenant_id)
        if anonymize:
            await conn.execute("SELECT set_config('authz.anonymize', 'on', true)")
        return await conn.execute(sql, *args)
    finally:
        await tr.rollback()


async def test_audit_trail_stays_append_only(
    tenant: Tenant, other_tenant: Tenant, service_conn: asyncpg.Connection, owner: asyncpg.Connection
) -> None:
    t = tenant.tenant_id
    await tenant.channel("tg")  # a channel.updated event, besides the tenant's own
    where = "WHERE tenant_id = $1"

    # The control: an anonymising update is allowed, tenant-scoped, and only with the setting on.
    ok = await attempt(service_conn, t, f"UPDATE audit_events SET actor = 'anon:0123456789abcdef' {where}", t,
                       anonymize=True)  # fmt: skip
    assert ok.startswith("UPDATE ") and int(ok.split()[1]) >= 2
    removal = await attempt(service_conn, t, f"UPDATE audit_events SET details = details - 'policy' {where}", t,
                            anonymize=True)  # fmt: skip
    assert removal.startswith("UPDATE ") and int(removal.split()[1]) >= 2
    # Row-level security still scopes it: under another tenant's setting it finds nothing.
    assert await attempt(service_conn, other_tenant.tenant_id,
                         f"UPDATE audit_events SET actor = 'anon:0123456789abcdef' {where}", t,
                         anonymize=True) == "UPDATE 0"  # fmt: skip

    # A plain update is refused.
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await attempt(
            service_conn, t, f"UPDATE audit_events SET details = '{{}}' {where}", t, anonymize=False
        )
    # So is an anonymising one that is not: a non-pseudonym actor or subject, a new detail,
    # a changed detail.
    for change in (
        "actor = 'mallory'",
        "subject = 'someone-else'",
        """details = details || '{"forged": true}'""",
        """details = jsonb_set(details, '{role}', '"operator"')""",
        "details = '[]'",
    ):
        with pytest.raises(asyncpg.RaiseError, match="anonymising update"):
            await attempt(service_conn, t, f"UPDATE audit_events SET {change} {where} AND details ? 'role'", t,
                          anonymize=True)  # fmt: skip
    # The service may not even name the other columns...
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await attempt(service_conn, t, f"UPDATE audit_events SET event = 'x' {where}", t, anonymize=True)
    # ...and the trigger refuses them for anyone, the schema owner included.
    for change in ("event = 'tenant.deleted'", "at = now() - interval '1 day'", "channel_id = 'x'",
                   "approval_id = 'x'", "trace_id = 'x'"):  # fmt: skip
        with pytest.raises(asyncpg.RaiseError, match="only actor, subject and details"):
            await attempt(owner, t, f"UPDATE audit_events SET {change} {where}", t, anonymize=True)
    # DELETE: never, with or without the setting, by the service or by the owner.
    for anonymize in (False, True):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await attempt(service_conn, t, f"DELETE FROM audit_events {where}", t, anonymize=anonymize)
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await attempt(owner, t, f"DELETE FROM audit_events {where}", t, anonymize=anonymize)
    # Nothing above stuck.
    rows = await audit_rows(owner, t)
    assert {r["actor"] for r in rows} == {"operator", "key:" + tenant.keys["admin"].split(".")[2]}


# --- CLI ------------------------------------------------------------------------------------


async def test_cli_export_delete_and_anonymize(
    service: Service,
    tenant: Tenant,
    agents: dict[str, Client],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await build(tenant, agents[tenant.tenant_id])
    monkeypatch.setenv("AUTHZ_ADDRESS", service.address)
    monkeypatch.setenv("AUTHZ_API_KEY", tenant.keys["admin"])

    async def cli(*argv: str) -> tuple[int, str, str]:
        r = await run_authz(*argv)
        return r.code, r.out, r.err

    code, out, err = await cli("users", "export", "tg", USER)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["subject"]["display_name"] == NAME and len(doc["approvals"]) == 2
    assert out.startswith('{\n  "channel_id": "tg",')  # pretty-printed

    target = tmp_path / "zelda.json"
    code, out, err = await cli("users", "export", "tg", USER, "-o", str(target))
    assert code == 0 and out == "", err
    assert f"to {target}" in err
    assert json.loads(target.read_text())["user_id"] == USER
    assert target.stat().st_mode & 0o077 == 0  # personal data: owner-only

    code, out, err = await cli("users", "export", "nope", USER)
    assert code == 2 and err.startswith("authz: NOT_FOUND: ")

    code, out, err = await cli("users", "anonymize", "tg", USER)
    assert code == 0, err
    assert out.splitlines()[0] == f"anonymised {USER} on tg (their access is unchanged)"
    assert re.search(r"subjects updated:\s+1$", out, re.M) and re.search(
        r"approvals updated:\s+2$", out, re.M
    )
    assert (await check(tenant)).decision == az.DECISION_ALLOW

    # No --purge: refused, with the reason and the alternatives, and nothing deleted.
    code, out, err = await cli("users", "delete", "tg", USER)
    assert code == 2 and out == ""
    assert "--purge" in err and "cannot be undone" in err and "users export" in err
    assert (await check(tenant)).decision == az.DECISION_ALLOW

    code, out, err = await cli("users", "delete", "tg", USER, "--purge")
    assert code == 0, err
    pseudonym = PSEUDONYM.search(out.splitlines()[0])
    assert pseudonym and out.startswith(f"purged {USER} on tg")
    for label, n in (("subjects deleted", 1), ("group senders deleted", 1), ("approvals deleted", 2)):
        assert re.search(rf"{label}:\s+{n}$", out, re.M), (label, out)
    assert (await check(tenant)).decision == az.DECISION_PAIRING_REQUIRED

    code, out, err = await cli("users", "delete", "tg", USER, "--purge", "--json")
    assert code == 0, err
    assert json.loads(out) == {
        "pseudonym": pseudonym.group(0), "subjects": 0, "group_senders": 0, "approvals": 0,
        "audit_events_anonymized": 0,
    }  # fmt: skip


# --- purge: no field anywhere keeps the raw id -------------------------------------------

APPROVER = "918273645501"  # the purged user here: an approver as well as a requester
THIRD = "555000222"
CONFIG_EVENTS = {"channel.updated", "tenant.approvers_updated"}  # data-rights.md: not covered


async def text_columns(conn: asyncpg.Connection) -> list[tuple[str, str, bool]]:
    """Every text, varchar, text[] and jsonb column of every table, found in the
    catalogue, so a column added later is scanned too: (table, column, whether
    the table has a tenant_id). Partitions are scanned through their table."""
    rows = await conn.fetch(
        """SELECT c.table_name, c.column_name,
                  EXISTS (SELECT 1 FROM information_schema.columns t
                          WHERE t.table_schema = c.table_schema AND t.table_name = c.table_name
                            AND t.column_name = 'tenant_id') AS scoped
           FROM information_schema.columns c
           JOIN information_schema.tables b USING (table_schema, table_name)
           JOIN pg_class k ON k.relname = c.table_name AND k.relnamespace = current_schema()::regnamespace
           WHERE c.table_schema = current_schema() AND b.table_type = 'BASE TABLE'
             AND NOT k.relispartition  -- a partition's rows are read through its table
             AND (c.data_type IN ('text', 'character varying', 'jsonb')
                  OR (c.data_type = 'ARRAY' AND c.udt_name IN ('_text', '_varchar')))
           ORDER BY 1, 2"""
    )
    return [(r["table_name"], r["column_name"], r["scoped"]) for r in rows]


async def raw_id_hits(conn: asyncpg.Connection, tenant_id: str, needle: str) -> set[tuple[str, str, str]]:
    """(table, column, audit event or '') of every value holding ``needle``."""
    hits: set[tuple[str, str, str]] = set()
    columns = await text_columns(conn)
    assert {("approvals", "session_id"), ("tool_grants", "created_by"), ("audit_events", "details")} <= {
        (t, c) for t, c, _ in columns
    }
    for table, column, scoped_ in columns:
        event = "event" if table == "audit_events" else "''"
        where = f"strpos({column}::text, $1) > 0" + (" AND tenant_id = $2" if scoped_ else "")
        args: tuple[object, ...] = (needle, tenant_id) if scoped_ else (needle,)
        for r in await scoped(conn, tenant_id, f'SELECT {event} AS e FROM "{table}" WHERE {where}', *args):
            hits.add((table, column, r["e"]))
    return hits


async def test_purge_leaves_the_raw_id_in_no_column_of_any_table(
    tenant: Tenant, agents: dict[str, Client], owner: asyncpg.Connection
) -> None:
    """The user is planted, through the RPCs, everywhere an id can go: requester
    (pairing, tool call), voter in a quorum, resolver of others' requests,
    approver of tool calls on the channel and without one (making a standing
    grant), in agents' session ids, as a send target, group sender and invite
    guesser. Once the configuration no longer names them (data-rights.md), a
    purge leaves their id in no text column of any table but the events that
    recorded that configuration."""
    t, agent, actor = tenant.tenant_id, agents[tenant.tenant_id], f"telegram:{APPROVER}"
    session = f"agent:main:telegram:dm:{APPROVER}"
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[actor]))
    policy: dict[str, Any] = {
        "owner_id": OWNER, "required_approvals": 2,
        "send_policy": cm.SendPolicy(default=cm.SEND_DEFAULT_DENY),
        "approvers_trusted": False,  # the approver pairs like anyone: their own request is purged too
    }  # fmt: skip
    await tenant.channel("tg", approvers=[APPROVER], **policy)
    authz = tenant.connector.authz

    async def resolve(approval_id: str, action: int, who: str) -> None:
        await authz.ResolveApproval(
            az.ResolveApprovalRequest(approval_id=approval_id, action=action, actor_id=who)  # type: ignore[arg-type]
        )

    async def pair(user: str) -> str:
        r = await authz.RequestPairing(
            az.RequestPairingRequest(channel_id="tg", user_id=user, display_name=NAME)
        )
        assert r.outcome == az.PAIRING_OUTCOME_CREATED
        return r.approval_id

    async def tool(channel: str, requester: str, key: str) -> str:
        r = await agent.authz.RequestApproval(
            az.RequestApprovalRequest(
                tool_name="email.send", arguments_json=json.dumps({"to": key}), agent_id="ops",
                channel_id=channel, requester_id=requester, session_id=session, timeout_seconds=600,
            )
        )  # fmt: skip
        assert r.created
        return r.approval.approval_id

    await resolve(await pair(APPROVER), cm.APPROVAL_ACTION_DENY, OWNER)  # their own request
    quorum = await pair(OTHER)
    await resolve(quorum, cm.APPROVAL_ACTION_APPROVE, APPROVER)  # a vote...
    await resolve(quorum, cm.APPROVAL_ACTION_APPROVE, OWNER)  # ...counted in the decision
    await resolve(await pair(THIRD), cm.APPROVAL_ACTION_DENY, APPROVER)  # a resolver
    always = await tool("tg", OTHER, "a@example.org")
    await resolve(always, cm.APPROVAL_ACTION_ALWAYS_ALLOW, APPROVER)  # a standing grant
    await resolve(await tool("", "", "b@example.org"), cm.APPROVAL_ACTION_APPROVE, actor)  # no channel
    await tool("tg", APPROVER, "c@example.org")  # their own tool call, left pending
    sent = await authz.EvaluateSend(
        az.EvaluateSendRequest(channel_id="tg", agent_id="ops", session_id=session, target=APPROVER)
    )
    assert not sent.allow
    # The id as a token of a target and an origin an agent composed (not equal to it).
    sent = await authz.EvaluateSend(
        az.EvaluateSendRequest(
            channel_id="tg", agent_id="ops", session_id=session,
            origin=f"dm:{APPROVER}:main", target=f"telegram:{APPROVER}:thread",
        )
    )  # fmt: skip
    assert not sent.allow
    await tenant.admin.admin.AllowGroupSender(
        adm.GroupSenderRef(channel_id="tg", group_id=GROUP, user_id=APPROVER)
    )
    await tenant.admin.admin.CreateInvite(adm.CreateInviteRequest(channel_id="tg"))
    await authz.RedeemInvite(
        az.RedeemInviteRequest(channel_id="tg", user_id=APPROVER, code="2345-6789-ABCD-EFGH")
    )
    # The configuration is the operator's to change first.
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[]))
    await tenant.channel("tg", **policy)

    before = await raw_id_hits(owner, t, APPROVER)
    planted = {
        ("approvals", "resolved_by"), ("approvals", "approved_by"), ("approvals", "session_id"),
        ("approvals", "user_id"), ("tool_grants", "created_by"),
        ("group_senders", "user_id"), ("attempt_limits", "scope"),
    }  # fmt: skip
    assert planted <= {(table, column) for table, column, _ in before}, sorted(before)
    audited = {e for table, _, e in before if table == "audit_events"}
    assert {"pairing.vote", "pairing.approved", "pairing.denied", "tool.requested", "tool.approved",
            "grant.created", "send.denied"} <= audited, sorted(audited)  # fmt: skip

    r = await tenant.admin.admin.PurgeUser(adm.UserRef(channel_id="tg", user_id=APPROVER))
    left = await raw_id_hits(owner, t, APPROVER)
    assert {(table, column) for table, column, _ in left} <= {("audit_events", "details")}, sorted(left)
    assert {e for _, _, e in left} <= CONFIG_EVENTS, sorted(left)

    # Where the id stood, the pseudonym stands; the rows and their state stay.
    rows = await scoped(
        owner, t,
        "SELECT resolved_by, approved_by, session_id, status FROM approvals WHERE tenant_id = $1 ORDER BY created_at",
        t,
    )  # fmt: skip
    assert [x["resolved_by"] for x in rows if x["resolved_by"] == r.pseudonym] and all(
        x["session_id"] in ("", r.pseudonym) for x in rows
    )
    assert any(list(x["approved_by"]) == [r.pseudonym, f"telegram:{OWNER}"] for x in rows)
    [grant] = (await tenant.admin.admin.ListGrants(adm.ListGrantsRequest())).grants
    assert grant.created_by == r.pseudonym and not grant.revoked_by
    again = await agent.authz.RequestApproval(
        az.RequestApprovalRequest(
            tool_name="email.send", arguments_json=json.dumps({"to": "a@example.org"}), agent_id="ops",
            channel_id="tg", requester_id=OTHER,
        )
    )  # fmt: skip
    assert again.approval.status == cm.APPROVAL_STATUS_APPROVED and again.approval.grant_id == grant.grant_id
    events = await audit_rows(owner, t)
    approved = next(e for e in events if e["event"] == "pairing.approved" and e["approval_id"] == quorum)
    assert "approved_by" not in approved["details"] and approved["actor"] == f"telegram:{OWNER}"
    vote = next(e for e in events if e["event"] == "pairing.vote")
    assert (vote["actor"], vote["approval_id"]) == (r.pseudonym, quorum)  # the vote stays on record
    denied = [e for e in events if e["event"] == "send.denied"]
    assert [e["details"]["session_id"] for e in denied] == [r.pseudonym, r.pseudonym]
    # The composed origin and target (and the reason quoting it) hold the id as a token.
    assert {denied[1]["details"][k] for k in ("origin", "reason")} | {denied[1]["subject"]} == {r.pseudonym}
    # Purging again changes nothing but the record of the request.
    await tenant.admin.admin.PurgeUser(adm.UserRef(channel_id="tg", user_id=APPROVER))
    assert (await audit_rows(owner, t))[: len(events)] == events
