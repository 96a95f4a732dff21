"""What an operator reads when something is wrong: a start-up failure is one line
naming the setting to change (exit 2, no traceback), a stopped service is named
with how to start one, and a mistyped channel is "channel 'x' not found" from
every command. `authz serve` runs as a subprocess, as an operator runs it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest

from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars.config import ConfigError, ConnectorConfig
from sidecars.main import check_service, make_client

from .conftest import SECRET_KEY, Dsns, Service, Tenant

AUTHZ = [sys.executable, "-m", "authz_service.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def busy_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def base_env(dsns: Dsns, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    env.update(AUTHZ_DATABASE_URL=dsns.service, AUTHZ_SECRET_KEY=SECRET_KEY, AUTHZ_LOG_FORMAT="text")
    env.update(AUTHZ_LISTEN=f"127.0.0.1:{free_port()}")
    env.update(extra)
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AUTHZ, *args], env=env, capture_output=True, text=True, timeout=60)


def with_password(dsn: str, password: str) -> str:
    parts = urlsplit(dsn)
    user = parts.netloc.split("@", 1)[0].split(":", 1)[0]
    host = parts.netloc.split("@", 1)[1] if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def assert_one_line(result: subprocess.CompletedProcess[str], setting: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("authz: ")]
    assert len(lines) == 1, result.stderr
    assert setting in lines[0], lines[0]
    return lines[0]


def test_start_up_failures_are_one_line_naming_the_setting(dsns: Dsns) -> None:
    with busy_port() as port:
        line = assert_one_line(run(base_env(dsns, AUTHZ_LISTEN=f"127.0.0.1:{port}"), "serve"), "AUTHZ_LISTEN")
        assert f"127.0.0.1:{port}" in line
    with busy_port() as port:
        env = base_env(dsns, AUTHZ_TELEMETRY="on", AUTHZ_METRICS_LISTEN=f"127.0.0.1:{port}")
        result = run(env, "serve")
        assert_one_line(result, "AUTHZ_METRICS_LISTEN")
        assert "ready: SERVING" not in result.stderr  # refused before it said it was ready
    with busy_port() as port:
        result = run(base_env(dsns, AUTHZ_HTTP_LISTEN=f"127.0.0.1:{port}"), "serve")
        assert_one_line(result, "AUTHZ_HTTP_LISTEN")
        assert "ready: SERVING" not in result.stderr
    wrong = with_password(dsns.service, "not-the-password")
    line = assert_one_line(run(base_env(dsns, AUTHZ_DATABASE_URL=wrong), "serve"), "AUTHZ_DATABASE_URL")
    assert "refused the login" in line and "not-the-password" not in line
    nowhere = f"postgresql://authz_service:pw@127.0.0.1:{free_port()}/authz"
    line = assert_one_line(run(base_env(dsns, AUTHZ_DATABASE_URL=nowhere), "serve"), "AUTHZ_DATABASE_URL")
    assert "cannot reach the database" in line and "pw@" not in line
    assert_one_line(run(base_env(dsns, AUTHZ_LISTEN="no-port"), "serve"), "AUTHZ_LISTEN")


def test_serve_listens_on_the_address_it_is_given(dsns: Dsns) -> None:
    port = free_port()
    env = base_env(dsns)  # AUTHZ_LISTEN names another port: --address wins
    proc = subprocess.Popen(
        [*AUTHZ, "serve", "--address", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"listening on 127.0.0.1:{port}" in line, line
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_stopped_service_is_named_with_how_to_start_one() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    env.update(AUTHZ_ADDRESS=f"127.0.0.1:{port}", AUTHZ_API_KEY="authz_t_x_y_z")
    result = run(env, "channel", "list")
    assert result.returncode == 2
    assert f"no authz service answers at 127.0.0.1:{port}" in result.stderr
    assert "authz serve" in result.stderr and "failed to connect" not in result.stderr
    result = run({**env, "AUTHZ_ADDRESS": ""}, "channel", "list", "--address", f"127.0.0.1:{port}")
    assert f"no authz service answers at 127.0.0.1:{port}" in result.stderr


async def test_an_unknown_channel_is_not_found_from_every_command(service: Service, tenant: Tenant) -> None:
    await tenant.channel("tg")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    env.update(AUTHZ_ADDRESS=service.address, AUTHZ_API_KEY=tenant.keys["admin"])
    for args in (
        ("pairing", "list", "tgg"),
        ("pairing", "approve", "tgg", "ABCDEFGH"),
        ("simulate", "message", "tgg", "42", "hi"),
        ("users", "list", "tgg"),
        ("invites", "list", "tgg"),
    ):
        result = await asyncio.to_thread(run, env, *args)
        assert result.returncode == 2, (args, result.stdout)
        assert "channel 'tgg' not found" in result.stderr, (args, result.stderr)
    # The known channel still answers.
    listed = await asyncio.to_thread(run, env, "pairing", "list", "tg")
    assert listed.returncode == 0, listed.stderr


async def test_a_mistyped_channel_is_not_a_failed_code(service: Service, tenant: Tenant) -> None:
    """More mistyped channels than the per-key code attempt limit (10): the key may
    still try a code on the real channel."""
    await tenant.channel("tg")
    for _ in range(service.settings.code_attempts_per_key + 2):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await tenant.approver.authz.ResolveApproval(
                az.ResolveApprovalRequest(
                    code=az.CodeRef(channel_id="tgg", code="ABCDEFGH"), action=cm.APPROVAL_ACTION_APPROVE
                )
            )
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        assert "channel 'tgg' not found" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await tenant.approver.authz.ResolveApproval(
            az.ResolveApprovalRequest(
                code=az.CodeRef(channel_id="tg", code="ABCDEFGH"), action=cm.APPROVAL_ACTION_APPROVE
            )
        )
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND  # not RESOURCE_EXHAUSTED
    assert "channel" not in (caught.value.details() or "")


async def test_a_connector_names_what_is_wrong_before_it_starts(service: Service, tenant: Tenant) -> None:
    await tenant.channel("tg")
    good = ConnectorConfig(
        platform="telegram", channel_id="tg", api_key=tenant.keys["connector"], address=service.address,
        rpc_timeout=2.0,
    )  # fmt: skip
    cases = {
        "": good,
        "channel_id: channel 'tgg' not found": ConnectorConfig(**{**good.__dict__, "channel_id": "tgg"}),
        "api_key:": ConnectorConfig(**{**good.__dict__, "api_key": tenant.keys["connector"][:-4] + "AAAA"}),
        "address: no authz service answers": ConnectorConfig(
            **{**good.__dict__, "address": f"127.0.0.1:{free_port()}"}
        ),
    }
    for expected, config in cases.items():
        client = make_client(config)
        try:
            if not expected:
                await check_service(config, client)
                continue
            with pytest.raises(ConfigError) as caught:
                await check_service(config, client)
            assert str(caught.value).startswith(expected), str(caught.value)
        finally:
            await client.close()
