"""The outbox of approval notifications (issue #17): WatchNotifications hands
every approver of a channel a copy of each approval notification, and again
when it changes (a vote, the decision, the expiry); AckNotification records
what the connector did with it."""

from __future__ import annotations

import json

import grpc

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Dsns, Service, Tenant, rpc_error
from .notice_helpers import ack, watching
from .pairing_helpers import OWNER, button, events, expire_now, pair, press, sweep_once
from .policy_helpers import make_cli

APPROVE = cm.APPROVAL_ACTION_APPROVE
SECOND = "200"


def actions(copy: az.NotificationCopy) -> list[int]:
    return [b.action for b in copy.buttons]


async def test_every_approver_gets_a_copy_and_every_copy_follows_the_quorum(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER, approvers=[SECOND], required_approvals=2)
    async with watching(tenant.connector) as copies:
        req = await pair(tenant)
        first = await copies.take(2)
        assert [(c.approver_id, c.approval_id, c.message_ref, c.kind) for c in first] == [
            (OWNER, req.approval_id, "", "pairing"),
            (SECOND, req.approval_id, "", "pairing"),
        ]
        for c in first:
            assert f"Code: {req.code}" in c.text and "👍 0 of 2 approvals" in c.text
            assert len(actions(c)) == 3
            # The buttons are the service's own MAC'd payloads: they resolve this request.
            assert {b.callback_payload for b in c.buttons} == {
                b.callback_payload for b in req.notification.buttons
            }
            assert not (await ack(tenant.connector, c)).HasField("next")

        await press(tenant, button(req, APPROVE), OWNER)
        voted = await copies.take(2)
        assert [(c.approver_id, c.message_ref) for c in voted] == [(OWNER, f"m-{OWNER}"), (SECOND, "m-200")]
        for c in voted:
            assert "👍 1 of 2 approvals" in c.text and len(actions(c)) == 3
            assert c.version > first[0].version
            await ack(tenant.connector, c)

        await press(tenant, button(req, APPROVE), SECOND)
        done = await copies.take(2)
        for c in done:
            assert c.text.endswith(f"✅ Approved by telegram:{OWNER}, telegram:{SECOND}"), c.text
            assert not c.buttons and "Code:" not in c.text
            await ack(tenant.connector, c)
        assert await copies.nothing()


async def test_a_new_stream_hands_out_only_what_is_behind(tenant: Tenant) -> None:
    """A restarted connector: copies acknowledged are not handed out again;
    one handed out but never acknowledged is, once its lease lapses."""
    await tenant.channel(owner_id=OWNER)
    async with watching(tenant.connector) as copies:
        req = await pair(tenant)
        [c] = await copies.take(1)
        await ack(tenant.connector, c)
    async with watching(tenant.connector) as copies:
        assert await copies.nothing()
        # A change is handed out with the stored reference: edit, never post again.
        await press(tenant, button(req, cm.APPROVAL_ACTION_DENY), OWNER)
        [edited] = await copies.take(1)
        assert edited.message_ref == f"m-{OWNER}" and edited.text.endswith(f"❌ Denied by telegram:{OWNER}")


async def test_a_leased_copy_goes_to_one_stream_only(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER)
    async with watching(tenant.connector) as one, watching(tenant.connector) as two:
        await pair(tenant)
        got = [c for s in (one, two) for c in await s.collect()]
        assert [c.approver_id for c in got] == [OWNER]


async def test_expiry_is_shown_on_every_copy(tenant: Tenant, dsns: Dsns) -> None:
    await tenant.channel(owner_id=OWNER, approvers=[SECOND])
    async with watching(tenant.connector) as copies:
        req = await pair(tenant)
        for c in await copies.take(2):
            await ack(tenant.connector, c)
        await expire_now(dsns, tenant.tenant_id, req.approval_id)
        await sweep_once(dsns)
        for c in await copies.take(2):
            assert c.text.endswith("⌛ Expired") and not c.buttons and c.message_ref == f"m-{c.approver_id}"


async def test_an_unreachable_approver_is_audited_once(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER, approvers=[SECOND])
    async with watching(tenant.connector) as copies:
        req = await pair(tenant)
        owner_copy, second = await copies.take(2)
        await ack(tenant.connector, owner_copy)
        for _ in range(2):  # idempotent: one event
            await ack(tenant.connector, second, failure="chat_not_found")
        [event] = await events(tenant, "notification.")
        assert (event.event, event.subject, event.approval_id, event.channel_id) == (
            "notification.undeliverable", SECOND, req.approval_id, "tg",
        )  # fmt: skip
        assert json.loads(event.details_json) == {"reason": "chat_not_found"}
        # Decided: only the copy that was delivered is edited.
        await press(tenant, button(req, APPROVE), OWNER)
        [edited] = await copies.take(1)
        assert edited.approver_id == OWNER


