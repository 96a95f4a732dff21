"""Risky channel settings and their stable codes (domain.risks). Pure."""

from __future__ import annotations

from dataclasses import replace

import pytest

from authz_service.domain.model import (
    AutoApprove,
    Binding,
    ChannelPolicy,
    DmPolicy,
    GroupPolicy,
    GroupRule,
    SendDefault,
    SendPolicy,
)
from authz_service.domain.risks import RISK_CODES, channel_risks, tools_possible

SAFE = ChannelPolicy()
NO_TOOLS = Binding(user_id="*", group_id="*", agent_id="faq", tools_denied=("*",))
Senders = tuple[tuple[str, str], ...]


def codes_and_fields(policy: ChannelPolicy, senders: Senders = ()) -> list[tuple[str, str]]:
    return [(r.code, r.field) for r in channel_risks(policy, senders)]


CASES: list[tuple[str, ChannelPolicy, Senders, list[tuple[str, str]]]] = [
    ("defaults are safe", SAFE, (), []),
    ("pairing, allowlist and disabled DMs are safe",
     replace(SAFE, dm_policy=DmPolicy.ALLOWLIST, group_policy=GroupPolicy.DISABLED), (), []),
    ("open DMs without bindings: tools possible", replace(SAFE, dm_policy=DmPolicy.OPEN), (),
     [("open_dms", "policy.dm_policy")]),
    ("open DMs, catch-all binding denies every tool", replace(SAFE, dm_policy=DmPolicy.OPEN, bindings=(NO_TOOLS,)),
     (), []),
    ("open DMs, catch-all denies only some tools",
     replace(SAFE, dm_policy=DmPolicy.OPEN, bindings=(replace(NO_TOOLS, tools_denied=("shell",)),)), (),
     [("open_dms", "policy.dm_policy")]),
    ("open DMs, '*' denied only for one group: not the catch-all",
     replace(SAFE, dm_policy=DmPolicy.OPEN, bindings=(replace(NO_TOOLS, group_id="-100"),)), (),
     [("open_dms", "policy.dm_policy")]),
    ("open DMs, '*' denied only for one user: not the catch-all",
     replace(SAFE, dm_policy=DmPolicy.OPEN, bindings=(replace(NO_TOOLS, user_id="42"),)), (),
     [("open_dms", "policy.dm_policy")]),
    ("open groups with the default mention requirement", replace(SAFE, group_policy=GroupPolicy.OPEN), (), []),
    ("open groups without mention", replace(SAFE, group_policy=GroupPolicy.OPEN, require_mention=False), (),
     [("open_groups", "policy.group_policy")]),
    ("channel open without mention, '*' rule requires mention",
     replace(SAFE, group_policy=GroupPolicy.OPEN, require_mention=False,
             groups={"*": GroupRule(require_mention=True)}), (), []),
    ("'*' rule opens groups without mention",
     replace(SAFE, require_mention=False, groups={"*": GroupRule(policy=GroupPolicy.OPEN)}), (),
     [("open_groups", "policy.groups[*].policy")]),
    ("one group's own rule is open without mention",
     replace(SAFE, groups={"-100": GroupRule(policy=GroupPolicy.OPEN, require_mention=False)}), (),
     [("open_groups", "policy.groups[-100].policy")]),
    ("a group inherits open from '*' but requires mention itself",
     replace(SAFE, groups={"*": GroupRule(policy=GroupPolicy.OPEN, require_mention=False),
                           "-100": GroupRule(require_mention=True)}), (),
     [("open_groups", "policy.groups[*].policy")]),
    ("a group closes what '*' opens",
     replace(SAFE, groups={"*": GroupRule(policy=GroupPolicy.OPEN, require_mention=False),
                           "-100": GroupRule(policy=GroupPolicy.DISABLED)}), (),
     [("open_groups", "policy.groups[*].policy")]),
    ("group sender in one group is fine", SAFE, (("-100", "42"),), []),
    ("group sender in every group", SAFE, (("-100", "42"), ("*", "43")),
     [("wildcard_group_sender", "group_senders[1]")]),
    ("send default deny is fine", replace(SAFE, send_policy=SendPolicy(SendDefault.DENY, allow=("origin",))), (), []),
    ("channel send default allow", replace(SAFE, send_policy=SendPolicy(SendDefault.ALLOW)), (),
     [("send_default_allow", "policy.send_policy.default")]),
    ("an agent's send default allow",
     replace(SAFE, agent_send_policies={"ops": SendPolicy(SendDefault.ALLOW), "faq": SendPolicy()}), (),
     [("send_default_allow", "policy.agent_send_policies[ops].default")]),
    ("auto-approve by phone", replace(SAFE, auto_approve=AutoApprove(phone_patterns=("+4930*",))), (),
     [("auto_approve", "policy.auto_approve")]),
    ("auto-approve by email domain", replace(SAFE, auto_approve=AutoApprove(email_domains=("acme.com",))), (),
     [("auto_approve", "policy.auto_approve")]),
    ("everything at once, in code order",
     replace(SAFE, dm_policy=DmPolicy.OPEN, group_policy=GroupPolicy.OPEN, require_mention=False,
             send_policy=SendPolicy(SendDefault.ALLOW), auto_approve=AutoApprove(phone_patterns=("+1*",))),
     (("*", "42"),),
     [("open_dms", "policy.dm_policy"), ("open_groups", "policy.group_policy"),
      ("wildcard_group_sender", "group_senders[0]"), ("send_default_allow", "policy.send_policy.default"),
      ("auto_approve", "policy.auto_approve")]),
]  # fmt: skip


@pytest.mark.parametrize(("policy", "senders", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_channel_risks(policy: ChannelPolicy, senders: Senders, expected: list[tuple[str, str]]) -> None:
    assert codes_and_fields(policy, senders) == expected


def test_codes_are_stable() -> None:
    # Written into policy files' acknowledge lists: renaming one breaks them.
    assert RISK_CODES == (
        "open_dms",
        "open_groups",
        "wildcard_group_sender",
        "send_default_allow",
        "auto_approve",
    )


def test_messages_name_the_scope() -> None:
    policy = replace(SAFE, groups={"-100": GroupRule(policy=GroupPolicy.OPEN, require_mention=False)})
    [risk] = channel_risks(policy)
    assert "group -100" in risk.message
    [wild] = channel_risks(SAFE, (("*", "42"),))
    assert "user 42" in wild.message


@pytest.mark.parametrize(
    ("bindings", "expected"),
    [
        ((), True),
        ((NO_TOOLS,), False),
        ((replace(NO_TOOLS, tools_denied=("*", "shell")),), False),
        ((replace(NO_TOOLS, tools_denied=()), Binding(user_id="42", tools_denied=("*",))), True),
    ],
    ids=["no bindings", "catch-all denies *", "denies * and more", "only a user's binding denies *"],
)
def test_tools_possible(bindings: tuple[Binding, ...], expected: bool) -> None:
    assert tools_possible(replace(SAFE, bindings=bindings)) is expected
