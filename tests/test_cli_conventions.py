"""CLI conventions: `--version`, shell completion (click's), the connection flags
and `--json` before or after the command, TLS flags."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from authz_service import __version__

from .conftest import Service, Tenant

AUTHZ = [sys.executable, "-m", "authz_service.cli.main"]


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AUTHZ, *args], env=env, capture_output=True, text=True, timeout=60)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTHZ_", "_AUTHZ"))}
    env.update(extra)
    return env


def test_version() -> None:
    for flag in ("--version", "-V"):
        result = run(clean_env(), flag)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"authz {__version__}"


def test_shell_completion_is_clicks() -> None:
    script = run(clean_env(_AUTHZ_COMPLETE="bash_source"), "")
    assert script.returncode == 0 and "_authz_completion" in script.stdout, script.stdout
    words = run(clean_env(_AUTHZ_COMPLETE="bash_complete", COMP_WORDS="authz pair", COMP_CWORD="1"), "")
    assert "plain,pairing" in words.stdout.split(), words.stdout
    words = run(clean_env(_AUTHZ_COMPLETE="bash_complete", COMP_WORDS="authz pairing ap", COMP_CWORD="2"), "")
    assert "plain,approve" in words.stdout.split(), words.stdout


async def test_flags_before_or_after_the_command(service: Service, tenant: Tenant) -> None:
    await tenant.channel("tg")
    env = clean_env(AUTHZ_API_KEY=tenant.keys["admin"])
    after = await asyncio.to_thread(run, env, "channel", "list", "--json", "--address", service.address)
    before = await asyncio.to_thread(run, env, "--json", "--address", service.address, "channel", "list")
    assert after.returncode == 0 and before.returncode == 0, after.stderr + before.stderr
    assert json.loads(before.stdout) == json.loads(after.stdout)
    assert [c["channel_id"] for c in json.loads(before.stdout)] == ["tg"]
    # The command's own flag wins over the root's.
    wrong = await asyncio.to_thread(
        run, env, "--address", "127.0.0.1:1", "channel", "list", "--address", service.address
    )
    assert wrong.returncode == 0, wrong.stderr


def test_tls_flags_stand_for_the_variables() -> None:
    env = clean_env(AUTHZ_API_KEY="x")
    result = run(env, "channel", "list", "--client-cert", "/nonexistent/cert.pem")
    assert result.returncode == 2
    assert "AUTHZ_CLIENT_CERT_FILE and AUTHZ_CLIENT_KEY_FILE must be set together" in result.stderr
    result = run(env, "--ca-file", "/nonexistent/ca.pem", "channel", "list")
    assert result.returncode == 2 and "TLS settings:" in result.stderr and "ca.pem" in result.stderr


async def test_named_contexts(service: Service, tenant: Tenant, tmp_path: Path) -> None:
    """`authz context add|use|list`: a saved deployment answers with no AUTHZ_* set;
    the file is 0600 (it holds keys); flags still win over the context."""
    await tenant.channel("tg")
    env = clean_env(AUTHZ_CONFIG_DIR=str(tmp_path / "cfg"))
    key_file = tmp_path / "key"
    key_file.write_text(tenant.keys["admin"] + "\n")

    def authz(*args: str) -> subprocess.CompletedProcess[str]:
        return run(env, *args)

    added = await asyncio.to_thread(authz, "context", "add", "prod", "--address", service.address,
                                    "--api-key-file", str(key_file))  # fmt: skip
    assert added.returncode == 0 and "in use" in added.stdout, added.stderr
    await asyncio.to_thread(authz, "context", "add", "nowhere", "--address", "127.0.0.1:1", "--api-key", "x")
    stored = tmp_path / "cfg" / "contexts.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700

    listed = await asyncio.to_thread(authz, "--json", "context", "list")
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["prod"]["current"] == "*" and rows["nowhere"]["current"] == ""
    assert tenant.keys["admin"] not in listed.stdout

    channels = await asyncio.to_thread(authz, "--json", "channel", "list")
    assert channels.returncode == 0, channels.stderr
    assert [c["channel_id"] for c in json.loads(channels.stdout)] == ["tg"]

    assert (await asyncio.to_thread(authz, "context", "use", "nowhere")).returncode == 0
    failed = await asyncio.to_thread(authz, "channel", "list")
    assert failed.returncode == 2 and "no authz service answers at 127.0.0.1:1" in failed.stderr
    # A flag wins over the context in use; so does AUTHZ_CONTEXT.
    flagged = await asyncio.to_thread(authz, "channel", "list", "--address", service.address,
                                      "--api-key", tenant.keys["admin"])  # fmt: skip
    assert flagged.returncode == 0, flagged.stderr
    chosen = await asyncio.to_thread(run, {**env, "AUTHZ_CONTEXT": "prod"}, "channel", "list")
    assert chosen.returncode == 0, chosen.stderr
    unknown = await asyncio.to_thread(authz, "context", "use", "staging")
    assert unknown.returncode == 2 and "context 'staging' not found" in unknown.stderr
