"""`authz approvals ...`, `authz approvers` and `authz key create agent`, run
in-process (``main([...])`` in a worker thread, since the service runs on the
test's event loop) against the real service. `authz approvals watch` runs in
its own process, so that it can be stopped with Ctrl-C (SIGINT)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from authz_service.client import connect
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Service, Tenant
from .policy_helpers import Cli, make_cli

UNKNOWN_APPROVAL = "apr_" + "A" * 22
UNKNOWN_GRANT = "grt_" + "A" * 22
AGENTS_HEADER = "agent approvers (tool calls of these agents; other agents use the tenant approvers):"


Watch = Callable[..., Awaitable[asyncio.subprocess.Process]]


@pytest.fixture
def cli(service: Service, tenant: Tenant) -> Cli:
    """Run `authz ARGV... --address A --api-key K` (the tenant's admin key unless `key=`)."""
    return make_cli(service, tenant)


def actor(secret: str) -> str:
    """The actor a key resolves as: key:<key id> (azk.<tenant>.<key id>.<secret>)."""
    return "key:" + secret.split(".")[2]


async def request(
    t: Tenant,
    tool: str = "shell",
    arguments: str = '{"cmd":"ls"}',
    agent: str = "ops",
    timeout: int = 60,
    **extra: object,
) -> cm.Approval:
    resp = await t.connector.authz.RequestApproval(
        az.RequestApprovalRequest(
            tool_name=tool,
            arguments_json=arguments,
            agent_id=agent,
            timeout_seconds=timeout,
            **extra,  # type: ignore[arg-type]
        )
    )
    return resp.approval


async def get(t: Tenant, approval_id: str) -> cm.Approval:
    return await t.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=approval_id))


async def grants(t: Tenant, include_revoked: bool = False) -> list[adm.Grant]:
    resp = await t.admin.admin.ListGrants(adm.ListGrantsRequest(include_revoked=include_revoked))
    return list(resp.grants)


async def pairing_request(t: Tenant) -> az.RequestPairingResponse:
    await t.channel("tg", dm_policy=cm.DM_POLICY_PAIRING)
    return await t.connector.authz.RequestPairing(
        az.RequestPairingRequest(channel_id="tg", user_id="42", display_name="Alice", first_message="hi")
    )


# --- key create agent --------------------------------------------------------------


async def test_key_create_accepts_the_agent_role(cli: Cli, service: Service) -> None:
    r = await cli("key", "create", "agent", "--name", "runtime")
    assert r.code == 0, r.err
    assert r.out.startswith("created agent key ")
    secret = r.out.strip().splitlines()[-1]
    assert secret.startswith("azk.")
    listed = json.loads((await cli("key", "list", "--json")).out)
    row = next(k for k in listed if "key:" + k["key_id"] == actor(secret))
    assert (row["role"], row["name"]) == ("agent", "runtime")

    # It is a working agent key: it may request a tool call, and may not approve it.
    agent = connect(service.address, secret)
    try:
        resp = await agent.authz.RequestApproval(
            az.RequestApprovalRequest(tool_name="shell", arguments_json="{}", agent_id="rt")
        )
    finally:
        await agent.close()
    assert resp.approval.status == cm.APPROVAL_STATUS_PENDING
    r = await cli("approvals", "approve", resp.approval.approval_id, key=secret)
    assert r.code == 2
    assert r.err.startswith("authz: PERMISSION_DENIED: ")


# --- list and show -----------------------------------------------------------------


