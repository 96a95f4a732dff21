"""Invite codes through the Telegram connector: python-telegram-bot against the
local fake Bot API (tests/connectors/fake_telegram.py), the real authz service
and PostgreSQL. A user who is not admitted and sends an invite code in a
direct message (as text, or through a ``/start`` deep link) is admitted by
RedeemInvite instead of starting pairing; anything else pairs as before.
"""

from __future__ import annotations

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm
from tests.conftest import Tenant

# The Telegram bot fixtures (fake Bot API, application, connector).
from tests.connectors.telegram.rig import ALICE, GROUP, MALLORY, OWNER, MakeBot, fake, make_bot  # noqa: F401

INVITED = "✅ Invite accepted. You can chat now."


async def invite(t: Tenant, **fields: object) -> str:
    made = await t.admin.admin.CreateInvite(adm.CreateInviteRequest(channel_id="tg", **fields))  # type: ignore[arg-type]
    return made.code


async def test_invite_code_admits_instead_of_pairing(make_bot: MakeBot, tenant: Tenant) -> None:  # noqa: F811
    bot = await make_bot(owner_id=str(OWNER))
    code = await invite(tenant, permissions=["beta"])
    await bot.say(ALICE, code.lower())
    assert bot.fake.texts(ALICE) == [INVITED]
    assert bot.fake.messages_to(OWNER) == []  # no pairing request, no owner notification
    assert (
        await tenant.approver.admin.ListApprovals(adm.ListApprovalsRequest(channel_id="tg"))
    ).approvals == []
    assert bot.agent.turns == []  # the code itself is not a message for the agent

    await bot.say(ALICE, "hello agent")
    assert [t.text for t in bot.agent.turns] == ["hello agent"]
    assert list(bot.agent.turns[0].permissions) == ["beta"]


async def test_start_deep_link_carries_the_code(make_bot: MakeBot, tenant: Tenant) -> None:  # noqa: F811
    bot = await make_bot(owner_id=str(OWNER), dm_policy=cm.DM_POLICY_ALLOWLIST)
    code = await invite(tenant)
    # On an allowlist channel a stranger is refused in silence...
    await bot.say(MALLORY, "hello")
    assert bot.fake.texts(MALLORY) == []
    # ...but a /start link with a code admits.
    await bot.say(ALICE, f"/start {code}")
    assert bot.fake.texts(ALICE) == [INVITED]
    # The code was single-use: the next stranger is told it is not valid, and is not admitted.
    await bot.say(MALLORY, f"/start {code}")
    assert bot.fake.texts(MALLORY) == ["❌ This invite code is not valid."]
    await bot.say(MALLORY, "let me in")
    assert [t.text for t in bot.agent.turns] == []


async def test_wrong_code_does_not_start_pairing(make_bot: MakeBot, tenant: Tenant) -> None:  # noqa: F811
    bot = await make_bot(owner_id=str(OWNER))
    await invite(tenant)
    await bot.say(ALICE, "ABCD-EFGH-JKMN-PQRS")
    assert bot.fake.texts(ALICE) == ["❌ This invite code is not valid."]
    assert bot.fake.messages_to(OWNER) == []
    # Ordinary text still pairs.
    await bot.say(ALICE, "hi there")
    assert bot.fake.texts(ALICE)[-1].startswith("🔑 Pairing code:")
    assert len(bot.fake.messages_to(OWNER)) == 1


async def test_codes_in_groups_and_from_allowed_users_are_ordinary_messages(
    make_bot: MakeBot,  # noqa: F811
    tenant: Tenant,
) -> None:
    bot = await make_bot(owner_id=str(OWNER), group_policy=cm.GROUP_POLICY_OPEN, require_mention=False,
                         send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW))  # fmt: skip
    code = await invite(tenant)
    await bot.say(ALICE, code, chat_id=GROUP, chat_type="group")
    assert [t.text for t in bot.agent.turns] == [code]  # a group message goes to the agent as usual
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id=str(MALLORY)))
    await bot.say(MALLORY, code)
    assert [t.text for t in bot.agent.turns] == [code, code]
    listed = (await tenant.admin.admin.ListInvites(adm.ListInvitesRequest())).invites
    assert [i.uses for i in listed] == [0]  # nobody redeemed it
