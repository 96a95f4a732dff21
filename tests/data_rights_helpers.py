"""Users, channels and readers shared by the data-rights tests (export, purge, anonymise, the trail)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc

from authz_service.client import Client
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Tenant, rpc_error

OWNER = "100"


USER = "734918265"  # long enough not to turn up by chance in timestamps or ids


NAME = "Zelda Quintessa"


OTHER = "555000111"


OTHER_NAME = "Otto Normal"


EMAIL = "zelda@example.org"


FIRST_MESSAGE = "hello from zelda"


HANDLE = "zelda_quintessa"


GROUP = "-1001"


PSEUDONYM = re.compile(r"anon:[0-9a-f]{16}")


TABLES = ("subjects", "group_senders", "approvals")


@dataclass(frozen=True)
class Built:
    pairing_id: str
    tool_id: str
    code: str


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
            channel_id="tg", user_id=USER, display_name=NAME, first_message=FIRST_MESSAGE, handle=HANDLE
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