async def test_approvals_list_filters_and_table(cli: Cli, service: Service, tenant: Tenant) -> None:
    agent_key = await tenant.admin.admin.CreateApiKey(
        adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="agent")
    )
    agent = connect(service.address, agent_key.secret)
    try:
        web = (
            await agent.authz.RequestApproval(
                az.RequestApprovalRequest(
                    tool_name="http.get",
                    arguments_json=json.dumps({"url": "https://example.com/" + "x" * 80}),
                    agent_id="web",
                    risk=cm.RISK_LOW,
                    timeout_seconds=60,
                )
            )
        ).approval
    finally:
        await agent.close()
    shell = await request(tenant, risk=cm.RISK_HIGH)
    pairing = await pairing_request(tenant)

    # Default: pending tool approvals, newest first, every field in JSON.
    r = await cli("approvals", "list", "--json")
    assert r.code == 0, r.err
    rows = json.loads(r.out)
    assert [row["approval_id"] for row in rows] == [shell.approval_id, web.approval_id]
    first = rows[0]
    assert {k: first[k] for k in ("kind", "status", "tool", "agent", "risk", "arguments", "resolved_by")} == {
        "kind": "tool", "status": "pending", "tool": "shell", "agent": "ops", "risk": "high",
        "arguments": {"cmd": "ls"}, "resolved_by": "",
    }  # fmt: skip
    assert first["arguments_digest"] == shell.tool.arguments_digest
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", first["expires"])
    assert rows[1]["risk"] == "low"

    # The table: one row each, arguments truncated to 40 characters.
    r = await cli("approvals", "list")
    lines = r.out.splitlines()
    assert lines[0].split() == [
        "APPROVAL_ID",
        "STATUS",
        "TOOL",
        "AGENT",
        "RISK",
        "AGE",
        "EXPIRES",
        "ARGUMENTS",
    ]
    assert len(lines) == 3
    cells = next(line for line in lines if shell.approval_id in line).split()
    assert cells[:5] == [shell.approval_id, "pending", "shell", "ops", "high"]
    assert re.fullmatch(r"\d+s", cells[5])
    assert cells[6] == "in" and re.fullmatch(r"\d+s|1m", cells[7])
    assert cells[8:] == ['{"cmd":"ls"}']
    web_args = next(line for line in lines if web.approval_id in line).split()[-1]
    assert web_args.startswith('{"url":"https://example.com/xxx')
    assert web_args.endswith("…") and len(web_args) == 40
    assert pairing.approval_id not in r.out

    assert [
        a["approval_id"] for a in json.loads((await cli("approvals", "list", "--agent", "web", "--json")).out)
    ] == [web.approval_id]
    assert (await cli("approvals", "list", "--agent", "nobody")).out == "(none)\n"
    assert [
        a["approval_id"] for a in json.loads((await cli("approvals", "list", "--limit", "1", "--json")).out)
    ] == [shell.approval_id]
    r = await cli("approvals", "list", "--limit", "0")
    assert (r.code, r.err) == (2, "authz: --limit must be between 1 and 1000\n")

    # Kinds.
    rows = json.loads((await cli("approvals", "list", "--kind", "pairing", "--json")).out)
    assert [(a["approval_id"], a["kind"], a["channel"], a["user"], a["name"]) for a in rows] == [
        (pairing.approval_id, "pairing", "tg", "42", "Alice")
    ]
    r = await cli("approvals", "list", "--kind", "all")
    lines = r.out.splitlines()
    assert lines[0].split() == [
        "APPROVAL_ID", "KIND", "STATUS", "TOOL", "AGENT", "RISK", "CHANNEL", "USER", "AGE", "EXPIRES", "ARGUMENTS",
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == [
        pairing.approval_id,
        shell.approval_id,
        web.approval_id,
    ]

    # Statuses.
    assert (await cli("approvals", "list", "--status", "approved")).out == "(none)\n"
    await tenant.approver.authz.ResolveApproval(
        az.ResolveApprovalRequest(approval_id=web.approval_id, action=cm.APPROVAL_ACTION_DENY)
    )

    async def ids(*flags: str) -> list[str]:
        return [a["approval_id"] for a in json.loads((await cli("approvals", "list", *flags, "--json")).out)]

    assert await ids() == [shell.approval_id]
    assert await ids("--status", "denied") == [web.approval_id]
    assert await ids("--status", "all") == [shell.approval_id, web.approval_id]
    table = (await cli("approvals", "list", "--status", "all")).out.splitlines()
    cells = next(line for line in table if web.approval_id in line).split()
    assert cells[:5] == [web.approval_id, "denied", "http.get", "web", "low"]
    assert "in" not in cells  # no expiry shown once decided
    assert await ids("--status", "all", "--kind", "all") == [
        pairing.approval_id,
        shell.approval_id,
        web.approval_id,
    ]


async def test_approvals_show(cli: Cli, tenant: Tenant) -> None:
    a = await request(tenant, arguments='{"cmd":"ls","args":["-l","/tmp"]}', session_id="s-1")
    r = await cli("approvals", "show", a.approval_id)
    assert r.code == 0, r.err
    head, _, arguments = r.out.partition("arguments:\n")
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in head.splitlines())}
    assert {k: fields[k] for k in ("approval_id", "kind", "status", "tool", "agent", "session", "risk")} == {
        "approval_id": a.approval_id, "kind": "tool", "status": "pending", "tool": "shell", "agent": "ops",
        "session": "s-1", "risk": "medium",
    }  # fmt: skip
    assert fields["arguments_digest"] == a.tool.arguments_digest and len(a.tool.arguments_digest) == 64
    assert fields["resolved_by"] == fields["resolved"] == fields["grant_id"] == "-"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(in \d+s\)", fields["expires"])
    assert arguments == '  {\n    "args": [\n      "-l",\n      "/tmp"\n    ],\n    "cmd": "ls"\n  }\n'

    shown = json.loads((await cli("approvals", "show", a.approval_id, "--json")).out)
    assert set(shown) == {
        "approval_id", "kind", "status", "tool", "agent", "session", "risk", "channel", "user", "name",
        "created", "expires", "resolved", "resolved_by", "reason", "redeemed", "grant_id", "arguments_digest",
        "arguments", "platform", "handle", "first_message",
    }  # fmt: skip
    assert shown["arguments"] == {"cmd": "ls", "args": ["-l", "/tmp"]}
    assert (shown["approval_id"], shown["session"], shown["resolved"]) == (a.approval_id, "s-1", None)

    # A pairing request shows too, without tool arguments.
    pairing = await pairing_request(tenant)
    r = await cli("approvals", "show", pairing.approval_id)
    assert "kind:" in r.out and re.search(r"^kind: +pairing$", r.out, re.M)
    assert re.search(r"^user: +42$", r.out, re.M) and "arguments:" not in r.out.replace(
        "arguments_digest:", ""
    )

    r = await cli("approvals", "show", UNKNOWN_APPROVAL)
    assert (r.code, r.out) == (2, "")
    assert r.err == f"authz: NOT_FOUND: approval {UNKNOWN_APPROVAL}: no such approval\n"
    r = await cli("approvals", "show", "nope")
    assert r.code == 2 and r.err.startswith("authz: INVALID_ARGUMENT: ")


