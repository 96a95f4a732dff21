"""The Helm chart's values.schema.json and cross-field checks: bad values are refused naming
the field.
"""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import pytest

from tests.helm.rendering import MINIMAL, render, with_values

# --- values.schema.json -------------------------------------------------------------------------


BAD_VALUES = [
    pytest.param({"replicaCount": 0}, "/replicaCount", id="zero-replicas"),
    pytest.param({"replicaCount": "three"}, "/replicaCount", id="replicas-not-integer"),
    pytest.param({"service.port": "grpc"}, "/service/port", id="port-not-integer"),
    pytest.param({"autoscaling.enabled": "yes"}, "/autoscaling/enabled", id="enabled-not-boolean"),
    pytest.param({"replicas": 3}, "replicas", id="unknown-key"),
    pytest.param({"secrets.secretKey": "short"}, "/secrets/secretKey", id="short-secret-key"),
    pytest.param({"secrets.operatorKey": "azk." + "x" * 30}, "/secrets/operatorKey", id="operator-key-azk"),
    pytest.param({"secrets.databaseUrl": "mysql://x"}, "/secrets/databaseUrl", id="database-url-scheme"),
    pytest.param(
        {"secrets.existingSecret": "authz-secrets"}, "/secrets/databaseUrl", id="existing-and-inline"
    ),
    pytest.param({"extraEnv": {"MY_API_TOKEN": 3}}, "/extraEnv/MY_API_TOKEN", id="extra-env-not-string"),
    pytest.param(
        {"extraEnv": {"X": {"value": "x"}}}, "/extraEnv/X", id="extra-env-object-without-value-from"
    ),
    pytest.param({"tls.enabled": True}, "/tls/secretName", id="tls-without-secret"),
    pytest.param(
        {"metrics.prometheusRule.pendingApprovals": 0}, "/metrics/prometheusRule", id="rule-threshold"
    ),
    pytest.param({"podAntiAffinity": "always"}, "/podAntiAffinity", id="anti-affinity-enum"),
    pytest.param({"config.logLevel": "TRACE"}, "/config/logLevel", id="log-level-enum"),
    pytest.param({"probes.liveness": {"grpc": {"port": 1}}}, "/probes/liveness", id="probe-not-timing"),
]
CONNECTOR = {
    "name": "support-tg",
    "platform": "telegram",
    "channelId": "tg-support",
    "tokenSecret": {"name": "bot"},
    "apiKeySecret": {"name": "key"},
}
BAD_CONNECTORS = [
    pytest.param({"platform": "irc"}, "/connectors/0/platform", id="unknown-platform"),
    pytest.param({"name": "Support_TG"}, "/connectors/0/name", id="name-not-dns"),
    pytest.param({"channelId": 42}, "/connectors/0/channelId", id="channel-not-string"),
    pytest.param({"agentUrl": "ftp://agent"}, "/connectors/0/agentUrl", id="agent-url"),
    pytest.param({"tokenSecret": None}, "/connectors/0", id="missing-token-secret"),
    pytest.param(
        {"apiKeySecret": {"key": "k"}}, "/connectors/0/apiKeySecret", id="api-key-secret-without-name"
    ),
    pytest.param({"token": "123:abc"}, "/connectors/0", id="inline-token"),
    pytest.param(
        {"platform": "slack", "slack": {"lookupEmail": "yes"}},
        "/connectors/0/slack/lookupEmail",
        id="lookup-email-not-boolean",
    ),
]


@pytest.mark.parametrize(("overrides", "field"), BAD_VALUES)
def test_schema_rejects_bad_values_naming_the_field(
    chart: helm.Chart, overrides: dict[str, Any], field: str
) -> None:
    values = with_values(MINIMAL, **overrides)
    with pytest.raises(helm.HelmValuesError, match=re.escape(field)):
        render(chart, values)
    with pytest.raises(helm.HelmValuesError, match=re.escape(field)):
        chart.validate_schema(values)


@pytest.mark.parametrize(("change", "field"), BAD_CONNECTORS)
def test_schema_rejects_bad_connectors_naming_the_field(
    chart: helm.Chart, change: dict[str, Any], field: str
) -> None:
    connector = {**CONNECTOR, **change}
    connector = {k: v for k, v in connector.items() if v is not None}
    chart.validate_schema(with_values(MINIMAL, connectors=[CONNECTOR]))  # the baseline passes
    with pytest.raises(helm.HelmValuesError, match=re.escape(field)):
        render(chart, with_values(MINIMAL, connectors=[connector]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"config.dbPoolMin": 20, "config.dbPoolMax": 10},
            "config.dbPoolMax (10) must be at least config.dbPoolMin (20)",
        ),
        (
            {"extraEnv": {"MY_API_TOKEN": "x"}},
            "extraEnv.MY_API_TOKEN: a secret-looking name with a plain value",
        ),
        (
            {"autoscaling.enabled": True, "autoscaling.minReplicas": 5, "autoscaling.maxReplicas": 2},
            "autoscaling.maxReplicas (2) must be at least autoscaling.minReplicas (5)",
        ),
    ],
)
def test_cross_field_checks(chart: helm.Chart, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(chart, with_values(MINIMAL, **overrides))
