"""Data rights: the audit trail stays append-only, and the CLI's export, purge and anonymise."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from authz_service.client import Client
from authz_service.gen.authz.v1 import authz_pb2 as az

from .conftest import Dsns, Service, Tenant
from .data_rights_helpers import (
    NAME,
    PSEUDONYM,
    USER,
    audit_rows,
    build,
    check,
)
from .policy_helpers import run_authz


@pytest.fixture
async def service_conn(dsns: Dsns) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsns.service)
    yield conn
    await conn.close()


async def attempt(conn: asyncpg.Connection, tenant_id: str, sql: str, *args: object, anonymize: bool) -> str:
    """Run one statement as the store would, then roll back. Returns its status tag."""
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute("SELECT set_config('authz.tenant', $1, true)", tenant_id)
        if anonymize:
            await conn.execute("SELECT set_config('authz.anonymize', 'on', true)")
        return await conn.execute(sql, *args)
    finally:
        await tr.rollback()


async def test_audit_trail_stays_append_only(
    tenant: Tenant, other_tenant: Tenant, service_conn: asyncpg.Connection, owner: asyncpg.Connection
) -> None:
    t = tenant.tenant_id
    await tenant.channel("tg")  # a channel.updated event, besides the tenant's own
    where = "WHERE tenant_id = $1"

    # The control: an anonymising update is allowed, tenant-scoped, and only with the setting on.
    ok = await attempt(service_conn, t, f"UPDATE audit_events SET actor = 'anon:0123456789abcdef' {where}", t,
                       anonymize=True)  # fmt: skip
    assert ok.startswith("UPDATE ") and int(ok.split()[1]) >= 2
    removal = await attempt(service_conn, t, f"UPDATE audit_events SET details = details - 'policy' {where}", t,
                            anonymize=True)  # fmt: skip
    assert removal.startswith("UPDATE ") and int(removal.split()[1]) >= 2
    # Row-level security still scopes it: under another tenant's setting it finds nothing.
    assert await attempt(service_conn, other_tenant.tenant_id,
                         f"UPDATE audit_events SET actor = 'anon:0123456789abcdef' {where}", t,
                         anonymize=True) == "UPDATE 0"  # fmt: skip

    # A plain update is refused.
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await attempt(
            service_conn, t, f"UPDATE audit_events SET details = '{{}}' {where}", t, anonymize=False
        )
    # So is an anonymising one that is not: a non-pseudonym actor or subject, a new detail,
    # a changed detail.
    for change in (
        "actor = 'mallory'",
        "subject = 'someone-else'",
        """details = details || '{"forged": true}'""",
        """details = jsonb_set(details, '{role}', '"operator"')""",
        "details = '[]'",
    ):
        with pytest.raises(asyncpg.RaiseError, match="anonymising update"):
            await attempt(service_conn, t, f"UPDATE audit_events SET {change} {where} AND details ? 'role'", t,
                          anonymize=True)  # fmt: skip
    # The service may not even name the other columns...
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await attempt(service_conn, t, f"UPDATE audit_events SET event = 'x' {where}", t, anonymize=True)
    # ...and the trigger refuses them for anyone, the schema owner included.
    for change in ("event = 'tenant.deleted'", "at = now() - interval '1 day'", "channel_id = 'x'",
                   "approval_id = 'x'", "trace_id = 'x'"):  # fmt: skip
        with pytest.raises(asyncpg.RaiseError, match="only actor, subject and details"):
            await attempt(owner, t, f"UPDATE audit_events SET {change} {where}", t, anonymize=True)
    # DELETE: never, with or without the setting, by the service or by the owner.
    for anonymize in (False, True):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await attempt(service_conn, t, f"DELETE FROM audit_events {where}", t, anonymize=anonymize)
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await attempt(owner, t, f"DELETE FROM audit_events {where}", t, anonymize=anonymize)
    # Nothing above stuck.
    rows = await audit_rows(owner, t)
    assert {r["actor"] for r in rows} == {"operator", "key:" + tenant.keys["admin"].split(".")[2]}


async def test_cli_export_delete_and_anonymize(
    service: Service,
    tenant: Tenant,
    agents: dict[str, Client],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await build(tenant, agents[tenant.tenant_id])
    monkeypatch.setenv("AUTHZ_ADDRESS", service.address)
    monkeypatch.setenv("AUTHZ_API_KEY", tenant.keys["admin"])

    async def cli(*argv: str) -> tuple[int, str, str]:
        r = await run_authz(*argv)
        return r.code, r.out, r.err

    code, out, err = await cli("users", "export", "tg", USER)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["subject"]["display_name"] == NAME and len(doc["approvals"]) == 2
    assert out.startswith('{\n  "channel_id": "tg",')  # pretty-printed

    target = tmp_path / "zelda.json"
    code, out, err = await cli("users", "export", "tg", USER, "-o", str(target))
    assert code == 0 and out == "", err
    assert f"to {target}" in err
    assert json.loads(target.read_text())["user_id"] == USER
    assert target.stat().st_mode & 0o077 == 0  # personal data: owner-only

    code, out, err = await cli("users", "export", "nope", USER)
    assert code == 2 and err.startswith("authz: NOT_FOUND: ")

    code, out, err = await cli("users", "anonymize", "tg", USER)
    assert code == 0, err
    assert out.splitlines()[0] == f"anonymised {USER} on tg (their access is unchanged)"
    assert re.search(r"subjects updated:\s+1$", out, re.M) and re.search(
        r"approvals updated:\s+2$", out, re.M
    )
    assert (await check(tenant)).decision == az.DECISION_ALLOW

    # No --purge: refused, with the reason and the alternatives, and nothing deleted.
    code, out, err = await cli("users", "delete", "tg", USER)
    assert code == 2 and out == ""
    assert "--purge" in err and "cannot be undone" in err and "users export" in err
    assert (await check(tenant)).decision == az.DECISION_ALLOW

    code, out, err = await cli("users", "delete", "tg", USER, "--purge")
    assert code == 0, err
    pseudonym = PSEUDONYM.search(out.splitlines()[0])
    assert pseudonym and out.startswith(f"purged {USER} on tg")
    for label, n in (("subjects deleted", 1), ("group senders deleted", 1), ("approvals deleted", 2)):
        assert re.search(rf"{label}:\s+{n}$", out, re.M), (label, out)
    assert (await check(tenant)).decision == az.DECISION_PAIRING_REQUIRED

    code, out, err = await cli("users", "delete", "tg", USER, "--purge", "--json")
    assert code == 0, err
    assert json.loads(out) == {
        "pseudonym": pseudonym.group(0), "subjects": 0, "group_senders": 0, "approvals": 0,
        "audit_events_anonymized": 0,
    }  # fmt: skip
