"""The worked examples in examples/policies/: each applies to a fresh tenant,
re-applies (and round-trips through export) without changes, and gets the
doctor findings its comments promise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm

from .conftest import Service, Tenant
from .policy_helpers import Cli, events_after, last_event_id, make_cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "policies"


@pytest.fixture
def cli(service: Service, tenant: Tenant) -> Cli:
    return make_cli(service, tenant)


EXPECTED: dict[str, list[tuple[str, str, str]]] = {
    "saas-support.yaml": [("low", "open_dms_no_tools", "support-tg")],
    "internal-team.yaml": [("medium", "quorum_one_holder", "team-slack")],
    "whatsapp-per-client.yaml": [
        ("medium", "auto_approve", "wa-acme"),
        ("medium", "auto_approve", "wa-globex"),
    ],
    "public-demo-admin.yaml": [
        ("medium", "open_groups_mention", "demo-tg"),
        ("low", "open_dms_no_tools", "demo-tg"),
    ],
}


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_example(cli: Cli, tenant: Tenant, tmp_path: Path, name: str) -> None:
    path = EXAMPLES / name
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 0, r.text
    assert "applied: " in r.out

    before = await last_event_id(tenant)
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 0 and r.out.strip().endswith("no changes"), r.text

    exported = tmp_path / "export.yaml"
    assert (await cli("export", "-o", str(exported))).code == 0
    r = await cli("apply", "-f", str(exported), "--yes")
    assert r.code == 0 and r.out.strip().endswith("no changes"), r.text
    assert await events_after(tenant, before) == []

    # The fixture's connector key is tenant-wide, a finding of its own (test_key_scopes);
    # the examples are about policies.
    await tenant.admin.admin.RevokeApiKey(
        adm.RevokeApiKeyRequest(key_id=tenant.keys["connector"].split(".")[2])
    )
    r = await cli("doctor", "--json")
    report = json.loads(r.out)
    found = [(f["severity"], f["code"], f["channel_id"]) for f in report["findings"]]
    assert found == EXPECTED[name]
    assert report["summary"]["critical"] == 0
    assert r.code == 0  # nothing at or above high
