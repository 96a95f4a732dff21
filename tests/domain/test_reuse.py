"""Which answers a client may reuse (domain.reuse), as a pure function."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from authz_service.domain.access import Inbound, Verdict
from authz_service.domain.model import (
    Channel,
    ChannelPolicy,
    ChatKind,
    Decision,
    GroupPolicy,
    GroupRule,
    Platform,
    RateLimit,
    SendDefault,
    SendPolicy,
    Subject,
    SubjectSource,
    SubjectStatus,
    TimeRestriction,
    TimeWindow,
)
from authz_service.domain.reuse import (
    MAX_AGE_SECONDS,
    Invalidation,
    ReuseHint,
    for_check,
    for_send,
    invalidation_of,
)
from authz_service.domain.send import SendDecision

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
DM = Inbound("42", ChatKind.DIRECT)
GROUP = Inbound("42", ChatKind.GROUP, "-100", mentioned=True, text="hi")
ALLOW = Verdict(Decision.ALLOW, "allowlisted")


def channel(**kw: object) -> Channel:
    return Channel("t", "c", Platform.TELEGRAM, ChannelPolicy(**kw))  # type: ignore[arg-type]


def subject(expires_at: datetime | None = None) -> Subject:
    return Subject("c", "42", SubjectStatus.ALLOWED, SubjectSource.ADMIN, expires_at=expires_at)


def test_a_direct_allow_is_reusable_until_an_invalidation_of_the_user() -> None:
    assert for_check(channel(), subject(), DM, ALLOW, NOW) == ReuseHint("c", "42", MAX_AGE_SECONDS)


@pytest.mark.parametrize(
    "decision", [Decision.DENY, Decision.BLOCKED, Decision.PAIRING_REQUIRED, Decision.RATE_LIMITED]
)
def test_nothing_but_allow_is_reusable(decision: Decision) -> None:
    assert for_check(channel(), subject(), DM, Verdict(decision, "x"), NOW) is None


def test_no_reuse_without_a_channel_or_a_clock() -> None:
    assert for_check(None, subject(), DM, ALLOW, NOW) is None
    assert for_check(channel(), subject(), DM, ALLOW, None) is None


def test_a_rate_limited_channel_is_never_reused() -> None:
    assert for_check(channel(rate_limit=RateLimit(60, 10)), subject(), DM, ALLOW, NOW) is None


@pytest.mark.parametrize(
    ("rule", "reusable"),
    [
        (GroupRule(policy=GroupPolicy.OPEN, require_mention=False), True),
        (GroupRule(policy=GroupPolicy.OPEN, require_mention=True), False),
        (GroupRule(policy=GroupPolicy.OPEN, require_mention=False, allowed_commands=("help",)), False),
        (GroupRule(policy=GroupPolicy.OPEN, require_mention=False, denied_commands=("rm",)), False),
        (GroupRule(policy=GroupPolicy.OPEN, require_mention=False, rate_limit=RateLimit(60, 5)), False),
    ],
)
def test_a_group_allow_is_reusable_only_without_rules_that_read_the_message(
    rule: GroupRule, reusable: bool
) -> None:
    hint = for_check(channel(groups={"*": rule}), None, GROUP, ALLOW, NOW)
    assert (hint is not None) is reusable


def test_a_time_limited_pairing_is_reused_until_its_expiry_at_most() -> None:
    hint = for_check(channel(), subject(NOW + timedelta(seconds=90)), DM, ALLOW, NOW)
    assert hint is not None and hint.max_age_seconds == 89
    assert for_check(channel(), subject(NOW + timedelta(seconds=1)), DM, ALLOW, NOW) is None


def test_a_send_allow_is_reusable_only_without_time_windows() -> None:
    allowed = SendDecision(True, "", "telegram:1")
    plain = SendPolicy(default=SendDefault.ALLOW)
    assert for_send(channel(send_policy=plain), "a", allowed) == ReuseHint("c", "", MAX_AGE_SECONDS)
    windowed = SendPolicy(
        default=SendDefault.ALLOW,
        time_restrictions=(TimeRestriction(("telegram:9",), (TimeWindow((), 0, 60),)),),
    )
    assert for_send(channel(send_policy=windowed), "a", allowed) is None
    # The agent's own policy is the one in force.
    assert for_send(channel(send_policy=plain, agent_send_policies={"a": windowed}), "a", allowed) is None
    assert for_send(channel(send_policy=plain), "a", SendDecision(False, "no")) is None


def test_notifications_become_invalidations() -> None:
    assert invalidation_of("subjects t c 42") == ("t", Invalidation("c", "42"))
    assert invalidation_of("group_senders t c 42") == ("t", Invalidation("c", "42"))
    assert invalidation_of("channels t c") == ("t", Invalidation("c"))
    assert invalidation_of("tenants t") == ("t", Invalidation(everything=True))
    assert invalidation_of("api_keys t k") == ("t", None)
    assert invalidation_of("something new") is None
