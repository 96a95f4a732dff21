"""Approvers' chat commands on Telegram (issue #17): /approve, /deny, /block,
/unblock, /pending, /users and /help from the owner and other approvers, the
same from a stranger, and approvers reaching the agent.
"""

from __future__ import annotations

import json
import re

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars.runtime import START_REPLY
from tests.conftest import Tenant
from tests.connectors.telegram.rig import ALICE, MALLORY, OWNER, Bot, MakeBot

# --- approvers' chat commands (issue #17) ------------------------------------

SECOND = 4004  # a channel approver besides the owner


def code_of(bot: Bot, user: int) -> str:
    found = re.search(r"Pairing code: (\S+)", bot.fake.texts(user)[0])
    assert found, bot.fake.texts(user)
    return found.group(1)


async def statuses(tenant: Tenant) -> dict[str, int]:
    """Every pairing request's status, by requester."""
    found: dict[str, int] = {}
    for status in (cm.APPROVAL_STATUS_PENDING, cm.APPROVAL_STATUS_APPROVED, cm.APPROVAL_STATUS_DENIED,
                   cm.APPROVAL_STATUS_BLOCKED):  # fmt: skip
        resp = await tenant.admin.admin.ListApprovals(
            adm.ListApprovalsRequest(channel_id="tg", status=status)
        )
        found.update({a.user_id: a.status for a in resp.approvals})
    return found


async def blocked(tenant: Tenant) -> list[str]:
    resp = await tenant.admin.admin.ListUsers(
        adm.ListUsersRequest(channel_id="tg", filter=adm.USER_FILTER_BLOCKED)
    )
    return [u.user_id for u in resp.users]


async def test_approve_by_code_from_the_owner(make_bot: MakeBot, tenant: Tenant) -> None:
    bot = await make_bot(owner_id=str(OWNER))
    await bot.say(ALICE, "hello")
    await bot.say(OWNER, f"/approve {code_of(bot, ALICE)}")
    assert bot.fake.texts(OWNER)[-1] == f"✅ Approved by telegram:{OWNER} ({ALICE})."
    assert bot.fake.texts(ALICE)[-1] == "✅ Paired! You can chat now."
    assert await statuses(tenant) == {str(ALICE): cm.APPROVAL_STATUS_APPROVED}
    assert bot.agent.turns == []  # the command never reached the agent
    await bot.say(ALICE, "hi again")
    assert [t.text for t in bot.agent.turns] == ["hi again"]
    events = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="pairing.approved"))
    assert [e.actor for e in events.events] == [f"telegram:{OWNER}"]


async def test_approve_and_deny_by_user_from_a_second_approver(make_bot: MakeBot, tenant: Tenant) -> None:
    bot = await make_bot(owner_id=str(OWNER), approvers=[str(SECOND)])
    await bot.say(ALICE, "hello")
    await bot.say(MALLORY, "me too")
    await bot.say(SECOND, f"/approve {ALICE}")
    await bot.say(SECOND, f"/deny {MALLORY}")
    assert bot.fake.texts(SECOND)[-2:] == [
        f"✅ Approved by telegram:{SECOND} ({ALICE}).",
        f"❌ Denied by telegram:{SECOND} ({MALLORY}).",
    ]
    assert bot.fake.texts(MALLORY)[-1] == "❌ Your pairing request was denied."
    assert await statuses(tenant) == {
        str(ALICE): cm.APPROVAL_STATUS_APPROVED,
        str(MALLORY): cm.APPROVAL_STATUS_DENIED,
    }
    await bot.say(SECOND, f"/deny {ALICE}")  # nothing pending any more
    assert bot.fake.texts(SECOND)[-1] == f"No pending request for “{ALICE}”."


