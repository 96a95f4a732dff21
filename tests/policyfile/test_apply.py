"""`authz apply -f FILE` against the real service: schema errors, the server's validation,
what is applied, and a failure in the middle.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from textwrap import dedent

import asyncpg
import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm
from tests.conftest import Dsns, Tenant
from tests.policy_helpers import Cli, events_after, last_event_id
from tests.policyfile.files import SUPPORT, channel_ids, get, senders, write

# --- schema errors -------------------------------------------------------------------

HEAD = "version: 1\nchannels:\n  - id: c1\n    platform: telegram\n    policy:\n"
SCHEMA_CASES = [
    ("unknown field", HEAD + "      dm_polcy: open\n", 6,
     "channels[0].policy.dm_polcy: unknown field 'dm_polcy' (did you mean 'dm_policy'?)"),
    ("unknown enum value", HEAD + "      dm_policy: wide-open\n", 6,
     "channels[0].policy.dm_policy: unknown value 'wide-open': expected one of pairing, allowlist, open, disabled"),
    ("unspecified is not a value", HEAD + "      group_policy: unspecified\n", 6,
     "channels[0].policy.group_policy: unknown value 'unspecified'"),
    ("bool in a map of messages", HEAD + '      groups:\n        "*":\n          require_mention: maybe\n', 8,
     "channels[0].policy.groups[*].require_mention: expected a boolean (true or false)"),
    ("quoted true is a string", HEAD + '      require_mention: "true"\n', 6,
     "channels[0].policy.require_mention: expected a boolean"),
    ("negative integer", HEAD + "      max_pending: -1\n", 6,
     "channels[0].policy.max_pending: -1 is out of range (0..4294967295)"),
    ("string for an integer", HEAD + "      pairing_ttl_seconds: 30d\n", 6,
     "channels[0].policy.pairing_ttl_seconds: expected a non-negative integer"),
    ("list instead of mapping", HEAD + "      send_policy: [origin]\n", 6,
     "channels[0].policy.send_policy: expected a mapping"),
    ("mapping instead of list", HEAD + "      approvers: {a: 1}\n", 6,
     "channels[0].policy.approvers: expected a list"),
    ("mapping in a list of strings", HEAD + "      approvers:\n        - \"1\"\n        - {a: 1}\n", 8,
     "channels[0].policy.approvers[1]: expected a string"),
    ("nested unknown field", HEAD + "      bindings:\n        - user_id: \"42\"\n          tool: {allowed: [x]}\n", 8,
     "channels[0].policy.bindings[0].tool: unknown field 'tool' (did you mean 'tools'?)"),
    ("duplicate key", HEAD + "      dm_policy: open\n      dm_policy: pairing\n", 7,
     "channels[0].policy: duplicate key 'dm_policy' (first at line 6)"),
    ("unknown risk code", "version: 1\nchannels:\n  - id: c1\n    platform: telegram\n    acknowledge: [open_dm]\n", 5,
     "channels[0].acknowledge[0]: unknown risk code 'open_dm'"),
    ("unknown platform", "version: 1\nchannels:\n  - id: c1\n    platform: signal\n", 4,
     "channels[0].platform: unknown platform 'signal'"),
    ("missing platform", "version: 1\nchannels:\n  - id: c1\n", 3, "channels[0].platform: is required"),
    ("unknown channel key", "version: 1\nchannels:\n  - id: c1\n    platform: slack\n    polcy: {}\n", 5,
     "channels[0].polcy: unknown field 'polcy' (did you mean 'policy'?)"),
    ("group sender needs both ids",
     "version: 1\nchannels:\n  - id: c1\n    platform: telegram\n    group_senders:\n      - {group_id: g}\n", 6,
     "channels[0].group_senders[0].user_id: is required"),
    ("wrong version", "version: 2\nchannels: []\n", 1, "version: unsupported version 2: this authz reads version 1"),
    ("missing version", "channels: []\n", 1, "version: missing"),
    ("unknown top-level key", "version: 1\nchanels: []\n", 2,
     "chanels: unknown field 'chanels' (did you mean 'channels'?)"),
    ("duplicate channel id", "version: 1\nchannels:\n  - id: c1\n    platform: telegram\n"
     "  - id: c1\n    platform: slack\n", 5, "channels[1].id: duplicate channel id 'c1' (first at line 3)"),
    ("tenant unknown key", "version: 1\ntenant:\n  approver: []\n", 3,
     "tenant.approver: unknown field 'approver' (did you mean 'approvers'?)"),
    ("invalid YAML", "version: 1\nchannels: [\n", 3, "invalid YAML"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "line", "message"), [c[1:] for c in SCHEMA_CASES], ids=[c[0] for c in SCHEMA_CASES]
)
async def test_schema_errors_name_the_line(
    cli: Cli, tenant: Tenant, tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 2, r.text
    assert f"{path}:{line}: {message}" in r.err, r.err
    assert "nothing was applied" in r.err
    assert await channel_ids(tenant) == []


@pytest.mark.parametrize(
    ("shape", "body"),
    [
        ("flow", "channels: " + "[" * 5000 + "]" * 5000 + "\n"),
        ("block", "channels:\n" + "".join("  " * i + "- \n" for i in range(1, 400)) + "  " * 400 + "- x\n"),
        ("under a channel", "channels:\n  - id: c1\n    platform: telegram\n    policy: "
         + "{a: " * 3000 + "1" + "}" * 3000 + "\n"),
    ],
)  # fmt: skip
async def test_a_deeply_nested_file_is_refused_with_a_clear_error(
    cli: Cli, tenant: Tenant, tmp_path: Path, shape: str, body: str
) -> None:
    # PyYAML's composer recurses once per level: this used to end in a RecursionError traceback.
    path = tmp_path / "deep.yaml"
    path.write_text("version: 1\n" + body)
    r = await cli("apply", "-f", str(path), "--yes")
    assert (r.code, r.out) == (2, ""), r.text
    assert r.err.startswith(f"authz: {path}: line ") and "Traceback" not in r.err
    assert r.err.endswith(": YAML nested too deeply (more than 64 levels); nothing was applied\n"), r.err
    assert await channel_ids(tenant) == []
    # 64 levels (the top mapping and 63 sequences) are still read, and refused for
    # what they say, not for their depth.
    path.write_text("version: 1\nchannels: " + "[" * 63 + "]" * 63 + "\n")
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 2 and "nested too deeply" not in r.err and "nothing was applied" in r.err, r.err


async def test_every_schema_error_is_printed(cli: Cli, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        channels:
          - id: a
            platform: telegram
            policy:
              dm_policy: wide
              groups: {"*": {require_mention: 3}}
          - id: b
            platform: telegram
            acknowledge: [nope]
            policy:
              max_pending: lots
    """,
    )
    r = await cli("apply", "-f", str(path), "--dry-run")
    assert r.code == 2
    lines = [line for line in r.err.splitlines() if line.startswith(str(path))]
    assert [line.split(":")[1] for line in lines] == ["6", "7", "10", "12"]
    assert "4 errors; nothing was applied" in r.err


