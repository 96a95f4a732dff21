"""The audit event names (domain.events) against the code that writes them and
the docs, and ``authz audit --event``: a family, a name, or an error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from authz_service.domain.events import AUDIT_EVENTS, FAMILIES, event_filter

from .conftest import Service, Tenant
from .policy_helpers import make_cli

ROOT = Path(__file__).resolve().parent.parent
# A literal event name where the code writes an event: audit.record(conn, t, "x.y", …),
# _audit(ctx, conn, "x.y", …), event="x.y", or a line of its own ("tenant.approvers_updated",).
WRITTEN = re.compile(
    r'(?:record\(\s*\w+,\s*[\w.]+,\s*|_audit\(\s*\w+,\s*\w+,\s*|event=|^\s*)"([a-z_]+\.[a-z_]+)"', re.M
)


def test_every_event_the_code_writes_is_known() -> None:
    written = {
        m.group(1)
        for path in (ROOT / "authz_service").rglob("*.py")
        if "gen" not in path.parts
        for m in WRITTEN.finditer(path.read_text())
    }
    assert "pairing.requested" in written and "user.unpaired" in written  # the pattern finds them
    assert {w for w in written if w.split(".")[0] in FAMILIES} <= AUDIT_EVENTS


def test_the_cli_docs_list_only_known_events() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    table = text.split("Events written so far:", 1)[1].split("\n\n", 2)[1]
    documented = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", table))
    assert "pairing.expired" in documented
    assert documented <= AUDIT_EVENTS


@pytest.mark.parametrize(
    ("typed", "sent"),
    [
        ("pairing", "pairing."),
        ("pairing.", "pairing."),
        ("Tool", "tool."),
        ("pairing.approved", "pairing.approved"),
    ],
)
def test_a_family_means_every_event_in_it(typed: str, sent: str) -> None:
    assert event_filter(typed) == sent


@pytest.mark.parametrize("typed", ["pairings", "pairing.approve", "approved", "pairing.*", "x."])
def test_anything_else_is_unknown(typed: str) -> None:
    assert event_filter(typed) is None


async def test_audit_event_filters_through_the_cli(service: Service, tenant: Tenant) -> None:
    await tenant.channel("tg")
    cli = make_cli(service, tenant)
    r = await cli("audit", "--event", "channel", "--json")
    assert r.code == 0, r.text
    assert [e["event"] for e in json.loads(r.out)] == ["channel.updated"]
    r = await cli("audit", "--event", "channel.updatd", "--json")
    assert r.code == 2 and "unknown event 'channel.updatd'" in r.err
    assert "channel.updated" in r.err and "pairing.approved" in r.err
