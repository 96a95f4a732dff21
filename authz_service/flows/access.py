"""CheckUser and EvaluateSend: read-only decisions (EvaluateSend audits denials)."""

from __future__ import annotations

import logging

from ..domain import ids
from ..domain import send as send_policy
from ..domain.access import Inbound, Verdict, check_user
from ..domain.model import Decision
from ..domain.policy import CorruptPolicy
from ..store import queries as q
from . import Context

log = logging.getLogger(__name__)


async def check(ctx: Context, channel_id: str, message: Inbound) -> Verdict:
    t = ctx.tenant_id
    async with ctx.db.tenant(t) as conn:
        row = await q.check_state(conn, t, channel_id, message.user_id, message.group_id)
    if row is None:
        verdict = check_user(None, None, False, message, now=None)
    else:
        try:
            channel = q.channel_from_row(t, row)
        except CorruptPolicy:
            log.error("channel %s/%s has an unreadable policy; denying", t, channel_id)
            verdict = Verdict(Decision.DENY, "channel_policy_invalid")
        else:
            ids.user_id(channel.platform, message.user_id)
            subject = q.subject_from_row(channel_id, message.user_id, row) if row["status"] else None
            verdict = check_user(channel, subject, bool(row["in_group"]), message, row["now"])
    if verdict.decision is not Decision.ALLOW:
        log.info(
            "check denied",
            extra={"tenant": t, "channel": channel_id, "decision": verdict.decision.value,
                   "reason": verdict.reason, "trace_id": ctx.trace_id},
        )  # fmt: skip
    return verdict


async def evaluate_send(
    ctx: Context, channel_id: str, agent_id: str, session_id: str, origin: str, target: str, *, listing: bool
) -> send_policy.SendDecision:
    t = ctx.tenant_id
    if listing:
        return send_policy.evaluate(None, agent_id, target, origin, listing=True)
    async with ctx.db.tenant(t) as conn:
        try:
            channel = await q.get_channel(conn, t, channel_id)
        except CorruptPolicy:
            decision = send_policy.SendDecision(False, send_policy.EVALUATION_ERROR)
        else:
            decision = send_policy.evaluate(
                None if channel is None else channel.policy, agent_id, target, origin, listing=False
            )
        if not decision.allow:
            await q.audit(
                conn, t, "send.denied", actor=f"agent:{agent_id}", channel_id=channel_id, subject=target,
                trace_id=ctx.trace_id, details={"session_id": session_id, "origin": origin, "reason": decision.reason},
            )  # fmt: skip
    return decision
