"""Channels and their policies, and the reads that come with a channel:
CheckUser's state (``check_state``) and EvaluateSend's (``send_state``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg

from ..domain import policy as policy_codec
from ..domain.model import Channel, ChannelPolicy, Platform, Subject
from .db import Connection
from .subjects import subject_from_row

if TYPE_CHECKING:
    from .db import Database


@dataclass(frozen=True, slots=True)
class ChannelRow:
    """A channel as stored, its policy not yet parsed: ``decode`` parses it
    (admin reads report an unreadable policy instead of failing)."""

    channel_id: str
    platform: str
    policy_json: str
    updated_at: datetime | None = None
    timezone: str = "UTC"

    def decode(self, tenant_id: str) -> Channel:
        """Raises CorruptPolicy for a policy that does not parse: callers deny."""
        return Channel(
            tenant_id,
            self.channel_id,
            Platform(self.platform),
            policy_codec.from_json(json.loads(self.policy_json)),
            self.timezone,
        )


@dataclass(frozen=True, slots=True)
class ChannelAt:
    """A channel and the database's clock when it was read."""

    channel: ChannelRow
    now: datetime


@dataclass(frozen=True, slots=True)
class CheckState:
    """CheckUser's read: the channel, the database's clock, the user's
    standing (None: no subject row) and whether they may speak in the group."""

    channel: ChannelRow
    now: datetime
    subject: Subject | None
    in_group: bool


def _channel(row: asyncpg.Record) -> ChannelRow:
    # Rows without a ``timezone`` column (admin reads) carry UTC.
    return ChannelRow(
        row["channel_id"], row["platform"], row["policy"], row.get("updated_at"), row.get("timezone") or "UTC"
    )


# The tenant's time zone travels with every channel that can reach the cache
# (get, check_state, send_state): send time windows are judged in it.
_TIMEZONE = "(SELECT tz.timezone FROM tenants tz WHERE tz.tenant_id = c.tenant_id) AS timezone"


async def get(
    conn: Connection, tenant_id: str, channel_id: str, *, for_update: bool = False
) -> Channel | None:
    sql = f"""SELECT c.channel_id, c.platform, c.policy, c.updated_at, {_TIMEZONE}
               FROM channels c WHERE c.tenant_id = $1 AND c.channel_id = $2"""
    # NO KEY UPDATE: serializes writers of the channel (RequestPairing's cap) without
    # blocking the foreign-key KEY SHARE lock an approve takes to insert a subject,
    # which would deadlock with a RequestPairing waiting for that approve's request row.
    row = await conn.fetchrow(sql + (" FOR NO KEY UPDATE" if for_update else ""), tenant_id, channel_id)
    return None if row is None else _channel(row).decode(tenant_id)


async def get_row(conn: Connection, tenant_id: str, channel_id: str) -> ChannelRow | None:
    """The channel as stored, its policy not yet decoded (admin reads)."""
    row = await conn.fetchrow(
        "SELECT channel_id, platform, policy, updated_at FROM channels WHERE tenant_id = $1 AND channel_id = $2",
        tenant_id, channel_id,
    )  # fmt: skip
    return None if row is None else _channel(row)


async def list_rows(conn: Connection, tenant_id: str) -> list[ChannelRow]:
    rows = await conn.fetch(
        "SELECT channel_id, platform, policy, updated_at FROM channels WHERE tenant_id = $1 ORDER BY channel_id",
        tenant_id,
    )
    return [_channel(r) for r in rows]


async def upsert(
    conn: Connection, tenant_id: str, channel_id: str, platform: Platform, policy: ChannelPolicy
) -> ChannelRow:
    row = await conn.fetchrow(
        """INSERT INTO channels (tenant_id, channel_id, platform, policy)
           VALUES ($1, $2, $3, $4::jsonb)
           ON CONFLICT (tenant_id, channel_id)
           DO UPDATE SET platform = EXCLUDED.platform, policy = EXCLUDED.policy, updated_at = now()
           RETURNING channel_id, platform, policy, updated_at""",
        tenant_id, channel_id, platform.value, json.dumps(policy_codec.to_json(policy)),
    )  # fmt: skip
    assert row is not None
    return _channel(row)


async def delete(conn: Connection, tenant_id: str, channel_id: str) -> bool:
    status = await conn.execute(
        "DELETE FROM channels WHERE tenant_id = $1 AND channel_id = $2", tenant_id, channel_id
    )
    return bool(status != "DELETE 0")


async def check_state(
    db: Database, tenant_id: str, channel_id: str, user_id: str, group_id: str
) -> CheckState | None:
    """Everything CheckUser needs, in one round trip (migration 0009 sets the
    tenant inside the function, so no explicit transaction is needed). None:
    no such channel."""
    row = await db.fetchrow_as(
        tenant_id, "SELECT * FROM authz_check_state($1, $2, $3, $4)", tenant_id, channel_id, user_id, group_id
    )
    if row is None:
        return None
    subject = subject_from_row(channel_id, user_id, row) if row["status"] is not None else None
    return CheckState(_channel(row), row["now"], subject, bool(row["in_group"]))


async def send_state(conn: Connection, tenant_id: str, channel_id: str) -> ChannelAt | None:
    """EvaluateSend's read: the channel, its tenant's zone and the database clock."""
    row = await conn.fetchrow(
        f"""SELECT c.channel_id, c.platform, c.policy, now() AS now, {_TIMEZONE}
            FROM channels c WHERE c.tenant_id = $1 AND c.channel_id = $2""",
        tenant_id, channel_id,
    )  # fmt: skip
    return None if row is None else ChannelAt(_channel(row), row["now"])
