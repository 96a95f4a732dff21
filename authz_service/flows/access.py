"""CheckUser and EvaluateSend: read-only decisions (EvaluateSend audits denials)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime

from ..cache import CheckState
from ..domain import floods, ids, reuse, scope
from ..domain import send as send_policy
from ..domain.access import Inbound, Verdict, binding_for, check_user
from ..domain.errors import NotFound
from ..domain.model import Approval, Binding, Channel, Decision, Subject
from ..domain.policy import CorruptPolicy
from ..store import approvals, audit, channels, denials
from ..store.db import Connection
from . import Context
from . import rate as rate_limits

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Checked:
    """A CheckUser answer, and whether the caller may reuse it (domain.reuse)."""

    verdict: Verdict
    reuse: reuse.ReuseHint | None = None


async def check(ctx: Context, channel_id: str, message: Inbound, *, consistent: bool = False) -> Checked:
    """Decide one inbound message: from the cache when it holds the state (and
    the caller did not ask for a ``consistent`` read), else in one round trip.
    The answer is marked reusable only while this process hears every change
    (its cache is on) and never for a ``consistent`` read."""
    state, verdict, now = await _judge(ctx, channel_id, message, use_cache=not consistent)
    # Rate limits: an allowed message also needs a token (always PostgreSQL, never the cache).
    verdict = await rate_limits.admit(ctx, state.channel, message, verdict)
    live = not consistent and ctx.cache is not None and ctx.cache.usable
    hint = reuse.for_check(state.channel, state.subject, message, verdict, now) if live else None
    return Checked(_logged(ctx, channel_id, verdict), hint)


@dataclass(frozen=True, slots=True)
class Explanation:
    """ExplainUser: what CheckUser would answer for ``message`` now, and what
    it was decided on."""

    verdict: Verdict
    channel: Channel | None  # None: its stored policy is unreadable (the verdict denies)
    subject: Subject | None
    in_group: bool
    binding: Binding | None  # the binding that routes the user, whatever the decision
    pending: tuple[Approval, ...]  # the user's live requests on the channel, newest first


async def explain(ctx: Context, channel_id: str, message: Inbound) -> Explanation:
    """CheckUser's decision without its effects: the same code decides, on a
    fresh read (no cache, none filled); a rate limit is judged from the
    buckets as they stand, without taking a token; nothing is written and no
    pairing request is made. An unknown channel is NOT_FOUND (CheckUser denies)."""
    if not scope.channel_in_scope(ctx.principal, channel_id):
        raise NotFound(f"channel {channel_id!r} not found")
    state, verdict, _ = await _judge(ctx, channel_id, message, use_cache=False, fill=False)
    if state.channel is None and verdict.reason == "channel_not_configured":
        raise NotFound(f"channel {channel_id!r} not found")
    verdict = await rate_limits.admit(ctx, state.channel, message, verdict, take=False)
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        pending = await approvals.live_for_user(conn, ctx.tenant_id, channel_id, message.user_id)
    binding = (
        None
        if state.channel is None
        else binding_for(state.channel.policy, message.user_id, message.group_id)
    )
    return Explanation(verdict, state.channel, state.subject, state.in_group, binding, tuple(pending))


async def _judge(
    ctx: Context, channel_id: str, message: Inbound, *, use_cache: bool, fill: bool = True
) -> tuple[CheckState, Verdict, datetime | None]:
    """CheckUser's decision before rate limits, the state it was made on and
    the database's clock then (None: not read)."""
    t = ctx.tenant_id
    cache = ctx.cache if use_cache else None
    state = cache.check_state(t, channel_id, message.user_id, message.group_id) if cache else None
    now: datetime | None
    if not scope.channel_in_scope(ctx.principal, channel_id):
        state, now = CheckState(None, None, False), None  # as an unknown channel
    elif state is not None:
        assert cache is not None
        now = cache.db_now()
    else:
        generation = ctx.cache.generation if ctx.cache else 0
        read = await channels.check_state(ctx.db, t, channel_id, message.user_id, message.group_id)
        now = read.now if read is not None else None
        try:
            state = _state(t, read)
        except CorruptPolicy:
            log.error("channel %s/%s has an unreadable policy; denying", t, channel_id)
            return CheckState(None, None, False), Verdict(Decision.DENY, "channel_policy_invalid"), None
        if ctx.cache is not None and fill:
            if now is not None:
                ctx.cache.observe_db_clock(now)
            ctx.cache.fill_check_state(generation, t, channel_id, message.user_id, message.group_id, state)
    if state.channel is not None:
        ids.user_id(state.channel.platform, message.user_id)
    return state, check_user(state.channel, state.subject, state.in_group, message, now), now


