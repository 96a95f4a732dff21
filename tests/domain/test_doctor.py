"""`authz doctor`'s checks (domain.doctor). Pure, table-driven."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from authz_service.domain.doctor import (
    Finding,
    Severity,
    Snapshot,
    TenantView,
    fails,
    findings,
    name_only_denies,
    summary,
)
from authz_service.domain.model import (
    Approval,
    ApprovalStatus,
    AutoApprove,
    Binding,
    Channel,
    ChannelPolicy,
    DmPolicy,
    GroupPolicy,
    GroupRule,
    Platform,
    RateLimit,
    SendDefault,
    SendPolicy,
    Subject,
    SubjectSource,
    SubjectStatus,
)
from authz_service.domain.send import evaluate

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
# A quiet channel: allowlist DMs, a send policy, an owner. Doctor has nothing to say.
QUIET = ChannelPolicy(dm_policy=DmPolicy.ALLOWLIST, owner_id="1", send_policy=SendPolicy(allow=("origin",)))
NO_TOOLS = Binding(user_id="*", group_id="*", tools_denied=("*",))
LIMIT = RateLimit(60, 10)


def snap(
    policy: ChannelPolicy = QUIET,
    *,
    platform: Platform = Platform.TELEGRAM,
    tenant_approvers: tuple[str, ...] = (),
    subjects: tuple[Subject, ...] = (),
    senders: tuple[tuple[str, str], ...] = (),
    pending: tuple[Approval, ...] = (),
) -> Snapshot:
    return Snapshot(
        tenant=TenantView(approvers=tenant_approvers),
        channels=(Channel("t", "ch", platform, policy),),
        subjects={"ch": subjects},
        group_senders={"ch": senders},
        pending=pending,
        now=NOW,
    )


def paired(user: str, age_days: int, expires: datetime | None = None) -> Subject:
    return Subject("ch", user, SubjectStatus.ALLOWED, SubjectSource.PAIRING,
                   updated_at=NOW - timedelta(days=age_days), expires_at=expires)  # fmt: skip


def request(expires_in: timedelta, status: ApprovalStatus = ApprovalStatus.PENDING) -> Approval:
    return Approval(
        "apr_x", "ch", "7", status, created_at=NOW - timedelta(minutes=10), expires_at=NOW + expires_in
    )


def codes(s: Snapshot) -> list[tuple[str, str]]:
    return [(f.severity.value, f.code) for f in findings(s)]


CASES: list[tuple[str, Snapshot, list[tuple[str, str]]]] = [
    ("quiet channel", snap(), []),
    ("open DMs with tools", snap(replace(QUIET, dm_policy=DmPolicy.OPEN, rate_limit=LIMIT)),
     [("critical", "open_dms")]),
    ("open DMs without tools", snap(replace(QUIET, dm_policy=DmPolicy.OPEN, rate_limit=LIMIT, bindings=(NO_TOOLS,))),
     [("low", "open_dms_no_tools")]),
    ("open DMs without a rate limit", snap(replace(QUIET, dm_policy=DmPolicy.OPEN, bindings=(NO_TOOLS,))),
     [("medium", "no_rate_limit"), ("low", "open_dms_no_tools")]),
    ("open groups without mention",
     snap(replace(QUIET, group_policy=GroupPolicy.OPEN, require_mention=False, rate_limit=LIMIT)),
     [("high", "open_groups")]),
    ("open groups with mention", snap(replace(QUIET, group_policy=GroupPolicy.OPEN, rate_limit=LIMIT)),
     [("medium", "open_groups_mention")]),
    ("open group with its own rate limit",
     snap(replace(QUIET, groups={"-100": GroupRule(policy=GroupPolicy.OPEN, rate_limit=LIMIT)})),
     [("medium", "open_groups_mention")]),
    ("open group without any rate limit",
     snap(replace(QUIET, groups={"-100": GroupRule(policy=GroupPolicy.OPEN)})),
     [("medium", "no_rate_limit"), ("medium", "open_groups_mention")]),
    ("wildcard group sender", snap(senders=(("*", "42"), ("-100", "43"))), [("medium", "wildcard_group_sender")]),
    ("send default allow", snap(replace(QUIET, send_policy=SendPolicy(SendDefault.ALLOW))),
     [("high", "send_default_allow")]),
    ("agent send default allow",
     snap(replace(QUIET, agent_send_policies={"ops": SendPolicy(SendDefault.ALLOW)})),
     [("high", "send_default_allow")]),
    ("no send policy", snap(replace(QUIET, send_policy=None)), [("info", "no_send_policy")]),
    ("name-only deny under default allow",
     snap(replace(QUIET, send_policy=SendPolicy(SendDefault.ALLOW, deny=("#exec",))), platform=Platform.SLACK),
     [("high", "send_default_allow"), ("medium", "name_only_deny")]),
    ("an agent's name-only deny under default allow",
     snap(replace(QUIET, agent_send_policies={"ops": SendPolicy(SendDefault.ALLOW, deny=("@board",))})),
     [("high", "send_default_allow"), ("medium", "name_only_deny")]),
    ("name-only deny under default deny", snap(replace(QUIET, send_policy=SendPolicy(deny=("#exec",)))), []),
    ("pairing with an owner", snap(replace(QUIET, dm_policy=DmPolicy.PAIRING)), []),
    ("pairing with nobody to approve from chat", snap(replace(QUIET, dm_policy=DmPolicy.PAIRING, owner_id="")),
     [("medium", "pairing_no_approver")]),
    ("pairing with a tenant approver on another platform",
     snap(replace(QUIET, dm_policy=DmPolicy.PAIRING, owner_id=""), tenant_approvers=("slack:T1:U1",)),
     [("medium", "pairing_no_approver")]),
    ("pairing with a tenant approver on this platform",
     snap(replace(QUIET, dm_policy=DmPolicy.PAIRING, owner_id=""), tenant_approvers=("telegram:9",)), []),
    ("allowlist channel needs no approver", snap(replace(QUIET, owner_id="")), []),
    ("quorum of 2 with owner and one approver",
     snap(replace(QUIET, dm_policy=DmPolicy.PAIRING, approvers=("2",), required_approvals=2)), [("medium", "quorum_one_holder")]),
    ("quorum of 2, the owner is also the approver",
     snap(replace(QUIET, dm_policy=DmPolicy.PAIRING, approvers=("1",), required_approvals=2)),
     [("high", "quorum_unreachable"), ("medium", "quorum_one_holder")]),
    ("quorum of 3: owner, approver and tenant approver",
     snap(replace(QUIET, dm_policy=DmPolicy.PAIRING, approvers=("2",), required_approvals=3),
          tenant_approvers=("telegram:3",)), [("medium", "quorum_one_holder")]),
    ("quorum of 3, the tenant approver is the owner",
     snap(replace(QUIET, dm_policy=DmPolicy.PAIRING, approvers=("2",), required_approvals=3),
          tenant_approvers=("telegram:1",)),
     [("high", "quorum_unreachable"), ("medium", "quorum_one_holder")]),
    ("quorum with nobody at all",
     snap(replace(QUIET, dm_policy=DmPolicy.PAIRING, owner_id="", required_approvals=2)),
     [("high", "quorum_unreachable"), ("medium", "pairing_no_approver"), ("medium", "quorum_one_holder")]),
    ("auto-approve and quorum on an allowlist channel do nothing",
     snap(replace(QUIET, auto_approve=AutoApprove(email_domains=("acme.com",)), required_approvals=2)),
     [("medium", "auto_approve"), ("info", "pairing_settings_unused")]),
    ("auto-approve", snap(replace(QUIET, dm_policy=DmPolicy.PAIRING, auto_approve=AutoApprove(("+4930*",)))),
     [("medium", "auto_approve")]),
    ("stale pairings, counted",
     snap(subjects=(paired("7", 91), paired("8", 200), paired("9", 89),
                    paired("10", 400, expires=NOW + timedelta(days=1)),
                    Subject("ch", "11", SubjectStatus.ALLOWED, SubjectSource.ADMIN, updated_at=NOW - timedelta(days=400)),
                    Subject("ch", "12", SubjectStatus.BLOCKED, SubjectSource.PAIRING, updated_at=NOW - timedelta(days=400)))),
     [("low", "stale_pairings")]),
    ("old pairings on a channel whose pairings expire",
     snap(replace(QUIET, pairing_ttl_seconds=30 * 86400), subjects=(paired("7", 200),)), []),
    ("expired pending requests", snap(pending=(request(-timedelta(minutes=1)), request(timedelta(minutes=3)))),
     [("info", "expired_pending")]),
    ("live pending requests", snap(pending=(request(timedelta(minutes=3)),)), []),
]  # fmt: skip


@pytest.mark.parametrize(("snapshot", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_findings(snapshot: Snapshot, expected: list[tuple[str, str]]) -> None:
    assert codes(snapshot) == expected


SLACK_ALLOW = SendPolicy(
    SendDefault.ALLOW, deny=("#exec", "slack:#Board", "C0HR0001", "<#C0PAY001|pay>", "@bob")
)


@pytest.mark.parametrize(
    ("aliases", "expected"),
    [
        ({}, ["#exec", "slack:#Board", "@bob"]),  # ids and mentions of ids are ids
        ({"slack:#exec": "slack:C0EXEC1"}, ["slack:#Board", "@bob"]),  # the name resolves to its id
        (
            {"C0EXEC1": "#exec", "board": "C0BOARD1"},
            ["@bob"],
        ),  # the id resolves to the name; "board" is #board
        ({"#exec": "#boss"}, ["#exec", "slack:#Board", "@bob"]),  # a name joined to another name
        ({"a": "b", "b": "a"}, ["#exec", "slack:#Board", "@bob"]),  # a loop elsewhere changes nothing
        ({"exec": "C0EXEC1", "#exec": "C0EXEC2"}, []),  # one name twice: every send fails closed
    ],
)
def test_name_only_denies(aliases: dict[str, str], expected: list[str]) -> None:
    assert name_only_denies(SLACK_ALLOW, aliases, Platform.SLACK) == expected
    assert name_only_denies(replace(SLACK_ALLOW, default=SendDefault.DENY), aliases, Platform.SLACK) == []


def test_a_name_only_deny_really_is_bypassed_by_the_id() -> None:
    # The finding describes what send.evaluate does, not a guess.
    policy = ChannelPolicy(send_policy=SLACK_ALLOW)
    for target in ("#exec", "slack:#EXEC", "exec"):
        assert not evaluate(policy, "", target, "", platform=Platform.SLACK, listing=False).allow
    for target in ("C0EXEC1", "slack:C0EXEC1", "<#C0EXEC1|exec>"):
        assert evaluate(policy, "", target, "", platform=Platform.SLACK, listing=False).allow
    joined = replace(policy, aliases={"slack:#exec": "slack:C0EXEC1"})
    for target in ("#exec", "C0EXEC1", "<#C0EXEC1|exec>"):
        assert not evaluate(joined, "", target, "", platform=Platform.SLACK, listing=False).allow


def test_stale_pairings_message_counts() -> None:
    [f] = findings(snap(subjects=(paired("7", 91), paired("8", 200))))
    assert f.message.startswith("2 paired users paired more than 90 days ago")
    assert f.channel_id == "ch"


def test_unused_pairing_settings_are_named() -> None:
    policy = replace(QUIET, required_approvals=3, auto_approve=AutoApprove(("+1*",)))
    unused = next(f for f in findings(snap(policy)) if f.code == "pairing_settings_unused")
    assert unused.message.startswith(
        "auto_approve and required_approvals have no effect: dm_policy is allowlist"
    )


def test_quorum_message_counts_voters() -> None:
    found = findings(snap(replace(QUIET, dm_policy=DmPolicy.PAIRING, approvers=("1",), required_approvals=3)))
    f = next(f for f in found if f.code == "quorum_unreachable")
    assert "required_approvals is 3 but only 1 person can approve" in f.message


def test_sorted_by_severity_then_channel() -> None:
    open_dms = replace(QUIET, dm_policy=DmPolicy.OPEN, rate_limit=LIMIT)
    s = Snapshot(
        tenant=TenantView(),
        channels=(
            Channel("t", "b", Platform.TELEGRAM, replace(QUIET, send_policy=None)),
            Channel("t", "a", Platform.TELEGRAM, replace(QUIET, send_policy=None)),
            Channel("t", "c", Platform.TELEGRAM, open_dms),
        ),
        subjects={},
        group_senders={},
        pending=(),
        now=NOW,
    )
    assert [(f.severity.value, f.channel_id) for f in findings(s)] == [
        ("critical", "c"),
        ("info", "a"),
        ("info", "b"),
    ]


def finding(severity: Severity) -> Finding:
    return Finding(severity, "x", "ch", "m", "f")


@pytest.mark.parametrize(
    ("severities", "threshold", "expected"),
    [
        ([], Severity.INFO, False),
        ([Severity.MEDIUM], Severity.HIGH, False),
        ([Severity.MEDIUM, Severity.HIGH], Severity.HIGH, True),
        ([Severity.CRITICAL], Severity.HIGH, True),
        ([Severity.INFO], Severity.INFO, True),
        ([Severity.CRITICAL], None, False),
    ],
    ids=["none", "below", "at", "above", "info threshold", "never"],
)
def test_fails(severities: list[Severity], threshold: Severity | None, expected: bool) -> None:
    assert fails([finding(s) for s in severities], threshold) is expected


def test_summary_counts_every_severity() -> None:
    assert summary([finding(Severity.HIGH), finding(Severity.HIGH), finding(Severity.INFO)]) == {
        "critical": 0,
        "high": 2,
        "medium": 0,
        "low": 0,
        "info": 1,
    }
