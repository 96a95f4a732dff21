"""`authz doctor` against the real service: output, --json, exit codes."""

from __future__ import annotations

import json

import pytest

from authz_service.client import connect
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Dsns, Service, Tenant, connect_as_tenant
from .policy_helpers import Cli, make_cli

CHANNELS = ["tg", "open", "grp", "demo", "pair"]


@pytest.fixture
async def cli(service: Service, tenant: Tenant) -> Cli:
    """The tenant with its connector key bound to the channels these tests use
    (an unbound key is a finding of its own: test_key_scopes)."""
    bound = await tenant.admin.admin.CreateApiKey(
        adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="bound", channels=CHANNELS)
    )
    await tenant.admin.admin.RevokeApiKey(
        adm.RevokeApiKeyRequest(key_id=tenant.keys["connector"].split(".")[2])
    )
    await tenant.connector.close()
    tenant.keys["connector"], tenant.connector = bound.secret, connect(service.address, bound.secret)
    return make_cli(service, tenant)


NO_TOOLS = cm.Binding(user_id="*", group_id="*", tools=cm.ToolList(denied=["*"]))
ORIGIN_ONLY = cm.SendPolicy(default=cm.SEND_DEFAULT_DENY, allow=["origin"])


async def risky_tenant(t: Tenant) -> None:
    # critical: open DMs, tools possible (and medium: no rate limit)
    await t.channel("open", dm_policy=cm.DM_POLICY_OPEN, send_policy=ORIGIN_ONLY)
    # medium: a wildcard group sender; info: no send policy
    await t.channel("grp", dm_policy=cm.DM_POLICY_ALLOWLIST)
    await t.admin.admin.AllowGroupSender(adm.GroupSenderRef(channel_id="grp", group_id="*", user_id="42"))


async def test_an_empty_tenant_has_no_findings(cli: Cli) -> None:
    r = await cli("doctor")
    assert (r.code, r.out) == (0, "no findings\n"), r.text


async def test_findings_sorted_by_severity_and_exit_code(cli: Cli, tenant: Tenant) -> None:
    await risky_tenant(tenant)
    r = await cli("doctor")
    assert r.code == 1, r.text  # a critical finding, default --fail-on high
    lines = r.out.splitlines()
    assert [line.split()[:3] for line in lines[:-1]] == [
        ["CRITICAL", "open", "open_dms:"],
        ["MEDIUM", "grp", "wildcard_group_sender:"],
        ["MEDIUM", "open", "no_rate_limit:"],
        ["INFO", "grp", "no_send_policy:"],
    ]
    assert "fix: set dm_policy to pairing or allowlist" in lines[0]
    assert lines[-1] == "4 findings: 1 critical, 0 high, 2 medium, 0 low, 1 info; failing (--fail-on high)"


@pytest.mark.parametrize(
    ("fail_on", "code"),
    [("critical", 1), ("high", 1), ("medium", 1), ("never", 0)],
    ids=["critical", "high", "medium", "never"],
)
async def test_fail_on_with_a_critical_finding(cli: Cli, tenant: Tenant, fail_on: str, code: int) -> None:
    await risky_tenant(tenant)
    assert (await cli("doctor", "--fail-on", fail_on)).code == code


@pytest.mark.parametrize(
    ("fail_on", "code"),
    [("high", 0), ("medium", 0), ("low", 1), ("info", 1)],
    ids=["high", "medium", "low", "info"],
)
async def test_fail_on_threshold_is_inclusive(cli: Cli, tenant: Tenant, fail_on: str, code: int) -> None:
    # Only a low finding: open DMs where the catch-all binding denies every tool.
    await tenant.channel("demo", dm_policy=cm.DM_POLICY_OPEN, bindings=[NO_TOOLS], send_policy=ORIGIN_ONLY,
                         rate_limit=cm.RateLimit(max_messages_per_hour=30))  # fmt: skip
    r = await cli("doctor", "--fail-on", fail_on)
    assert r.code == code, r.text
    assert r.out.startswith("LOW       demo  open_dms_no_tools: ")


