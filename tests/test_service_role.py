"""The service role is a setting of `authz migrate` (AUTHZ_SERVICE_ROLE): two
deployments on one cluster each get their own role, in a database of their own."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from urllib.parse import quote, urlparse, urlunparse

import asyncpg
import pytest

from authz_service.store.db import Database
from authz_service.store.migrate import LATEST_VERSION, MigrationError, for_role, migrate

from .conftest import Dsns

# Migrations create the named role: the migrating role needs CREATEROLE, which the
# documented schema owner does not have. These run as the administrator.
pytestmark = pytest.mark.superuser


def in_database(dsn: str, database: str, user: str | None = None, password: str | None = None) -> str:
    url = urlparse(dsn)
    netloc = url.netloc
    if user is not None:
        host = netloc.rsplit("@", 1)[-1]
        netloc = f"{user}:{quote(password or '', safe='')}@{host}"
    return urlunparse(url._replace(path="/" + database, netloc=netloc))


@pytest.fixture
async def fresh_database(dsns: Dsns) -> AsyncIterator[tuple[str, str]]:
    """An empty database and an unused role name; both dropped afterwards."""
    name = "authz_roles_" + secrets.token_hex(4)
    role = "svc_" + secrets.token_hex(4)
    owner = await asyncpg.connect(dsns.admin)  # migrate creates the role: CREATEROLE
    await owner.execute(f"CREATE DATABASE {name}")
    try:
        yield in_database(dsns.admin, name), role
    finally:
        await owner.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await owner.execute(f"DROP ROLE IF EXISTS {role}")
        await owner.close()


async def test_migrate_grants_the_named_role_and_the_service_serves_as_it(
    fresh_database: tuple[str, str],
) -> None:
    owner_dsn, role = fresh_database
    applied = await migrate(owner_dsn, role)
    assert len(applied) == LATEST_VERSION
    password = secrets.token_urlsafe(16)
    owner = await asyncpg.connect(owner_dsn)
    try:
        await owner.execute(f"ALTER ROLE {role} PASSWORD '{password}'")
        row = await owner.fetchrow(
            "SELECT rolsuper, rolbypassrls, has_table_privilege($1, 'subjects', 'SELECT') AS reads"
            " FROM pg_roles WHERE rolname = $1",
            role,
        )
        assert row is not None and not row["rolsuper"] and not row["rolbypassrls"] and row["reads"]
        # Nothing was granted to the default name in this database.
        assert not await owner.fetchval(
            "SELECT EXISTS (SELECT 1 FROM information_schema.role_table_grants"
            " WHERE grantee = 'authz_service' AND table_catalog = current_database())"
        )
    finally:
        await owner.close()
    service_dsn = in_database(owner_dsn, urlparse(owner_dsn).path.lstrip("/"), role, password)
    db = await Database.connect(service_dsn)  # the role check and the schema version pass
    await db.close()
    assert await migrate(owner_dsn, role) == []  # up to date, same role


async def test_migrate_refuses_another_role_on_a_migrated_schema(fresh_database: tuple[str, str]) -> None:
    owner_dsn, role = fresh_database
    await migrate(owner_dsn, role)
    with pytest.raises(MigrationError, match="migrated for another service role"):
        await migrate(owner_dsn)  # the default, authz_service


@pytest.mark.parametrize("name", ["Authz", "a-b", "x; DROP TABLE t", "", "9lives", "a" * 64])
def test_a_role_name_must_be_a_plain_identifier(name: str) -> None:
    with pytest.raises(MigrationError):
        for_role("GRANT SELECT ON t TO authz_service;", name)


def test_the_default_leaves_the_files_as_they_are() -> None:
    sql = "GRANT SELECT ON t TO authz_service; SELECT 'authz_service'; -- authz_services"
    assert for_role(sql, "authz_service") == sql
    assert for_role(sql, "tenant_b_svc") == (
        "GRANT SELECT ON t TO tenant_b_svc; SELECT 'tenant_b_svc'; -- authz_services"
    )
