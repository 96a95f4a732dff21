"""Send policy, table-driven: precedence and time windows in the tenant's zone
(DST included), and the tenant zone setting. Pure.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from authz_service.domain.errors import InvalidArgument
from authz_service.domain.model import (
    ChannelPolicy,
    SendPolicy,
    TimeWindow,
)
from authz_service.domain.send import EVALUATION_ERROR, evaluate, validate_timezone
from tests.domain.send_rows import (
    ALLOW,
    BERLIN,
    BUSINESS,
    DENY,
    SAT_NOON,
    SL,
    Row,
    local,
    only,
    run,
    utc,
    window,
)

# --- precedence -------------------------------------------------------------------------

X = "slack:#exec"
PRECEDENCE = {
    "deny-beats-allow": Row(SendPolicy(ALLOW, allow=(X,), deny=(X,)), X, False),
    "deny-beats-an-open-window": Row(
        SendPolicy(ALLOW, allow=(X,), deny=(X,), time_restrictions=(only((X,), BUSINESS),)), X, False
    ),
    "outside-window-beats-allow": Row(
        SendPolicy(DENY, allow=(X,), time_restrictions=(only((X,), BUSINESS),)), X, False, now=SAT_NOON
    ),
    "inside-window-then-allow": Row(
        SendPolicy(DENY, allow=(X,), time_restrictions=(only((X,), BUSINESS),)), X, True
    ),
    "inside-window-never-allows-by-itself": Row(
        SendPolicy(DENY, time_restrictions=(only((X,), BUSINESS),)), X, False
    ),
    "inside-window-then-default-allow": Row(
        SendPolicy(ALLOW, time_restrictions=(only((X,), BUSINESS),)), X, True
    ),
    "outside-window-beats-default-allow": Row(
        SendPolicy(ALLOW, time_restrictions=(only((X,), BUSINESS),)), X, False, now=SAT_NOON
    ),
    "restriction-not-covering-target": Row(
        SendPolicy(ALLOW, time_restrictions=(only(("slack:#board",), BUSINESS),)), X, True, now=SAT_NOON
    ),
    "every-covering-restriction-must-hold": Row(
        SendPolicy(
            ALLOW,
            time_restrictions=(only((X,), BUSINESS), only((X, "slack:#board"), window("13:00", "14:00"))),
        ),
        X,
        False,
    ),
    "any-window-of-a-restriction-suffices": Row(
        SendPolicy(ALLOW, time_restrictions=(only((X,), window("13:00", "14:00"), BUSINESS),)), X, True
    ),
    "origin-restricted-by-token": Row(
        SendPolicy(ALLOW, time_restrictions=(only(("origin",), BUSINESS),)), "origin", False, now=SAT_NOON
    ),
    "origin-restricted-by-its-id": Row(
        SendPolicy(ALLOW, time_restrictions=(only(("origin",), BUSINESS),)),
        "Telegram:42",
        False,
        now=SAT_NOON,
    ),
    "restriction-named-by-alias": Row(
        SendPolicy(ALLOW, time_restrictions=(only(("exec",), BUSINESS),)),
        "slack:C0EXEC1",
        False,
        now=SAT_NOON,
        aliases={"exec": "slack:C0EXEC1"},
    ),
    "allow-entry": Row(SendPolicy(DENY, allow=(X,)), X, True),
    "default-deny": Row(SendPolicy(DENY, allow=("origin",)), X, False),
    "default-allow": Row(SendPolicy(ALLOW, deny=("slack:#board",)), X, True),
    "no-policy-origin-only": Row(None, "origin", True),
    "no-policy-origin-by-id": Row(None, "telegram:42", True),
    "no-policy-elsewhere": Row(None, X, False),
    "no-clock-needed-without-restriction": Row(SendPolicy(ALLOW), X, True, now=None),
    "no-clock-with-a-restriction": Row(
        SendPolicy(ALLOW, time_restrictions=(only((X,), BUSINESS),)),
        X,
        False,
        now=None,
        reason=EVALUATION_ERROR,
    ),
    "naive-clock-with-a-restriction": Row(
        SendPolicy(ALLOW, time_restrictions=(only((X,), BUSINESS),)),
        X,
        False,
        now=datetime(2026, 3, 6, 12, 0),  # naive: the point of the row
        reason=EVALUATION_ERROR,
    ),
    "unknown-zone": Row(SendPolicy(ALLOW), X, False, zone="Mars/Olympus", reason=EVALUATION_ERROR),
    "zone-not-a-name": Row(SendPolicy(ALLOW), X, False, zone="../../etc/passwd", reason=EVALUATION_ERROR),
}


@pytest.mark.parametrize("row", PRECEDENCE.values(), ids=PRECEDENCE.keys())
def test_precedence(row: Row) -> None:
    run(row)


def test_list_actions_are_never_gated() -> None:
    c = ChannelPolicy(send_policy=SendPolicy(DENY, time_restrictions=(only((X,), BUSINESS),)))
    assert evaluate(c, "a", X, "", platform=SL, listing=True, now=SAT_NOON, zone="Mars/Olympus").allow


# --- time windows -----------------------------------------------------------------------

WRAP_FRI = window("22:00", "02:00", "fri")
WRAP_SUN = window("22:00", "02:00", "sun")
WRAP_DAILY = window("22:00", "02:00")
DST_HOUR = window("02:00", "03:00", "sun")
WINDOWS = {
    "weekday-inside": (BUSINESS, local("2026-03-06 12:00"), True),
    "start-inclusive": (BUSINESS, local("2026-03-06 09:00"), True),
    "minute-before-start": (BUSINESS, local("2026-03-06 08:59"), False),
    "last-minute": (BUSINESS, local("2026-03-06 17:59:59"), True),
    "end-exclusive": (BUSINESS, local("2026-03-06 18:00"), False),
    "weekend": (BUSINESS, local("2026-03-07 12:00", weekday="sat"), False),
    "every-day-when-no-days": (window("09:00", "18:00"), local("2026-03-08 12:00", weekday="sun"), True),
    "wrap-start-day-evening": (WRAP_FRI, local("2026-03-06 23:00"), True),
    "wrap-covers-next-morning": (WRAP_FRI, local("2026-03-07 01:00", weekday="sat"), True),
    "wrap-end-exclusive": (WRAP_FRI, local("2026-03-07 02:00"), False),
    "wrap-belongs-to-start-day": (WRAP_FRI, local("2026-03-06 01:00"), False),  # Thursday's night
    "wrap-not-next-evening": (WRAP_FRI, local("2026-03-07 23:00"), False),
    "wrap-sunday-into-monday": (WRAP_SUN, local("2026-03-09 01:00", weekday="mon"), True),
    "wrap-daily-after-midnight": (WRAP_DAILY, local("2026-03-10 00:30", weekday="tue"), True),
    "wrap-daily-afternoon": (WRAP_DAILY, local("2026-03-10 15:00"), False),
    # Europe/Berlin springs forward on Sunday 2026-03-29: 02:00 CET becomes 03:00 CEST.
    "dst-spring-local-time-is-cest": (window("09:00", "18:00", "sun"), utc("2026-03-29 07:30"), True),
    "dst-spring-day-before-is-cet": (window("09:00", "18:00", "sat"), utc("2026-03-28 07:30"), False),
    "dst-spring-missing-hour-before": (DST_HOUR, utc("2026-03-29 00:59"), False),
    "dst-spring-missing-hour-never-occurs": (DST_HOUR, utc("2026-03-29 01:00"), False),
    # ...and falls back on Sunday 2026-10-25: 02:00-03:00 happens twice, both inside.
    "dst-autumn-first-pass": (DST_HOUR, utc("2026-10-25 00:30"), True),
    "dst-autumn-second-pass": (DST_HOUR, utc("2026-10-25 01:30"), True),
    "dst-autumn-after": (DST_HOUR, utc("2026-10-25 02:00"), False),
}


@pytest.mark.parametrize(("w", "now", "inside"), WINDOWS.values(), ids=WINDOWS.keys())
def test_windows_in_the_tenant_zone(w: TimeWindow, now: datetime, inside: bool) -> None:
    policy = SendPolicy(ALLOW, time_restrictions=(only((X,), w),))
    run(Row(policy, X, inside, now=now))


@pytest.mark.parametrize(
    ("zone", "inside"), [("Europe/Berlin", True), ("UTC", False), ("America/New_York", False)]
)
def test_the_same_instant_in_different_zones(zone: str, inside: bool) -> None:
    policy = SendPolicy(ALLOW, time_restrictions=(only((X,), BUSINESS),))
    run(Row(policy, X, inside, now=utc("2026-01-05 08:30"), zone=zone))  # Berlin 09:30, UTC 08:30, NY 03:30


def test_zone_may_be_a_tzinfo() -> None:
    c = ChannelPolicy(send_policy=SendPolicy(ALLOW, time_restrictions=(only((X,), BUSINESS),)))
    assert evaluate(
        c, "a", X, "", platform=SL, listing=False, now=utc("2026-01-05 08:30"), zone=ZoneInfo(BERLIN)
    ).allow


# --- the tenant zone setting ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "stored"),
    [("", "UTC"), ("UTC", "UTC"), ("Europe/Berlin", "Europe/Berlin"), ("America/Argentina/Buenos_Aires", None),
     ("Etc/GMT+5", None)],
)  # fmt: skip
def test_timezone_accepted(name: str, stored: str | None) -> None:
    assert validate_timezone(name) == (stored or name)


@pytest.mark.parametrize(
    "name",
    ["europe/berlin", "Mars/Olympus", "Europe", "../../etc/passwd", "/etc/localtime", " UTC", "x" * 65],
)
def test_timezone_rejected(name: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        validate_timezone(name)
    assert exc.value.field == "timezone"
