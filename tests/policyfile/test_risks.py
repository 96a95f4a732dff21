"""`authz apply -f FILE` with risky settings: refused without acknowledgement, applied
with a warning when acknowledged, each risk pointing at its setting.
"""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

from authz_service.gen.authz.v1 import common_pb2 as cm
from tests.conftest import Tenant
from tests.policy_helpers import Cli
from tests.policyfile.files import channel_ids, get, write

# --- risks and acknowledgements ----------------------------------------------------------

OPEN_DMS = """
    version: 1
    channels:
      - id: public
        platform: telegram{ack}
        policy:
          dm_policy: open
          rate_limit: {{max_messages_per_hour: 30}}
"""


async def test_risky_setting_without_acknowledgement_is_refused(
    cli: Cli, tenant: Tenant, tmp_path: Path
) -> None:
    path = write(tmp_path, OPEN_DMS.format(ack=""))
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 2
    assert (
        f"{path}:6: channels[0].policy.dm_policy: risk open_dms is not acknowledged: anyone can DM" in r.err
    )
    assert "add open_dms to the channel's acknowledge list" in r.err
    assert await channel_ids(tenant) == []
    # A dry run refuses too: the file is not appliable.
    assert (await cli("apply", "-f", str(path), "--dry-run")).code == 2


async def test_acknowledged_risk_warns_and_applies(cli: Cli, tenant: Tenant, tmp_path: Path) -> None:
    path = write(tmp_path, OPEN_DMS.format(ack="\n        acknowledge: [open_dms, auto_approve]"))
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 0, r.text
    assert f"WARNING: {path}:7: channel public: open_dms (acknowledged): anyone can DM the bot" in r.out
    assert "note: channel public acknowledges auto_approve, but has no such risk" in r.out
    assert (await get(tenant, "public")).policy.dm_policy == cm.DM_POLICY_OPEN


async def test_each_risk_points_at_its_setting(cli: Cli, tmp_path: Path) -> None:
    text = dedent("""
        version: 1
        channels:
          - id: risky
            platform: telegram
            policy:
              groups:
                "-100": {policy: open, require_mention: false}
              send_policy: {default: allow}
              agent_send_policies:
                ops: {default: allow}
              auto_approve:
                phone_patterns: ["+4930*"]
            group_senders:
              - {group_id: "*", user_id: "42"}
    """).lstrip()
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    r = await cli("apply", "-f", str(path), "--dry-run")
    assert r.code == 2
    found = []
    for line in r.err.splitlines()[:-1]:
        where, at, problem = line.removeprefix(f"{path}:").split(": ", 2)
        found.append((int(where), at.removeprefix("channels[0]."), problem.split(":")[0]))
    assert found == [
        (7, "policy.groups[-100].policy", "risk open_groups is not acknowledged"),
        (8, "policy.send_policy.default", "risk send_default_allow is not acknowledged"),
        (10, "policy.agent_send_policies[ops].default", "risk send_default_allow is not acknowledged"),
        (11, "policy.auto_approve", "risk auto_approve is not acknowledged"),
        (14, "group_senders[0]", "risk wildcard_group_sender is not acknowledged"),
    ]
