"""Data rights over real gRPC on real PostgreSQL: export, purge and anonymise
one user, and the audit trail's append-only trigger that still guards them.

Rows are checked with direct SQL as the schema owner, scoped to the test's
tenant (the transaction-local ``authz.tenant`` is set as well, so the checks
hold whether or not the owner bypasses row-level security)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import grpc
import pytest

from authz_service.client import Client
from authz_service.domain.pairing import Keyring
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Tenant, rpc_error
from .data_rights_helpers import (
    EMAIL,
    FIRST_MESSAGE,
    GROUP,
    HANDLE,
    NAME,
    OTHER,
    OTHER_NAME,
    OWNER,
    PSEUDONYM,
    USER,
    audit_rows,
    build,
    check,
    export,
    mentions,
    scoped,
    user_rows,
)

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
    # What the owner decided on is the user's data too.
    assert (pairing["first_message"], pairing["handle"], pairing["platform"]) == (
        FIRST_MESSAGE,
        HANDLE,
        "telegram",
    )
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
    left = await scoped(owner, t, "SELECT a::text AS row FROM approvals a WHERE tenant_id = $1", t)
    assert left and not any(FIRST_MESSAGE in r["row"] or HANDLE in r["row"] for r in left)
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
    # The pairing request's first message and handle are gone; the platform (not theirs) stays.
    pairing = next(a for a in doc["approvals"] if a["kind"] == "pairing")
    assert (pairing["first_message"], pairing["handle"], pairing["platform"]) == ("", "", "telegram")
    assert FIRST_MESSAGE not in json.dumps(doc) and HANDLE not in json.dumps(doc)
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


# --- CLI ------------------------------------------------------------------------------------


# --- purge: no field anywhere keeps the raw id -------------------------------------------
