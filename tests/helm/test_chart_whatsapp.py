"""The Helm chart's WhatsApp connector: its config, secrets, webhook port and Service."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.helm.rendering import (
    MINIMAL,
    Manifest,
    connector_deployments,
    env_of,
    manifests,
    matches,
    of_kind,
    only,
    render,
    with_values,
)

WHATSAPP: dict[str, Any] = {
    "name": "support-wa",
    "platform": "whatsapp",
    "channelId": "support-wa",
    "tokenSecret": {"name": "support-wa-meta"},
    "apiKeySecret": {"name": "support-wa-connector"},
    "whatsapp": {"phoneNumberId": "106540352242922"},
}


def config_of(docs: list[Manifest], name: str) -> dict[str, Any]:
    """The config file of connector ``name``, from the ConfigMap its Deployment mounts."""
    spec = connector_deployments(docs)[name]["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if "configMap" in v]
    config_map = only(docs, "ConfigMap", volume["configMap"]["name"])
    config: dict[str, Any] = yaml.safe_load(config_map["data"]["config.yaml"])
    return config


def webhook_service(docs: list[Manifest], dep: Manifest) -> Manifest:
    labels = dep["spec"]["template"]["metadata"]["labels"]
    (service,) = [s for s in of_kind(docs, "Service") if matches(s["spec"]["selector"], labels)]
    return service


def test_whatsapp_connector_serves_its_webhook(chart: helm.Chart) -> None:
    docs = manifests(chart, with_values(MINIMAL, connectors=[WHATSAPP]))
    dep = connector_deployments(docs)["support-wa"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["authz-connector", "whatsapp"]
    assert config_of(docs, "support-wa")["whatsapp"] == {
        "listen": "0.0.0.0:3001",
        "phone_number_id": "106540352242922",
    }
    refs = {k: v["valueFrom"]["secretKeyRef"] for k, v in env_of(container).items()}
    assert refs == {
        "AUTHZ_CONNECTOR_API_KEY": {"name": "support-wa-connector", "key": "api-key"},
        "WHATSAPP_ACCESS_TOKEN": {"name": "support-wa-meta", "key": "access-token"},
        "WHATSAPP_APP_SECRET": {"name": "support-wa-meta", "key": "app-secret"},
        "WHATSAPP_VERIFY_TOKEN": {"name": "support-wa-meta", "key": "verify-token"},
    }
    # Meta posts to /whatsapp/webhook through this Service.
    service = webhook_service(docs, dep)
    (port,) = service["spec"]["ports"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[port["targetPort"]] == 3001 == port["port"]
    assert container["readinessProbe"]["tcpSocket"] == {"port": port["targetPort"]}
    assert service["spec"]["type"] == "ClusterIP"
    # No poller to collide with: a new pod takes over before the old one goes.
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"


def test_whatsapp_options_reach_the_config(chart: helm.Chart) -> None:
    connector = {
        **WHATSAPP,
        "baseUrl": "https://graph.example.com/v23.0",
        "tokenSecret": {"name": "meta", "accessTokenKey": "t", "appSecretKey": "s", "verifyTokenKey": "v"},
        "whatsapp": {
            "phoneNumberId": "1",
            "port": 8443,
            "notifyTemplate": "authz_pairing_request",
            "notifyTemplateLanguage": "pt_BR",
            "serviceType": "LoadBalancer",
            "serviceAnnotations": {"example.com/tls": "on"},
        },
    }
    docs = manifests(chart, with_values(MINIMAL, connectors=[connector]))
    assert config_of(docs, "support-wa")["whatsapp"] == {
        "listen": "0.0.0.0:8443",
        "phone_number_id": "1",
        "notify_template": "authz_pairing_request",
        "notify_template_language": "pt_BR",
        "base_url": "https://graph.example.com/v23.0",
    }
    container = connector_deployments(docs)["support-wa"]["spec"]["template"]["spec"]["containers"][0]
    keys = {k: v["valueFrom"]["secretKeyRef"]["key"] for k, v in env_of(container).items()}
    assert (keys["WHATSAPP_ACCESS_TOKEN"], keys["WHATSAPP_APP_SECRET"], keys["WHATSAPP_VERIFY_TOKEN"]) == (
        "t",
        "s",
        "v",
    )
    service = webhook_service(docs, connector_deployments(docs)["support-wa"])
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["metadata"]["annotations"] == {"example.com/tls": "on"}
    assert service["spec"]["ports"][0]["port"] == 8443


def test_whatsapp_needs_its_phone_number_id(chart: helm.Chart) -> None:
    connector = {**WHATSAPP, "whatsapp": {}}
    with pytest.raises(
        helm.HelmError, match=r"connectors\[support-wa\]\.whatsapp\.phoneNumberId is required"
    ):
        render(chart, with_values(MINIMAL, connectors=[connector]))
