"""Rate limit arithmetic as pure functions: which buckets a message draws on,
and the RATE_LIMITED verdict with its retry-after."""

from __future__ import annotations

import pytest

from authz_service.domain.access import Inbound
from authz_service.domain.model import ChannelPolicy, ChatKind, Decision, GroupRule, RateLimit
from authz_service.domain.rate import GROUP_LIMITED, USER_LIMITED, Bucket, buckets, refused, retry_after

USER = RateLimit(60, 5)  # one a minute
GROUP = RateLimit(3600, 10)  # one a second
STAR = RateLimit(7200, 3)
DM = Inbound("42", ChatKind.DIRECT)


def in_group(group: str = "-100") -> Inbound:
    return Inbound("42", ChatKind.GROUP, group, mentioned=True)


def scopes(policy: ChannelPolicy, message: Inbound) -> list[tuple[str, RateLimit, str]]:
    return [(b.scope, b.limit, b.reason) for b in buckets(policy, message)]


@pytest.mark.parametrize(
    ("policy", "message", "expected"),
    [
        (ChannelPolicy(), DM, []),
        (ChannelPolicy(), in_group(), []),
        (ChannelPolicy(rate_limit=USER), DM, [("user:42", USER, USER_LIMITED)]),
        # The user's bucket counts group messages too.
        (ChannelPolicy(rate_limit=USER), in_group(), [("user:42", USER, USER_LIMITED)]),
        # A group rule never limits direct messages.
        (ChannelPolicy(groups={"-100": GroupRule(rate_limit=GROUP)}), DM, []),
        (
            ChannelPolicy(groups={"-100": GroupRule(rate_limit=GROUP)}),
            in_group(),
            [("group:-100", GROUP, GROUP_LIMITED)],
        ),
        (ChannelPolicy(groups={"-100": GroupRule(rate_limit=GROUP)}), in_group("-200"), []),
        # "*" gives every group a bucket of its own.
        (ChannelPolicy(groups={"*": GroupRule(rate_limit=STAR)}), in_group("-200"), [("group:-200", STAR, GROUP_LIMITED)]),
        # The group's own rule wins over "*"; a rule without a limit inherits "*"'s.
        (
            ChannelPolicy(groups={"*": GroupRule(rate_limit=STAR), "-100": GroupRule(rate_limit=GROUP)}),
            in_group(),
            [("group:-100", GROUP, GROUP_LIMITED)],
        ),
        (
            ChannelPolicy(groups={"*": GroupRule(rate_limit=STAR), "-100": GroupRule(require_mention=False)}),
            in_group(),
            [("group:-100", STAR, GROUP_LIMITED)],
        ),
        # Both, in lock order.
        (
            ChannelPolicy(rate_limit=USER, groups={"-100": GroupRule(rate_limit=GROUP)}),
            in_group(),
            [("group:-100", GROUP, GROUP_LIMITED), ("user:42", USER, USER_LIMITED)],
        ),
    ],
    ids=[
        "none-dm", "none-group", "user-dm", "user-in-group", "group-rule-not-dm", "group-rule",
        "other-group", "star", "own-rule-wins", "star-limit-inherited", "both-ordered",
    ],
)  # fmt: skip
def test_buckets(policy: ChannelPolicy, message: Inbound, expected: list[tuple[str, RateLimit, str]]) -> None:
    assert scopes(policy, message) == expected


def test_bucket_rate_and_burst() -> None:
    b = Bucket("user:42", RateLimit(1800, 4), USER_LIMITED)
    assert (b.rate, b.burst) == (0.5, 4.0)


@pytest.mark.parametrize(
    ("available", "limit", "seconds"),
    [
        (0.0, RateLimit(3600, 1), 1),  # one token a second
        (0.0, RateLimit(60, 1), 60),  # one a minute
        (0.5, RateLimit(60, 1), 30),
        (0.999, RateLimit(60, 1), 1),  # rounded up, never 0
        (0.99999999, RateLimit(3600, 1), 1),
        (0.0, RateLimit(1, 1), 3600),  # one an hour
        (0.25, RateLimit(7, 1), 386),  # 0.75 / (7/3600) = 385.7
        (-0.1, RateLimit(60, 1), 60),  # never more than a whole token missing
        (0.0, RateLimit(1_000_000, 10), 1),
    ],
)
def test_retry_after(available: float, limit: RateLimit, seconds: int) -> None:
    assert retry_after(available, limit) == seconds


USER_B = Bucket("user:42", RateLimit(1800, 5), USER_LIMITED)  # a token every 2 s
GROUP_B = Bucket("group:-100", RateLimit(900, 5), GROUP_LIMITED)  # a token every 4 s


@pytest.mark.parametrize(
    ("available", "reason", "seconds"),
    [
        ({"user:42": 0.0}, USER_LIMITED, 2),
        ({"group:-100": 0.0}, GROUP_LIMITED, 4),
        # Both refuse: the longer wait, and the bucket that causes it.
        ({"user:42": 0.0, "group:-100": 0.0}, GROUP_LIMITED, 4),
        ({"user:42": 0.0, "group:-100": 0.75}, USER_LIMITED, 2),
        # A tie names the user's bucket.
        ({"user:42": 0.0, "group:-100": 0.5}, USER_LIMITED, 2),
    ],
    ids=["user", "group", "both-group-longer", "both-user-longer", "tie"],
)
def test_refused_verdict(available: dict[str, float], reason: str, seconds: int) -> None:
    v = refused((GROUP_B, USER_B), available)
    assert (v.decision, v.reason, v.retry_after_seconds) == (Decision.RATE_LIMITED, reason, seconds)
    assert (v.text, v.agent_id, v.permissions) == ("", "", ())  # silent, routes nowhere


def test_refused_needs_a_refusing_bucket() -> None:
    with pytest.raises(ValueError, match="refusing bucket"):
        refused((USER_B,), {})
