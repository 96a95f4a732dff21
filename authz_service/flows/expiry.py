"""Expiry on time: a periodic sweep moves every pending approval whose time is
up to ``expired`` and writes its ``<kind>.expired`` event then, not when
something next touches the request (``flows.approvals.expire`` still expires a
lapsed request it meets first; each moves by compare-and-set from pending, so
either way it is audited once).

One replica sweeps a tenant at a time (store.approvals.expire_due takes an
advisory lock); the others skip that tenant for the round."""

from __future__ import annotations

from ..store import approvals, audit, tenants
from ..store.db import Database

BATCH = 500  # per tenant per round; the rest wait for the next round (and are refused meanwhile)


async def sweep(db: Database, batch: int = BATCH) -> int:
    """One round over every tenant; returns how many approvals expired."""
    async with db.operator() as conn:
        tenant_ids = [t.tenant_id for t in await tenants.list_all(conn)]
    total = 0
    for t in tenant_ids:
        async with db.tenant(t) as conn:
            expired = await approvals.expire_due(conn, t, batch)
            for a in expired or ():
                kind, subject = ("tool", a.tool.tool_name) if a.tool else ("pairing", a.user_id)
                await audit.record(
                    conn, t, f"{kind}.expired", actor="system", channel_id=a.channel_id, subject=subject,
                    approval_id=a.approval_id, details={"via": "sweep"},
                )  # fmt: skip
            total += len(expired or ())
    return total
