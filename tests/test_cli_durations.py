"""The CLI's one duration grammar (`invites create --ttl`, `audit --since/--until`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from authz_service.cli.audit import parse_when
from authz_service.cli.durations import parse_duration
from authz_service.cli.errors import CliError

from .conftest import Service, Tenant
from .policy_helpers import make_cli

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

READ = [
    # What `invites --ttl` read before: seconds, with or without a unit s/m/h/d, any case.
    ("90", timedelta(seconds=90)),
    ("90s", timedelta(seconds=90)),
    ("30m", timedelta(minutes=30)),
    ("12H", timedelta(hours=12)),
    ("7d", timedelta(days=7)),
    (" 7d ", timedelta(days=7)),
    # What `audit --since` read before, besides dates: m/h/d/w.
    ("2w", timedelta(weeks=2)),
    # Words, singular or plural, with or without a space.
    ("30 days", timedelta(days=30)),
    ("1 week", timedelta(weeks=1)),
    ("2 hours", timedelta(hours=2)),
    ("1hour", timedelta(hours=1)),
    ("45 min", timedelta(minutes=45)),
    ("10 seconds", timedelta(seconds=10)),
    ("3 Weeks", timedelta(weeks=3)),
    ("999999999", timedelta(seconds=999_999_999)),
]


@pytest.mark.parametrize(("text", "expected"), READ, ids=[t for t, _ in READ])
def test_reads(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "d", "7x", "1.5h", "-5m", "7 d s", "1234567890", "seven days", "7d2h"])
def test_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration such as"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T08:30:00", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
        ("2026-11-01T08:30:00+02:00", datetime(2026, 11, 1, 6, 30, tzinfo=UTC)),
        ("24h", NOW - timedelta(hours=24)),
        ("7 days", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(weeks=2)),
    ],
)
def test_since_reads_dates_and_durations_ago(text: str, expected: datetime) -> None:
    assert parse_when(text, NOW) == expected


def test_since_refuses_anything_else() -> None:
    with pytest.raises(CliError, match="cannot read 'yesterday'"):
        parse_when("yesterday", NOW)


# --- through the CLI, against the service ------------------------------------------------


async def test_invite_ttl_in_words(service: Service, tenant: Tenant) -> None:
    await tenant.channel("tg")
    cli = make_cli(service, tenant)
    r = await cli("invites", "create", "tg", "--ttl", "2 days", "--json")
    assert r.code == 0, r.text
    expires = datetime.fromisoformat(json.loads(r.out)["expires"]).replace(tzinfo=UTC)
    assert abs(expires - datetime.now(UTC) - timedelta(days=2)) < timedelta(minutes=1)

    r = await cli("invites", "create", "tg", "--ttl", "2 fortnights")
    assert r.code == 2 and "'2 fortnights' is not a duration such as" in r.err


async def test_audit_filters_before_or_after_export(service: Service, tenant: Tenant) -> None:
    """`audit --since 1 week export` and `audit export --since ...` read the same filters;
    the ones given to `export` win."""
    await tenant.channel("tg")
    cli = make_cli(service, tenant)
    after = await cli("audit", "export", "--format", "json", "--since", "1 week", "--event", "channel.")
    before = await cli("audit", "--since", "1 week", "--event", "channel.", "export", "--format", "json")
    assert after.code == before.code == 0, after.text + before.text
    assert [e["event"] for e in json.loads(after.out)] == ["channel.updated"]
    assert json.loads(before.out) == json.loads(after.out)
    overridden = await cli("audit", "--event", "channel.", "export", "--format", "json", "--event", "key.")
    assert {e["event"] for e in json.loads(overridden.out)} == {"key.created"}
    future = await cli("audit", "--since", "2999-01-01", "--json")
    assert (future.code, json.loads(future.out)) == (0, [])
