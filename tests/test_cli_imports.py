"""The `authz` client commands run no server code: importing the whole CLI and
running one client command loads neither asyncpg nor the service's layers.
(`serve`, `dev` and `migrate` import them inside the command.)"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from .conftest import Service, Tenant

SERVER_MODULES = (
    "asyncpg",
    "authz_service.store",
    "authz_service.flows",
    "authz_service.api",
    "authz_service.server",
)

PROBE = """
import json, pkgutil, sys
import authz_service.cli
from authz_service.cli.main import main
for m in pkgutil.walk_packages(authz_service.cli.__path__, "authz_service.cli."):
    if m.name != "authz_service.cli.dev":  # the `authz dev` command's body, loaded when it runs
        __import__(m.name)
code = main(sys.argv[1:])
print(json.dumps({"code": code, "loaded": sorted(sys.modules)}), file=sys.stderr)
"""


def _loaded(*argv: str) -> tuple[int, set[str]]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return report["code"], set(report["loaded"])


def _server_code(loaded: set[str]) -> list[str]:
    return sorted(m for m in loaded if any(m == s or m.startswith(s + ".") for s in SERVER_MODULES))


async def test_a_client_command_loads_no_server_code(service: Service, tenant: Tenant) -> None:
    await tenant.channel("tg")
    # In a thread: the service answers on this test's event loop.
    code, loaded = await asyncio.to_thread(_loaded, "channel", "list", "--json", "--address", service.address,
                                           "--api-key", tenant.keys["admin"])  # fmt: skip
    assert code == 0
    assert "authz_service.cli.apply" in loaded and "authz_service.cli.doctor" in loaded
    assert _server_code(loaded) == []


def test_the_probe_sees_server_code_when_it_is_loaded() -> None:
    # `migrate --help` loads nothing either; importing the servicers does.
    code, loaded = _loaded("migrate", "--help")
    assert code == 0 and _server_code(loaded) == []
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, authz_service.api.admin; print(' '.join(sys.modules))"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "asyncpg" in _server_code(set(proc.stdout.split()))
