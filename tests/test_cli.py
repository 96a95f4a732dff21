"""The newcomer's walk-through, as a user runs it: `authz dev` (what `make run`
starts) in its own process on its own embedded PostgreSQL, then the `authz`
CLI in separate processes."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

AUTHZ = [sys.executable, "-m", "authz_service.cli.main"]
DEV_OUTPUT: list[str] = []
"""What `authz dev` printed up to its banner's end (the dev_env fixture fills it)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def dev_env() -> Iterator[dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="authz-dev-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
        env.update(
            AUTHZ_HOME=home,
            AUTHZ_LISTEN=f"127.0.0.1:{free_port()}",
            AUTHZ_HTTP_LISTEN=f"127.0.0.1:{free_port()}",
            AUTHZ_LOG_FORMAT="text",
        )
        proc = subprocess.Popen(
            [*AUTHZ, "dev"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                lines.put(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        output: list[str] = []
        deadline = time.monotonic() + 90
        while not any("Stop with Ctrl-C" in line for line in output):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                proc.wait()
                raise AssertionError("authz dev did not become ready:\n" + "".join(output))
            with contextlib.suppress(queue.Empty):
                output.append(lines.get(timeout=1))
        DEV_OUTPUT[:] = output
        exports = dict(re.findall(r"export (\w+)=(\S+)", (Path(home) / "env").read_text()))
        cli_env = {
            **env,
            "AUTHZ_ADDRESS": exports["AUTHZ_ADDRESS"],
            "AUTHZ_API_KEY": exports["AUTHZ_API_KEY"].strip("'"),
        }
        try:
            yield cli_env
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(timeout=5)
            proc.stdout.close()
        assert proc.returncode == 0, "".join(output)


def authz(env: dict[str, str], *args: str, ok: bool = True) -> str:
    result = subprocess.run([*AUTHZ, *args], env=env, capture_output=True, text=True, timeout=60)
    if ok:
        assert result.returncode == 0, f"authz {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    else:
        assert result.returncode != 0, result.stdout
    return result.stdout + result.stderr


def test_walkthrough_pairing_with_the_cli(dev_env: dict[str, str]) -> None:
    out = authz(dev_env, "simulate", "message", "demo", "4242", "hello", "--name", "Alice")
    assert "pairing_required" in out
    code = re.search(r"Pairing code: ([A-Z0-9]{8})", out)
    assert code, out
    assert f"authz pairing approve demo {code.group(1)}" in out

    again = authz(dev_env, "simulate", "message", "demo", "4242", "hello?")
    assert "existing" in again and "stays quiet" in again

    listing = json.loads(authz(dev_env, "pairing", "list", "demo", "--json"))
    assert [(r["user"], r["status"]) for r in listing] == [("4242", "pending")]

    assert "Approved" in authz(dev_env, "pairing", "approve", "demo", code.group(1))
    assert "allow (paired)" in authz(dev_env, "simulate", "message", "demo", "4242", "hello again")

    users = json.loads(authz(dev_env, "users", "list", "demo", "--paired", "--json"))
    assert [(u["user"], u["name"], u["status"]) for u in users] == [("4242", "Alice", "paired")]

    audit = authz(dev_env, "audit", "--event", "pairing.")
    assert "pairing.requested" in audit and "pairing.approved" in audit

    # The walk-through's last two lines (run from the repository root, as the README says).
    doctor = authz(dev_env, "doctor")
    assert "pairing_no_approver" in doctor and "0 critical, 0 high" in doctor
    repo = Path(__file__).resolve().parent.parent
    plan = subprocess.run(
        [*AUTHZ, "apply", "-f", "examples/policies/public-demo-admin.yaml", "--dry-run"],
        env=dev_env, cwd=repo, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    assert "+ channel demo-tg (telegram): create" in plan.stdout and "nothing was changed" in plan.stdout


def test_pairing_resolved_by_user_when_the_code_was_lost(dev_env: dict[str, str]) -> None:
    for user in ("5151", "5252", "5353"):
        assert "pairing_required" in authz(dev_env, "simulate", "message", "demo", user, "hello")
    approved = authz(dev_env, "pairing", "approve", "demo", "--user", "5151")
    assert "Approved" in approved and "user 5151 on demo" in approved
    assert "the requester will be told: ✅ Paired!" in approved
    denied = authz(dev_env, "pairing", "deny", "demo", "--user", "5252")
    assert "Denied" in denied and "the requester will be told: ❌" in denied
    assert "Blocked" in authz(dev_env, "pairing", "block", "demo", "--user", "5353")
    assert "allow (paired)" in authz(dev_env, "simulate", "message", "demo", "5151", "hi")
    assert "blocked" in authz(dev_env, "simulate", "message", "demo", "5353", "hi")
    assert "no such approval" in authz(dev_env, "pairing", "approve", "demo", "--user", "5252", ok=False)
    assert "not both" in authz(dev_env, "pairing", "approve", "demo", "7KQ4XH2M", "--user", "1", ok=False)
    assert "not both" in authz(dev_env, "pairing", "approve", "demo", ok=False)


def test_simulate_redeems_invites_and_reports_rate_limits(dev_env: dict[str, str], tmp_path: Path) -> None:
    """simulate does what a connector does: a DM that is an invite code is redeemed,
    and a rate-limited message says when the next one is admitted."""
    policy = tmp_path / "club.yaml"
    policy.write_text(
        "platform: telegram\ndm_policy: allowlist\nrate_limit: {max_messages_per_hour: 1, burst: 1}\n"
    )
    authz(dev_env, "channel", "set", "club", "-f", str(policy))
    created = authz(dev_env, "invites", "create", "club")
    code = re.search(r"\b([2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{4})\b", created)
    assert code, created
    redeemed = authz(dev_env, "simulate", "message", "club", "777", f"/start {code.group(1).lower()}")
    assert "RedeemInvite: accepted" in redeemed and "Invite accepted" in redeemed
    assert "allow (allowlisted)" in authz(dev_env, "simulate", "message", "club", "777", "hi")
    limited = authz(dev_env, "simulate", "message", "club", "777", "hi again")
    assert "rate_limited (user_rate_limited)" in limited
    assert re.search(r"admitted in [1-9][0-9]* s", limited), limited


def test_cli_users_block_and_audit_export(dev_env: dict[str, str], tmp_path: Path) -> None:
    authz(dev_env, "users", "block", "demo", "5555", "--reason", "spam")
    assert "blocked" in authz(dev_env, "simulate", "message", "demo", "5555", "hi")
    assert "5555" in authz(dev_env, "users", "list", "demo", "--blocked")
    authz(dev_env, "users", "unblock", "demo", "5555")
    assert "nothing to do" in authz(dev_env, "users", "unblock", "demo", "5555", ok=False)

    out = tmp_path / "audit.json"
    authz(dev_env, "audit", "export", "--format", "json", "--output", str(out), "--user", "5555")
    events = json.loads(out.read_text())
    assert [e["event"] for e in events] == ["user.blocked", "user.unblocked"]
    # Filters given before `export` apply too.
    csv_text = authz(dev_env, "audit", "--event", "user.", "--user", "5555", "export", "--format", "csv")
    lines = csv_text.splitlines()
    assert lines[0].startswith("id,at,event,actor") and len(lines) == 3
    assert all(",user." in line for line in lines[1:])


def test_cli_channel_set_from_yaml_and_errors(dev_env: dict[str, str], tmp_path: Path) -> None:
    policy = tmp_path / "bot.yaml"
    policy.write_text(
        "dm_policy: allowlist\nowner_id: '100'\nsend_policy:\n  default: deny\n  allow: [origin]\n"
    )
    authz(dev_env, "channel", "set", "ops", "--platform", "telegram", "-f", str(policy))
    shown = authz(dev_env, "channel", "show", "ops")
    assert "dm_policy: allowlist" in shown and "owner_id: '100'" in shown
    authz(dev_env, "channel", "set", "ops", "--dm-policy", "pairing")  # flags change only what they name
    assert "owner_id: '100'" in authz(dev_env, "channel", "show", "ops")

    # The flat form takes every ChannelPolicy field, with the policy-file checks.
    policy.write_text(
        "required_approvals: 2\ngroups:\n  '*': {require_mention: false, denied_commands: [Deploy]}\n"
        "send_policy: {default: deny, allow: [origin], time_restrictions: "
        "[{targets: [origin], windows: [{start: '09:00', end: '17:00'}]}]}\n"
    )
    authz(dev_env, "channel", "set", "ops", "-f", str(policy))
    shown = authz(dev_env, "channel", "show", "ops", "--json")
    stored = json.loads(shown)
    assert stored["required_approvals"] == 2 and stored["groups"]["*"]["denied_commands"] == ["deploy"]
    assert stored["send_policy"]["time_restrictions"][0]["windows"][0]["end"] == "17:00"
    assert stored["owner_id"] == "100"  # keys not in the file keep their stored values

    policy.write_text("owner_id: '100'\ndm_policy: wide-open\nrequire_mentoin: true\n")
    err = authz(dev_env, "channel", "set", "ops", "-f", str(policy), ok=False)
    assert f"{policy}:2: dm_policy: unknown value 'wide-open'" in err
    assert f"{policy}:3: require_mentoin:" in err and "nothing was saved" in err
    err = authz(dev_env, "channel", "set", "ops", "--code-ttl", "5", ok=False)
    assert "INVALID_ARGUMENT" in err and "pairing_code_ttl_seconds" in err
    err = authz(dev_env, "pairing", "approve", "demo", "NOTACODE", ok=False)
    assert "INVALID_ARGUMENT" in err
    err = authz({**dev_env, "AUTHZ_API_KEY": ""}, "channel", "list", ok=False)
    assert "AUTHZ_API_KEY" in err


def test_the_printed_curl_call_answers_over_http(dev_env: dict[str, str]) -> None:
    """`make run` prints one curl call of the HTTP/JSON API; run as printed, it answers."""
    banner = "".join(DEV_OUTPUT)
    start = banner.index("curl -s ")
    command = banner[start : banner.index("}'", start) + 2]
    assert dev_env["AUTHZ_API_KEY"] not in banner  # the key stays in the env file
    result = subprocess.run(["bash", "-c", command], env=dev_env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["decision"] in ("DECISION_PAIRING_REQUIRED", "DECISION_ALLOW"), answer
