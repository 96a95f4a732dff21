"""CheckUser precedence as a pure function: no database, no gRPC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from authz_service.domain.access import Inbound, check_user
from authz_service.domain.model import (
    Channel,
    ChannelPolicy,
    ChatKind,
    Decision,
    DmPolicy,
    GroupPolicy,
    Platform,
    Subject,
    SubjectSource,
    SubjectStatus,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DM = Inbound("42", ChatKind.DIRECT)


def channel(**kw: object) -> Channel:
    return Channel("t", "c", Platform.TELEGRAM, ChannelPolicy(**kw))  # type: ignore[arg-type]


def subject(status: SubjectStatus = SubjectStatus.ALLOWED, source: SubjectSource = SubjectSource.ADMIN,
            expires_at: datetime | None = None) -> Subject:  # fmt: skip
    return Subject("c", "42", status, source, permissions=("read",), expires_at=expires_at)


def test_unknown_channel_denies_silently() -> None:
    v = check_user(None, subject(), True, DM, NOW)
    assert (v.decision, v.reason, v.text) == (Decision.DENY, "channel_not_configured", "")


def test_default_policy_is_pairing_never_open() -> None:
    assert ChannelPolicy().dm_policy is DmPolicy.PAIRING
    assert check_user(channel(), None, False, DM, NOW).decision is Decision.PAIRING_REQUIRED


@pytest.mark.parametrize("dm", list(DmPolicy))
def test_blocklist_wins_over_every_policy(dm: DmPolicy) -> None:
    v = check_user(channel(dm_policy=dm), subject(SubjectStatus.BLOCKED), True, DM, NOW)
    assert v.decision is Decision.BLOCKED


@pytest.mark.parametrize(
    ("dm", "decision", "reason"),
    [
        (DmPolicy.PAIRING, Decision.PAIRING_REQUIRED, "pairing_required"),
        (DmPolicy.ALLOWLIST, Decision.DENY, "not_allowlisted"),
        (DmPolicy.OPEN, Decision.ALLOW, "dm_open"),
        (DmPolicy.DISABLED, Decision.DENY, "dm_disabled"),
    ],
)
def test_unknown_user_per_dm_policy(dm: DmPolicy, decision: Decision, reason: str) -> None:
    v = check_user(channel(dm_policy=dm), None, False, DM, NOW)
    assert (v.decision, v.reason, v.text) == (decision, reason, "")


def test_allowlisted_and_paired_users_are_allowed_with_permissions() -> None:
    v = check_user(channel(dm_policy=DmPolicy.ALLOWLIST, agent_id="ops"), subject(), False, DM, NOW)
    assert (v.decision, v.reason, v.agent_id, v.permissions) == (
        Decision.ALLOW,
        "allowlisted",
        "ops",
        ("read",),
    )
    v = check_user(channel(), subject(source=SubjectSource.PAIRING), False, DM, NOW)
    assert (v.decision, v.reason) == (Decision.ALLOW, "paired")


def test_disabled_dms_deny_even_allowlisted_users() -> None:
    assert (
        check_user(channel(dm_policy=DmPolicy.DISABLED), subject(), False, DM, NOW).decision is Decision.DENY
    )


def test_expired_pairing_requires_pairing_again() -> None:
    old = subject(source=SubjectSource.PAIRING, expires_at=NOW - timedelta(seconds=1))
    v = check_user(channel(), old, False, DM, NOW)
    assert (v.decision, v.reason) == (Decision.PAIRING_REQUIRED, "renewal_required")
    fresh = subject(source=SubjectSource.PAIRING, expires_at=NOW + timedelta(days=1))
    assert check_user(channel(), fresh, False, DM, NOW).decision is Decision.ALLOW
    # Without a clock an expiring pairing is treated as expired.
    assert check_user(channel(), fresh, False, DM, None).decision is Decision.PAIRING_REQUIRED


def test_expired_user_on_allowlist_channel_is_denied_not_allowed() -> None:
    old = subject(expires_at=NOW - timedelta(seconds=1))
    assert check_user(channel(dm_policy=DmPolicy.ALLOWLIST), old, False, DM, NOW).decision is Decision.DENY


def group(mentioned: bool = True) -> Inbound:
    return Inbound("42", ChatKind.GROUP, "-100", mentioned)


def test_group_rules() -> None:
    assert (
        check_user(channel(group_policy=GroupPolicy.DISABLED), None, True, group(), NOW).reason
        == "group_disabled"
    )
    assert (
        check_user(channel(group_policy=GroupPolicy.OPEN), None, False, group(False), NOW).reason
        == "mention_required"
    )
    v = check_user(
        channel(group_policy=GroupPolicy.OPEN, require_mention=False), None, False, group(False), NOW
    )
    assert (v.decision, v.reason) == (Decision.ALLOW, "group_open")
    assert check_user(channel(), None, True, group(), NOW).decision is Decision.ALLOW


def test_dm_pairing_never_admits_a_group_sender() -> None:
    """OpenClaw leaked DM approvals into group allowlists."""
    paired = subject(source=SubjectSource.PAIRING)
    v = check_user(channel(group_policy=GroupPolicy.ALLOWLIST), paired, False, group(), NOW)
    assert (v.decision, v.reason) == (Decision.DENY, "group_sender_not_allowed")


def test_blocked_user_is_blocked_in_groups_too() -> None:
    v = check_user(channel(group_policy=GroupPolicy.OPEN), subject(SubjectStatus.BLOCKED), True, group(), NOW)
    assert v.decision is Decision.BLOCKED


@pytest.mark.parametrize("policy", [{"owner_id": "42"}, {"owner_id": "7", "approvers": ("42",)}])
@pytest.mark.parametrize("dm", [DmPolicy.PAIRING, DmPolicy.ALLOWLIST])
def test_the_channels_own_approvers_reach_the_agent_without_pairing(
    policy: dict[str, object], dm: DmPolicy
) -> None:
    v = check_user(channel(dm_policy=dm, agent_id="support", **policy), None, False, DM, NOW)
    assert (v.decision, v.reason, v.agent_id) == (Decision.ALLOW, "approver", "support")


def test_trusted_approvers_can_be_turned_off_and_never_outrank_a_block_or_disabled_dms() -> None:
    off = check_user(channel(owner_id="42", approvers_trusted=False), None, False, DM, NOW)
    assert (off.decision, off.reason) == (Decision.PAIRING_REQUIRED, "pairing_required")
    blocked = check_user(channel(owner_id="42"), subject(SubjectStatus.BLOCKED), False, DM, NOW)
    assert blocked.decision is Decision.BLOCKED
    disabled = check_user(channel(owner_id="42", dm_policy=DmPolicy.DISABLED), None, False, DM, NOW)
    assert (disabled.decision, disabled.reason) == (Decision.DENY, "dm_disabled")
    other = check_user(channel(owner_id="7", approvers=("8",)), None, False, DM, NOW)
    assert other.decision is Decision.PAIRING_REQUIRED
