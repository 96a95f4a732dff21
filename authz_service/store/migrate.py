"""Versioned SQL migrations: ``migrations/NNNN_name.sql``, each applied once, in
order, in one transaction (all or nothing), under an advisory lock so that two migration
jobs never race.

The service role is a setting (``authz migrate --service-role``, AUTHZ_SERVICE_ROLE):
the files name it ``authz_service``, the default, and each file is applied with that
name replaced, like a psql variable. The files themselves never change, so a schema
applied before the setting existed is the default's. A role must be chosen before the
first migration: a schema's grants belong to the role it was migrated for, which
``migrate`` checks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
_LOCK_KEY = 0x617574687A  # "authz"
DEFAULT_SERVICE_ROLE = "authz_service"
# A plain identifier: substituted into SQL without quoting, and the same in every
# place it appears (a role name in GRANT ... TO and a string in pg_roles).
SERVICE_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_ROLE_TOKEN = re.compile(r"\bauthz_service\b")


class MigrationError(RuntimeError):
    """The schema cannot be migrated as asked; the message says what to change."""


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


def for_role(sql: str, service_role: str) -> str:
    """A migration's text for ``service_role`` (the files say ``authz_service``)."""
    if not SERVICE_ROLE_NAME.fullmatch(service_role):
        raise MigrationError(
            f"service role {service_role!r}: use lower-case letters, digits and '_', "
            "starting with a letter or '_' (at most 63)"
        )
    return _ROLE_TOKEN.sub(service_role, sql)


async def migrate(dsn: str, service_role: str = DEFAULT_SERVICE_ROLE) -> list[Migration]:
    """Apply pending migrations as the schema owner, granting ``service_role``
    what the service needs. Returns what was applied."""
    for_role("", service_role)  # refuse a bad name before connecting
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
            if done and not await conn.fetchval(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)"
                " THEN has_table_privilege($1, 'authz_schema_migrations', 'SELECT') ELSE false END",
                service_role,
            ):
                raise MigrationError(
                    f"this schema was migrated for another service role than {service_role!r}: "
                    "set AUTHZ_SERVICE_ROLE (authz migrate --service-role) to the role it was created for"
                )
            for mig in load_migrations():
                if mig.version <= done:
                    continue
                await conn.execute(for_role(mig.sql, service_role))
                await conn.execute(
                    "INSERT INTO authz_schema_migrations (version, name) VALUES ($1, $2)",
                    mig.version,
                    mig.name,
                )
                applied.append(mig)
    finally:
        await conn.close()
    return applied
