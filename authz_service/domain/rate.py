"""Rate limits on inbound messages: which token buckets a message draws on,
and what to answer when one of them is empty.

A bucket holds at most ``burst`` tokens and refills continuously at
``max_messages_per_hour / 3600`` tokens a second; an admitted message takes
one token from every bucket that applies to it. The buckets themselves live in
PostgreSQL (store/rate.py) so that every replica draws on the same ones; this
module is the arithmetic around them, without I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .access import Inbound, Verdict, effective_group
from .model import ChannelPolicy, ChatKind, Decision, RateLimit

USER_LIMITED = "user_rate_limited"
GROUP_LIMITED = "group_rate_limited"


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket on one channel: ``user:<user id>`` or ``group:<group id>``."""

    scope: str
    limit: RateLimit
    reason: str  # the verdict's reason when this bucket refuses

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return refill_rate(self.limit)

    @property
    def burst(self) -> float:
        return float(self.limit.burst)


def refill_rate(limit: RateLimit) -> float:
    return limit.max_messages_per_hour / 3600.0


def buckets(policy: ChannelPolicy, message: Inbound) -> tuple[Bucket, ...]:
    """The buckets ``message`` draws on, ordered by scope (the order their rows
    are locked in, so concurrent checks never deadlock).

    The user's bucket (``policy.rate_limit``) counts the user's direct and
    group messages on the channel together. A group message also draws on the
    group's bucket if its effective rule (its own, else ``"*"``) has a limit:
    one bucket per group, shared by all its senders, also under ``"*"``.
    """
    found: list[Bucket] = []
    if policy.rate_limit is not None:
        found.append(Bucket(f"user:{message.user_id}", policy.rate_limit, USER_LIMITED))
    # Only group rules carry group limits: without any, skip resolving the rule
    # (check_user resolved it already; this runs for every allowed message).
    if message.chat_kind is ChatKind.GROUP and message.group_id and policy.groups:
        group_limit = effective_group(policy, message.group_id).rate_limit
        if group_limit is not None:
            found.append(Bucket(f"group:{message.group_id}", group_limit, GROUP_LIMITED))
    return tuple(sorted(found, key=lambda b: b.scope))


def retry_after(available: float, limit: RateLimit) -> int:
    """Whole seconds until a bucket holding ``available`` tokens (< 1) holds
    one again, at least 1. A hint: another sender may take that token first."""
    missing = 1.0 - max(0.0, available)
    return max(1, math.ceil(missing / refill_rate(limit)))


def refused(applied: tuple[Bucket, ...], available: Mapping[str, float]) -> Verdict:
    """The RATE_LIMITED verdict for a message refused by the buckets named in
    ``available`` (their tokens, all below 1): the wait is the longest of
    theirs, and the reason names that bucket (the user's on a tie)."""
    waits = [(retry_after(available[b.scope], b.limit), b) for b in applied if b.scope in available]
    if not waits:
        raise ValueError("refused() needs at least one refusing bucket")
    seconds, bucket = max(waits, key=lambda w: (w[0], w[1].reason == USER_LIMITED))
    return Verdict(Decision.RATE_LIMITED, bucket.reason, retry_after_seconds=seconds)
