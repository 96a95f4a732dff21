"""The chart's optional features: TLS (probes that still work), env from Secrets, extra
volumes and labels, the `helm test` hook, one metrics port per worker, the Grafana dashboard
and the PrometheusRule. ``everything()`` turns them all on at once; it is validated against
the Kubernetes schemas like the other value sets.
"""

from __future__ import annotations

import json
import re

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.helm.rendering import (
    CUSTOM_KINDS,
    DEPLOY_DOC,
    KUBE_VERSIONS,
    MINIMAL,
    NAMESPACE,
    connector_deployments,
    env_of,
    everything,
    manifests,
    matches,
    notes_of,
    of_kind,
    only,
    production,
    render,
    server_container,
    server_deployment,
    with_values,
)

# What the service exports on /metrics (authz_service/telemetry.py), in Prometheus names.
EXPORTED = {
    "rpc_server_duration_seconds_bucket",
    "rpc_server_duration_seconds_count",
    "rpc_server_active_requests",
    "authz_decisions_total",
    "db_client_connection_count",
    "db_client_connection_max",
    "db_client_connection_wait_time_seconds_bucket",
    "authz_db_errors_total",
    "authz_cache_on",
    "authz_cache_hits_total",
    "authz_cache_misses_total",
    "authz_cache_entries",
    "authz_approvals_pending",
    "up",
}
METRIC_NAME = re.compile(
    r"\b([a-z_]+(?:_total|_bucket|_count|_seconds|_requests|_max|_connected|_on|_entries|_pending)|up)\{"
)


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_everything_on_matches_the_kubernetes_schema(chart: helm.Chart, kube: str) -> None:
    for doc in manifests(chart, everything()):
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {list(exc.path)}: {exc.message}")


# --- TLS -----------------------------------------------------------------------------------------


def test_tls_mounts_the_secret_sets_the_service_files_and_probes_over_tls(chart: helm.Chart) -> None:
    docs = manifests(chart, everything())
    container = server_container(docs)
    env = env_of(container)
    assert env["AUTHZ_TLS_CERT_FILE"]["value"] == "/etc/authz/tls/tls.crt"
    assert env["AUTHZ_TLS_KEY_FILE"]["value"] == "/etc/authz/tls/tls.key"
    assert env["AUTHZ_TLS_CLIENT_CA_FILE"]["value"] == "/etc/authz/tls/client-ca.crt"
    # `kubectl exec ... authz` and the probes verify the server with the CA and, for
    # mutual TLS, present the server's own certificate.
    assert env["AUTHZ_CA_FILE"]["value"] == "/etc/authz/tls/ca.crt"
    assert env["AUTHZ_CLIENT_CERT_FILE"]["value"] == "/etc/authz/tls/tls.crt"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["tls"] == {"name": "tls", "mountPath": "/etc/authz/tls", "readOnly": True}
    volumes = {v["name"]: v for v in server_deployment(docs)["spec"]["template"]["spec"]["volumes"]}
    secret = volumes["tls"]["secret"]
    assert secret["secretName"] == "authz-tls"
    assert {i["path"] for i in secret["items"]} == {"tls.crt", "tls.key", "ca.crt", "client-ca.crt"}
    # kubelet's gRPC probes cannot speak TLS: the image's healthcheck does, on loopback.
    for probe, service in (
        ("startupProbe", "liveness"),
        ("readinessProbe", ""),
        ("livenessProbe", "liveness"),
    ):
        assert "grpc" not in container[probe], probe
        assert container[probe]["exec"]["command"] == [
            "python",
            "-m",
            "authz_service.healthcheck",
            "127.0.0.1:50051",
            f"--service={service}",
        ]


