"""Invites: codes that allow a user on a channel, a limited number of times."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from ..domain.invites import Invite
from .db import Connection


def invite_from_row(row: asyncpg.Record) -> Invite:
    return Invite(
        invite_id=row["invite_id"],
        channel_id=row["channel_id"],
        max_uses=row["max_uses"],
        uses=row["uses"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        created_by=row["created_by"],
        permissions=tuple(row["permissions"] or ()),
        note=row["note"],
    )


@dataclass(frozen=True, slots=True)
class InviteInput:
    tenant_id: str
    invite_id: str
    channel_id: str
    code_hash: bytes
    max_uses: int
    ttl_seconds: int
    permissions: tuple[str, ...]
    note: str
    created_by: str


async def insert(conn: Connection, new: InviteInput) -> Invite:
    row = await conn.fetchrow(
        """INSERT INTO invites (tenant_id, invite_id, channel_id, code_hash, max_uses, permissions, note,
                                created_by, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9))
           RETURNING *""",
        new.tenant_id, new.invite_id, new.channel_id, new.code_hash, new.max_uses, list(new.permissions), new.note,
        new.created_by, new.ttl_seconds,
    )  # fmt: skip
    assert row is not None
    return invite_from_row(row)


async def by_hash(conn: Connection, tenant_id: str, channel_id: str, code_hash: bytes) -> Invite | None:
    """The invite with this code on this channel, locked (redeems queue up on it)."""
    row = await conn.fetchrow(
        "SELECT * FROM invites WHERE tenant_id = $1 AND channel_id = $2 AND code_hash = $3 FOR UPDATE",
        tenant_id, channel_id, code_hash,
    )  # fmt: skip
    return None if row is None else invite_from_row(row)


async def use(conn: Connection, tenant_id: str, invite_id: str) -> Invite | None:
    """One more use, only of a live invite with a use left (compare-and-set).
    None: it was revoked, expired or used up meanwhile."""
    row = await conn.fetchrow(
        """UPDATE invites SET uses = uses + 1
           WHERE tenant_id = $1 AND invite_id = $2 AND revoked_at IS NULL AND expires_at > now()
             AND uses < max_uses
           RETURNING *""",
        tenant_id, invite_id,
    )  # fmt: skip
    return None if row is None else invite_from_row(row)


async def list_recent(
    conn: Connection, tenant_id: str, channel_id: str, include_inactive: bool
) -> list[Invite]:
    """Newest first; ``channel_id`` '' means every channel."""
    rows = await conn.fetch(
        """SELECT * FROM invites WHERE tenant_id = $1 AND ($2 = '' OR channel_id = $2)
             AND ($3 OR (revoked_at IS NULL AND expires_at > now() AND uses < max_uses))
           ORDER BY created_at DESC, invite_id LIMIT 1000""",
        tenant_id, channel_id, include_inactive,
    )  # fmt: skip
    return [invite_from_row(r) for r in rows]


async def revoke(conn: Connection, tenant_id: str, invite_id: str) -> tuple[Invite, bool] | None:
    """(the invite, whether this call revoked it); None if there is no such invite."""
    live = await conn.fetchval(
        "SELECT revoked_at IS NULL FROM invites WHERE tenant_id = $1 AND invite_id = $2 FOR UPDATE",
        tenant_id, invite_id,
    )  # fmt: skip
    if live is None:
        return None
    row = await conn.fetchrow(
        """UPDATE invites SET revoked_at = coalesce(revoked_at, now())
           WHERE tenant_id = $1 AND invite_id = $2 RETURNING *""",
        tenant_id, invite_id,
    )  # fmt: skip
    assert row is not None
    return invite_from_row(row), bool(live)
