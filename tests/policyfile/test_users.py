"""Users in policy files (#17 item 10): `authz export` writes a channel's
allowlisted and blocked users (paired ones with --include-paired) and `authz
apply` reconciles them, with the dry-run diff and the acknowledgement rules."""

from __future__ import annotations

from pathlib import Path

import yaml

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm
from tests.conftest import Tenant
from tests.pairing_helpers import OWNER, button, pair, press
from tests.policy_helpers import Cli, events_after, last_event_id
from tests.policyfile.files import write


async def users(t: Tenant, channel: str = "tg") -> dict[str, tuple[str, str, list[str]]]:
    resp = await t.admin.admin.ListUsers(adm.ListUsersRequest(channel_id=channel))
    out = {}
    for u in resp.users:
        if u.status == adm.SUBJECT_STATUS_BLOCKED:
            status = "blocked"
        else:
            status = "paired" if u.source == adm.SUBJECT_SOURCE_PAIRING else "allowlisted"
        out[u.user_id] = (status, u.display_name, list(u.permissions))
    return out


async def allow(t: Tenant, user: str, name: str = "", permissions: tuple[str, ...] = ()) -> None:
    await t.admin.admin.AllowUser(
        adm.AllowUserRequest(channel_id="tg", user_id=user, display_name=name, permissions=list(permissions))
    )


async def block(t: Tenant, user: str) -> None:
    await t.admin.admin.BlockUser(adm.BlockUserRequest(channel_id="tg", user_id=user))


async def world(t: Tenant) -> None:
    """On "tg": 1 allowlisted (Ann, read), 2 allowlisted, 3 blocked, 4 paired."""
    await t.channel("tg", owner_id=OWNER)
    await allow(t, "1", "Ann", ("read",))
    await allow(t, "2")
    await block(t, "3")
    await press(t, button(await pair(t, "4"), cm.APPROVAL_ACTION_APPROVE))


HEAD = """
    version: 1
    channels:
      - id: tg
        platform: telegram
        policy: {dm_policy: pairing, owner_id: "100"}
"""


async def test_export_writes_the_users_and_applies_as_a_no_op(
    cli: Cli, tenant: Tenant, tmp_path: Path
) -> None:
    await world(tenant)
    out = tmp_path / "export.yaml"
    assert (await cli("export", "-o", str(out))).code == 0
    [tg] = yaml.safe_load(out.read_text())["channels"]
    assert tg["users"] == {
        "allowlisted": [{"user_id": "1", "name": "Ann", "permissions": ["read"]}, {"user_id": "2"}],
        "blocked": [{"user_id": "3"}],
    }  # paired users only with --include-paired
    before = await last_event_id(tenant)
    r = await cli("apply", "-f", str(out), "--yes")
    assert r.code == 0 and r.out.strip().endswith("no changes"), r.text
    assert await events_after(tenant, before) == []

    paired = yaml.safe_load((await cli("export", "--include-paired")).out)["channels"][0]["users"]
    assert paired["paired"] == [{"user_id": "4", "name": "Alice"}]
    path = write(tmp_path, yaml.safe_dump({"version": 1, "channels": [
        {**tg, "users": paired}]}))  # fmt: skip
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 0 and r.out.strip().endswith("no changes"), r.text


