"""Data rights: after a purge, no text column of any table holds the user's raw id."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from authz_service.client import Client
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Tenant
from .data_rights_helpers import (
    GROUP,
    NAME,
    OTHER,
    OWNER,
    audit_rows,
    scoped,
)

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
