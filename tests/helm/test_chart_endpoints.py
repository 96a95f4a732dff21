"""The chart's ways in and out besides gRPC: the HTTP/JSON port (off by default), the
change listener's own DSN (AUTHZ_LISTEN_DATABASE_URL, from values or a Secret), and each
connector's client certificate under mutual TLS."""

from __future__ import annotations

import base64

import helm_python as helm
import pytest

from tests.helm.rendering import (
    LISTEN_URL,
    MINIMAL,
    connector_deployments,
    env_of,
    everything,
    manifests,
    notes_of,
    of_kind,
    only,
    production,
    render,
    server_container,
    with_values,
)

# --- the HTTP/JSON port ---------------------------------------------------------------------------


def test_the_http_port_is_off_by_default(chart: helm.Chart) -> None:
    docs = manifests(chart, production())
    container = server_container(docs)
    assert "AUTHZ_HTTP_LISTEN" not in env_of(container)
    assert "http" not in [p["name"] for p in container["ports"]]
    (service,) = [
        s
        for s in of_kind(docs, "Service")
        if s["metadata"]["labels"]["app.kubernetes.io/component"] == "server"
    ]
    assert "http" not in [p["name"] for p in service["spec"]["ports"]]


def test_the_http_port_is_served_published_and_admitted_when_enabled(chart: helm.Chart) -> None:
    docs = manifests(chart, with_values(production(), **{"http.enabled": True, "http.port": 8443}))
    container = server_container(docs)
    assert env_of(container)["AUTHZ_HTTP_LISTEN"]["value"] == "0.0.0.0:8443"
    assert {"name": "http", "containerPort": 8443, "protocol": "TCP"} in container["ports"]
    (service,) = [
        s
        for s in of_kind(docs, "Service")
        if s["metadata"]["labels"]["app.kubernetes.io/component"] == "server"
    ]
    assert {"name": "http", "port": 8443, "targetPort": "http", "protocol": "TCP"} in service["spec"]["ports"]
    policy = only(docs, "NetworkPolicy")
    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert "grpc" in ports and "http" in ports


def test_the_console_is_on_with_secure_cookies_unless_told_otherwise(chart: helm.Chart) -> None:
    # Behind an Ingress ending TLS the port speaks plain HTTP: without the switch the
    # session cookie would not be Secure.
    env = env_of(server_container(manifests(chart, with_values(production(), **{"http.enabled": True}))))
    assert (env["AUTHZ_CONSOLE"]["value"], env["AUTHZ_CONSOLE_SECURE_COOKIES"]["value"]) == ("on", "on")
    values = with_values(
        production(),
        **{"http.enabled": True, "http.console.enabled": False, "http.console.secureCookies": False},
    )
    env = env_of(server_container(manifests(chart, values)))
    assert (env["AUTHZ_CONSOLE"]["value"], env["AUTHZ_CONSOLE_SECURE_COOKIES"]["value"]) == ("off", "off")
    assert "AUTHZ_CONSOLE" not in env_of(server_container(manifests(chart, production())))
    notes = notes_of(chart, with_values(MINIMAL, **{"http.enabled": True}))
    assert "http://127.0.0.1:8080/console/" in notes
    assert "/console/" not in notes_of(
        chart, with_values(MINIMAL, **{"http.enabled": True, "http.console.enabled": False})
    )
    with pytest.raises(helm.HelmError, match="secure"):
        render(chart, with_values(MINIMAL, **{"http.console.secure": True}))


def test_the_http_port_must_differ_from_the_grpc_port(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmError, match=r"http.port \(50051\) must differ from service.port"):
        render(chart, with_values(MINIMAL, **{"http.enabled": True, "http.port": 50051}))


def test_the_notes_name_the_http_api_over_tls(chart: helm.Chart) -> None:
    notes = notes_of(chart, everything())
    assert "HTTP/JSON API (docs/http-api.md): https://authz.authz.svc:8080" in notes
    assert "HTTP/JSON" not in notes_of(chart, MINIMAL)


# --- AUTHZ_LISTEN_DATABASE_URL --------------------------------------------------------------------


