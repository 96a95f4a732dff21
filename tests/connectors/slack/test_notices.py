"""Every approver notified on Slack (issue #17): the notification outbox through
slack-bolt and slack_sdk against the fake Web API. Each approver's copy is
posted to their DM (conversations.open, chat.postMessage) and edited with
chat.update on each vote, on the decision and on expiry; a tool call is
approved from a DM."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from authz_service.client import Client
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars.outbox import follow_notifications
from sidecars.runtime import NOT_ALLOWED
from tests.conftest import Dsns, eventually
from tests.connectors.fake_slack import dm_channel
from tests.pairing_helpers import expire_pending_and_sweep

from .rig import ALICE, CHANNEL, MALLORY, OWNER, OpenRig, Rig, to, uid

SECOND = "U0SECOND1"


def section(message: dict[str, Any]) -> str:
    return str(message["blocks"][0]["text"]["text"])


def has_buttons(message: dict[str, Any]) -> bool:
    return any(b["type"] == "actions" for b in message["blocks"])


async def updated(rig: Rig, user: str, text: str) -> dict[str, Any]:
    """The chat.update of ``user``'s copy that shows ``text``, waited for."""
    call = await rig.fake.log.wait_for(
        "chat.update", lambda c: to(dm_channel(user))(c) and text in c.params.get("text", "")
    )
    return {**rig.fake.messages[(dm_channel(user), call.params["ts"])], "channel": dm_channel(user)}


async def test_owner_and_second_approver_complete_a_quorum_from_chat(open_rig: OpenRig) -> None:
    async with open_rig(approvers=[uid(SECOND)], required_approvals=2) as rig:
        outbox = follow_notifications(rig.connector)
        assert outbox is not None
        try:
            await rig.say(ALICE, "hello there")
            for user in (OWNER, SECOND):
                await rig.fake.log.wait_for("chat.postMessage", to(dm_channel(user)))
            owner_copy = rig.fake.last_message(dm_channel(OWNER))
            second_copy = rig.fake.last_message(dm_channel(SECOND))
            for copy in (owner_copy, second_copy):
                assert "0 of 2 approvals" in section(copy) and has_buttons(copy)

            assert await rig.press(OWNER, "approve", owner_copy) == 200
            for user in (OWNER, SECOND):
                assert has_buttons(await updated(rig, user, "1 of 2 approvals"))

            assert await rig.press(SECOND, "approve", second_copy) == 200
            for user in (OWNER, SECOND):
                done = await updated(rig, user, "✅ Approved by")
                assert not has_buttons(done) and f"{uid(SECOND)}" in section(done)
            assert await rig.pending() == []
        finally:
            await outbox.stop()


async def test_an_approver_slack_cannot_reach_is_audited(open_rig: OpenRig) -> None:
    async with open_rig(approvers=[uid(SECOND)], prepare=lambda fake: fake.disabled.add(SECOND)) as rig:
        outbox = follow_notifications(rig.connector)
        assert outbox is not None
        try:
            await rig.say(ALICE, "hello there")
            await rig.fake.log.wait_for("chat.postMessage", to(dm_channel(OWNER)))

            async def audited() -> list[adm.AuditEvent]:
                query = adm.QueryAuditRequest(event="notification.undeliverable")
                return list((await rig.tenant.admin.admin.QueryAudit(query)).events)

            async def found() -> bool:
                return bool(await audited())

            await eventually(found)
            [event] = await audited()
            assert event.subject == uid(SECOND) and json.loads(event.details_json) == {
                "reason": "user_disabled"
            }
        finally:
            await outbox.stop()


async def test_a_tool_call_is_approved_from_a_dm_and_redeemed(
    open_rig: OpenRig, agents: dict[str, Client]
) -> None:
    async with open_rig() as rig:
        await rig.tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=[f"slack:{uid(OWNER)}"]))
        outbox = follow_notifications(rig.connector)
        assert outbox is not None
        try:
            agent = agents[rig.tenant.tenant_id]
            args = json.dumps({"cmd": "uptime"})
            asked = await agent.authz.RequestApproval(
                az.RequestApprovalRequest(
                    tool_name="shell", arguments_json=args, agent_id="ops", channel_id=CHANNEL
                )
            )
            await rig.fake.log.wait_for("chat.postMessage", to(dm_channel(OWNER)))
            copy = rig.fake.last_message(dm_channel(OWNER))
            assert "Approval needed: shell" in section(copy) and "uptime" in section(copy)
            assert [e["action_id"] for b in copy["blocks"] if b["type"] == "actions" for e in b["elements"]] == [
                "authz_approve", "authz_deny", "authz_always_allow"]  # fmt: skip

            assert await rig.press(MALLORY, "approve", copy) == 200  # a stranger's press changes nothing
            refusal = (await rig.fake.log.wait_for("chat.postEphemeral")).params
            assert (refusal["user"], refusal["text"]) == (MALLORY, NOT_ALLOWED)
            assert await rig.status(asked.approval.approval_id) == cm.APPROVAL_STATUS_PENDING

            assert await rig.press(OWNER, "approve", copy) == 200
            done = await updated(rig, OWNER, f"Approved by slack:{uid(OWNER)}")
            assert not has_buttons(done)
            redeemed = await agent.authz.RedeemApproval(
                az.RedeemApprovalRequest(
                    approval_id=asked.approval.approval_id, tool_name="shell", arguments_json=args
                )
            )
            assert redeemed.allow, redeemed.reason
        finally:
            await outbox.stop()


async def test_expiry_is_shown_on_every_copy(
    open_rig: OpenRig, owner: asyncpg.Connection, dsns: Dsns
) -> None:
    async with open_rig(approvers=[uid(SECOND)]) as rig:
        outbox = follow_notifications(rig.connector)
        assert outbox is not None
        try:
            await rig.say(ALICE, "hello there")
            for user in (OWNER, SECOND):
                await rig.fake.log.wait_for("chat.postMessage", to(dm_channel(user)))
            await expire_pending_and_sweep(dsns, rig.tenant.tenant_id)
            for user in (OWNER, SECOND):
                expired = await updated(rig, user, "⌛ Expired")
                assert not has_buttons(expired) and "Code:" not in section(expired)
        finally:
            await outbox.stop()