async def test_block_pending_and_help(make_bot: MakeBot, tenant: Tenant) -> None:
    bot = await make_bot(owner_id=str(OWNER))
    await bot.say(ALICE, "hello")
    await bot.say(OWNER, "/pending")
    listed = bot.fake.texts(OWNER)[-1]
    assert listed.startswith("Pending pairing requests (1):") and f"• {ALICE}" in listed
    await bot.say(OWNER, f"/block {ALICE}")
    assert bot.fake.texts(OWNER)[-1] == f"⛔ Blocked by telegram:{OWNER} ({ALICE})."
    await bot.say(OWNER, f"/block {MALLORY}")  # no request: blocked all the same
    assert bot.fake.texts(OWNER)[-1] == f"⛔ Blocked {MALLORY}."
    assert sorted(await blocked(tenant)) == sorted([str(ALICE), str(MALLORY)])
    await bot.say(OWNER, "/pending")
    assert bot.fake.texts(OWNER)[-1] == "No pending pairing requests."
    await bot.say(OWNER, f"/unblock {MALLORY}")
    assert bot.fake.texts(OWNER)[-1] == f"Unblocked {MALLORY}."
    assert await blocked(tenant) == [str(ALICE)]
    await bot.say(OWNER, "/users")
    assert bot.fake.texts(OWNER)[-1] == f"• {ALICE} (Alice): blocked"
    await bot.say(OWNER, "/help")
    assert "/approve <code|user>" in bot.fake.texts(OWNER)[-1]
    events = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="user.blocked"))
    assert [e.actor for e in events.events] == [f"telegram:{OWNER}"]


async def test_the_same_commands_from_a_stranger_change_nothing(make_bot: MakeBot, tenant: Tenant) -> None:
    bot = await make_bot(owner_id=str(OWNER))
    await bot.say(ALICE, "hello")
    code = code_of(bot, ALICE)
    owner_messages = len(bot.fake.messages_to(OWNER))
    for text in (f"/approve {code}", f"/approve {ALICE}", f"/deny {ALICE}", f"/block {ALICE}", "/pending"):
        await bot.say(MALLORY, text)
    # The ordinary answer: Mallory's own pairing code once, then silence; nothing else.
    [answer] = bot.fake.texts(MALLORY)
    assert answer.startswith("🔑 Pairing code:")
    assert await statuses(tenant) == {
        str(ALICE): cm.APPROVAL_STATUS_PENDING,
        str(MALLORY): cm.APPROVAL_STATUS_PENDING,
    }
    assert await blocked(tenant) == []
    assert len(bot.fake.texts(ALICE)) == 1
    refused = await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="approval.unauthorized"))
    assert [(e.actor, json.loads(e.details_json)["command"]) for e in refused.events] == [
        (f"telegram:{MALLORY}", c) for c in ("approve", "approve", "deny", "block", "pending")
    ]
    assert len(bot.fake.messages_to(OWNER)) == owner_messages + 1  # Mallory's request, nothing more
    # The paired (not an approver) get theirs: the agent's answer.
    await bot.say(OWNER, f"/approve {code}")
    await bot.say(ALICE, "/pending")
    assert [t.text for t in bot.agent.turns] == ["/pending"]
    assert await statuses(tenant) == {
        str(ALICE): cm.APPROVAL_STATUS_APPROVED,
        str(MALLORY): cm.APPROVAL_STATUS_PENDING,
    }


async def test_approvers_reach_the_agent_without_pairing(make_bot: MakeBot, tenant: Tenant) -> None:
    bot = await make_bot(owner_id=str(OWNER), approvers=[str(SECOND)])
    await bot.say(OWNER, "hi")
    await bot.say(SECOND, "/start")
    assert [t.text for t in bot.agent.turns] == ["hi"]
    assert bot.fake.texts(OWNER) == ["echo: hi"]  # no pairing code, no request of their own
    assert bot.fake.texts(SECOND)[-1] == START_REPLY
    assert await statuses(tenant) == {}


async def test_approvers_pair_like_anyone_when_the_channel_says_so(make_bot: MakeBot, tenant: Tenant) -> None:
    bot = await make_bot(owner_id=str(OWNER), approvers=[str(SECOND)], approvers_trusted=False)
    await bot.say(SECOND, "hi")
    assert bot.fake.texts(SECOND)[0].startswith("🔑 Pairing code:")
    assert bot.agent.turns == []
    assert await statuses(tenant) == {str(SECOND): cm.APPROVAL_STATUS_PENDING}
