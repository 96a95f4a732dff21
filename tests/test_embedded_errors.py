"""The embedded PostgreSQL's start-up failures (`make run`, `authz dev`, `authz
migrate` without AUTHZ_DATABASE_URL): each is one line on stderr naming what to
change, exit code 2, no traceback. `authz migrate` runs as a subprocess, as an
operator runs it; a data folder is initialised once for the module."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz_service.store import embedded

AUTHZ = [sys.executable, "-m", "authz_service.cli.main"]


def migrate(home: Path, command: str = "migrate") -> subprocess.CompletedProcess[str]:
    """``authz migrate`` (or ``authz dev``, which `make run` runs) on the embedded server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    if command == "dev":
        env["AUTHZ_LISTEN"] = env["AUTHZ_HTTP_LISTEN"] = "127.0.0.1:0"  # never reached
    return subprocess.run(
        [*AUTHZ, command],
        env={**env, "AUTHZ_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    # `authz dev` logs its progress (JSON lines); the failure itself is one line.
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith('{"ts"')]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("authz: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def initialised() -> Iterator[Path]:
    """A home whose data folder exists and whose server is stopped."""
    with tempfile.TemporaryDirectory(prefix="authz-emb-err-") as base:
        Path(base).chmod(0o755)  # run as root, PostgreSQL's account must traverse it
        home = Path(base) / "home"
        result = migrate(home)
        assert result.returncode == 0, result.stderr
        yield home


@pytest.fixture
def base() -> Iterator[Path]:
    """A folder others may traverse (tmp_path's parents are closed to the
    embedded_postgres account when the tests run as root)."""
    with tempfile.TemporaryDirectory(prefix="authz-emb-err-") as d:
        Path(d).chmod(0o755)
        yield Path(d)


@pytest.fixture
def live_process() -> Iterator[int]:
    """A process PostgreSQL takes for another server holding a lock: alive, and
    signalable by the account PostgreSQL runs as."""
    pg = embedded._system_user()
    proc = subprocess.Popen(
        ["sleep", "120"], user=None if pg is None else pg.pw_uid, group=None if pg is None else pg.pw_gid
    )
    yield proc.pid
    proc.kill()
    proc.wait()


def plant_lock(path: Path, pid: int, pgdata: Path) -> None:
    path.write_text(f"{pid}\n{pgdata}\n")
    pg = embedded._system_user()
    if pg is not None:
        os.chown(path, pg.pw_uid, pg.pw_gid)


def test_an_authz_home_that_cannot_be_a_folder(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    assert_one_line(migrate(tmp_path / "a-file" / "home"), "AUTHZ_HOME", "set AUTHZ_HOME")
    assert_one_line(migrate(tmp_path / "a-file"), "is not a folder", "set AUTHZ_HOME")


@pytest.mark.parametrize("command", ["migrate", "dev"])
def test_a_data_folder_without_a_database_stops_initdb(base: Path, command: str) -> None:
    pgdata = base / "home" / "pgdata"
    pgdata.mkdir(parents=True)
    (pgdata / "notes.txt").write_text("not PostgreSQL's\n")
    assert_one_line(migrate(base / "home", command), str(pgdata), "move it away")


def test_a_server_lock_held_by_a_live_process_names_the_lock_file(
    initialised: Path, live_process: int
) -> None:
    lock = initialised / "pgdata" / "postmaster.pid"
    plant_lock(lock, live_process, lock.parent)
    try:
        line = assert_one_line(migrate(initialised), str(lock), "stop it")
    finally:
        lock.unlink(missing_ok=True)
    assert f"PID {live_process}" in line
    assert migrate(initialised).returncode == 0  # the lock gone, it starts again


def test_a_socket_in_use_names_the_other_server(initialised: Path, live_process: int) -> None:
    lock = initialised / "run" / f"{embedded.SOCKET_NAME}.lock"
    plant_lock(lock, live_process, initialised / "pgdata")
    try:
        assert_one_line(migrate(initialised), "socket is in use", "AUTHZ_HOME")
    finally:
        lock.unlink(missing_ok=True)


def test_a_missing_binary_says_to_reinstall(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_bin", lambda name: str(base / "gone" / name))
    with pytest.raises(embedded.EmbeddedError) as raised:
        embedded.start(base / "home")
    message = str(raised.value)
    assert "\n" not in message
    assert "reinstall" in message
    assert "AUTHZ_DATABASE_URL" in message


def test_a_postgresql_error_is_summarised_on_one_line() -> None:
    """What initdb and the server log say, reduced to the lines that matter."""
    log = (
        "2026-01-01 10:00:00.000 UTC [11] FATAL:  old failure\n"
        "2026-01-01 10:00:01.000 UTC [12] LOG:  starting PostgreSQL 18\n"
        '2026-01-01 10:00:02.000 UTC [12] FATAL:  could not create lock file "x": Permission denied\n'
        "2026-01-01 10:00:02.000 UTC [12] HINT:  check the folder\n"
    )
    said = embedded._said(log)
    assert said == 'FATAL: could not create lock file "x": Permission denied; HINT: check the folder'
    message = embedded._explain("pg_ctl", log, Path("/h/pgdata"))
    assert "make AUTHZ_HOME writable" in message
    assert "\n" not in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere; the check is for other users")
def test_an_unwritable_home(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o500)
    try:
        assert_one_line(migrate(closed / "home"), "AUTHZ_HOME", "Permission denied")
    finally:
        closed.chmod(0o700)
        shutil.rmtree(closed, ignore_errors=True)


def test_as_root_without_a_way_to_create_postgresqls_account(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL refuses root, so as root it runs as embedded_postgres; when that account
    is missing and cannot be created (no useradd here), the one line says what to do."""

    def missing(name: str) -> object:
        raise KeyError(name)

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(pwd, "getpwnam", missing)
    monkeypatch.setenv("PATH", str(base))  # no useradd on it
    with pytest.raises(embedded.EmbeddedError) as raised:
        embedded.start(base / "home")
    message = str(raised.value)
    assert "\n" not in message
    assert "refuses to run as root" in message and embedded.SYSTEM_USER in message
    assert "run as a non-root user" in message and "AUTHZ_DATABASE_URL" in message
