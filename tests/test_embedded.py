"""The embedded PostgreSQL and AUTHZ_HOME: a password on every connection, a
private socket folder, private files, and no mode changed outside AUTHZ_HOME."""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from authz_service.config import Settings
from authz_service.store import embedded

from .conftest import Dsns

ROOT = os.geteuid() == 0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def ancestor_modes(path: Path) -> dict[Path, int]:
    return {p: mode(p) for p in path.parents}


def expected_home_mode() -> int:
    # Run as root, PostgreSQL runs as embedded_postgres, which must traverse AUTHZ_HOME.
    return 0o710 if ROOT else 0o700


@pytest.fixture
def base() -> Iterator[Path]:
    """A folder in the system temp dir others may traverse (tmp_path's parents are
    0700, closed to the embedded_postgres account when the tests run as root)."""
    with tempfile.TemporaryDirectory(prefix="authz-emb-") as d:
        Path(d).chmod(0o755)
        yield Path(d)


def embedded_or_skip(dsns: Dsns) -> tuple[Path, embedded.EmbeddedDatabase]:
    if dsns.home is None or dsns.server is None:
        pytest.skip("AUTHZ_TEST_DATABASE_URL: not the embedded server")
    return dsns.home, dsns.server


async def assert_password_required(server: embedded.EmbeddedDatabase) -> None:
    for user in (embedded.OWNER_ROLE, embedded.SERVICE_ROLE):
        for password in ("", "wrong-" + server.owner_password[:8]):
            auth = f":{password}" if password else ""
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(
                    f"postgresql://{user}{auth}@/{embedded.DATABASE}?host={server.socket_dir}"
                )
        conn = await asyncpg.connect(server.dsn(user))
        assert await conn.fetchval("SELECT current_user") == user
        await conn.close()


async def test_a_connection_without_the_password_is_refused(dsns: Dsns) -> None:
    _, server = embedded_or_skip(dsns)
    await assert_password_required(server)
    conn = await asyncpg.connect(server.owner_dsn)
    try:
        assert await conn.fetchval("SHOW listen_addresses") == ""  # no TCP at all
        assert await conn.fetchval("SHOW password_encryption") == "scram-sha-256"
        rows = await conn.fetch("SELECT type, auth_method FROM pg_hba_file_rules WHERE error IS NULL")
        assert [(r["type"], r["auth_method"]) for r in rows] == [("local", "scram-sha-256")]
    finally:
        await conn.close()


def test_home_socket_folder_and_secret_files_are_private(dsns: Dsns) -> None:
    home, server = embedded_or_skip(dsns)
    assert mode(home) == expected_home_mode()
    assert home.stat().st_uid == os.geteuid()
    socket_dir = Path(server.socket_dir)
    assert socket_dir == home / "run"
    assert mode(socket_dir) == 0o700
    assert (socket_dir / embedded.SOCKET_NAME).is_socket()
    for name in (embedded.OWNER_PASSWORD_FILE, embedded.SERVICE_PASSWORD_FILE):
        assert mode(home / name) == 0o600
        assert (home / name).stat().st_uid == os.geteuid()
    assert server.owner_password == (home / embedded.OWNER_PASSWORD_FILE).read_text().strip()
    assert len(server.owner_password) >= 43 and server.owner_password != server.service_password
    assert mode(home / "pgdata") == 0o700
    assert mode(home / "pgdata" / "pg_hba.conf") == 0o600
    assert "password" not in repr(server) and server.owner_password not in repr(server)


async def test_a_long_home_from_an_older_build_moves_to_passwords_without_touching_its_parents(
    base: Path,
) -> None:
    """A deep AUTHZ_HOME (socket path too long for sun_path) whose data folder an
    older build made with trust authentication."""
    deep = base / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    for p in (deep, deep.parent):
        p.chmod(0o755)
    home = deep / "home"
    home.mkdir(0o755)  # what the older build left (it chmod-ed 0755)
    pg = embedded._system_user()
    pgdata = home / "pgdata"
    os.mkdir(pgdata, 0o700)
    if pg is not None:
        os.chown(pgdata, pg.pw_uid, pg.pw_gid)
    embedded._run(["initdb", "-D", str(pgdata), "-U", "postgres", "--auth=trust"], pg)
    (home / "secret.key").write_text("s" * 43)
    (home / "secret.key").chmod(0o644)
    before = ancestor_modes(home)

    server = await asyncio.to_thread(embedded.start, home)
    try:
        socket_dir = Path(server.socket_dir)
        assert not socket_dir.is_relative_to(home) and socket_dir.parent == Path(tempfile.gettempdir())
        assert mode(socket_dir) == 0o700
        assert (pgdata / "pg_hba.conf").read_text() == embedded.HBA
        await embedded.ensure_database(server)
        await assert_password_required(server)
        assert mode(home) == expected_home_mode()
        Settings.from_env({"AUTHZ_HOME": str(home)})  # dev mode: tightens the old key file
        assert mode(home / "secret.key") == 0o600
        assert ancestor_modes(home) == before
    finally:
        await asyncio.to_thread(embedded.release, home)
    assert not await asyncio.to_thread(socket_dir.exists)  # the last holder stopped the server and removed it
    assert embedded._postmaster(pgdata) is None


async def test_a_closed_parent_keeps_its_mode(base: Path) -> None:
    parent = base / "closed"
    parent.mkdir(0o700)
    home = parent / "home"
    before = ancestor_modes(home)
    if ROOT:
        # embedded_postgres cannot traverse a 0700 parent: refused, and named.
        with pytest.raises(embedded.EmbeddedError, match=str(home)):
            await asyncio.to_thread(embedded.start, home)
    else:
        server = await asyncio.to_thread(embedded.start, home)
        try:
            await embedded.ensure_database(server)
            await assert_password_required(server)
        finally:
            await asyncio.to_thread(embedded.release, home)
    assert ancestor_modes(home) == before
    assert mode(parent) == 0o700


def test_dev_mode_creates_home_and_secret_files_private_whatever_the_umask(base: Path) -> None:
    home = base / "a" / "home"
    old = os.umask(0)
    try:
        settings = Settings.from_env({"AUTHZ_HOME": str(home)})
    finally:
        os.umask(old)
    assert mode(home) == 0o700
    for name in ("secret.key", "operator.key"):
        assert mode(home / name) == 0o600
    assert (home / "secret.key").read_text().strip() == settings.secret_key
    assert Settings.from_env({"AUTHZ_HOME": str(home)}).secret_key == settings.secret_key  # once
    assert sorted(p.name for p in home.iterdir()) == ["operator.key", "secret.key"]  # no temp files left


def test_postgresql_programs_inherit_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The postmaster's environment is readable as its user: the service's
    settings never reach it."""
    monkeypatch.setenv("AUTHZ_SECRET_KEY", "do-not-leak-" + "x" * 32)
    monkeypatch.setenv("AUTHZ_OPERATOR_KEY", "do-not-leak-either")
    env = embedded._server_env()
    assert not [k for k in env if k.startswith("AUTHZ_")]
    assert env.get("PATH") == os.environ["PATH"]
