"""The Helm chart's connectors: one Deployment each, their config, secrets and Services."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.helm.rendering import (
    MINIMAL,
    NAMESPACE,
    Manifest,
    connector_deployments,
    env_of,
    manifests,
    matches,
    of_kind,
    only,
    production,
    render,
    with_values,
)

# --- connectors ---------------------------------------------------------------------------------


def connector_config(docs: list[Manifest], dep: Manifest) -> dict[str, Any]:
    spec = dep["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if "configMap" in v]
    config_map = only(docs, "ConfigMap", volume["configMap"]["name"])
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    command = spec["containers"][0]["command"]
    assert command[command.index("--config") + 1] == f"{mount['mountPath']}/config.yaml"
    config: dict[str, Any] = yaml.safe_load(config_map["data"]["config.yaml"])
    return config


def test_connectors_render_one_deployment_each(chart: helm.Chart) -> None:
    docs = manifests(chart, production())
    deps = connector_deployments(docs)
    assert set(deps) == {"support-tg", "support-sl"}
    for name, platform in (("support-tg", "telegram"), ("support-sl", "slack")):
        dep = deps[name]
        assert dep["spec"]["replicas"] == 1
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert container["command"][:4] == [
            "authz-connector",
            platform,
            "--config",
            "/etc/authz-connector/config.yaml",
        ]
        config = connector_config(docs, dep)
        assert config["platform"] == platform
        assert config["address"] == f"authz.{NAMESPACE}.svc:50051"
        assert config["send_listen"] == "127.0.0.1:8787"
        assert config["agent_url"] == "http://support-agent.agents.svc:9000/turn"
        assert config["agent_id"] == "support"
        assert "api_key_file" not in config
        # The send token is generated at start: onto a writable volume, not the ConfigMap.
        token_dir = str(Path(config["send_token_file"]).parent)
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts[token_dir]]
    assert connector_config(docs, deps["support-tg"])["channel_id"] == "tg-support"
    assert connector_config(docs, deps["support-sl"])["slack"] == {"listen": "0.0.0.0:3000"}
    # Telegram allows one poller per token: never two pods at once.
    assert deps["support-tg"]["spec"]["strategy"] == {"type": "Recreate"}


def test_connectors_read_changes_from_the_http_port_when_it_is_on(chart: helm.Chart) -> None:
    docs = manifests(chart, production())
    for dep in connector_deployments(docs).values():
        assert "changes_url" not in connector_config(docs, dep)  # http off: over gRPC
    for tls, scheme in ((False, "http"), (True, "https")):
        values = production()
        values["http"] = {"enabled": True, "port": 8081}
        values.setdefault("tls", {})["enabled"] = tls
        if tls:
            values["tls"]["secretName"] = "authz-tls"
        docs = manifests(chart, values)
        for dep in connector_deployments(docs).values():
            assert connector_config(docs, dep)["changes_url"] == f"{scheme}://authz.{NAMESPACE}.svc:8081"


def test_slack_lookup_email_reaches_the_config_only_when_on(chart: helm.Chart) -> None:
    for on in (True, False):
        values = production()
        slack = next(c for c in values["connectors"] if c["name"] == "support-sl")
        slack["slack"]["lookupEmail"] = on
        docs = manifests(chart, values)
        section = connector_config(docs, connector_deployments(docs)["support-sl"])["slack"]
        assert section == (
            {"listen": "0.0.0.0:3000", "lookup_email": True} if on else {"listen": "0.0.0.0:3000"}
        )


def test_connector_secrets_come_from_the_named_secrets(chart: helm.Chart) -> None:
    deps = connector_deployments(manifests(chart, production()))

    def refs(name: str) -> dict[str, dict[str, Any]]:
        env = env_of(deps[name]["spec"]["template"]["spec"]["containers"][0])
        return {k: v["valueFrom"]["secretKeyRef"] for k, v in env.items()}

    assert refs("support-tg") == {
        "AUTHZ_CONNECTOR_API_KEY": {"name": "support-tg-connector", "key": "api-key"},
        "TELEGRAM_BOT_TOKEN": {"name": "support-tg-bot", "key": "token"},
    }
    assert refs("support-sl") == {
        "AUTHZ_CONNECTOR_API_KEY": {"name": "support-sl-connector", "key": "api-key"},
        "SLACK_BOT_TOKEN": {"name": "support-sl-bot", "key": "bot-token"},
        "SLACK_SIGNING_SECRET": {"name": "support-sl-bot", "key": "signing-secret"},
    }


def test_slack_connector_gets_a_service_for_its_events(chart: helm.Chart) -> None:
    docs = manifests(chart, production())
    deps = connector_deployments(docs)
    services = [s for s in of_kind(docs, "Service") if s["metadata"]["name"] != "authz"]
    (service,) = services
    assert service["metadata"]["name"] == "authz-support-sl"
    assert matches(service["spec"]["selector"], deps["support-sl"]["spec"]["template"]["metadata"]["labels"])
    assert not matches(
        service["spec"]["selector"], deps["support-tg"]["spec"]["template"]["metadata"]["labels"]
    )
    (port,) = service["spec"]["ports"]
    container = deps["support-sl"]["spec"]["template"]["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[port["targetPort"]] == 3000 == port["port"]
    assert container["readinessProbe"]["tcpSocket"] == {"port": port["targetPort"]}


def test_discord_connector(chart: helm.Chart) -> None:
    connector = {
        "name": "ops-dc",
        "platform": "discord",
        "channelId": "ops-dc",
        "sendPort": 9100,
        "tokenSecret": {"name": "ops-dc-bot"},
        "apiKeySecret": {"name": "ops-dc-connector", "key": "key"},
    }
    docs = manifests(chart, with_values(MINIMAL, connectors=[connector]))
    dep = connector_deployments(docs)["ops-dc"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["authz-connector", "discord"]
    assert env_of(container)["DISCORD_BOT_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "ops-dc-bot",
        "key": "token",
    }
    config = connector_config(docs, dep)
    assert config["agent_url"] == "echo"
    assert config["send_listen"] == "127.0.0.1:9100"
    assert "9100/healthz" in " ".join(container["livenessProbe"]["exec"]["command"])
    assert [s["metadata"]["name"] for s in of_kind(docs, "Service")] == ["authz-authz-service"]


def test_duplicate_connector_names_are_refused(chart: helm.Chart) -> None:
    tg = production()["connectors"][0]
    with pytest.raises(helm.HelmError, match="two connectors map to the object name"):
        render(chart, with_values(MINIMAL, connectors=[tg, tg]))
