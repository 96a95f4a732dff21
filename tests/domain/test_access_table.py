"""CheckUser's decision table: every combination of policy, subject state,
group rule, mention, command and binding that changes the answer.

Each row asserts the decision and reason, and for an ALLOW the agent,
permissions and tool lists (non-ALLOW verdicts must carry none of them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz_service.domain import mention
from authz_service.domain.access import Inbound, Verdict, binding_for, check_user
from authz_service.domain.model import (
    Binding,
    Channel,
    ChannelPolicy,
    ChatKind,
    Decision,
    DmPolicy,
    GroupPolicy,
    GroupRule,
    Platform,
    Subject,
    SubjectSource,
    SubjectStatus,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
USER = "42"
OTHER = "7"
GROUP = "-100"
GROUP2 = "-200"
CHANNEL_AGENT = "chan-agent"

A, D, P, B = Decision.ALLOW, Decision.DENY, Decision.PAIRING_REQUIRED, Decision.BLOCKED


def _subject(
    status: SubjectStatus = SubjectStatus.ALLOWED,
    source: SubjectSource = SubjectSource.ADMIN,
    expires_at: datetime | None = None,
    permissions: tuple[str, ...] = ("read",),
) -> Subject:
    return Subject("c", USER, status, source, permissions=permissions, expires_at=expires_at)


SUBJECTS: dict[str, Subject | None] = {
    "none": None,
    "allowlisted": _subject(),
    "paired": _subject(source=SubjectSource.PAIRING),
    "paired-fresh": _subject(source=SubjectSource.PAIRING, expires_at=NOW + timedelta(days=1)),
    "paired-expired": _subject(source=SubjectSource.PAIRING, expires_at=NOW - timedelta(seconds=1)),
    "allowlisted-expired": _subject(expires_at=NOW - timedelta(seconds=1)),
    "blocked": _subject(SubjectStatus.BLOCKED),
}


@dataclass(frozen=True)
class Row:
    policy: ChannelPolicy
    decision: Decision
    reason: str
    subject: str = "none"
    in_group: bool = False
    kind: ChatKind = ChatKind.GROUP
    group: str = GROUP
    user: str = USER
    mentioned: bool = False
    text: str = ""
    now: datetime | None = NOW
    agent: str = CHANNEL_AGENT
    permissions: tuple[str, ...] = ()
    tools_allowed: tuple[str, ...] = ()
    tools_denied: tuple[str, ...] = ()
    channel: bool = True  # False: the channel is not configured


def pol(**kw: object) -> ChannelPolicy:
    kw.setdefault("agent_id", CHANNEL_AGENT)
    return ChannelPolicy(**kw)  # type: ignore[arg-type]


def dm(policy: ChannelPolicy, decision: Decision, reason: str, **kw: object) -> Row:
    return Row(policy, decision, reason, kind=ChatKind.DIRECT, group="", **kw)  # type: ignore[arg-type]


def grp(policy: ChannelPolicy, decision: Decision, reason: str, **kw: object) -> Row:
    return Row(policy, decision, reason, **kw)  # type: ignore[arg-type]


def run(row: Row) -> Verdict:
    channel = Channel("t", "c", Platform.TELEGRAM, row.policy) if row.channel else None
    message = Inbound(row.user, row.kind, row.group, row.mentioned, row.text)
    return check_user(channel, SUBJECTS[row.subject], row.in_group, message, row.now)


def check(row: Row) -> None:
    v = run(row)
    assert (v.decision, v.reason, v.text) == (row.decision, row.reason, "")
    if row.decision is Decision.ALLOW:
        assert (v.agent_id, v.permissions, v.tools_allowed, v.tools_denied) == (
            row.agent, row.permissions, row.tools_allowed, row.tools_denied)  # fmt: skip
    else:
        assert (v.agent_id, v.permissions, v.tools_allowed, v.tools_denied) == ("", (), (), ())
    assert v.retry_after_seconds == 0


READ = ("read",)

# --- direct messages: dm_policy x subject state ---------------------------------------------------

DM_TABLE: dict[DmPolicy, dict[str, tuple[Decision, str, tuple[str, ...]]]] = {
    DmPolicy.PAIRING: {
        "none": (P, "pairing_required", ()),
        "allowlisted": (A, "allowlisted", READ),
        "paired": (A, "paired", READ),
        "paired-fresh": (A, "paired", READ),
        "paired-expired": (P, "renewal_required", ()),
        # Only a lapsed *pairing* is renewed; other expired allows start over.
        "allowlisted-expired": (P, "pairing_required", ()),
        "blocked": (B, "user_blocked", ()),
    },
    DmPolicy.ALLOWLIST: {
        "none": (D, "not_allowlisted", ()),
        "allowlisted": (A, "allowlisted", READ),
        "paired": (A, "paired", READ),
        "paired-fresh": (A, "paired", READ),
        "paired-expired": (D, "not_allowlisted", ()),
        "allowlisted-expired": (D, "not_allowlisted", ()),
        "blocked": (B, "user_blocked", ()),
    },
    DmPolicy.OPEN: {
        "none": (A, "dm_open", ()),
        "allowlisted": (A, "allowlisted", READ),
        "paired": (A, "paired", READ),
        "paired-fresh": (A, "paired", READ),
        # Open DMs still let an expired user in, but without their permissions.
        "paired-expired": (A, "dm_open", ()),
        "allowlisted-expired": (A, "dm_open", ()),
        "blocked": (B, "user_blocked", ()),
    },
    DmPolicy.DISABLED: {
        "none": (D, "dm_disabled", ()),
        "allowlisted": (D, "dm_disabled", ()),
        "paired": (D, "dm_disabled", ()),
        "paired-fresh": (D, "dm_disabled", ()),
        "paired-expired": (D, "dm_disabled", ()),
        "allowlisted-expired": (D, "dm_disabled", ()),
        "blocked": (B, "user_blocked", ()),
    },
}

DM_ROWS = [
    pytest.param(
        dm(pol(dm_policy=policy), decision, reason, subject=state, permissions=perms),
        id=f"dm-{policy.value}-{state}",
    )
    for policy, states in DM_TABLE.items()
    for state, (decision, reason, perms) in states.items()
]

DM_EXTRA_ROWS = [
    pytest.param(dm(pol(), D, "channel_not_configured", subject="allowlisted", channel=False),
                 id="dm-unknown-channel"),
    pytest.param(dm(pol(), P, "renewal_required", subject="paired-fresh", now=None),
                 id="dm-pairing-no-clock-counts-as-expired"),
    pytest.param(dm(pol(), A, "paired", subject="paired", now=None, permissions=READ),
                 id="dm-pairing-without-expiry-needs-no-clock"),
    pytest.param(dm(pol(), P, "pairing_required"), id="dm-default-policy-is-pairing"),
    # Group-only settings never affect a DM.
    pytest.param(dm(pol(dm_policy=DmPolicy.OPEN, group_policy=GroupPolicy.DISABLED,
                        groups={"*": GroupRule(policy=GroupPolicy.DISABLED, denied_commands=("deploy",))}),
                    A, "dm_open", text="/deploy"),
                 id="dm-ignores-group-rules-and-commands"),
]  # fmt: skip

# --- groups: policy and its inheritance --------------------------------------------------------

NO_MENTION = {"require_mention": False}
OPEN, ALLOWLIST, DISABLED = GroupPolicy.OPEN, GroupPolicy.ALLOWLIST, GroupPolicy.DISABLED


def g(**kw: object) -> GroupRule:
    return GroupRule(**kw)  # type: ignore[arg-type]


GROUP_POLICY_ROWS = [
    # channel level
    pytest.param(grp(pol(group_policy=OPEN, **NO_MENTION), A, "group_open"), id="group-channel-open"),
    pytest.param(grp(pol(group_policy=ALLOWLIST, **NO_MENTION), A, "group_sender_allowed", in_group=True),
                 id="group-channel-allowlist-sender-in"),
    pytest.param(grp(pol(group_policy=ALLOWLIST, **NO_MENTION), D, "group_sender_not_allowed"),
                 id="group-channel-allowlist-sender-out"),
    pytest.param(grp(pol(group_policy=ALLOWLIST, **NO_MENTION), D, "group_sender_not_allowed",
                     subject="paired"), id="group-allowlist-dm-paired-only-is-not-a-group-sender"),
    pytest.param(grp(pol(group_policy=ALLOWLIST, **NO_MENTION), D, "group_sender_not_allowed",
                     subject="allowlisted"), id="group-allowlist-dm-allowlisted-only-is-not-a-group-sender"),
    pytest.param(grp(pol(group_policy=DISABLED, **NO_MENTION), D, "group_disabled", in_group=True,
                     mentioned=True), id="group-channel-disabled-even-for-allowed-mentioning-sender"),
    pytest.param(grp(pol(group_policy=OPEN, **NO_MENTION), B, "user_blocked", subject="blocked", in_group=True),
                 id="group-blocked-user-is-blocked-first"),
    pytest.param(grp(pol(group_policy=DISABLED), B, "user_blocked", subject="blocked"),
                 id="group-blocked-before-group-disabled"),
    pytest.param(grp(pol(group_policy=OPEN), D, "channel_not_configured", channel=False),
                 id="group-unknown-channel"),
    # per-group override and "*" fallback
    pytest.param(grp(pol(group_policy=ALLOWLIST, groups={"*": g(policy=OPEN)}, **NO_MENTION), A, "group_open"),
                 id="group-star-overrides-channel"),
    pytest.param(grp(pol(group_policy=OPEN, groups={"*": g(policy=OPEN), GROUP: g(policy=DISABLED)},
                         **NO_MENTION), D, "group_disabled"), id="group-own-rule-overrides-star"),
    pytest.param(grp(pol(group_policy=OPEN, groups={"*": g(policy=OPEN), GROUP: g(policy=DISABLED)},
                         **NO_MENTION), A, "group_open", group=GROUP2), id="group-without-rule-uses-star"),
    pytest.param(grp(pol(group_policy=OPEN, groups={GROUP: g(policy=ALLOWLIST)}, **NO_MENTION),
                     D, "group_sender_not_allowed"), id="group-own-rule-overrides-channel"),
    pytest.param(grp(pol(group_policy=OPEN, groups={GROUP: g(policy=ALLOWLIST)}, **NO_MENTION),
                     A, "group_open", group=GROUP2), id="group-other-group-uses-channel"),
    pytest.param(grp(pol(group_policy=DISABLED, groups={"*": g(policy=ALLOWLIST), GROUP: g()}, **NO_MENTION),
                     A, "group_sender_allowed", in_group=True), id="group-empty-own-rule-inherits-star"),
    pytest.param(grp(pol(group_policy=OPEN, groups={"*": g(), GROUP: g()}, **NO_MENTION), A, "group_open"),
                 id="group-empty-rules-inherit-channel"),
    # permissions of an allowed DM subject ride along on a group ALLOW; an expired one's do not
    pytest.param(grp(pol(group_policy=OPEN, **NO_MENTION), A, "group_open", subject="allowlisted",
                     permissions=READ), id="group-allow-carries-dm-permissions"),
    pytest.param(grp(pol(group_policy=OPEN, **NO_MENTION), A, "group_open", subject="paired-expired"),
                 id="group-allow-drops-expired-permissions"),
]  # fmt: skip

# --- groups: mention gating -----------------------------------------------------------------------

PATTERN = r"\bhey bot\b"
MENTION_ROWS = [
    pytest.param(grp(pol(group_policy=OPEN), A, "group_open", mentioned=True), id="mention-native"),
    pytest.param(grp(pol(group_policy=OPEN, mention_patterns=(PATTERN,)), A, "group_open", text="well, HEY Bot!"),
                 id="mention-channel-pattern-case-insensitive"),
    pytest.param(grp(pol(group_policy=OPEN, mention_patterns=(PATTERN,)), D, "mention_required",
                     text="hey botany"), id="mention-pattern-no-match"),
    pytest.param(grp(pol(group_policy=OPEN), D, "mention_required", text="hey bot"),
                 id="mention-none-without-patterns"),
    pytest.param(grp(pol(group_policy=OPEN, **NO_MENTION), A, "group_open"), id="mention-not-required"),
    pytest.param(grp(pol(group_policy=OPEN), D, "mention_required"), id="mention-required-by-default"),
    # require_mention inheritance: own rule > "*" > channel
    pytest.param(grp(pol(group_policy=OPEN, require_mention=False, groups={"*": g(require_mention=True)}),
                     D, "mention_required"), id="mention-required-inherited-from-star"),
    pytest.param(grp(pol(group_policy=OPEN, groups={"*": g(require_mention=True),
                                                    GROUP: g(require_mention=False)}), A, "group_open"),
                 id="mention-own-rule-false-overrides-star-true"),
    pytest.param(grp(pol(group_policy=OPEN, require_mention=False, groups={GROUP: g(policy=OPEN)}),
                     A, "group_open"), id="mention-unset-in-rule-inherits-channel-false"),
    pytest.param(grp(pol(group_policy=OPEN, require_mention=True, groups={GROUP: g(policy=OPEN)}),
                     D, "mention_required"), id="mention-unset-in-rule-inherits-channel-true"),
    # pattern inheritance: a non-empty list replaces the inherited one
    pytest.param(grp(pol(group_policy=OPEN, mention_patterns=(PATTERN,), groups={GROUP: g(mention_patterns=("^!ask",))}),
                     D, "mention_required", text="hey bot"), id="mention-group-patterns-replace-channel"),
    pytest.param(grp(pol(group_policy=OPEN, mention_patterns=(PATTERN,), groups={GROUP: g(mention_patterns=("^!ask",))}),
                     A, "group_open", text="!ASK what time"), id="mention-group-pattern-matches"),
    pytest.param(grp(pol(group_policy=OPEN, groups={"*": g(mention_patterns=("^!ask",))}),
                     A, "group_open", text="!ask x"), id="mention-star-pattern-inherited"),
    pytest.param(grp(pol(group_policy=OPEN, mention_patterns=(PATTERN,), groups={GROUP: g(require_mention=True)}),
                     A, "group_open", text="hey bot"), id="mention-channel-pattern-inherited-by-rule"),
    # order: disabled before mention; mention before the sender allowlist
    pytest.param(grp(pol(group_policy=DISABLED), D, "group_disabled"), id="mention-after-group-disabled"),
    pytest.param(grp(pol(group_policy=ALLOWLIST), D, "mention_required"), id="mention-before-sender-allowlist"),
    pytest.param(grp(pol(group_policy=ALLOWLIST), A, "group_sender_allowed", in_group=True, mentioned=True),
                 id="mention-native-then-sender-allowed"),
    # RE2: catastrophic-looking patterns run in linear time and answer correctly
    pytest.param(grp(pol(group_policy=OPEN, mention_patterns=("(a+)+$",)), D, "mention_required",
                     text="a" * 4000 + "b"), id="re2-nested-quantifier-no-match"),
    pytest.param(grp(pol(group_policy=OPEN, mention_patterns=("(a+)+$",)), A, "group_open", text="a" * 4000),
                 id="re2-nested-quantifier-match"),
    pytest.param(grp(pol(group_policy=OPEN, mention_patterns=("(a+)+$",)), D, "mention_required",
                     text="a" * 16_000 + "b"), id="re2-long-text-cut-is-not-the-end"),
    pytest.param(grp(pol(group_policy=OPEN, mention_patterns=("(x+x+)+y",)), D, "mention_required",
                     text="x" * 16_000), id="re2-exponential-in-backtracking-engines"),
    pytest.param(grp(pol(group_policy=OPEN, mention_patterns=("hey bot",)), D, "mention_required",
                     text="x" * mention.MAX_SCAN + " hey bot"), id="re2-only-the-start-is-searched"),
]  # fmt: skip

# --- groups: commands --------------------------------------------------------------------------------

CMDS = pol(group_policy=OPEN, **NO_MENTION,
           groups={"*": g(allowed_commands=("status", "help"), denied_commands=("deploy",))})  # fmt: skip
DENY_ONLY = pol(group_policy=OPEN, **NO_MENTION, groups={"*": g(denied_commands=("deploy",))})

COMMAND_ROWS = [
    pytest.param(grp(CMDS, A, "group_open", text="/status"), id="cmd-allowed"),
    pytest.param(grp(CMDS, A, "group_open", text="/STATUS@MyBot please"), id="cmd-allowed-telegram-suffix"),
    pytest.param(grp(CMDS, D, "command_denied", text="/deploy prod"), id="cmd-denied"),
    pytest.param(grp(CMDS, D, "command_denied", text="/deploy@MyBot"), id="cmd-denied-telegram-suffix"),
    pytest.param(grp(CMDS, D, "command_not_allowed", text="/reboot"), id="cmd-not-in-allowed"),
    pytest.param(grp(CMDS, A, "group_open", text="please deploy /deploy"), id="cmd-plain-text-passes"),
    pytest.param(grp(CMDS, A, "group_open", text="hello"), id="cmd-not-a-command"),
    pytest.param(grp(CMDS, D, "command_malformed", text="/"), id="cmd-malformed-not-allowed"),
    pytest.param(grp(CMDS, D, "command_malformed", text="/ status"), id="cmd-malformed-space-not-allowed"),
    pytest.param(grp(CMDS, A, "group_open", text="\uff0f\uff53\uff54\uff41\uff54\uff55\uff53"),
                 id="cmd-full-width-allowed-after-nfkc"),
    pytest.param(grp(CMDS, A, "group_open", text="\u200b<@U0123> /status"), id="cmd-allowed-after-invisible-and-mention"),
    pytest.param(grp(DENY_ONLY, A, "group_open", text="/reboot"), id="cmd-deny-only-others-pass"),
    # A malformed command might be a denied one: refused under any command list.
    pytest.param(grp(DENY_ONLY, D, "command_malformed", text="/"), id="cmd-deny-only-malformed-refused"),
    pytest.param(grp(DENY_ONLY, D, "command_malformed", text="/\u043f\u043e\u043c\u043e\u0449\u044c"),
                 id="cmd-deny-only-non-ascii-name-refused"),
    pytest.param(grp(DENY_ONLY, A, "group_open", text="x" * 5000 + " /deploy"), id="cmd-long-plain-text-passes"),
    pytest.param(grp(DENY_ONLY, D, "command_denied", text="/Deploy-now"), id="cmd-denied-despite-punctuation"),
    pytest.param(grp(DENY_ONLY, D, "command_denied", text="@MyBot /deploy"), id="cmd-denied-after-mention"),
    # bypasses of a deny list: each is the command or malformed, never plain text
    pytest.param(grp(DENY_ONLY, D, "command_malformed", text=" " * 5000 + "/deploy"),
                 id="cmd-bypass-blanks-past-the-scan"),
    pytest.param(grp(DENY_ONLY, D, "command_malformed", text="@MyBot " * 700 + "/deploy"),
                 id="cmd-bypass-mentions-past-the-scan"),
    pytest.param(grp(DENY_ONLY, D, "command_malformed", text="\u200b" * 5000 + "/deploy"),
                 id="cmd-bypass-invisibles-past-the-scan"),
    pytest.param(grp(DENY_ONLY, D, "command_denied", text="\u200b/deploy"), id="cmd-bypass-zero-width-space"),
    pytest.param(grp(DENY_ONLY, D, "command_denied", text="\u2060\ufeff\u202e\u00ad/deploy"),
                 id="cmd-bypass-format-characters"),
    pytest.param(grp(DENY_ONLY, D, "command_denied", text="\u3164\u2800\u0301 /deploy"),
                 id="cmd-bypass-blank-letters-and-marks"),
    pytest.param(grp(DENY_ONLY, D, "command_denied", text="<!here> /deploy"), id="cmd-bypass-slack-here"),
    pytest.param(grp(DENY_ONLY, D, "command_denied", text="<#C1> /deploy"), id="cmd-bypass-slack-channel"),
    pytest.param(grp(DENY_ONLY, D, "command_denied", text="<#C1|eng>, <!subteam^S1>: /deploy"),
                 id="cmd-bypass-slack-tokens"),
    pytest.param(grp(DENY_ONLY, D, "command_denied", text="<:party:123> </deploy:456>"),
                 id="cmd-bypass-discord-command-mention"),
    pytest.param(grp(DENY_ONLY, D, "command_denied", text="\uff20MyBot\uff0c /deploy"),
                 id="cmd-bypass-full-width-mention"),
    pytest.param(grp(DENY_ONLY, D, "command_denied", text="\uff0fdeploy"), id="cmd-bypass-full-width-solidus"),
    pytest.param(grp(DENY_ONLY, D, "command_denied", text="\u2044deploy"), id="cmd-bypass-fraction-slash"),
    pytest.param(grp(DENY_ONLY, D, "command_denied", text="\u2215deploy"), id="cmd-bypass-division-slash"),
    pytest.param(grp(DENY_ONLY, D, "command_denied", text="\u29f8deploy"), id="cmd-bypass-big-solidus"),
    pytest.param(grp(DENY_ONLY, D, "command_denied", text="\uff0f\uff44\uff45\uff50\uff4c\uff4f\uff59"),
                 id="cmd-bypass-full-width-letters"),
    pytest.param(grp(DENY_ONLY, D, "command_malformed", text="/d\u0435ploy"), id="cmd-bypass-cyrillic-letter"),
    pytest.param(grp(DENY_ONLY, D, "command_malformed", text="/deplo\u0443 now"), id="cmd-bypass-cyrillic-last-letter"),
    pytest.param(grp(DENY_ONLY, D, "command_denied", text="/dep\u200bloy"), id="cmd-bypass-zero-width-in-name"),
    pytest.param(grp(pol(group_policy=OPEN, **NO_MENTION,
                         groups={"*": g(allowed_commands=("deploy",), denied_commands=("deploy",))}),
                     D, "command_denied", text="/deploy"), id="cmd-denied-wins-over-allowed"),
    # command lists inherit like the rest: own rule > "*"; the channel has none
    pytest.param(grp(pol(group_policy=OPEN, **NO_MENTION,
                         groups={"*": g(allowed_commands=("help",)), GROUP: g(allowed_commands=("status",))}),
                     A, "group_open", text="/status"), id="cmd-own-list-replaces-star"),
    pytest.param(grp(pol(group_policy=OPEN, **NO_MENTION,
                         groups={"*": g(allowed_commands=("help",)), GROUP: g(allowed_commands=("status",))}),
                     D, "command_not_allowed", text="/help"), id="cmd-star-list-not-merged"),
    pytest.param(grp(pol(group_policy=OPEN, **NO_MENTION, groups={GROUP: g(denied_commands=("deploy",))}),
                     A, "group_open", text="/deploy", group=GROUP2), id="cmd-other-group-unaffected"),
    # order: mention before commands, commands before the sender allowlist
    pytest.param(grp(pol(group_policy=OPEN, groups={"*": g(denied_commands=("deploy",))}),
                     D, "mention_required", text="/deploy"), id="cmd-unmentioned-command-is-not-for-us"),
    pytest.param(grp(pol(group_policy=OPEN, mention_patterns=("@mybot",), groups={"*": g(denied_commands=("deploy",))}),
                     D, "command_denied", text="@MyBot /deploy"), id="cmd-pattern-mention-then-denied"),
    pytest.param(grp(pol(group_policy=OPEN, groups={"*": g(allowed_commands=("status",))}),
                     A, "group_open", text="/status", mentioned=True), id="cmd-native-mention-then-allowed"),
    pytest.param(grp(pol(group_policy=ALLOWLIST, **NO_MENTION, groups={"*": g(denied_commands=("deploy",))}),
                     D, "command_denied", text="/deploy", in_group=True), id="cmd-denied-even-for-allowed-sender"),
    pytest.param(grp(pol(group_policy=ALLOWLIST, **NO_MENTION, groups={"*": g(allowed_commands=("status",))}),
                     D, "group_sender_not_allowed", text="/status"), id="cmd-allowed-then-sender-checked"),
    pytest.param(grp(pol(group_policy=DISABLED, **NO_MENTION, groups={"*": g(allowed_commands=("status",))}),
                     D, "group_disabled", text="/status"), id="cmd-after-group-disabled"),
]  # fmt: skip

# --- bindings: routing, permissions, tools -----------------------------------------------------------

B_USER_GROUP = Binding(USER, GROUP, "agent-ug", ("ug",), ("search",), ("shell",))
B_USER = Binding(USER, "*", "agent-u", ("u", "read"))
B_GROUP = Binding("*", GROUP, "agent-g", ("g",), ("*",), ())
B_ALL = Binding("*", "*", "", ("all",), (), ("rm",))
ALL_BINDINGS = pol(dm_policy=DmPolicy.OPEN, group_policy=OPEN, **NO_MENTION,
                   bindings=(B_ALL, B_GROUP, B_USER, B_USER_GROUP))  # fmt: skip
GROUP_SPECIFIC_ONLY = pol(dm_policy=DmPolicy.OPEN, group_policy=OPEN, **NO_MENTION,
                          bindings=(B_USER_GROUP, B_GROUP))  # fmt: skip

BINDING_ROWS = [
    pytest.param(grp(ALL_BINDINGS, A, "group_open", agent="agent-ug", permissions=("ug",),
                     tools_allowed=("search",), tools_denied=("shell",)), id="bind-user-and-group"),
    pytest.param(grp(ALL_BINDINGS, A, "group_open", group=GROUP2, agent="agent-u", permissions=("u", "read")),
                 id="bind-user-any-group"),
    pytest.param(grp(ALL_BINDINGS, A, "group_open", user=OTHER, agent="agent-g", permissions=("g",),
                     tools_allowed=("*",)), id="bind-any-user-in-group"),
    pytest.param(grp(ALL_BINDINGS, A, "group_open", user=OTHER, group=GROUP2, permissions=("all",),
                     tools_denied=("rm",)), id="bind-star-star-empty-agent-is-channel-agent"),
    pytest.param(dm(ALL_BINDINGS, A, "dm_open", agent="agent-u", permissions=("u", "read")),
                 id="bind-dm-user-binding-ignores-group-specific"),
    pytest.param(dm(ALL_BINDINGS, A, "dm_open", user=OTHER, permissions=("all",), tools_denied=("rm",)),
                 id="bind-dm-star-star"),
    pytest.param(dm(GROUP_SPECIFIC_ONLY, A, "dm_open"), id="bind-dm-never-uses-group-specific"),
    pytest.param(grp(GROUP_SPECIFIC_ONLY, A, "group_open", user=OTHER, group=GROUP2),
                 id="bind-none-matches-channel-agent"),
    pytest.param(grp(pol(group_policy=OPEN, **NO_MENTION), A, "group_open", subject="allowlisted",
                     permissions=READ), id="bind-none-own-permissions-only"),
    # permissions: the subject's own first, then the binding's, without duplicates
    pytest.param(dm(ALL_BINDINGS, A, "allowlisted", subject="allowlisted", agent="agent-u",
                    permissions=("read", "u")), id="bind-merges-and-dedups-permissions"),
    pytest.param(grp(ALL_BINDINGS, A, "group_open", subject="allowlisted", agent="agent-ug",
                     permissions=("read", "ug"), tools_allowed=("search",), tools_denied=("shell",)),
                 id="bind-group-merges-dm-permissions"),
    pytest.param(dm(ALL_BINDINGS, A, "dm_open", subject="paired-expired", agent="agent-u",
                    permissions=("u", "read")), id="bind-expired-subject-gets-binding-permissions-only"),
    pytest.param(grp(pol(group_policy=ALLOWLIST, **NO_MENTION, bindings=(B_USER_GROUP,)), A,
                     "group_sender_allowed", in_group=True, agent="agent-ug", permissions=("ug",),
                     tools_allowed=("search",), tools_denied=("shell",)), id="bind-on-group-sender-allowed"),
    # non-ALLOW verdicts carry no agent, permissions or tools, bindings or not
    pytest.param(grp(pol(group_policy=OPEN, bindings=(B_USER_GROUP,)), D, "mention_required"),
                 id="bind-not-on-mention-required"),
    pytest.param(grp(pol(group_policy=OPEN, **NO_MENTION, bindings=(B_USER_GROUP,),
                         groups={"*": g(denied_commands=("deploy",))}), D, "command_denied", text="/deploy"),
                 id="bind-not-on-command-denied"),
    pytest.param(grp(pol(group_policy=ALLOWLIST, **NO_MENTION, bindings=(B_USER_GROUP,)), D,
                     "group_sender_not_allowed", subject="allowlisted"), id="bind-not-on-sender-not-allowed"),
    pytest.param(dm(pol(bindings=(B_USER,)), P, "pairing_required"), id="bind-not-on-pairing-required"),
    pytest.param(dm(pol(bindings=(B_USER,)), B, "user_blocked", subject="blocked"), id="bind-not-on-blocked"),
]  # fmt: skip


@pytest.mark.parametrize(
    "row", DM_ROWS + DM_EXTRA_ROWS + GROUP_POLICY_ROWS + MENTION_ROWS + COMMAND_ROWS + BINDING_ROWS
)
def test_check_user(row: Row) -> None:
    check(row)


@pytest.mark.parametrize(
    ("user", "group", "expected"),
    [
        (USER, GROUP, B_USER_GROUP),
        (USER, GROUP2, B_USER),
        (OTHER, GROUP, B_GROUP),
        (OTHER, GROUP2, B_ALL),
        (USER, "", B_USER),
        (OTHER, "", B_ALL),
    ],
    ids=["user+group", "user+star", "star+group", "star+star", "dm-user", "dm-star"],
)
def test_binding_for_is_order_independent(user: str, group: str, expected: Binding) -> None:
    """Specificity, not list order, picks the binding."""
    bindings = (B_ALL, B_GROUP, B_USER, B_USER_GROUP)
    for order in (bindings, bindings[::-1], bindings[1:] + bindings[:1]):
        assert binding_for(pol(bindings=order), user, group) == expected
    assert binding_for(pol(), user, group) is None
    assert binding_for(pol(bindings=(B_USER_GROUP, B_GROUP)), user, "") is None


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("hello", None),
        ("", None),
        ("@alice hi", None),
        ("/deploy", "deploy"),
        ("  /Deploy now", "deploy"),
        ("/deploy@MyBot now", "deploy"),
        ("/deploy-now", "deploy"),
        ("@MyBot /deploy", "deploy"),
        ("<@U0123> /deploy", "deploy"),
        ("<@!123>, /deploy", "deploy"),
        ("/", ""),
        ("/ ", ""),
        ("/\n", ""),
        ("/ deploy", ""),
        ("/ü", ""),
        ("/" + "a" * 65, ""),
        # the scan is bounded: what it cannot settle is malformed, never plain text
        (" " * 5000 + "/deploy", ""),
        ("@MyBot " * 700 + "/deploy", ""),
        ("@a " * 1364 + "<@" + "U" * 10_000 + "> /deploy", ""),  # a token cut by the scan
        (" " * (mention.MAX_SCAN - 1) + "/deploy now", "deploy"),  # the name is read past the scan
        ("/" + "\u200b" * 100 + "deploy", ""),  # the name runs past its window
        ("x" * 1_000_000, None),
        ("hello " + "x" * 5000, None),
        ("@alice", None),
        ("<@U0123>", None),
        # invisible characters, blanks and marks before the command
        ("\u200b/deploy", "deploy"),
        ("\u0378\ue000\u0301\u3164 /deploy", "deploy"),
        ("\u00a8/deploy", None),  # a visible diaeresis
        # Slack and Discord tokens, full-width mentions and separators
        ("<!here> /deploy", "deploy"),
        ("<#C1|eng> - /deploy", "deploy"),
        ("<@U1|bob>: /deploy", "deploy"),
        ("<:party:123> /deploy", "deploy"),
        ("</deploy:123>", "deploy"),
        ("\uff20MyBot\uff1a /deploy", "deploy"),
        ("@Вася /deploy", "deploy"),
        ("<3 /deploy", None),
        ("please /deploy", None),
        # slash look-alikes, NFKC and glued look-alike letters
        ("\uff0fdeploy", "deploy"),
        ("\u2215Deploy@MyBot", "deploy"),
        ("/\U0001d41d\U0001d41e\U0001d429\U0001d425\U0001d428\U0001d432", "deploy"),  # mathematical bold
        ("/d\u0435ploy", ""),
        ("/deploy\u0301", ""),  # ý
        ("/dep\u0336loy", ""),  # a combining mark
        ("/dep\u200bloy", "deploy"),
        ("/deploy\u2014now", "deploy"),
        ("/deploy\U0001f680", "deploy"),
    ],
)
def test_command_of(text: str, command: str | None) -> None:
    assert mention.command_of(text) == command


_BLANK = st.sampled_from(
    " \n\t\u00a0\u2003\u3000\u200b\u200e\u202e\u2060\ufeff\u00ad\u3164\u2800\u0301\ufe0f"
)
_LEAD = st.lists(
    _BLANK
    | st.characters(categories=["Cf", "Zs", "Mn", "Me", "Co"])
    | st.sampled_from(
        ["@MyBot", "@my_bot,", "<@U0123>", "<@!123>:", "<!here>", "<#C1|eng> -", "<:x:1>", "\uff20bot\uff0c"]
    ),
    max_size=30,
)


@given(_LEAD, st.sampled_from([0, 1000, mention.MAX_SCAN]),
       st.sampled_from(["/", "\uff0f", "\u2044", "\u2215", "\u29f8"]),
       st.sampled_from(["deploy", "Deploy", "\uff44\uff45\uff50\uff4c\uff4f\uff59"]),
       st.sampled_from(["", " ", "@MyBot", "-", "\n"]), st.text(max_size=20))  # fmt: skip
def test_nothing_before_a_command_hides_it(
    lead: list[str], pad: int, slash: str, name: str, after: str, rest: str
) -> None:
    """Blanks, invisible characters and mentions in any number before a command
    leave it the command or malformed, never plain text or another command."""
    text = " " * pad + "".join(lead) + slash + name + (after + rest if after else "")
    assert mention.command_of(text) in ("deploy", "")


REASONS = {"group_open", "mention_required", "command_denied", "command_not_allowed", "command_malformed"}
FUZZ_POLICY = pol(
    group_policy=OPEN,
    mention_patterns=(r"\bhey bot\b", "(a+)+$"),
    groups={"*": g(allowed_commands=("status",), denied_commands=("deploy",))},
)


@given(st.text(alphabet=st.sampled_from("/@<>!: \n\tabdeoy_-ü"), max_size=40) | st.text(max_size=200),
       st.booleans())  # fmt: skip
def test_any_text_gets_a_group_verdict(text: str, mentioned: bool) -> None:
    """Commands and mentions parse any text without raising."""
    command = mention.command_of(text)
    assert command is None or command == "" or re.fullmatch("[a-z0-9_]{1,64}", command)
    v = run(grp(FUZZ_POLICY, A, "", text=text, mentioned=mentioned))
    assert v.reason in REASONS
    assert (v.decision is Decision.ALLOW) == (v.reason == "group_open")