# --- approve / deny ----------------------------------------------------------------


async def test_approve_and_deny(cli: Cli, tenant: Tenant) -> None:
    admin = actor(tenant.keys["admin"])
    approver = actor(tenant.keys["approver"])
    a = await request(tenant)
    b = await request(tenant, tool="rm", arguments='{"path":"/"}')

    r = await cli("approvals", "approve", a.approval_id, "--reason", "looks fine")
    assert r.code == 0, r.err
    assert r.out == f"✅ Approved by {admin}: tool shell for agent ops ({a.approval_id})\n"
    got = await get(tenant, a.approval_id)
    assert (got.status, got.resolved_by, got.reason) == (cm.APPROVAL_STATUS_APPROVED, admin, "looks fine")
    assert await grants(tenant) == []  # a plain approve grants nothing

    r = await cli("approvals", "deny", b.approval_id, "--reason", "no", key=tenant.keys["approver"])
    assert r.code == 0, r.err
    assert r.out == f"❌ Denied by {approver}: tool rm for agent ops ({b.approval_id})\n"
    got = await get(tenant, b.approval_id)
    assert (got.status, got.resolved_by, got.reason) == (cm.APPROVAL_STATUS_DENIED, approver, "no")


async def test_resolving_a_resolved_unknown_or_expired_approval_fails(cli: Cli, tenant: Tenant) -> None:
    a = await request(tenant)
    b = await request(tenant, tool="rm")
    assert (await cli("approvals", "approve", a.approval_id)).code == 0
    assert (await cli("approvals", "deny", b.approval_id)).code == 0

    r = await cli("approvals", "approve", b.approval_id)
    assert (r.code, r.out) == (2, "")
    assert (
        r.err == f"authz: FAILED_PRECONDITION: cannot approve {b.approval_id}: approval is already denied\n"
    )
    r = await cli("approvals", "deny", a.approval_id)
    assert r.err == f"authz: FAILED_PRECONDITION: cannot deny {a.approval_id}: approval is already approved\n"
    r = await cli("approvals", "approve", a.approval_id, "--always")
    assert r.code == 2
    assert r.err.startswith(f"authz: FAILED_PRECONDITION: cannot always allow {a.approval_id}: ")
    assert (await get(tenant, a.approval_id)).status == cm.APPROVAL_STATUS_APPROVED
    assert (await get(tenant, b.approval_id)).status == cm.APPROVAL_STATUS_DENIED
    assert await grants(tenant) == []

    r = await cli("approvals", "approve", UNKNOWN_APPROVAL)
    assert (r.code, r.out) == (2, "")
    assert r.err == f"authz: NOT_FOUND: cannot approve {UNKNOWN_APPROVAL}: no such approval\n"

    late = await request(tenant, timeout=1)
    await asyncio.sleep(2)
    r = await cli("approvals", "approve", late.approval_id)
    assert (r.code, r.out) == (2, "")
    assert r.err == f"authz: FAILED_PRECONDITION: cannot approve {late.approval_id}: approval expired\n"
    assert (await get(tenant, late.approval_id)).status == cm.APPROVAL_STATUS_EXPIRED
    expired = json.loads((await cli("approvals", "list", "--status", "expired", "--json")).out)
    assert [e["approval_id"] for e in expired] == [late.approval_id]