def test_the_listener_dsn_from_values_goes_into_the_charts_secret(chart: helm.Chart) -> None:
    docs = manifests(chart, with_values(MINIMAL, **{"secrets.listenDatabaseUrl": LISTEN_URL}))
    ref = env_of(server_container(docs))["AUTHZ_LISTEN_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    secret = only(docs, "Secret", ref["name"])
    assert base64.b64decode(secret["data"][ref["key"]]).decode() == LISTEN_URL


def test_without_a_listener_dsn_the_key_is_absent_and_optional(chart: helm.Chart) -> None:
    docs = manifests(chart, MINIMAL)
    ref = env_of(server_container(docs))["AUTHZ_LISTEN_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True  # the listener then uses AUTHZ_DATABASE_URL
    assert ref["key"] not in only(docs, "Secret", ref["name"])["data"]


def test_the_listener_dsn_from_an_existing_secret(chart: helm.Chart) -> None:
    values = with_values(production(), **{"secrets.keys.listenDatabaseUrl": "direct-dsn"})
    ref = env_of(server_container(manifests(chart, values)))["AUTHZ_LISTEN_DATABASE_URL"]["valueFrom"]
    assert ref["secretKeyRef"] == {"name": "authz-secrets", "key": "direct-dsn", "optional": True}


def test_a_listener_dsn_value_with_an_existing_secret_is_refused(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmError, match=r"secrets\.keys\.listenDatabaseUrl"):
        render(chart, with_values(production(), **{"secrets.listenDatabaseUrl": LISTEN_URL}))


# --- connectors' client certificates --------------------------------------------------------------


def test_each_connector_presents_its_own_client_certificate(chart: helm.Chart) -> None:
    for name, dep in connector_deployments(manifests(chart, everything())).items():
        spec = dep["spec"]["template"]["spec"]
        env = env_of(spec["containers"][0])
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "client-tls"]
        assert mount["readOnly"] is True
        assert env["AUTHZ_CLIENT_CERT_FILE"]["value"] == f"{mount['mountPath']}/tls.crt", name
        assert env["AUTHZ_CLIENT_KEY_FILE"]["value"] == f"{mount['mountPath']}/tls.key", name
        (volume,) = [v for v in spec["volumes"] if v["name"] == "client-tls"]
        assert volume["secret"]["secretName"] == f"{name}-client-tls"
        assert volume["secret"]["items"] == [
            {"key": "tls.crt", "path": "tls.crt"},
            {"key": "tls.key", "path": "tls.key"},
        ]
        # The files belong to root; the connector (runAsUser 10001) reads them through fsGroup.
        assert volume["secret"]["defaultMode"] == 0o440
        assert spec["securityContext"]["fsGroup"] == spec["containers"][0]["securityContext"]["runAsGroup"]


def test_client_certificate_keys_can_be_renamed(chart: helm.Chart) -> None:
    values = everything()
    values["connectors"][0]["clientCertSecret"] = {
        "name": "bundle",
        "certKey": "chain.pem",
        "keyKey": "key.pem",
    }
    dep = connector_deployments(manifests(chart, values))[values["connectors"][0]["name"]]
    (volume,) = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "client-tls"]
    assert volume["secret"]["items"] == [
        {"key": "chain.pem", "path": "tls.crt"},
        {"key": "key.pem", "path": "tls.key"},
    ]


def test_mutual_tls_requires_a_client_certificate_for_every_connector(chart: helm.Chart) -> None:
    values = everything()
    del values["connectors"][1]["clientCertSecret"]
    name = values["connectors"][1]["name"]
    with pytest.raises(helm.HelmError, match=rf"connectors\[{name}\].clientCertSecret is required"):
        render(chart, values)


def test_a_client_certificate_without_tls_is_refused(chart: helm.Chart) -> None:
    values = production()
    values["connectors"][0]["clientCertSecret"] = {"name": "client-tls"}
    with pytest.raises(helm.HelmError, match=r"a client certificate needs tls\.enabled"):
        render(chart, values)


def test_without_mutual_tls_connectors_mount_no_client_certificate(chart: helm.Chart) -> None:
    for dep in connector_deployments(manifests(chart, production())).values():
        spec = dep["spec"]["template"]["spec"]
        assert "AUTHZ_CLIENT_CERT_FILE" not in env_of(spec["containers"][0])
        assert not [v for v in spec["volumes"] if v["name"] == "client-tls"]
