"""`authz export` against the real service: what it writes applies as a no-op."""

from __future__ import annotations

from pathlib import Path

import yaml

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm
from tests.conftest import Tenant
from tests.policy_helpers import Cli, events_after, last_event_id
from tests.policyfile.files import SUPPORT, write

# --- export ----------------------------------------------------------------------------


async def test_export_then_apply_is_a_no_op(cli: Cli, tenant: Tenant, tmp_path: Path) -> None:
    # State made with the admin API, not with a file: everything export must capture.
    await tenant.admin.admin.SetTenantSettings(
        adm.TenantSettings(
            approvers=["telegram:42"], agent_approvers={"ops": adm.ActorList(actors=["telegram:7"])}
        )
    )
    await tenant.channel(
        "wa", platform=cm.PLATFORM_WHATSAPP, dm_policy=cm.DM_POLICY_OPEN, owner_id="+4915112345678",
        agent_send_policies={"ops": cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW, deny=["slack:#exec"])},
        aliases={"ops-alerts": "slack:#ops"},
        auto_approve=cm.AutoApprove(phone_patterns=["+4930*"], email_domains=["@Acme.com"]),
        send_policy=cm.SendPolicy(
            default=cm.SEND_DEFAULT_DENY, allow=["origin"],
            time_restrictions=[cm.TimeRestriction(targets=["slack:#exec"], windows=[
                cm.TimeWindow(days=["mon", "fri"], start="09:00", end="18:00")])]),
        groups={"*": cm.GroupRule(require_mention=False, policy=cm.GROUP_POLICY_OPEN,
                                  rate_limit=cm.RateLimit(max_messages_per_hour=5))},
    )  # fmt: skip
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING)
    await tenant.admin.admin.AllowGroupSender(adm.GroupSenderRef(channel_id="tg", group_id="*", user_id="42"))
    await tenant.admin.admin.AllowGroupSender(
        adm.GroupSenderRef(channel_id="tg", group_id="-5", user_id="43")
    )

    out = tmp_path / "export.yaml"
    r = await cli("export", "-o", str(out))
    assert r.code == 0, r.text
    assert f"wrote the tenant settings and 2 channels to {out}" in r.err
    text = out.read_text()
    doc = yaml.safe_load(text)
    assert doc["version"] == 1
    assert [c["id"] for c in doc["channels"]] == ["tg", "wa"]  # sorted
    wa, tg = doc["channels"][1], doc["channels"][0]
    assert wa["acknowledge"] == ["open_dms", "open_groups", "send_default_allow", "auto_approve"]
    assert tg["acknowledge"] == ["wildcard_group_sender"]
    assert tg["group_senders"] == [{"group_id": "*", "user_id": "42"}, {"group_id": "-5", "user_id": "43"}]
    assert wa["policy"]["dm_policy"] == "open"
    assert wa["policy"]["pairing_code_ttl_seconds"] == 300  # defaults written out
    assert wa["policy"]["auto_approve"]["email_domains"] == ["acme.com"]
    assert wa["policy"]["send_policy"]["time_restrictions"][0]["windows"][0] == {
        "days": ["mon", "fri"], "start": "09:00", "end": "18:00"}  # fmt: skip
    assert doc["tenant"]["approvers"] == ["telegram:42"]

    before = await last_event_id(tenant)
    r = await cli("apply", "-f", str(out), "--yes")
    assert r.code == 0, r.text
    assert r.out.strip().endswith("no changes")
    assert await events_after(tenant, before) == []

    # Stable: a second export is byte for byte the same.
    r = await cli("export")
    assert r.out == text


async def test_export_of_an_applied_file_matches_it(cli: Cli, tenant: Tenant, tmp_path: Path) -> None:
    path = write(tmp_path, SUPPORT)
    assert (await cli("apply", "-f", str(path), "--yes")).code == 0
    r = await cli("export")
    exported = yaml.safe_load(r.out)["channels"][0]
    assert exported["policy"]["groups"] == {
        "*": {"require_mention": True, "allowed_commands": ["help", "status"]}
    }
    assert exported["policy"]["bindings"] == [{"user_id": "42", "group_id": "*", "agent_id": "admin",
                                               "tools": {"allowed": ["*"]}}]  # fmt: skip
    assert "acknowledge" not in exported