async def test_apply_reconciles_the_listed_sets_only(cli: Cli, tenant: Tenant, tmp_path: Path) -> None:
    await world(tenant)
    path = write(
        tmp_path,
        HEAD
        + """
        users:
          allowlisted:
            - {user_id: "1", name: Ann, permissions: [read, write]}
            - {user_id: "3", name: Cy}
            - {user_id: "5"}
          blocked:
            - {user_id: "2"}
    """,
    )
    dry = await cli("apply", "-f", str(path), "--dry-run")
    assert dry.code == 0, dry.text
    assert (
        "~ user 1: allowlisted (name Ann; permissions read) -> allowlisted (name Ann; permissions read,write)"
        in dry.out
    )
    assert "~ user 2: allowlisted -> blocked" in dry.out
    assert "~ user 3: blocked -> allowlisted (name Cy)" in dry.out
    assert "+ user 5: allowlisted" in dry.out
    assert "user 4" not in dry.out  # paired users are not listed: left alone
    assert (await users(tenant))["1"] == ("allowlisted", "Ann", ["read"])  # the dry run wrote nothing
    assert "5" not in await users(tenant)

    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 0, r.text
    assert await users(tenant) == {
        "1": ("allowlisted", "Ann", ["read", "write"]), "2": ("blocked", "", []), "3": ("allowlisted", "Cy", []),
        "4": ("paired", "Alice", []), "5": ("allowlisted", "", []),
    }  # fmt: skip
    again = await cli("apply", "-f", str(path), "--yes")
    assert again.out.strip().endswith("no changes"), again.text

    # Absent from a listed set: removed (allowlisted) or unblocked (blocked); paired ones unpaired.
    path = write(tmp_path, HEAD + "        users: {allowlisted: [{user_id: '1', name: Ann, permissions: [read, write]}], "
                 "blocked: [], paired: []}\n")  # fmt: skip
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 0, r.text
    assert "- user 4: paired (name Alice) (not in file)" in r.out
    assert await users(tenant) == {"1": ("allowlisted", "Ann", ["read", "write"])}


async def test_removing_many_users_needs_an_acknowledgement(cli: Cli, tenant: Tenant, tmp_path: Path) -> None:
    await tenant.channel("tg", owner_id=OWNER)
    for user in "12345":
        await allow(tenant, user)
    path = write(tmp_path, HEAD + "        users: {allowlisted: []}\n")
    for args in (("--dry-run",), ("--yes",)):
        r = await cli("apply", "-f", str(path), *args)
        assert r.code == 2, r.text
        assert (
            "channels[0].users: risk user_removals is not acknowledged: this apply removes 5 users" in r.err
        )
        assert "nothing was applied" in r.err
    assert len(await users(tenant)) == 5
    path = write(tmp_path, HEAD + "        acknowledge: [user_removals]\n        users: {allowlisted: []}\n")
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 0, r.text
    assert await users(tenant) == {}


async def test_user_entries_are_checked_with_their_lines(cli: Cli, tenant: Tenant, tmp_path: Path) -> None:
    await tenant.channel("tg", owner_id=OWNER)
    path = write(
        tmp_path,
        HEAD
        + """
        users:
          allowlisted:
            - {user_id: "abc"}
            - {user_id: "7", permissions: ["no spaces"]}
          blocked:
            - {user_id: "7"}
            - {user_id: "8", name: Bob}
    """,
    )
    r = await cli("apply", "-f", str(path), "--dry-run")
    assert r.code == 2
    assert f"{path}:13: channels[0].users.blocked[1].name: unknown field 'name'" in r.err
    assert (
        f"{path}:12: channels[0].users.blocked[0]: user '7' is listed twice (first under allowlisted)"
        in r.err
    )
    r = await cli(
        "apply",
        "-f",
        str(write(tmp_path, HEAD + "        users: {allowlisted: [{user_id: abc}]}\n")),
        "--dry-run",
    )
    assert r.code == 2 and "channels[0].users.allowlisted[0].user_id:" in r.err, r.err
    assert await users(tenant) == {}


async def test_a_paired_user_cannot_be_created_from_a_file(cli: Cli, tenant: Tenant, tmp_path: Path) -> None:
    await tenant.channel("tg", owner_id=OWNER)
    path = write(tmp_path, HEAD + "        users: {paired: [{user_id: '9'}]}\n")
    r = await cli("apply", "-f", str(path), "--yes")
    assert r.code == 0 and "user 9 is listed as paired but is unknown now" in r.out, r.text
    assert await users(tenant) == {}
