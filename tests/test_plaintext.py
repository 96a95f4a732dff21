"""Keys sent without TLS to another host: the SDK, the CLI and the connectors warn, once.

``0.0.0.0:<port>`` reaches the local test service on Linux while not being a loopback
address, so the warnings are checked against calls that really went through.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from authz_service.client import TlsConfig, connect, connect_sync, is_loopback
from authz_service.gen.authz.v1 import admin_pb2 as adm

from .conftest import Service, Tenant
from .policy_helpers import run_authz


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.10:1", True),
        ("localhost:50051", True),
        ("LOCALHOST:50051", True),
        ("[::1]:50051", True),
        ("::1", True),
        ("unix:/run/authz.sock", True),
        ("unix-abstract:authz", True),
        ("dns:///localhost:50051", True),
        ("ipv4:127.0.0.1:1,127.0.0.2:1", True),
        ("ipv6:[::1]:50051", True),
        ("authz.example.com:443", False),
        ("10.0.0.5:50051", False),
        ("0.0.0.0:50051", False),
        ("[2001:db8::1]:50051", False),
        ("localhost.evil.example:50051", False),
        ("127.0.0.1.nip.io:50051", False),
        ("dns://8.8.8.8/localhost:50051", True),  # the authority resolves; the target is local
        ("dns:///authz.internal:50051", False),
        ("ipv4:127.0.0.1:1,10.0.0.1:1", False),  # one remote host is enough
        ("", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def remote(service: Service) -> str:
    return "0.0.0.0:" + service.address.rpartition(":")[2]


def plaintext_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "authz_service.client" and "without TLS" in r.getMessage()]


async def test_sdk_warns_once_per_client(
    service: Service, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    key = tenant.keys["admin"]
    with caplog.at_level(logging.WARNING, logger="authz_service.client"):
        client = connect(remote(service), key)
        try:
            for _ in range(2):
                await client.admin.ListChannels(adm.ListChannelsRequest())
        finally:
            await client.close()
        [record] = plaintext_records(caplog)
        assert record.levelno == logging.WARNING and remote(service) in record.getMessage()
        assert key not in caplog.text

        sync = connect_sync(remote(service), key)  # a second client: its own warning
        try:
            # In a thread: the service runs on this test's event loop.
            await asyncio.to_thread(sync.admin.ListChannels, adm.ListChannelsRequest())
        finally:
            sync.close()
        assert len(plaintext_records(caplog)) == 2

        for quiet in (
            connect(service.address, key),  # loopback
            connect("unix:/nonexistent.sock", key),
            connect(remote(service), key, tls=TlsConfig()),  # TLS (never called)
            connect(remote(service), key, warn_plaintext=False),  # the caller warns itself
        ):
            await quiet.close()
    assert len(plaintext_records(caplog)) == 2


async def test_cli_warns_once_on_stderr(service: Service, tenant: Tenant) -> None:
    args = ("--address", remote(service), "--api-key", tenant.keys["admin"])
    result = await run_authz("channel", "list", "--json", *args)
    assert result.code == 0, result.err
    assert result.out.startswith("[")  # stdout stays machine-readable
    warnings = [line for line in result.err.splitlines() if "without TLS" in line]
    assert warnings == [
        f"authz: warning: sending the API key without TLS to {remote(service)}, which is not a "
        "loopback address: anyone on the network path can read it (set AUTHZ_TLS=1, see "
        "docs/configuration.md)"
    ]
    local = await run_authz(
        "channel", "list", "--address", service.address, "--api-key", tenant.keys["admin"]
    )
    assert local.code == 0 and "without TLS" not in local.err
