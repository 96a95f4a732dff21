"""Attempt limits on guessable codes (migration 0005's counters), shared by
pairing-code lookups and invite redeems.

A scope is a counter row, e.g. ``code:channel:<channel>`` or
``invite:user:<channel>:<user>``. The audit trail and the logs name only its
kind (the first two parts, ``invite:user``): a scope can hold a user id, and
an audit detail outlives the purge of its user, which rewrites actors and
subjects only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from ..store import attempts, audit
from ..store.db import Connection
from . import Context

log = logging.getLogger(__name__)


def scope_kind(scope: str) -> str:
    """``invite:user:tg:42`` -> ``invite:user``; ``code:tenant`` stays."""
    return ":".join(scope.split(":", 2)[:2])


async def over_limit(
    ctx: Context,
    conn: Connection,
    scopes: list[tuple[str, int]],
    *,
    event: str,
    message: str,
    channel_id: str,
    subject: str = "",
    details: Mapping[str, object] | None = None,
) -> int:
    """Open the windows of ``scopes`` (scope, limit) and return the seconds to
    wait if one is over its limit (0: go ahead). The first refusal in a window
    is audited as ``event`` and logged as ``message``; later ones only counted."""
    t = ctx.tenant_id
    counts = await attempts.open_window(conn, t, [s for s, _ in scopes], ctx.code_limits.window_seconds)
    over = {scope: counts[scope][1] for scope, limit in scopes if counts[scope][0] >= limit}
    if not over:
        return 0
    wait = max(1, math.ceil(max(over.values())))
    if await attempts.count_refused(conn, t, list(over)):  # audit once per window, not per refusal
        audited = {
            "scopes": sorted({scope_kind(s) for s in over}),
            **(details or {}),
            "retry_after_seconds": wait,
        }
        await audit.record(
            conn, t, event, actor=ctx.principal.actor, channel_id=channel_id, subject=subject,
            trace_id=ctx.trace_id, details=audited,
        )  # fmt: skip
        log.warning(message, extra={"trace_id": ctx.trace_id, "tenant": t, "channel": channel_id, **audited})
    return wait
