"""Versioned SQL migrations: ``migrations/NNNN_name.sql``, each applied once, in
order, in one transaction (all or nothing), under an advisory lock so that two migration
jobs never race."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_LOCK_KEY = 0x617574687A  # "authz"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("authz_service.store").joinpath("migrations").iterdir():
        m = _NAME.fullmatch(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    if [mig.version for mig in found] != list(range(1, len(found) + 1)):
        raise RuntimeError("migration versions must be 1..N without gaps")
    return found


LATEST_VERSION = len(load_migrations())


async def current_version(conn: asyncpg.Connection) -> int:
    exists = await conn.fetchval("SELECT to_regclass('authz_schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM authz_schema_migrations"))


async def migrate(dsn: str) -> list[Migration]:
    """Apply pending migrations as the schema owner. Returns what was applied."""
    conn = await asyncpg.connect(dsn)
    applied: list[Migration] = []
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS authz_schema_migrations (
                       version    int PRIMARY KEY,
                       name       text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = await current_version(conn)
            for mig in load_migrations():
                if mig.version <= done:
                    continue
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO authz_schema_migrations (version, name) VALUES ($1, $2)",
                    mig.version,
                    mig.name,
                )
                applied.append(mig)
    finally:
        await conn.close()
    return applied