# --- always allow and grants ---------------------------------------------------------


async def test_always_allow_creates_a_grant_that_can_be_revoked(cli: Cli, tenant: Tenant) -> None:
    admin = actor(tenant.keys["admin"])
    a = await request(tenant)
    r = await cli("approvals", "approve", a.approval_id, "--always")
    assert r.code == 0, r.err
    [g] = await grants(tenant)
    assert (g.approval_id, g.agent_id, g.tool.tool_name, g.tool.arguments_json, g.created_by) == (
        a.approval_id, "ops", "shell", '{"cmd":"ls"}', admin,
    )  # fmt: skip
    assert r.out == (
        f"♾️ Always allowed by {admin}: tool shell for agent ops ({a.approval_id})\n"
        f"standing grant {g.grant_id}: this exact call runs without asking until "
        f"`authz approvals revoke-grant {g.grant_id}`\n"
    )
    assert (await get(tenant, a.approval_id)).status == cm.APPROVAL_STATUS_APPROVED
    again = await request(tenant)  # the same call is now approved by the grant
    assert (again.status, again.grant_id) == (cm.APPROVAL_STATUS_APPROVED, g.grant_id)

    listed = json.loads((await cli("approvals", "grants", "--json")).out)
    assert [
        (x["grant_id"], x["agent"], x["tool"], x["arguments"], x["approval_id"], x["created_by"])
        for x in listed
    ] == [(g.grant_id, "ops", "shell", {"cmd": "ls"}, a.approval_id, admin)]
    assert listed[0]["revoked"] is None
    table = (await cli("approvals", "grants")).out.splitlines()
    assert table[0].split() == ["GRANT_ID", "AGENT", "TOOL", "ARGUMENTS", "CREATED", "CREATED_BY"]
    assert table[1].split()[:4] == [g.grant_id, "ops", "shell", '{"cmd":"ls"}'] and len(table) == 2
    assert (await cli("approvals", "grants", "--agent", "other")).out == "(none)\n"
    assert len(json.loads((await cli("approvals", "grants", "--agent", "ops", "--json")).out)) == 1

    # Revoking needs an admin key.
    r = await cli("approvals", "revoke-grant", g.grant_id, key=tenant.keys["approver"])
    assert r.code == 2 and r.err.startswith("authz: PERMISSION_DENIED: ")
    assert len(await grants(tenant)) == 1

    r = await cli("approvals", "revoke-grant", g.grant_id)
    assert r.code == 0, r.err
    assert re.fullmatch(
        rf"revoked grant {g.grant_id}: tool shell for agent ops \(revoked \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d by {admin}\)\n",
        r.out,
    )
    assert await grants(tenant) == []
    [revoked] = await grants(tenant, include_revoked=True)
    assert revoked.revoked_by == admin
    assert (await cli("approvals", "grants")).out == "(none)\n"
    listed = json.loads((await cli("approvals", "grants", "--all", "--json")).out)
    assert [(x["grant_id"], x["revoked_by"]) for x in listed] == [(g.grant_id, admin)]
    assert listed[0]["revoked"] is not None
    assert "REVOKED" in (await cli("approvals", "grants", "--all")).out.splitlines()[0].split()
    assert (await request(tenant)).status == cm.APPROVAL_STATUS_PENDING  # a person decides again

    r = await cli("approvals", "revoke-grant", UNKNOWN_GRANT)
    assert (r.code, r.err) == (2, f"authz: NOT_FOUND: cannot revoke {UNKNOWN_GRANT}: no such grant\n")


