"""TLS and mutual TLS on the gRPC port, with a throwaway CA minted per session."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ipaddress
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from authz_service import healthcheck
from authz_service.client import NO_RETRY, EdgeSettings, TlsConfig, connect, connect_sync
from authz_service.client.changes_http import HttpTarget, open_stream
from authz_service.config import ConfigError, ServerTls, Settings
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.server import RunningServer, start_server
from authz_service.store.db import Database
from sidecars.config import ConfigError as SidecarConfigError
from sidecars.config import ConnectorConfig
from sidecars.main import check_service, make_client

from .conftest import SECRET_KEY, Dsns, Tenant, rpc_error
from .edge_helpers import healthy


@dataclass(frozen=True)
class Pki:
    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("authz test CA", ca_key, None, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    return Pki(
        ca=ca.public_bytes(pem),
        server_cert=_cert("localhost", server_key, ca.subject, ca_key, server=True).public_bytes(pem),
        server_key=_pem_key(server_key),
        client_cert=_cert("connector", client_key, ca.subject, ca_key).public_bytes(pem),
        client_key=_pem_key(client_key),
    )


async def _serve(dsns: Dsns, tls: ServerTls) -> RunningServer:
    settings = Settings.from_env(
        {"AUTHZ_DATABASE_URL": dsns.service, "AUTHZ_SECRET_KEY": SECRET_KEY, "AUTHZ_HOME": "/nonexistent"}
    )
    settings = dataclasses.replace(settings, tls=tls)
    return await start_server(await Database.connect(dsns.service), settings, listen="127.0.0.1:0")


@pytest.fixture
async def tls_server(dsns: Dsns, pki: Pki) -> AsyncIterator[str]:
    running = await _serve(dsns, ServerTls(pki.server_cert, pki.server_key))
    yield f"127.0.0.1:{running.port}"
    await running.stop(grace=0)


@pytest.fixture
async def mtls_server(dsns: Dsns, pki: Pki) -> AsyncIterator[str]:
    running = await _serve(dsns, ServerTls(pki.server_cert, pki.server_key, client_ca=pki.ca))
    yield f"127.0.0.1:{running.port}"
    await running.stop(grace=0)


async def _list_keys(address: str, key: str, tls: TlsConfig | None) -> adm.ListApiKeysResponse:
    client = connect(address, key, tls=tls, retry=NO_RETRY, timeout=3)
    try:
        return await client.admin.ListApiKeys(adm.ListApiKeysRequest())
    finally:
        await client.close()


async def test_tls_client_with_the_ca_succeeds_and_without_it_fails(
    tls_server: str, tenant: Tenant, pki: Pki
) -> None:
    key = tenant.keys["admin"]
    assert len((await _list_keys(tls_server, key, TlsConfig(root_certificates=pki.ca))).keys) == 3
    # System roots do not trust our CA; a plaintext client cannot speak to a TLS port.
    for tls in (TlsConfig(), None):
        err = await rpc_error(_list_keys(tls_server, key, tls))
        assert err.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_requires_a_client_certificate(mtls_server: str, tenant: Tenant, pki: Pki) -> None:
    key = tenant.keys["admin"]
    err = await rpc_error(_list_keys(mtls_server, key, TlsConfig(root_certificates=pki.ca)))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    with_cert = TlsConfig(pki.ca, pki.client_cert, pki.client_key)
    assert len((await _list_keys(mtls_server, key, with_cert)).keys) == 3


async def test_sync_client_and_cli_settings_from_the_environment(
    mtls_server: str, tenant: Tenant, pki: Pki, tmp_path: Path
) -> None:
    files = {}
    for name, data in (("ca", pki.ca), ("cert", pki.client_cert), ("key", pki.client_key)):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_bytes(data)
    env = {
        "AUTHZ_CA_FILE": str(files["ca"]),
        "AUTHZ_CLIENT_CERT_FILE": str(files["cert"]),
        "AUTHZ_CLIENT_KEY_FILE": str(files["key"]),
    }
    tls = TlsConfig.from_env(env)
    assert tls is not None and tls.certificate_chain == pki.client_cert
    assert TlsConfig.from_env({}) is None
    with pytest.raises(ValueError, match="together"):
        TlsConfig.from_env({"AUTHZ_CLIENT_CERT_FILE": str(files["cert"])})

    def list_keys() -> int:
        with connect_sync(mtls_server, tenant.keys["admin"], tls=tls, retry=NO_RETRY) as client:
            return len(client.admin.ListApiKeys(adm.ListApiKeysRequest()).keys)

    assert await asyncio.to_thread(list_keys) == 3


async def test_healthcheck_probes_over_mutual_tls(
    mtls_server: str,
    pki: Pki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The chart's probes and `helm test` with TLS on: `python -m authz_service.healthcheck`."""
    for name, data in (("CA", pki.ca), ("CLIENT_CERT", pki.client_cert), ("CLIENT_KEY", pki.client_key)):
        path = tmp_path / f"{name}.pem"
        path.write_bytes(data)
        monkeypatch.setenv(f"AUTHZ_{name}_FILE", str(path))
    assert await asyncio.to_thread(healthcheck.main, [mtls_server, "--service=liveness"]) == 0
    assert capsys.readouterr().out.strip() == f"{mtls_server} liveness: SERVING"
    assert await asyncio.to_thread(healthcheck.main, [mtls_server, "--service=no.such.Service"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    # Without a client certificate the handshake fails: one line, exit 1.
    monkeypatch.delenv("AUTHZ_CLIENT_CERT_FILE")
    monkeypatch.delenv("AUTHZ_CLIENT_KEY_FILE")
    assert await asyncio.to_thread(healthcheck.main, [mtls_server, "--timeout=2"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_server_tls_settings_fail_closed(tmp_path: Path, pki: Pki) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_bytes(pki.server_cert)
    base = {
        "AUTHZ_DATABASE_URL": "postgresql://x/y",
        "AUTHZ_SECRET_KEY": SECRET_KEY,
        "AUTHZ_HOME": str(tmp_path),
    }
    with pytest.raises(ConfigError, match="together"):
        Settings.from_env({**base, "AUTHZ_TLS_CERT_FILE": str(cert)})
    with pytest.raises(ConfigError, match="needs"):
        Settings.from_env({**base, "AUTHZ_TLS_CLIENT_CA_FILE": str(cert)})
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.from_env(
            {**base, "AUTHZ_TLS_CERT_FILE": str(tmp_path / "missing"), "AUTHZ_TLS_KEY_FILE": str(cert)}
        )


async def test_the_http_api_uses_the_same_tls_and_client_certificates(
    dsns: Dsns, pki: Pki, tenant: Tenant, tmp_path: Path
) -> None:
    """AUTHZ_HTTP_LISTEN speaks HTTPS with AUTHZ_TLS_*, and requires a client
    certificate when gRPC does (api/http.py)."""
    settings = Settings.from_env(
        {"AUTHZ_DATABASE_URL": dsns.service, "AUTHZ_SECRET_KEY": SECRET_KEY, "AUTHZ_HOME": "/nonexistent"}
    )
    settings = dataclasses.replace(settings, tls=ServerTls(pki.server_cert, pki.server_key, client_ca=pki.ca))
    running = await start_server(
        await Database.connect(dsns.service), settings, listen="127.0.0.1:0", http_listen="127.0.0.1:0"
    )
    try:
        assert running.http is not None
        url = f"https://127.0.0.1:{running.http.port}/authz.v1.AdminService/ListApiKeys"
        (tmp_path / "client.pem").write_bytes(pki.client_cert)
        (tmp_path / "client.key").write_bytes(pki.client_key)
        trusting = ssl.create_default_context(cadata=pki.ca.decode())
        with_cert = ssl.create_default_context(cadata=pki.ca.decode())
        with_cert.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
        headers = {"Authorization": f"Bearer {tenant.keys['admin']}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=b"{}", headers=headers, ssl=with_cert) as resp:
                assert resp.status == 200
                assert len((await resp.json())["keys"]) == 3
            for refused in (trusting, ssl.create_default_context()):  # no client cert; our CA untrusted
                with pytest.raises(aiohttp.ClientError):
                    async with session.post(url, data=b"{}", headers=headers, ssl=refused) as resp:
                        await resp.read()
            with pytest.raises(aiohttp.ClientError):  # plaintext to the TLS port
                async with session.post(url.replace("https:", "http:"), data=b"{}", headers=headers) as resp:
                    await resp.read()
    finally:
        await running.stop(grace=0)


async def test_a_connector_presents_its_client_certificate_from_the_environment(
    mtls_server: str, tenant: Tenant, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart's connectors under mutual TLS: AUTHZ_CA_FILE plus AUTHZ_CLIENT_CERT_FILE /
    AUTHZ_CLIENT_KEY_FILE, read by the connector's client (sidecars.main.make_client). Its
    start-up check passes with them and names the address without the certificate."""
    await tenant.channel("tg")
    config = ConnectorConfig(
        platform="telegram",
        channel_id="tg",
        api_key=tenant.keys["connector"],
        address=mtls_server,
        rpc_timeout=3,
    )
    for name, data in (("CA", pki.ca), ("CLIENT_CERT", pki.client_cert), ("CLIENT_KEY", pki.client_key)):
        path = tmp_path / f"{name}.pem"
        path.write_bytes(data)
        monkeypatch.setenv(f"AUTHZ_{name}_FILE", str(path))
    client = make_client(config)
    try:
        await check_service(config, client)
    finally:
        await client.close()
    monkeypatch.delenv("AUTHZ_CLIENT_CERT_FILE")
    monkeypatch.delenv("AUTHZ_CLIENT_KEY_FILE")
    client = make_client(dataclasses.replace(config, retry=NO_RETRY))
    try:
        with pytest.raises(SidecarConfigError, match=f"address: no authz service answers at {mtls_server}"):
            await check_service(config, client)
    finally:
        await client.close()


async def test_the_edge_reads_its_change_stream_over_https_with_the_client_certificate(
    dsns: Dsns, pki: Pki, tenant: Tenant, tmp_path: Path
) -> None:
    """changes_url https:// under mutual TLS: the client's CA file (a bundle with
    a UTF-8 comment, as distributions ship) and its client certificate serve the
    HTTP stream too; without the certificate the stream is refused and the edge
    stays off (every check goes to the service)."""
    settings = Settings.from_env(
        {"AUTHZ_DATABASE_URL": dsns.service, "AUTHZ_SECRET_KEY": SECRET_KEY, "AUTHZ_HOME": "/nonexistent"}
    )
    settings = dataclasses.replace(settings, tls=ServerTls(pki.server_cert, pki.server_key, client_ca=pki.ca))
    running = await start_server(
        await Database.connect(dsns.service), settings, listen="127.0.0.1:0", http_listen="127.0.0.1:0"
    )
    await tenant.channel("tg")
    ca = tmp_path / "bundle.pem"
    ca.write_bytes("# Autorité de certification de test\n".encode() + pki.ca)
    (tmp_path / "client.pem").write_bytes(pki.client_cert)
    (tmp_path / "client.key").write_bytes(pki.client_key)
    assert running.http is not None
    url = f"https://localhost:{running.http.port}"
    address = f"127.0.0.1:{running.port}"
    try:
        tls = TlsConfig.from_files(str(ca), str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
        client = connect(address, tenant.keys["connector"], tls=tls, edge=EdgeSettings(changes_url=url))
        try:
            cache = await healthy(client)
            assert cache.server_id
        finally:
            await client.close()
        without = TlsConfig.from_files(str(ca))
        target = HttpTarget.of(url, tenant.keys["connector"], without.ssl_context())
        heard: list[object] = []
        ended = await asyncio.wait_for(open_stream(target, heard.append), 10)
        assert heard == []
        assert ended.reason in (
            "change stream could not connect: SSLError",
            "change stream connection lost",
            "change stream ended",
        )
    finally:
        await running.stop(grace=0)


async def test_the_consoles_cookies_are_secure_over_tls(dsns: Dsns, pki: Pki, tenant: Tenant) -> None:
    """With AUTHZ_TLS_*, the web console's cookies carry Secure (api/console.py)."""
    settings = Settings.from_env(
        {"AUTHZ_DATABASE_URL": dsns.service, "AUTHZ_SECRET_KEY": SECRET_KEY, "AUTHZ_HOME": "/nonexistent"}
    )
    settings = dataclasses.replace(settings, tls=ServerTls(pki.server_cert, pki.server_key))
    running = await start_server(
        await Database.connect(dsns.service), settings, listen="127.0.0.1:0", http_listen="127.0.0.1:0"
    )
    try:
        assert running.http is not None
        base = f"https://127.0.0.1:{running.http.port}/console"
        trusting = ssl.create_default_context(cadata=pki.ca.decode())
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            async with session.get(f"{base}/login", ssl=trusting) as resp:
                nonce = re.search(r'name="nonce" value="([^"]+)"', await resp.text())
                assert nonce is not None
            async with session.post(
                f"{base}/login",
                data={"nonce": nonce.group(1), "key": tenant.keys["admin"]},
                ssl=trusting,
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303
                (session_cookie,) = [
                    c for c in resp.headers.getall("Set-Cookie") if c.startswith("authz_console=")
                ]
                flags = {part.strip().lower() for part in session_cookie.split(";")}
                assert {"secure", "httponly", "samesite=strict"} <= flags
    finally:
        await running.stop(grace=0)
