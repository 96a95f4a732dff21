"""Group rules, mention gating, commands and bindings end to end: a policy set
over gRPC, stored in PostgreSQL, read back (through the cache) by CheckUser."""

from __future__ import annotations

import grpc
import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Service, Tenant, eventually, rpc_error


async def grp(
    t: Tenant, text: str = "", *, user: str = "42", group: str = "-100", mentioned: bool = False
) -> az.CheckUserResponse:
    return await t.connector.authz.CheckUser(
        az.CheckUserRequest(
            channel_id="tg", user_id=user, chat_kind=cm.CHAT_KIND_GROUP, group_id=group,
            mentioned=mentioned, text=text,
        )
    )  # fmt: skip


async def dm(t: Tenant, user: str = "42") -> az.CheckUserResponse:
    return await t.connector.authz.CheckUser(
        az.CheckUserRequest(channel_id="tg", user_id=user, chat_kind=cm.CHAT_KIND_DIRECT)
    )


def answer(resp: az.CheckUserResponse) -> tuple[int, str]:
    return resp.decision, resp.reason


OPEN = cm.GROUP_POLICY_OPEN
DISABLED = cm.GROUP_POLICY_DISABLED


async def test_group_rule_overrides_star_and_star_overrides_channel(tenant: Tenant) -> None:
    await tenant.channel(
        group_policy=cm.GROUP_POLICY_ALLOWLIST,
        groups={
            "*": cm.GroupRule(policy=OPEN, require_mention=False),
            "-100": cm.GroupRule(policy=DISABLED),
            "-300": cm.GroupRule(require_mention=True),  # policy unset: inherits "*" (open)
        },
    )
    assert answer(await grp(tenant, group="-100", mentioned=True)) == (az.DECISION_DENY, "group_disabled")
    assert answer(await grp(tenant, group="-200")) == (az.DECISION_ALLOW, "group_open")
    assert answer(await grp(tenant, group="-300")) == (az.DECISION_DENY, "mention_required")
    assert answer(await grp(tenant, group="-300", mentioned=True)) == (az.DECISION_ALLOW, "group_open")
    # The rules read back as they were set.
    [channel] = (await tenant.admin.admin.ListChannels(adm.ListChannelsRequest())).channels
    assert channel.policy.groups["-100"].policy == DISABLED
    assert not channel.policy.groups["-100"].HasField("require_mention")
    assert channel.policy.groups["*"].require_mention is False


async def test_mention_patterns_count_as_a_mention_per_message(tenant: Tenant, service: Service) -> None:
    """The cache holds state, not verdicts: each message's text is judged anew."""
    await tenant.channel(group_policy=OPEN, mention_patterns=[r"\bhey bot\b"])
    cache = service.running.cache

    async def cache_on() -> bool:
        return cache.usable

    await eventually(cache_on)
    assert answer(await grp(tenant, "Hey Bot, what's up?")) == (az.DECISION_ALLOW, "group_open")
    hits = cache.hits
    assert answer(await grp(tenant, "hey botany")) == (az.DECISION_DENY, "mention_required")
    assert answer(await grp(tenant, "no pattern", mentioned=True)) == (az.DECISION_ALLOW, "group_open")
    assert cache.hits == hits + 2  # same user, same group: both answers came from the cached state


async def test_commands_allowed_and_denied(tenant: Tenant) -> None:
    await tenant.channel(
        group_policy=OPEN,
        groups={
            "*": cm.GroupRule(require_mention=False, allowed_commands=["/status", "Help"], denied_commands=["deploy"])
        },
    )  # fmt: skip
    assert answer(await grp(tenant, "/deploy@MyBot prod")) == (az.DECISION_DENY, "command_denied")
    assert answer(await grp(tenant, "/reboot")) == (az.DECISION_DENY, "command_not_allowed")
    assert answer(await grp(tenant, "/status")) == (az.DECISION_ALLOW, "group_open")
    assert answer(await grp(tenant, "/help@MyBot")) == (az.DECISION_ALLOW, "group_open")
    assert answer(await grp(tenant, "just chatting")) == (az.DECISION_ALLOW, "group_open")
    # Commands are stored normalised.
    [channel] = (await tenant.admin.admin.ListChannels(adm.ListChannelsRequest())).channels
    assert list(channel.policy.groups["*"].allowed_commands) == ["status", "help"]