# --- approvers ---------------------------------------------------------------------


async def test_approvers_per_agent_round_trip(cli: Cli, tenant: Tenant) -> None:
    async def settings() -> tuple[list[str], dict[str, list[str]]]:
        s = await tenant.admin.admin.GetTenantSettings(adm.GetTenantSettingsRequest())
        return list(s.approvers), {a: list(v.actors) for a, v in s.agent_approvers.items()}

    r = await cli("approvers")
    assert r.out == (
        "tenant approvers: (none)\nagent approvers: (none: every agent's tool calls go to the tenant approvers)\n"
    )
    assert (await cli("approvers", "--set", "telegram:1", "telegram:2")).code == 0
    r = await cli("approvers", "--agent", "ops", "--set", "telegram:3", "slack:T0123ABC:U0456DEF")
    assert r.code == 0, r.err
    assert await settings() == (
        ["telegram:1", "telegram:2"],
        {"ops": ["slack:T0123ABC:U0456DEF", "telegram:3"]},
    )
    # The service uses them: a tool call of `ops` goes to its own list, others to the tenant's.
    ops = await tenant.connector.authz.RequestApproval(
        az.RequestApprovalRequest(tool_name="t", arguments_json="{}", agent_id="ops")
    )
    other = await tenant.connector.authz.RequestApproval(
        az.RequestApprovalRequest(tool_name="t", arguments_json="{}", agent_id="other")
    )
    assert (list(ops.approvers), list(other.approvers)) == (
        ["slack:T0123ABC:U0456DEF", "telegram:3"], ["telegram:1", "telegram:2"],
    )  # fmt: skip

    # Setting the tenant list keeps the agent lists, and one agent's list keeps the others.
    assert (await cli("approvers", "--set", "telegram:9")).code == 0
    assert (await cli("approvers", "--agent", "db", "--set", "discord:80351110224678912")).code == 0
    assert await settings() == (
        ["telegram:9"],
        {"ops": ["slack:T0123ABC:U0456DEF", "telegram:3"], "db": ["discord:80351110224678912"]},
    )

    r = await cli("approvers")
    assert r.out == (
        f"tenant approvers:\n  telegram:9\n{AGENTS_HEADER}\n  db: discord:80351110224678912\n  ops: slack:T0123ABC:U0456DEF telegram:3\n"
    )
    assert json.loads((await cli("approvers", "--json")).out) == {
        "approvers": ["telegram:9"],
        "agent_approvers": {
            "db": ["discord:80351110224678912"],
            "ops": ["slack:T0123ABC:U0456DEF", "telegram:3"],
        },
    }
    assert (await cli("approvers", "--agent", "ops")).out == "slack:T0123ABC:U0456DEF\ntelegram:3\n"
    assert "no approvers of its own" in (await cli("approvers", "--agent", "web")).out

    # An empty own list means nobody; --unset drops the list (the tenant's applies again).
    r = await cli("approvers", "--agent", "db", "--set")
    assert r.code == 0 and "  db: (nobody)\n" in r.out
    assert (await settings())[1] == {"ops": ["slack:T0123ABC:U0456DEF", "telegram:3"], "db": []}
    assert (await cli("approvers", "--agent", "db", "--unset")).code == 0
    assert await settings() == (["telegram:9"], {"ops": ["slack:T0123ABC:U0456DEF", "telegram:3"]})
    r = await cli("approvers", "--agent", "db", "--unset")
    assert (r.code, r.out) == (1, "nothing to do: agent db has no approvers of its own\n")
    r = await cli("approvers", "--unset")
    assert (r.code, r.err) == (2, "authz: --unset needs --agent AGENT\n")

    # `--set` alone empties the tenant list only; a bad actor changes nothing.
    assert (await cli("approvers", "--set")).code == 0
    assert await settings() == ([], {"ops": ["slack:T0123ABC:U0456DEF", "telegram:3"]})
    r = await cli("approvers", "--agent", "ops", "--set", "bogus")
    assert r.code == 2 and r.err.startswith("authz: INVALID_ARGUMENT: ")
    assert await settings() == ([], {"ops": ["slack:T0123ABC:U0456DEF", "telegram:3"]})


