"""Which answers a client may reuse (issue #21): decisions at the edge.

The server marks an answer reusable only when it depends on nothing but state
whose every change is announced (``authz_changes``, migration 0004, relayed by
WatchChanges): the channel's policy, the user's subject row, the user's group
sender entries and the tenant's settings. The client never judges anything; it
repeats an answer the server marked, until an invalidation for its keys.

Never marked, because the answer depends on something no notification covers:

* anything but ALLOW for CheckUser (pairing starts, denials are logged, a
  blocked user must keep reaching the server), and any send denial (audited
  and counted per call);
* a rate-limited answer, or a channel or group with a rate limit (every
  allowed message takes a token in PostgreSQL);
* a group whose rules read the message: mention gating, command lists;
* a send policy with time windows (the clock decides);
* ``consistent`` reads, and anything while the server's own change listener
  is down (the caller passes ``live=False``).

A time-limited pairing is reusable until its expiry at most (``max_age``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from .access import Inbound, Verdict, effective_group
from .model import Channel, ChatKind, Decision, Subject
from .send import SendDecision, policy_for

MAX_AGE_SECONDS = 3600
"""The longest reuse of any answer, whatever the stream says: a bound on the
damage of a server bug, not the mechanism (invalidations are)."""


@dataclass(frozen=True, slots=True)
class ReuseHint:
    """The keys whose invalidation ends the answer, and its longest reuse."""

    channel_id: str
    user_id: str  # "" for the whole channel
    max_age_seconds: int


def for_check(
    channel: Channel | None,
    subject: Subject | None,
    message: Inbound,
    verdict: Verdict,
    now: datetime | None,
) -> ReuseHint | None:
    """The hint for a CheckUser answer, or None: always ask the server."""
    if channel is None or verdict.decision is not Decision.ALLOW or now is None:
        return None
    policy = channel.policy
    if policy.rate_limit is not None:
        return None
    if message.chat_kind is ChatKind.GROUP:
        rule = effective_group(policy, message.group_id)
        if rule.require_mention or rule.allowed_commands or rule.denied_commands or rule.rate_limit:
            return None
    max_age = MAX_AGE_SECONDS
    if subject is not None and subject.expires_at is not None:
        # The pairing lapses on its own, without a notification.
        max_age = min(max_age, math.floor((subject.expires_at - now).total_seconds()) - 1)
        if max_age < 1:
            return None
    return ReuseHint(channel.channel_id, message.user_id, max_age)


def for_send(channel: Channel | None, agent_id: str, decision: SendDecision) -> ReuseHint | None:
    """The hint for an EvaluateSend answer: allowed sends on a channel whose
    policy in force for the agent has no time windows."""
    if channel is None or not decision.allow:
        return None
    policy = policy_for(channel.policy, agent_id)
    if policy is not None and policy.time_restrictions:
        return None
    return ReuseHint(channel.channel_id, "", MAX_AGE_SECONDS)


@dataclass(frozen=True, slots=True)
class Invalidation:
    """Answers that a change may have altered: the channel's (``user_id`` "":
    all of them) or the user's on it; ``everything``: every answer of the tenant."""

    channel_id: str = ""
    user_id: str = ""
    everything: bool = False


def invalidation_of(payload: str) -> tuple[str, Invalidation | None] | None:
    """An ``authz_changes`` notification (migrations 0004, 0008) as (tenant,
    what it invalidates); the invalidation is None for a change no reusable
    answer depends on (an API key: its streams end on their own). None: a
    shape this build does not know (the caller must assume anything changed)."""
    table, _, rest = payload.partition(" ")
    parts = rest.split(" ")
    if table == "channels" and len(parts) == 2:
        return parts[0], Invalidation(parts[1])
    if table in ("subjects", "group_senders") and len(parts) == 3:
        return parts[0], Invalidation(parts[1], parts[2])
    if table == "tenants" and len(parts) == 1:
        return parts[0], Invalidation(everything=True)
    if table == "api_keys" and len(parts) == 2:
        return parts[0], None
    return None