async def test_json_report(cli: Cli, tenant: Tenant) -> None:
    await risky_tenant(tenant)
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=["telegram:9"]))
    await tenant.channel("pair", dm_policy=cm.DM_POLICY_PAIRING, send_policy=ORIGIN_ONLY, required_approvals=3,
                         approvers=["9"])  # fmt: skip
    r = await cli("doctor", "--json", "--fail-on", "never")
    assert r.code == 0, r.text
    report = json.loads(r.out)
    assert [(f["severity"], f["code"], f["channel_id"]) for f in report["findings"]] == [
        ("critical", "open_dms", "open"),
        ("high", "quorum_unreachable", "pair"),
        ("medium", "wildcard_group_sender", "grp"),
        ("medium", "no_rate_limit", "open"),
        ("medium", "quorum_one_holder", "pair"),
        ("info", "no_send_policy", "grp"),
    ]
    quorum = report["findings"][1]
    assert "required_approvals is 3 but only 1 person can approve" in quorum["message"]
    assert quorum["fix"]
    assert report["summary"] == {
        "critical": 1, "high": 1, "medium": 3, "low": 0, "info": 1,
        "total": 6, "fail_on": "never", "failed": False,
    }  # fmt: skip


async def test_doctor_needs_an_admin_key(cli: Cli, tenant: Tenant) -> None:
    r = await cli("doctor", key=tenant.keys["approver"])
    assert r.code == 2
    assert r.err.startswith("authz: PERMISSION_DENIED: ")


async def test_stale_pairings_and_expired_requests(cli: Cli, tenant: Tenant, dsns: Dsns) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING, owner_id="1", send_policy=ORIGIN_ONLY)
    for user in ("7", "8"):
        pr = await tenant.connector.authz.RequestPairing(
            az.RequestPairingRequest(channel_id="tg", user_id=user)
        )
        if user == "7":
            await tenant.approver.authz.ResolveApproval(
                az.ResolveApprovalRequest(approval_id=pr.approval_id, action=cm.APPROVAL_ACTION_APPROVE)
            )
    r = await cli("doctor", "--json")
    assert json.loads(r.out)["findings"] == []

    # Age the pairing and the pending request behind the service's back.
    conn = await connect_as_tenant(dsns.owner, tenant.tenant_id)
    try:
        await conn.execute("UPDATE subjects SET updated_at = now() - interval '100 days' "
                           "WHERE tenant_id = $1 AND user_id = '7'", tenant.tenant_id)  # fmt: skip
        await conn.execute("UPDATE approvals SET expires_at = now() - interval '1 minute' "
                           "WHERE tenant_id = $1 AND user_id = '8'", tenant.tenant_id)  # fmt: skip
    finally:
        await conn.close()
    r = await cli("doctor")
    assert r.code == 0, r.text
    assert r.out.splitlines() == [
        "LOW       tg  stale_pairings: 1 paired user paired more than 90 days ago, and pairings on this "
        "channel never expire; fix: set pairing_ttl_seconds, and review with `authz users list CHANNEL --paired`",
        "INFO      tg  expired_pending: 1 pairing request past expiry still pending; fix: nothing to do: they can "
        "no longer be approved, do not count against max_pending, and the expiry sweep marks them expired within AUTHZ_EXPIRY_SWEEP_SECONDS",
        "2 findings: 0 critical, 0 high, 0 medium, 1 low, 1 info",
    ]


async def test_name_only_deny_under_default_allow_is_reported(cli: Cli, tenant: Tenant) -> None:
    allow_but = cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW, deny=["#exec", "C0HR0001"])
    await tenant.channel(
        "sl", platform=cm.PLATFORM_SLACK, dm_policy=cm.DM_POLICY_ALLOWLIST, send_policy=allow_but
    )
    r = await cli("doctor", "--fail-on", "never")
    assert r.code == 0, r.text
    [line] = [ln for ln in r.out.splitlines() if "name_only_deny" in ln]
    assert line.split()[:3] == ["MEDIUM", "sl", "name_only_deny:"]
    assert "deny '#exec' by name only" in line and "C0HR0001" not in line
    assert 'fix: join each name to its id with an alias (aliases: {"slack:#exec": "slack:C0EXEC1"})' in line

    # Joined to its id by an alias, the deny covers every spelling: nothing to report.
    await tenant.channel("sl", platform=cm.PLATFORM_SLACK, dm_policy=cm.DM_POLICY_ALLOWLIST,
                         send_policy=allow_but, aliases={"slack:#exec": "slack:C0EXEC1"})  # fmt: skip
    r = await cli("doctor", "--json", "--fail-on", "never")
    assert [f["code"] for f in json.loads(r.out)["findings"]] == ["send_default_allow"]