# --- watch -------------------------------------------------------------------------


@pytest.fixture
async def watch(service: Service) -> AsyncIterator[Watch]:
    """Start `authz approvals watch ARGS` in its own process (stdout is a pipe,
    unbuffered output off, so lines arrive only if the CLI flushes them)."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(key: str, *argv: str) -> asyncio.subprocess.Process:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_") and k != "PYTHONUNBUFFERED"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "authz_service.cli.main", "approvals", "watch", *argv,
            "--address", service.address, "--api-key", key,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def next_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None and proc.stderr is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if not line:
        raise AssertionError("watch ended: " + (await proc.stderr.read()).decode())
    return line.decode()


async def interrupt(proc: asyncio.subprocess.Process) -> tuple[int | None, bytes, bytes]:
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out, err


async def test_watch_json_streams_new_and_resolved_approvals(cli: Cli, tenant: Tenant, watch: Watch) -> None:
    admin = actor(tenant.keys["admin"])
    early = await request(tenant, tool="early")
    proc = await watch(tenant.keys["approver"], "--json")

    first = json.loads(await next_line(proc))  # pending approvals come first
    assert (first["event"], first["approval_id"], first["status"], first["tool"]) == (
        "new", early.approval_id, "pending", "early",
    )  # fmt: skip

    a = await request(tenant)
    new = json.loads(await next_line(proc))
    assert (new["event"], new["by"], new["approval_id"], new["tool"], new["agent"], new["arguments"]) == (
        "new", "", a.approval_id, "shell", "ops", {"cmd": "ls"},
    )  # fmt: skip

    assert (await cli("approvals", "approve", a.approval_id)).code == 0
    approved = json.loads(await next_line(proc))
    assert (approved["event"], approved["by"], approved["approval_id"], approved["status"]) == (
        "approved", admin, a.approval_id, "approved",
    )  # fmt: skip

    redeemed = await tenant.connector.authz.RedeemApproval(
        az.RedeemApprovalRequest(approval_id=a.approval_id, tool_name="shell", arguments_json='{"cmd":"ls"}')
    )
    assert redeemed.allow
    line = json.loads(await next_line(proc))
    assert (line["event"], line["approval_id"], line["redeemed"] is not None) == (
        "redeemed",
        a.approval_id,
        True,
    )

    assert (await cli("approvals", "deny", early.approval_id, "--reason", "too early")).code == 0
    denied = json.loads(await next_line(proc))
    assert (denied["event"], denied["by"], denied["approval_id"], denied["reason"]) == (
        "denied", admin, early.approval_id, "too early",
    )  # fmt: skip

    # Pairing requests are not streamed by default (--kind tool).
    await pairing_request(tenant)
    after = await request(tenant, tool="after")
    assert json.loads(await next_line(proc))["approval_id"] == after.approval_id

    code, out, err = await interrupt(proc)
    assert (code, out, err) == (0, b"", b"")  # Ctrl-C: exit 0, quietly, nothing else was streamed


async def test_watch_text_lines(cli: Cli, tenant: Tenant, watch: Watch) -> None:
    admin = actor(tenant.keys["admin"])
    proc = await watch(tenant.keys["admin"])
    a = await request(tenant, risk=cm.RISK_HIGH)
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    described = re.escape('tool shell for agent ops (risk high) {"cmd":"ls"}')
    assert re.fullmatch(rf"{stamp}  NEW  {a.approval_id}  {described}\n", await next_line(proc))

    assert (await cli("approvals", "deny", a.approval_id, "--reason", "nope")).code == 0
    line = await next_line(proc)
    assert re.fullmatch(rf"{stamp}  DENIED by {admin}  {a.approval_id}  {described}; reason: nope\n", line)

    late = await request(tenant, tool="late", timeout=1)
    assert f"  NEW  {late.approval_id}  tool late" in await next_line(proc)
    # Longer than the SDK's default unary deadline (5 s): the stream must not have one.
    await asyncio.sleep(6)
    assert (await cli("approvals", "approve", late.approval_id)).code == 2  # ... and expires it
    assert re.fullmatch(
        rf"{stamp}  EXPIRED  {late.approval_id}  tool late for agent ops .*\n", await next_line(proc)
    )

    code, out, err = await interrupt(proc)
    assert (code, out, err) == (0, b"", b"")
