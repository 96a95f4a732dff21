"""The Helm chart (helm/authz-service), rendered offline with the Helm SDK.

``helm_python`` binds Helm's Go SDK through ``libhelm_c``: no helm binary, no cluster and no
network. Every rendered manifest is validated against the Kubernetes JSON schemas shipped by
``kubernetes-validate`` (strict: unknown fields are errors) for several Kubernetes versions,
then the wiring that matters is asserted: the migration hook, gRPC probes, secrets by
reference only, the security context and the NetworkPolicy selectors. The connectors are in
``test_chart_connectors.py``, the values schema in ``test_chart_values.py``.
"""

from __future__ import annotations

import base64
import json
import re
import tomllib
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.helm.rendering import (
    CHART_DIR,
    CHART_README,
    CUSTOM_KINDS,
    DATABASE_URL,
    DEPLOY_DOC,
    KUBE_VERSIONS,
    MIGRATE_URL,
    MINIMAL,
    NAMESPACE,
    OPERATOR_KEY,
    ROOT,
    SECRET_KEY,
    SECRET_LOOKING,
    connector_deployments,
    env_of,
    manifests,
    matches,
    of_kind,
    only,
    pod_specs,
    production,
    render,
    server_container,
    server_deployment,
    with_values,
)

# --- rendering, lint, Kubernetes schemas --------------------------------------------------------


def test_chart_metadata_matches_the_package() -> None:
    meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["apiVersion"] == "v2"
    assert meta["appVersion"] == project["version"] == "0.1.0"


def test_defaults_alone_are_refused_naming_what_is_missing(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        render(chart, {})
    for field in (
        "/image/repository",
        "/secrets/databaseUrl",
        "/secrets/secretKey",
        "/secrets/migrateDatabaseUrl",
    ):
        assert field in str(err.value)


@pytest.mark.parametrize("values", [MINIMAL, production()], ids=["minimal", "production"])
def test_lint_is_clean(values: dict[str, Any]) -> None:
    for kube in KUBE_VERSIONS:
        report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE, kube_version=f"v{kube}.0")
        assert report["errors"] == [], report
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("values", [MINIMAL, production()], ids=["minimal", "production"])
def test_every_manifest_matches_the_kubernetes_schema(
    chart: helm.Chart, values: dict[str, Any], kube: str
) -> None:
    docs = manifests(chart, values)
    checked = set()
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {list(exc.path)}: {exc.message}")
        checked.add(doc["kind"])
    expected = {"ServiceAccount", "Service", "Deployment", "Job", "PodDisruptionBudget", "NetworkPolicy"}
    assert expected <= checked


def test_validation_catches_a_bad_manifest() -> None:
    """The strict schemas really reject what the API server would (guards the test above)."""
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"portz": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSIONS[0], strict=True)


def test_the_objects_each_install_creates(chart: helm.Chart) -> None:
    minimal = {(d["kind"], d["metadata"]["name"]) for d in manifests(chart, MINIMAL)}
    assert minimal == {
        ("ServiceAccount", "authz-authz-service"),
        ("Secret", "authz-authz-service"),
        ("Secret", "authz-authz-service-migrate"),
        ("Job", "authz-authz-service-migrate"),
        ("Deployment", "authz-authz-service"),
        ("Service", "authz-authz-service"),
        ("PodDisruptionBudget", "authz-authz-service"),
        ("NetworkPolicy", "authz-authz-service"),
        ("Pod", "authz-authz-service-test"),
    }
    prod = {(d["kind"], d["metadata"]["name"]) for d in manifests(chart, production())}
    assert prod == {
        ("ServiceAccount", "authz"),
        ("Job", "authz-migrate"),
        ("Deployment", "authz"),
        ("Service", "authz"),
        ("HorizontalPodAutoscaler", "authz"),
        ("PodDisruptionBudget", "authz"),
        ("NetworkPolicy", "authz"),
        ("ServiceMonitor", "authz"),
        ("ConfigMap", "authz-support-tg"),
        ("Deployment", "authz-support-tg"),
        ("ConfigMap", "authz-support-sl"),
        ("Deployment", "authz-support-sl"),
        ("Service", "authz-support-sl"),
        ("Pod", "authz-test"),
    }


# --- migration hook -----------------------------------------------------------------------------