# --- the server's validation, run before anything is sent -------------------------------

DOMAIN_CASES = [
    ("bad approver in a list", '      approvers: ["42", "alice"]\n', 6, "channels[0].policy.approvers[1]: must be a Telegram numeric user id"),
    ("bad approver, block list", '      approvers:\n        - "42"\n        - "7"\n        - "@bob"\n', 9,
     "channels[0].policy.approvers[2]: must be a Telegram numeric user id"),
    ("bad mention pattern", '      groups:\n        "*":\n          mention_patterns: ["ok", "(?=x)"]\n', 8,
     "channels[0].policy.groups[*].mention_patterns[1]: '(?=x)' is not a valid RE2 pattern"),
    ("pairing code ttl bound", "      pairing_code_ttl_seconds: 5\n", 6,
     "channels[0].policy.pairing_code_ttl_seconds: must be between 30 and 86400"),
    ("time window", "      send_policy:\n        time_restrictions:\n          - targets: [x]\n"
     "            windows:\n              - {start: \"09:00\", end: 25:00}\n", 10,
     "channels[0].policy.send_policy.time_restrictions[0].windows[0].end: '25:00' must be HH:MM (24-hour)"),
    ("duplicate binding", '      bindings:\n        - {user_id: "42"}\n        - {user_id: "42", group_id: "*"}\n', 8,
     "channels[0].policy.bindings[1]: a binding for user '42' in group '*' already exists"),
    ("bad command", "      groups: {g1: {denied_commands: [deploy, 'rm -rf']}}\n", 6,
     "channels[0].policy.groups[g1].denied_commands[1]: 'rm -rf' must be a command name"),
    ("bad group id", '      groups:\n        "-100": {require_mention: true}\n        "bad id": {require_mention: true}\n', 8,
     "channels[0].policy.groups[bad id]: must be '*' or 1-128 characters"),
    ("reserved alias", '      aliases:\n        ops: "slack:#ops"\n        origin: "slack:#x"\n', 8,
     "channels[0].policy.aliases[origin]: 'origin' is reserved"),
    ("bad agent id in send policies", '      agent_send_policies:\n        ops: {}\n        "-x": {}\n', 8,
     "channels[0].policy.agent_send_policies[-x]: must be 1-64 characters"),
    ("quorum bound", "      required_approvals: 6\n", 6,
     "channels[0].policy.required_approvals: must be between 0 (one) and 5"),
    ("phone pattern", '      auto_approve: {phone_patterns: ["+4930*", "+*"]}\n', 6,
     "channels[0].policy.auto_approve.phone_patterns[1]: '+*' must contain digits"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "line", "message"), [c[1:] for c in DOMAIN_CASES], ids=[c[0] for c in DOMAIN_CASES]
)
async def test_server_validation_maps_to_the_line(
    cli: Cli, tenant: Tenant, tmp_path: Path, policy: str, line: int, message: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(HEAD + policy)
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 2, r.text
    assert f"{path}:{line}: {message}" in r.err, r.err
    assert await channel_ids(tenant) == []


async def test_the_tenant_is_checked_by_the_service(cli: Cli, tmp_path: Path) -> None:
    """The service answers for the first problem in each part (tenant, channel)."""
    for tenant, expected in (
        (
            '  approvers: ["telegram:42", "42"]\n',
            "3: tenant.approvers[1]: '42' must be '<platform>:<user id>'",
        ),
        (
            '  agent_approvers:\n    ops: ["telegram:1", "x"]\n',
            "4: tenant.agent_approvers[ops][1]: 'x' must be",
        ),
        ("  timezone: Mars/Olympus\n", "3: tenant.timezone: 'Mars/Olympus' must be an IANA time zone"),
    ):
        path = tmp_path / "policy.yaml"
        text = (
            "version: 1\ntenant:\n"
            + tenant
            + "channels:\n  - {id: c1, platform: slack, policy: {max_pending: 20000}}\n"
        )
        path.write_text(text)
        r = await cli("apply", "-f", str(path), "--dry-run")
        assert r.code == 2, r.text
        assert f"{path}:{expected}" in r.err, r.err
        channel_line = len(text.splitlines())
        assert (
            f"{path}:{channel_line}: channels[0].policy.max_pending: must be between 1 and 10000" in r.err
        ), r.err
        assert "2 errors; nothing was applied" in r.err


async def test_group_senders_are_checked_when_written(cli: Cli, tenant: Tenant, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        channels:
          - id: c1
            platform: telegram
            group_senders:
              - {group_id: g3, user_id: "7"}
              - {group_id: g3, user_id: "7"}
    """,
    )
    r = await cli("apply", "-f", str(path), "--dry-run")
    assert (r.code, r.out) == (2, "")
    assert f"{path}:7: channels[0].group_senders[1]: duplicate group sender (first at line 6)" in r.err

    # The ids are the service's to judge, when the sender is added.
    path = write(
        tmp_path,
        """
        version: 1
        channels:
          - id: c1
            platform: telegram
            group_senders:
              - {group_id: g2, user_id: "@bob"}
    """,
    )
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 1, r.text
    assert "apply stopped: channel c1: AllowGroupSender group g2 user @bob failed: INVALID_ARGUMENT" in r.err
    assert "already applied: channel c1 (created)" in r.err
    assert await channel_ids(tenant) == ["c1"]


# --- apply ---------------------------------------------------------------------------


async def test_dry_run_changes_nothing(cli: Cli, tenant: Tenant, tmp_path: Path) -> None:
    path = write(tmp_path, SUPPORT)
    before = await last_event_id(tenant)
    r = await cli("apply", "-f", str(path), "--dry-run")
    assert r.code == 0, r.text
    assert "+ channel support-tg (telegram): create" in r.out
    assert "    policy.dm_policy: pairing" in r.out
    assert "    + group sender: group -1001234 user 42" in r.out
    assert "plan: 1 to create, 0 to change, 0 to delete" in r.out
    assert "dry run: nothing was changed" in r.out
    assert await channel_ids(tenant) == []
    assert await events_after(tenant, before) == []


async def test_apply_without_yes_or_terminal_is_refused(cli: Cli, tenant: Tenant, tmp_path: Path) -> None:
    r = await cli("apply", "-f", str(write(tmp_path, SUPPORT)))
    assert r.code == 2
    assert "pass --yes" in r.err
    assert await channel_ids(tenant) == []


async def test_apply_then_apply_again_is_a_no_op(cli: Cli, tenant: Tenant, tmp_path: Path) -> None:
    path = write(tmp_path, SUPPORT)
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 0, r.text
    assert "applied: channel support-tg (created, added group -1001234 user 42)" in r.out

    ch = await get(tenant, "support-tg")
    p = ch.policy
    assert (p.dm_policy, p.owner_id, list(p.send_policy.allow)) == (
        cm.DM_POLICY_PAIRING,
        "100",
        ["origin", "ops-alerts"],
    )
    assert list(p.groups["*"].allowed_commands) == ["help", "status"]  # normalised as the server does
    assert p.groups["*"].require_mention is True
    assert (p.bindings[0].user_id, p.bindings[0].group_id, p.bindings[0].agent_id) == ("42", "*", "admin")
    assert (p.rate_limit.max_messages_per_hour, p.rate_limit.burst) == (60, 10)  # default burst filled in
    assert await senders(tenant, "support-tg") == {("-1001234", "42")}

    after_first = await last_event_id(tenant)
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 0, r.text
    assert "= channel support-tg (telegram): no changes" in r.out
    assert r.out.strip().endswith("no changes")
    assert await events_after(tenant, after_first) == []  # no writes at all


async def test_changes_are_shown_per_field_and_only_they_are_written(
    cli: Cli, tenant: Tenant, tmp_path: Path
) -> None:
    path = write(tmp_path, SUPPORT)
    assert (await cli("apply", "-f", str(path), "--yes")).code == 0
    changed = SUPPORT.replace("dm_policy: pairing", "dm_policy: allowlist").replace(
        "allow: [origin, ops-alerts]", "allow: [origin]"
    )
    path.write_text(dedent(changed).lstrip())
    before = await last_event_id(tenant)
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 0, r.text
    assert "~ channel support-tg (telegram): change" in r.out
    assert "    policy.dm_policy: pairing -> allowlist" in r.out
    assert '    policy.send_policy.allow: ["origin", "ops-alerts"] -> ["origin"]' in r.out
    assert "plan: 0 to create, 1 to change, 0 to delete" in r.out
    assert "group sender" not in r.out  # unchanged: not touched
    assert [e.event for e in await events_after(tenant, before)] == ["channel.updated"]
    assert (await get(tenant, "support-tg")).policy.dm_policy == cm.DM_POLICY_ALLOWLIST


async def test_removing_a_field_resets_it(cli: Cli, tenant: Tenant, tmp_path: Path) -> None:
    path = write(tmp_path, SUPPORT)
    assert (await cli("apply", "-f", str(path), "--yes")).code == 0
    path.write_text("\n".join(line for line in dedent(SUPPORT).splitlines() if "owner_id" not in line))
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 0, r.text
    assert "    policy.owner_id: 100 -> (unset)" in r.out
    assert (await get(tenant, "support-tg")).policy.owner_id == ""


async def test_prune(cli: Cli, tenant: Tenant, tmp_path: Path) -> None:
    await tenant.channel("legacy", dm_policy=cm.DM_POLICY_ALLOWLIST)
    path = write(tmp_path, SUPPORT)
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 0, r.text
    assert "  channel legacy (telegram): not in file; kept (--prune deletes)" in r.out
    assert await channel_ids(tenant) == ["legacy", "support-tg"]

    r = await cli("apply", "-f", str(path), "--prune", "--dry-run")
    assert "- channel legacy (telegram): delete (not in file)" in r.out
    assert await channel_ids(tenant) == ["legacy", "support-tg"]

    r = await cli("apply", "-f", str(path), "--prune", "--yes")
    assert r.code == 0, r.text
    assert "plan: 0 to create, 0 to change, 1 to delete" in r.out
    assert "channel legacy deleted" in r.out
    assert await channel_ids(tenant) == ["support-tg"]


async def test_group_senders_are_an_exact_set(cli: Cli, tenant: Tenant, tmp_path: Path) -> None:
    await tenant.channel("grp")
    for g, u in (("g1", "1"), ("g2", "2")):
        await tenant.admin.admin.AllowGroupSender(adm.GroupSenderRef(channel_id="grp", group_id=g, user_id=u))
    base = "version: 1\nchannels:\n  - id: grp\n    platform: telegram\n"
    path = tmp_path / "p.yaml"

    path.write_text(base)  # no group_senders key: the senders are left alone
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 0, r.text
    assert await senders(tenant, "grp") == {("g1", "1"), ("g2", "2")}

    path.write_text(
        base
        + "    group_senders:\n      - {group_id: g2, user_id: '2'}\n      - {group_id: g3, user_id: '3'}\n"
    )
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 0, r.text
    assert "    + group sender: group g3 user 3" in r.out
    assert "    - group sender: group g1 user 1" in r.out
    assert "group g2 user 2" not in r.out
    assert await senders(tenant, "grp") == {("g2", "2"), ("g3", "3")}

    path.write_text(base + "    group_senders: []\n")
    assert (await cli("apply", "-f", str(path), "--yes")).code == 0
    assert await senders(tenant, "grp") == set()


async def test_tenant_settings_are_applied_exactly(cli: Cli, tenant: Tenant, tmp_path: Path) -> None:
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=["telegram:7"]))
    path = write(
        tmp_path,
        """
        version: 1
        tenant:
          approvers: ["telegram:42", "telegram:42", "slack:T01:U02"]
          agent_approvers: {ops-bot: ["slack:T01:U02"]}
          timezone: Europe/Berlin
    """,
    )
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 0, r.text
    assert "~ tenant settings: change" in r.out
    assert '    tenant.approvers: ["telegram:7"] -> ["slack:T01:U02", "telegram:42"]' in r.out
    s = await tenant.admin.admin.GetTenantSettings(adm.GetTenantSettingsRequest())
    assert list(s.approvers) == ["slack:T01:U02", "telegram:42"]
    assert list(s.agent_approvers["ops-bot"].actors) == ["slack:T01:U02"]
    assert s.timezone == "Europe/Berlin"
    before = await last_event_id(tenant)
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.out.strip() == "no changes", r.text
    assert await events_after(tenant, before) == []


# --- a failure in the middle ---------------------------------------------------------------


@pytest.fixture
async def failing_channel(dsns: Dsns, tenant: Tenant) -> object:
    """Writes of channel 'boom' in this tenant fail in the database (a real server error)."""
    name = f"pf_boom_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(dsns.owner)
    try:
        await conn.execute(f"""
            CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = 'serialization_failure'; END $$;
            CREATE TRIGGER {name} BEFORE INSERT OR UPDATE ON channels FOR EACH ROW
              WHEN (NEW.tenant_id = '{tenant.tenant_id}' AND NEW.channel_id = 'boom')
              EXECUTE FUNCTION {name}();
        """)  # fmt: skip
        yield
    finally:
        await conn.execute(f"DROP TRIGGER IF EXISTS {name} ON channels; DROP FUNCTION IF EXISTS {name}();")
        await conn.close()


@pytest.mark.usefixtures("failing_channel")
async def test_a_server_error_stops_the_apply_and_says_what_was_applied(
    cli: Cli, tenant: Tenant, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        """
        version: 1
        tenant:
          approvers: ["telegram:42"]
        channels:
          - id: first
            platform: telegram
          - id: boom
            platform: telegram
          - id: last
            platform: telegram
    """,
    )
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 1, r.text
    assert "apply stopped: channel boom: SetChannel failed: ABORTED" in r.err
    assert "already applied: tenant settings; channel first (created)" in r.err
    assert "not applied: channel boom (create); channel last (create)" in r.err
    assert await channel_ids(tenant) == ["first"]
