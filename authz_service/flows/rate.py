"""The rate limit step of CheckUser: an allowed message must also find a token
in every bucket that applies to it (domain.rate), counted in PostgreSQL.

It runs after the decision, cached or not, and always against the database:
the hot path's cache never answers for a rate-limited channel. A database
error fails the call (UNAVAILABLE), never admits the message.
"""

from __future__ import annotations

from ..domain import rate
from ..domain.access import Inbound, Verdict
from ..domain.errors import NotFound
from ..domain.model import Channel, Decision
from ..store import rate as store
from . import Context


async def admit(
    ctx: Context, channel: Channel | None, message: Inbound, verdict: Verdict, *, take: bool = True
) -> Verdict:
    """``verdict`` if it is not ALLOW, or no limit applies, or every bucket
    gave a token; else RATE_LIMITED, and no bucket gave one. With ``take``
    false (ExplainUser) the buckets are only read: the same answer as long as
    nothing else draws on them, and nothing taken or written."""
    if verdict.decision is not Decision.ALLOW or channel is None:
        return verdict  # denied messages consume nothing
    buckets = rate.buckets(channel.policy, message)
    if not buckets:
        return verdict
    try:
        async with ctx.db.tenant(ctx.tenant_id) as conn:
            if take:
                refused = await store.take(conn, ctx.tenant_id, channel.channel_id, buckets)
            else:
                refused = await store.peek(conn, ctx.tenant_id, channel.channel_id, buckets)
    except NotFound:
        # The channel was deleted after the (cached) read that allowed the message.
        return Verdict(Decision.DENY, "channel_not_configured")
    if not refused:
        return verdict
    return rate.refused(buckets, refused)