@pytest.mark.parametrize("values", [MINIMAL, production()], ids=["minimal", "production"])
def test_migration_job_is_a_pre_install_pre_upgrade_hook_running_authz_migrate(
    chart: helm.Chart, values: dict[str, Any]
) -> None:
    docs = manifests(chart, values)
    job = only(docs, "Job")
    notes = job["metadata"]["annotations"]
    assert set(notes["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in notes["helm.sh/hook-delete-policy"].split(",")
    assert isinstance(job["spec"]["backoffLimit"], int) and job["spec"]["backoffLimit"] >= 1
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == ["authz", "migrate"]
    env = env_of(container)
    # `authz migrate` prefers AUTHZ_MIGRATE_DATABASE_URL (the owner), else AUTHZ_DATABASE_URL,
    # else it migrates an embedded database: the owner's URL must be there, and only it.
    ref = env["AUTHZ_MIGRATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "migrate-database-url"
    assert "AUTHZ_DATABASE_URL" not in env and "AUTHZ_SECRET_KEY" not in env
    existing = values["secrets"].get("existingSecret")
    if existing:
        assert ref["name"] == existing
        assert of_kind(docs, "Secret") == []
    else:
        # The Job runs before the release's ordinary objects exist: the Secret it reads must
        # itself be a hook, created first (lower weight).
        hook_secret = only(docs, "Secret", ref["name"])
        secret_notes = hook_secret["metadata"]["annotations"]
        assert set(secret_notes["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
        assert int(secret_notes["helm.sh/hook-weight"]) < int(notes.get("helm.sh/hook-weight", "0"))
        assert base64.b64decode(hook_secret["data"]["migrate-database-url"]).decode() == MIGRATE_URL


def test_the_service_secret_does_not_carry_the_owner_url(chart: helm.Chart) -> None:
    docs = manifests(chart, MINIMAL)
    secret = only(docs, "Secret", "authz-authz-service")
    assert "helm.sh/hook" not in secret["metadata"].get("annotations", {})
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"database-url": DATABASE_URL, "secret-key": SECRET_KEY, "operator-key": OPERATOR_KEY}


def test_migration_can_be_turned_off(chart: helm.Chart) -> None:
    values = with_values(MINIMAL, **{"migration.enabled": False, "secrets.migrateDatabaseUrl": ""})
    docs = manifests(chart, values)
    assert of_kind(docs, "Job") == []
    assert [s["metadata"]["name"] for s in of_kind(docs, "Secret")] == ["authz-authz-service"]


# --- the service Deployment ---------------------------------------------------------------------


@pytest.mark.parametrize("port", [50051, 7443])
def test_probes_are_grpc_on_the_service_port(chart: helm.Chart, port: int) -> None:
    docs = manifests(chart, with_values(MINIMAL, **{"service.port": port}))
    container = server_container(docs)
    grpc_port = next(p for p in container["ports"] if p["name"] == "grpc")
    assert grpc_port["containerPort"] == port
    # Readiness asks the overall status (database and schema); startup and liveness ask
    # "liveness", which a database outage does not turn off (no restarts for it).
    assert container["readinessProbe"]["grpc"] == {"port": port}
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": port, "service": "liveness"}, probe
    assert env_of(container)["AUTHZ_LISTEN"]["value"] == f"0.0.0.0:{port}"
    service = only(docs, "Service")
    assert service["spec"]["ports"][0] == {
        "name": "grpc",
        "port": port,
        "targetPort": "grpc",
        "protocol": "TCP",
        "appProtocol": "grpc",
    }
    assert container["command"] == ["authz", "serve"]


def test_settings_reach_the_container(chart: helm.Chart) -> None:
    values = with_values(
        MINIMAL,
        **{
            "config.dbPoolMax": 25,
            "config.logLevel": "DEBUG",
            "config.workers": 2,
            "extraEnv": {"OTEL_SERVICE_NAME": "authz"},
        },
    )
    env = env_of(server_container(manifests(chart, values)))
    assert env["AUTHZ_DB_POOL_MAX"]["value"] == "25"
    assert env["AUTHZ_WORKERS"]["value"] == "2"
    assert "AUTHZ_TELEMETRY" not in env  # off unless metrics are scraped
    assert env["AUTHZ_LOG_LEVEL"]["value"] == "DEBUG"
    assert env["OTEL_SERVICE_NAME"]["value"] == "authz"
    # `kubectl exec ... authz tenant create` inside the pod reaches the local server.
    assert env["AUTHZ_ADDRESS"]["value"] == "127.0.0.1:50051"


@pytest.mark.parametrize("values", [MINIMAL, production()], ids=["minimal", "production"])
def test_no_secret_is_ever_a_plain_env_value(chart: helm.Chart, values: dict[str, Any]) -> None:
    docs = manifests(chart, values)
    secret_envs = 0
    for where, spec in pod_specs(docs):
        for container in spec["containers"]:
            for env in container.get("env", []):
                # *_FILE variables hold paths (AUTHZ_TLS_KEY_FILE), not secrets.
                if SECRET_LOOKING.search(env["name"]) and not env["name"].endswith("_FILE"):
                    secret_envs += 1
                    assert "value" not in env, f"{where}: {env['name']} has a plain value"
                    assert "secretKeyRef" in env["valueFrom"], f"{where}: {env['name']}"
    assert secret_envs >= 4
    # And the secret strings appear in Secret objects only.
    for doc in docs:
        if doc["kind"] != "Secret":
            text = json.dumps(doc)
            for secret in (DATABASE_URL, MIGRATE_URL, SECRET_KEY, OPERATOR_KEY, "pw-"):
                assert secret not in text, f"{doc['kind']}/{doc['metadata']['name']} contains a secret"


def test_the_service_reads_each_secret_by_reference(chart: helm.Chart) -> None:
    env = env_of(server_container(manifests(chart, production())))
    refs = {name: env[name]["valueFrom"]["secretKeyRef"] for name in env if "valueFrom" in env[name]}
    assert refs == {
        "AUTHZ_DATABASE_URL": {"name": "authz-secrets", "key": "database-url"},
        "AUTHZ_SECRET_KEY": {"name": "authz-secrets", "key": "secret-key"},
        # Optional: the service runs without it (tenant RPCs answer UNAUTHENTICATED).
        "AUTHZ_OPERATOR_KEY": {"name": "authz-secrets", "key": "operator-key", "optional": True},
        # Optional: without it the change listener uses AUTHZ_DATABASE_URL.
        "AUTHZ_LISTEN_DATABASE_URL": {
            "name": "authz-secrets",
            "key": "listen-database-url",
            "optional": True,
        },
    }


@pytest.mark.parametrize("values", [MINIMAL, production()], ids=["minimal", "production"])
def test_every_pod_is_non_root_with_a_read_only_root(chart: helm.Chart, values: dict[str, Any]) -> None:
    specs = pod_specs(manifests(chart, values))
    assert len(specs) >= 2
    for where, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["runAsUser"] != 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["runAsNonRoot"] is True, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in ctx["capabilities"], where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/tmp") in empty_dirs, where
            home = env_of(container).get("AUTHZ_HOME")
            if home is not None:
                assert mounts.get(home["value"]) in empty_dirs, f"{where}: AUTHZ_HOME is not writable"


def test_replicas_anti_affinity_and_pdb(chart: helm.Chart) -> None:
    docs = manifests(chart, MINIMAL)
    dep = server_deployment(docs)
    assert dep["spec"]["replicas"] == 2
    server_labels = dep["spec"]["template"]["metadata"]["labels"]
    anti = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert matches(term["podAffinityTerm"]["labelSelector"]["matchLabels"], server_labels)
    pdb = only(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert of_kind(docs, "HorizontalPodAutoscaler") == []


def test_production_autoscales_and_keeps_pods_on_distinct_nodes(chart: helm.Chart) -> None:
    docs = manifests(chart, production())
    dep = server_deployment(docs)
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    hpa = only(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "authz"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 8)
    anti = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in anti
    assert only(docs, "PodDisruptionBudget")["spec"] == {
        "minAvailable": 2,
        "selector": {"matchLabels": dep["spec"]["selector"]["matchLabels"]},
    }
    spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
    assert matches(spread["labelSelector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])


def test_chart_secret_changes_roll_the_pods(chart: helm.Chart) -> None:
    def checksum(values: dict[str, Any]) -> str:
        annotations = server_deployment(manifests(chart, values))["spec"]["template"]["metadata"][
            "annotations"
        ]
        value: str = annotations["checksum/secret"]
        return value

    assert checksum(MINIMAL) != checksum(with_values(MINIMAL, **{"secrets.secretKey": "k" * 40}))


# --- NetworkPolicy, ServiceMonitor ----------------------------------------------------------------


def test_network_policy_admits_connectors_and_listed_namespaces_only(chart: helm.Chart) -> None:
    docs = manifests(chart, production())
    policy = only(docs, "NetworkPolicy")["spec"]
    server_labels = server_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert matches(policy["podSelector"]["matchLabels"], server_labels)
    assert policy["policyTypes"] == ["Ingress"]
    grpc_rule, metrics_rule = policy["ingress"]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    pod_peers = [p["podSelector"]["matchLabels"] for p in grpc_rule["from"] if "podSelector" in p]
    ns_peers = [p["namespaceSelector"] for p in grpc_rule["from"] if "namespaceSelector" in p]
    assert len(pod_peers) == 2 and len(ns_peers) == 1
    # The release's connectors, and its `helm test` Pod.
    test_pod = only(docs, "Pod", "authz-test")
    assert matches(pod_peers[1], test_pod["metadata"]["labels"])
    for name, dep in connector_deployments(docs).items():
        assert matches(pod_peers[0], dep["spec"]["template"]["metadata"]["labels"]), name
        assert not matches(
            policy["podSelector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"]
        )
    (expr,) = ns_peers[0]["matchExpressions"]
    assert expr == {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["agents", "ops-tools"]}
    assert metrics_rule["ports"] == [{"port": 9464, "protocol": "TCP"}]
    assert metrics_rule["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["monitoring"]


def test_network_policy_without_namespaces_admits_only_connectors(chart: helm.Chart) -> None:
    (rule,) = only(manifests(chart, MINIMAL), "NetworkPolicy")["spec"]["ingress"]
    assert [list(peer) for peer in rule["from"]] == [["podSelector"], ["podSelector"]]
    no_test = only(manifests(chart, with_values(MINIMAL, **{"test.enabled": False})), "NetworkPolicy")
    (rule,) = no_test["spec"]["ingress"]
    assert [list(peer) for peer in rule["from"]] == [["podSelector"]]


def test_service_monitor_is_off_by_default_and_scrapes_the_metrics_port_when_on(chart: helm.Chart) -> None:
    assert chart.values["metrics"]["serviceMonitor"]["enabled"] is False
    minimal = manifests(chart, MINIMAL)
    assert of_kind(minimal, "ServiceMonitor") == []
    assert [p["name"] for p in only(minimal, "Service")["spec"]["ports"]] == ["grpc"]
    docs = manifests(chart, production())
    monitor = only(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = only(docs, "Service", "authz")
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    metrics = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    assert metrics["port"] == 9464
    container_ports = {p["name"]: p["containerPort"] for p in server_container(docs)["ports"]}
    assert container_ports["metrics"] == 9464
    # The pods actually serve what is scraped.
    env = env_of(server_container(docs))
    assert env["AUTHZ_TELEMETRY"]["value"] == "on"
    assert env["AUTHZ_METRICS_LISTEN"]["value"] == "0.0.0.0:9464"


# --- NOTES.txt and docs --------------------------------------------------------------------------


def test_notes_tell_the_next_step(chart: helm.Chart) -> None:
    notes = next(text for path, text in render(chart, production()).items() if path.endswith("NOTES.txt"))
    assert "kubectl -n authz exec -it deployment/authz -- authz tenant create" in notes
    assert "kubectl -n authz port-forward service/authz 50051:50051" in notes
    assert "service/authz-support-sl" in notes
    assert "docs/deploy.md" in notes
    minimal = next(
        text
        for path, text in render(chart, with_values(MINIMAL, **{"secrets.operatorKey": ""})).items()
        if path.endswith("NOTES.txt")
    )
    assert "secrets.operatorKey is empty" in minimal


def documented_paths(schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Every value a user can set, from the schema, down to free-form objects."""
    opaque = {"resources", "startup", "readiness", "liveness"}
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        if key == "global":
            continue
        if sub.get("type") == "array" and "properties" in sub.get("items", {}):
            yield path
            yield from documented_paths(sub["items"], f"{path}[].")
        elif "properties" in sub and key not in opaque:
            yield from documented_paths(sub, f"{path}.")
        else:
            yield path


def test_every_value_is_documented_in_the_chart_readme(chart: helm.Chart) -> None:
    schema = chart.schema
    assert schema is not None
    doc = CHART_README.read_text()
    paths = list(documented_paths(schema))
    assert "connectors[].tokenSecret.botTokenKey" in paths and "secrets.keys.operatorKey" in paths
    assert "tls.clientCaKey" in paths and "metrics.prometheusRule.enabled" in paths
    missing = [p for p in paths if f"| `{p}` |" not in doc]
    assert missing == [], f"values missing from the table in helm/authz-service/README.md: {missing}"
    # And every top-level key of values.yaml, read from the file itself (not the schema).
    top_level = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    undocumented = [k for k in top_level if not re.search(rf"\| `{re.escape(k)}[.`]", doc)]
    assert undocumented == [], f"top-level values missing from the chart README: {undocumented}"
    # docs/deploy.md points there instead of keeping a second table.
    assert "helm/authz-service/README.md" in DEPLOY_DOC.read_text()