def _state(tenant_id: str, read: channels.CheckState | None) -> CheckState:
    if read is None:
        return CheckState(None, None, False)
    return CheckState(read.channel.decode(tenant_id), read.subject, read.in_group)


def _logged(ctx: Context, channel_id: str, verdict: Verdict) -> Verdict:
    if verdict.decision is not Decision.ALLOW:
        log.info(
            "check denied",
            extra={"tenant": ctx.tenant_id, "channel": channel_id, "decision": verdict.decision.value,
                   "reason": verdict.reason, "trace_id": ctx.trace_id},
        )  # fmt: skip
    return verdict


@dataclass(frozen=True, slots=True)
class Sent:
    """An EvaluateSend answer, and whether the caller may reuse it (domain.reuse)."""

    decision: send_policy.SendDecision
    reuse: reuse.ReuseHint | None = None


async def evaluate_send(
    ctx: Context, channel_id: str, agent_id: str, session_id: str, origin: str, target: str, *, listing: bool
) -> Sent:
    """The channel's policy (with its tenant's time zone) comes from the cache
    when it holds it (the same entry CheckUser uses, invalidated the same way),
    with the cache's database clock; else from one read that also returns the
    database's ``now()``. Every denial is audited, so only allowed sends are
    ever marked reusable (and only while this process's cache is on)."""
    scope.require_agent(ctx.principal, agent_id)
    t = ctx.tenant_id
    if listing:
        return Sent(send_policy.evaluate(None, agent_id, target, origin, platform=None, listing=True))
    cache = ctx.cache
    live = cache is not None and cache.usable
    found, channel = cache.channel(t, channel_id) if cache is not None else (False, None)
    if not scope.channel_in_scope(ctx.principal, channel_id):
        found, channel = True, None  # as an unknown channel (a bound connector key elsewhere)
    if found:
        now = cache.db_now() if cache is not None else None
        decision = _send_decision(channel, agent_id, target, origin, now)
        if decision.allow:
            return Sent(decision, reuse.for_send(channel, agent_id, decision) if live else None)
        async with ctx.db.tenant(t) as conn:
            await _audit_denied_send(ctx, conn, channel_id, agent_id, session_id, origin, target, decision)
        return Sent(decision)
    generation = cache.generation if cache is not None else 0
    async with ctx.db.tenant(t) as conn:
        read = await channels.send_state(conn, t, channel_id)
        try:
            channel = None if read is None else read.channel.decode(t)
        except CorruptPolicy:
            channel = None
            decision = send_policy.SendDecision(False, send_policy.EVALUATION_ERROR)
        else:
            now = read.now if read is not None else None
            if cache is not None:
                if now is not None:
                    cache.observe_db_clock(now)
                cache.fill_channel(generation, t, channel_id, channel)
            decision = _send_decision(channel, agent_id, target, origin, now)
        if not decision.allow:
            await _audit_denied_send(ctx, conn, channel_id, agent_id, session_id, origin, target, decision)
            return Sent(decision)
    return Sent(decision, reuse.for_send(channel, agent_id, decision) if live else None)


def _send_decision(
    channel: Channel | None, agent_id: str, target: str, origin: str, now: datetime | None
) -> send_policy.SendDecision:
    if channel is None:
        return send_policy.evaluate(None, agent_id, target, origin, platform=None, listing=False)
    return send_policy.evaluate(
        channel.policy,
        agent_id,
        target,
        origin,
        platform=channel.platform,
        listing=False,
        now=now,
        zone=channel.timezone,
    )


async def _audit_denied_send(
    ctx: Context,
    conn: Connection,
    channel_id: str,
    agent_id: str,
    session_id: str,
    origin: str,
    target: str,
    decision: send_policy.SendDecision,
) -> None:
    """Count the denial (migration 0013); audit it only if it opens a bucket,
    and then also summarise the tenant's closed buckets."""
    t, interval = ctx.tenant_id, floods.DENIED_SEND_INTERVAL_SECONDS
    key_id = ctx.principal.key_id
    denial = denials.Denial(
        t, key_id, agent_id, channel_id, target, session_id, origin, decision.reason, interval
    )
    known, targets = await denials.targets(conn, denial)
    bucket = await denials.count(
        conn, replace(denial, target=floods.denied_send_target(target, known, targets))
    )
    if bucket.denials > 1:
        return
    await audit.record(
        conn, t, "send.denied", actor=f"agent:{agent_id}", channel_id=channel_id, subject=bucket.target,
        trace_id=ctx.trace_id,
        details={"session_id": session_id, "origin": origin, "reason": decision.reason, "key": key_id,
                 "count": 1, "interval_seconds": interval, "bucket_start": bucket.bucket_start.isoformat(),
                 **({"target": target} if bucket.target != target else {})},
    )  # fmt: skip
    await denials.summarise_closed(conn, t, interval)
