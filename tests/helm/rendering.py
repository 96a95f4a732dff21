"""Rendering the Helm chart (helm/authz-service) offline for the chart tests: the values,
the ``chart`` fixture and lookups over the rendered manifests.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "authz-service"
PRODUCTION_VALUES = Path(__file__).with_name("production-values.yaml")
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
CHART_README = CHART_DIR / "README.md"
RELEASE, NAMESPACE = "authz", "authz"
# Oldest supported by the chart's probes (1.30 is the oldest still maintained upstream),
# a middle one, and the newest kubernetes-validate ships.
KUBE_VERSIONS = ("1.30", "1.33", kubernetes_validate.latest_version())
# Custom resources: no schema in kubernetes-validate, checked by hand below.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

DATABASE_URL = "postgresql://authz_service:service-pw-1@db.internal:5432/authz"
MIGRATE_URL = "postgresql://authz_owner:owner-pw-2@db.internal:5432/authz"
LISTEN_URL = "postgresql://authz_service:service-pw-1@db-direct.internal:5432/authz"
SECRET_KEY = "sk-" + "s" * 45
OPERATOR_KEY = "op-" + "o" * 29
# The least an install needs: an image and the secret values (no existingSecret).
MINIMAL: dict[str, Any] = {
    "image": {"repository": "registry.example.com/authz-service"},
    "secrets": {
        "databaseUrl": DATABASE_URL,
        "migrateDatabaseUrl": MIGRATE_URL,
        "secretKey": SECRET_KEY,
        "operatorKey": OPERATOR_KEY,
    },
}
SECRET_LOOKING = re.compile(r"DATABASE_URL|SECRET|KEY|TOKEN|PASSWORD", re.IGNORECASE)

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def production() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(PRODUCTION_VALUES.read_text())
    return values


def everything() -> dict[str, Any]:
    """Production with every optional feature on: TLS (mutual, each connector with its client
    certificate), three workers, the HTTP/JSON port, the dashboard, the
    alerts, env from Secrets, extra volumes and labels."""
    base = production()
    for c in base["connectors"]:
        c["clientCertSecret"] = {"name": f"{c['name']}-client-tls"}
    return with_values(
        base,
        **{
            "tls": {"enabled": True, "secretName": "authz-tls", "clientCaKey": "ca.crt"},
            "http": {"enabled": True, "port": 8080},
            "config.workers": 3,
            "metrics.dashboard.enabled": True,
            "metrics.prometheusRule.enabled": True,
            "metrics.prometheusRule.labels": {"release": "kube-prometheus-stack"},
            "extraEnv": {
                "OTEL_SERVICE_NAME": "authz",
                "OTEL_EXPORTER_OTLP_HEADERS": {
                    "valueFrom": {"secretKeyRef": {"name": "otlp", "key": "headers"}}
                },
            },
            "extraEnvFrom": [{"configMapRef": {"name": "authz-otel"}}],
            "extraVolumes": [{"name": "extra-ca", "configMap": {"name": "corp-ca"}}],
            "extraVolumeMounts": [{"name": "extra-ca", "mountPath": "/etc/corp-ca", "readOnly": True}],
            "commonLabels": {"team": "platform"},
            "deploymentAnnotations": {"reloader.stakater.com/auto": "true"},
        },
    )


def with_values(base: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with dotted-path overrides: ``with_values(v, **{"a.b": 1})``."""
    values = copy.deepcopy(base)
    for path, value in overrides.items():
        node = values
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return values


def render(chart: helm.Chart, values: dict[str, Any]) -> dict[str, str]:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(chart: helm.Chart, values: dict[str, Any]) -> list[Manifest]:
    docs: list[Manifest] = []
    for path, text in sorted(render(chart, values).items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def notes_of(chart: helm.Chart, values: dict[str, Any]) -> str:
    return next(text for path, text in render(chart, values).items() if path.endswith("NOTES.txt"))


def only(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(docs: list[Manifest]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            specs.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
    return specs


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def server_deployment(docs: list[Manifest]) -> Manifest:
    (dep,) = [
        d
        for d in of_kind(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "server"
    ]
    return dep


def server_container(docs: list[Manifest]) -> dict[str, Any]:
    (container,) = server_deployment(docs)["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "authz"
    return dict(container)


def connector_deployments(docs: list[Manifest]) -> dict[str, Manifest]:
    return {
        d["metadata"]["labels"]["authz.connector/name"]: d
        for d in of_kind(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "connector"
    }


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())