def test_tls_reaches_the_connectors_and_the_notes(chart: helm.Chart) -> None:
    docs = manifests(chart, everything())
    for name, dep in connector_deployments(docs).items():
        spec = dep["spec"]["template"]["spec"]
        assert env_of(spec["containers"][0])["AUTHZ_CA_FILE"]["value"] == "/etc/authz/tls/ca.crt", name
        (ca,) = [v for v in spec["volumes"] if v["name"] == "tls-ca"]
        # Only the CA: a connector never holds the server's key.
        assert ca["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}], name
    notes = notes_of(chart, everything())
    assert "TLS is on (Secret authz-tls, client certificates required)" in notes
    assert "plaintext" in notes_of(chart, MINIMAL)


def test_without_tls_the_probes_stay_native_grpc(chart: helm.Chart) -> None:
    container = server_container(manifests(chart, MINIMAL))
    assert container["readinessProbe"]["grpc"] == {"port": 50051}
    assert not any(name.startswith("AUTHZ_TLS") for name in env_of(container))


# --- env, volumes, labels ------------------------------------------------------------------------


def test_env_from_secrets_extra_volumes_labels_and_annotations(chart: helm.Chart) -> None:
    docs = manifests(chart, everything())
    container = server_container(docs)
    env = env_of(container)
    assert env["OTEL_SERVICE_NAME"] == {"name": "OTEL_SERVICE_NAME", "value": "authz"}
    assert env["OTEL_EXPORTER_OTLP_HEADERS"] == {
        "name": "OTEL_EXPORTER_OTLP_HEADERS",
        "valueFrom": {"secretKeyRef": {"name": "otlp", "key": "headers"}},
    }
    assert container["envFrom"] == [{"configMapRef": {"name": "authz-otel"}}]
    assert {"name": "extra-ca", "mountPath": "/etc/corp-ca", "readOnly": True} in container["volumeMounts"]
    dep = server_deployment(docs)
    assert {"name": "extra-ca", "configMap": {"name": "corp-ca"}} in dep["spec"]["template"]["spec"][
        "volumes"
    ]
    assert dep["metadata"]["annotations"] == {"reloader.stakater.com/auto": "true"}
    for doc in docs:
        assert doc["metadata"]["labels"]["team"] == "platform", f"{doc['kind']}/{doc['metadata']['name']}"
    # Never in a selector: changing them must not orphan pods.
    assert "team" not in dep["spec"]["selector"]["matchLabels"]


def test_a_secret_looking_file_path_is_a_plain_value(chart: helm.Chart) -> None:
    values = with_values(MINIMAL, extraEnv={"AUTHZ_TLS_KEY_FILE": "/etc/extra/tls.key"})
    assert env_of(server_container(manifests(chart, values)))["AUTHZ_TLS_KEY_FILE"]["value"] == (
        "/etc/extra/tls.key"
    )


# --- helm test -----------------------------------------------------------------------------------


def test_helm_test_pod_checks_health_through_the_service(chart: helm.Chart) -> None:
    docs = manifests(chart, everything())
    pod = only(docs, "Pod", "authz-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "registry.example.com/platform/authz-service:0.1.0"
    assert container["command"] == [
        "python",
        "-m",
        "authz_service.healthcheck",
        f"authz.{NAMESPACE}.svc:50051",
        "--timeout=10",
    ]
    assert env_of(container)["AUTHZ_CA_FILE"]["value"] == "/etc/authz/tls/ca.crt"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["restartPolicy"] == "Never"
    assert "helm test authz -n authz" in notes_of(chart, production())
    assert of_kind(manifests(chart, with_values(MINIMAL, **{"test.enabled": False})), "Pod") == []


# --- metrics from every worker -------------------------------------------------------------------


def test_every_worker_has_its_metrics_port_and_is_scraped(chart: helm.Chart) -> None:
    docs = manifests(chart, everything())
    names = ["metrics", "metrics-1", "metrics-2"]
    container_ports = {p["name"]: p["containerPort"] for p in server_container(docs)["ports"]}
    assert [container_ports[n] for n in names] == [9464, 9465, 9466]
    service = only(docs, "Service", "authz")
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert [(service_ports[n]["port"], service_ports[n]["targetPort"]) for n in names] == [
        (9464, "metrics"),
        (9465, "metrics-1"),
        (9466, "metrics-2"),
    ]
    monitor = only(docs, "ServiceMonitor")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == names
    # The pod's AUTHZ_METRICS_LISTEN is worker 0's; workers.py adds the index.
    assert env_of(server_container(docs))["AUTHZ_METRICS_LISTEN"]["value"] == "0.0.0.0:9464"
    _grpc, metrics_rule = only(docs, "NetworkPolicy")["spec"]["ingress"]
    assert metrics_rule["ports"] == [{"port": 9464, "endPort": 9466, "protocol": "TCP"}]
    assert "/metrics on ports 9464 to 9466 (one per worker)." in notes_of(chart, everything())


# --- dashboard and alerts ------------------------------------------------------------------------


def test_dashboard_and_rules_are_off_by_default(chart: helm.Chart) -> None:
    assert chart.values["metrics"]["dashboard"]["enabled"] is False
    assert chart.values["metrics"]["prometheusRule"]["enabled"] is False
    docs = manifests(chart, production())
    assert of_kind(docs, "PrometheusRule") == [] and of_kind(docs, "ConfigMap") == [
        d for d in docs if d["kind"] == "ConfigMap" and "authz.connector/name" in d["metadata"]["labels"]
    ]


def test_dashboard_configmap_carries_the_dashboard_on_the_exported_metrics(chart: helm.Chart) -> None:
    docs = manifests(chart, everything())
    config_map = only(docs, "ConfigMap", "authz-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["authz-service.json"])
    assert dashboard["uid"] == "authz-service"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    used = {name for e in exprs for name in METRIC_NAME.findall(e)}
    assert used - EXPORTED == set(), "the dashboard queries metrics the service does not export"
    assert {"rpc_server_duration_seconds_count", "db_client_connection_wait_time_seconds_bucket"} <= used
    assert "authz_cache_on" in used and "authz_cache_hits_total" in used


def test_prometheus_rule_alerts_on_exported_metrics_and_each_is_documented(chart: helm.Chart) -> None:
    docs = manifests(chart, everything())
    rule = only(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert {
        "AuthzTargetDown",
        "AuthzServerErrors",
        "AuthzCheckUserSlow",
        "AuthzDatabasePoolSaturated",
        "AuthzDatabaseErrors",
        "AuthzListenerDown",
        "AuthzCacheHitRatioLow",
        "AuthzApprovalsPiling",
    } == set(alerts)
    for r in rules:
        used = set(METRIC_NAME.findall(r["expr"]))
        assert used and used - EXPORTED == set(), r.get("alert", r.get("record"))
        # Scoped to this release's Service.
        assert f'namespace="{NAMESPACE}"' in r["expr"] and 'service="authz"' in r["expr"]
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert alert["annotations"]["summary"], name
    assert "> 0.1" in alerts["AuthzCheckUserSlow"]["expr"]
    assert "> 100" in alerts["AuthzApprovalsPiling"]["expr"]
    # docs/deploy.md says what each one means.
    deploy = DEPLOY_DOC.read_text()
    undocumented = [name for name in alerts if f"`{name}`" not in deploy]
    assert undocumented == []
    # The Go-template braces of the annotations survive Helm's own rendering.
    text = next(t for path, t in render(chart, everything()).items() if path.endswith("prometheusrule.yaml"))
    assert "{{ $labels.pod }}" in text
    assert matches(rule["metadata"]["labels"], yaml.safe_load(text)["metadata"]["labels"])
