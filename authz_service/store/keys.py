"""API keys: only the SHA-256 of a key's secret is stored (flows.auth)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ..domain.model import Role
from .db import Connection


@dataclass(frozen=True, slots=True)
class KeyRow:
    key_id: str
    role: Role
    name: str
    secret_hash: bytes
    created_at: datetime
    revoked_at: datetime | None
    # Empty: not bound (keys made before migration 0012).
    channels: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NewKey:
    tenant_id: str
    key_id: str
    role: Role
    name: str
    secret_hash: bytes
    channels: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()


def _key(row: asyncpg.Record) -> KeyRow:
    return KeyRow(
        row["key_id"],
        Role(row["role"]),
        row["name"],
        bytes(row["secret_hash"]),
        row["created_at"],
        row["revoked_at"],
        tuple(row["channels"]),
        tuple(row["agents"]),
    )


async def insert(conn: Connection, key: NewKey) -> KeyRow:
    row = await conn.fetchrow(
        """INSERT INTO api_keys (tenant_id, key_id, role, name, secret_hash, channels, agents)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *""",
        key.tenant_id, key.key_id, key.role.value, key.name, key.secret_hash, list(key.channels),
        list(key.agents),
    )  # fmt: skip
    assert row is not None
    return _key(row)


async def get(conn: Connection, tenant_id: str, key_id: str) -> KeyRow | None:
    row = await conn.fetchrow(
        "SELECT * FROM api_keys WHERE tenant_id = $1 AND key_id = $2", tenant_id, key_id
    )
    return None if row is None else _key(row)


async def list_all(conn: Connection, tenant_id: str) -> list[KeyRow]:
    rows = await conn.fetch(
        "SELECT * FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, key_id", tenant_id
    )
    return [_key(r) for r in rows]


async def revoke(conn: Connection, tenant_id: str, key_id: str) -> KeyRow | None:
    row = await conn.fetchrow(
        """UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
           WHERE tenant_id = $1 AND key_id = $2 RETURNING *""",
        tenant_id, key_id,
    )  # fmt: skip
    return None if row is None else _key(row)
