"""Every approver notified on Slack (issue #17): the notification outbox through
slack-bolt and slack_sdk against the fake Web API. Each approver's copy is
posted to their DM (conversations.open, chat.postMessage) and edited with
chat.update on each vote and on the decision."""

from __future__ import annotations

import json
from typing import Any

from authz_service.gen.authz.v1 import admin_pb2 as adm
from sidecars.outbox import follow_notifications
from tests.conftest import eventually
from tests.connectors.fake_slack import dm_channel

from .rig import ALICE, OWNER, OpenRig, Rig, to, uid

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