async def test_binding_routes_a_user_to_a_restricted_agent(tenant: Tenant) -> None:
    await tenant.channel(
        agent_id="main",
        dm_policy=cm.DM_POLICY_ALLOWLIST,
        group_policy=OPEN,
        require_mention=False,
        bindings=[
            cm.Binding(user_id="42", group_id="-100", agent_id="restricted", permissions=["read", "ask"],
                       tools=cm.ToolList(allowed=["search"], denied=["shell", "deploy.*"])),
            cm.Binding(user_id="*", group_id="*", permissions=["chat"]),
        ],
    )  # fmt: skip
    await tenant.admin.admin.AllowUser(
        adm.AllowUserRequest(channel_id="tg", user_id="42", permissions=["write", "read"])
    )
    resp = await grp(tenant)
    assert (resp.decision, resp.agent_id, list(resp.permissions)) == (
        az.DECISION_ALLOW, "restricted", ["write", "read", "ask"])  # fmt: skip
    assert (list(resp.tools.allowed), list(resp.tools.denied)) == (["search"], ["shell", "deploy.*"])
    typed = await tenant.connector.check_user("tg", "42", group_id="-100", text="hi")  # the SDK carries them
    assert (typed.agent_id, typed.tools_allowed, typed.tools_denied) == (
        "restricted",
        ("search",),
        ("shell", "deploy.*"),
    )
    # Someone else in that group gets the catch-all binding: the channel's agent, no tool lists.
    other = await grp(tenant, user="43")
    assert (other.decision, other.agent_id, list(other.permissions)) == (az.DECISION_ALLOW, "main", ["chat"])
    assert (list(other.tools.allowed), list(other.tools.denied)) == ([], [])
    # In a DM the group-specific binding never applies.
    direct = await dm(tenant)
    assert (direct.decision, direct.reason, direct.agent_id, list(direct.permissions)) == (
        az.DECISION_ALLOW, "allowlisted", "main", ["write", "read", "chat"])  # fmt: skip
    # A denial carries no routing at all.
    denied = await dm(tenant, user="43")
    assert (denied.decision, denied.agent_id, list(denied.permissions), list(denied.tools.denied)) == (
        az.DECISION_DENY, "", [], [])  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (cm.ChannelPolicy(mention_patterns=["(a)\\1"]), "policy.mention_patterns"),
        (cm.ChannelPolicy(groups={"-100": cm.GroupRule(mention_patterns=["(?=bot)"])}),
         "policy.groups[-100].mention_patterns"),
        (cm.ChannelPolicy(groups={"*": cm.GroupRule(denied_commands=["de ploy"])}),
         "policy.groups[*].denied_commands"),
    ],
    ids=["backreference", "lookahead-in-group-rule", "bad-command"],
)  # fmt: skip
async def test_invalid_rules_are_rejected_naming_the_field(
    tenant: Tenant, policy: cm.ChannelPolicy, field: str
) -> None:
    err = await rpc_error(
        tenant.admin.admin.SetChannel(
            adm.SetChannelRequest(channel_id="tg", platform=cm.PLATFORM_TELEGRAM, policy=policy)
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.details() or ""), err.details()
    # Nothing was stored: the channel does not exist.
    assert answer(await dm(tenant)) == (az.DECISION_DENY, "channel_not_configured")


async def test_policy_change_is_seen_by_the_next_check(tenant: Tenant) -> None:
    await tenant.channel(group_policy=OPEN, require_mention=False)
    assert answer(await grp(tenant, "/deploy")) == (az.DECISION_ALLOW, "group_open")
    assert answer(await grp(tenant, "/deploy")) == (az.DECISION_ALLOW, "group_open")  # now cached
    await tenant.channel(
        group_policy=OPEN, require_mention=False, groups={"-100": cm.GroupRule(denied_commands=["deploy"])}
    )
    assert answer(await grp(tenant, "/deploy")) == (az.DECISION_DENY, "command_denied")
    await tenant.channel(
        group_policy=OPEN, require_mention=False,
        bindings=[cm.Binding(user_id="42", agent_id="night-shift")],
    )  # fmt: skip
    resp = await grp(tenant, "/deploy")
    assert (resp.decision, resp.agent_id) == (az.DECISION_ALLOW, "night-shift")