async def test_a_tool_call_on_a_channel_goes_to_its_approvers(
    tenant: Tenant, agents: dict[str, object]
) -> None:
    await tenant.channel(owner_id=OWNER)
    await tenant.admin.admin.SetTenantSettings(
        adm.TenantSettings(approvers=[f"telegram:{SECOND}", "discord:123456789012345678"])
    )
    agent = agents[tenant.tenant_id]
    async with watching(tenant.connector) as copies:
        asked = await agent.authz.RequestApproval(  # type: ignore[attr-defined]
            az.RequestApprovalRequest(tool_name="shell", arguments_json='{"cmd": "ls"}', agent_id="ops",
                                      channel_id="tg", request_key="k1")
        )  # fmt: skip
        [c] = await copies.take(1)
        assert (c.approver_id, c.kind, c.approval_id) == (SECOND, "tool", asked.approval.approval_id)
        assert "shell" in c.text and len(actions(c)) == 3
        await ack(tenant.connector, c)
        payload = next(b.callback_payload for b in c.buttons if b.action == APPROVE)
        await press(tenant, payload, SECOND)
        [done] = await copies.take(1)
        assert done.text.endswith(f"✅ Approved by telegram:{SECOND}") and not done.buttons


async def test_bad_acks_are_refused(tenant: Tenant, other_tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER)
    async with watching(tenant.connector) as copies:
        await pair(tenant)
        [c] = await copies.take(1)
    bad = await rpc_error(ack(tenant.connector, c, failure="Chat not found!"))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "failure" in (bad.details() or "")
    # A version beyond what the table holds (int4) is bad input, not an internal error.
    huge = az.NotificationCopy()
    huge.CopyFrom(c)
    huge.version = 2**32 - 1
    too_big = await rpc_error(ack(tenant.connector, huge))
    assert too_big.code() == grpc.StatusCode.INVALID_ARGUMENT and "version" in (too_big.details() or "")
    # Another tenant's connector: the copy does not exist for it.
    await other_tenant.channel(owner_id=OWNER)
    missing = await rpc_error(ack(other_tenant.connector, c))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    async with watching(other_tenant.connector, "nope") as copies:
        err = await copies.queue.get()
        assert isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.NOT_FOUND


async def test_doctor_reports_an_unreachable_approver_until_they_are_reached(
    tenant: Tenant, service: Service
) -> None:
    await tenant.channel(owner_id=OWNER, approvers=[SECOND])
    cli = make_cli(service, tenant)

    async def unreachable() -> list[dict[str, str]]:
        done = await cli("doctor", "--json", "--fail-on", "never")
        assert done.code == 0, done.text
        return [f for f in json.loads(done.out)["findings"] if f["code"] == "approver_unreachable"]

    async with watching(tenant.connector) as copies:
        await pair(tenant, user="42")
        for c in await copies.take(2):
            await ack(tenant.connector, c, failure="chat_not_found" if c.approver_id == SECOND else "")
        [finding] = await unreachable()
        assert finding["channel_id"] == "tg"
        assert f"approver telegram:{SECOND} on channel tg has never messaged the bot" in finding["message"]
        # They open a DM with the bot: the next notification reaches them, and doctor is quiet.
        await pair(tenant, user="43")
        for c in await copies.take(2):
            await ack(tenant.connector, c)
        assert [e.event for e in await events(tenant, "notification.")] == [
            "notification.undeliverable", "notification.reachable",
        ]  # fmt: skip
        assert await unreachable() == []


async def test_a_pairing_request_no_approver_can_see_names_its_requester_once(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER, approvers=[SECOND])
    async with watching(tenant.connector) as copies:
        # One approver reached: the request can be decided from chat, nobody to tell.
        await pair(tenant, user="42")
        owner, second = await copies.take(2)
        assert (await ack(tenant.connector, second, failure="chat_not_found")).unnotified_requester_id == ""
        assert (await ack(tenant.connector, owner)).unnotified_requester_id == ""
        # Nobody reached: the last failure names the requester, once.
        await pair(tenant, user="43")
        owner, second = await copies.take(2)
        assert (await ack(tenant.connector, owner, failure="chat_not_found")).unnotified_requester_id == ""
        last = await ack(tenant.connector, second, failure="outside_24h_window")
        assert last.unnotified_requester_id == "43"
        again = await ack(tenant.connector, second, failure="outside_24h_window")  # a retried ack
        assert again.unnotified_requester_id == ""
        assert [e.subject for e in await events(tenant, "notification.undeliverable")] == [
            SECOND,
            OWNER,
            SECOND,
        ]


async def test_an_approvers_copies_are_in_their_export_and_go_with_a_purge(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER, approvers=[SECOND])
    async with watching(tenant.connector) as copies:
        req = await pair(tenant)
        for c in await copies.take(2):
            await ack(tenant.connector, c)

    async def exported(user: str) -> list[dict[str, object]]:
        doc = await tenant.admin.admin.ExportUser(adm.UserRef(channel_id="tg", user_id=user))
        rows: list[dict[str, object]] = json.loads(doc.json)["notification_copies"]
        return rows

    [row] = await exported(SECOND)
    assert (row["approval_id"], row["approver_id"], row["state"], row["message_ref"]) == (
        req.approval_id, SECOND, "posted", "m-200",
    )  # fmt: skip
    await tenant.admin.admin.AnonymizeUser(adm.UserRef(channel_id="tg", user_id=SECOND))
    assert await exported(SECOND) == []
    assert len(await exported(OWNER)) == 1
    await tenant.admin.admin.PurgeUser(adm.UserRef(channel_id="tg", user_id=OWNER))
    assert await exported(OWNER) == []
