"""The send policy tables' row type, clock and window helpers, shared by the table-driven
send policy tests. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from authz_service.domain import policy as policy_codec
from authz_service.domain.model import (
    WEEKDAYS,
    ChannelPolicy,
    Platform,
    SendDefault,
    SendPolicy,
    TimeRestriction,
    TimeWindow,
)
from authz_service.domain.send import denial, evaluate

BERLIN = "Europe/Berlin"
ALLOW, DENY = SendDefault.ALLOW, SendDefault.DENY
SL, TG, DC = Platform.SLACK, Platform.TELEGRAM, Platform.DISCORD


def local(text: str, zone: str = BERLIN, weekday: str = "") -> datetime:
    """'2026-03-06 12:00' in ``zone``, as a UTC instant (the evaluator converts back)."""
    t = datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))
    if weekday:
        assert WEEKDAYS[t.weekday()] == weekday, f"{text} is not a {weekday}"
    return t.astimezone(UTC)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def window(start: str, end: str, *days: str) -> TimeWindow:
    return TimeWindow(
        days=days,
        start_minute=policy_codec.minute_of(start, "start"),
        end_minute=policy_codec.minute_of(end, "end"),
    )


def only(targets_: tuple[str, ...], *windows: TimeWindow) -> TimeRestriction:
    return TimeRestriction(targets=targets_, windows=windows)


BUSINESS = window("09:00", "18:00", "mon", "tue", "wed", "thu", "fri")
FRI_NOON = local("2026-03-06 12:00", weekday="fri")
SAT_NOON = local("2026-03-07 12:00", weekday="sat")


@dataclass(frozen=True)
class Row:
    policy: SendPolicy | None
    target: str
    allow: bool
    now: datetime | None = FRI_NOON
    origin: str = "telegram:42"
    agent: str = "a"
    aliases: dict[str, str] = field(default_factory=dict)
    zone: str = BERLIN
    reason: str | None = None  # default: "" when allowed, the seed's denial otherwise
    platform: Platform = Platform.SLACK
    resolved: str | None = None  # checked when given


def run(row: Row) -> None:
    channel = ChannelPolicy(send_policy=row.policy, aliases=row.aliases)
    d = evaluate(
        channel, row.agent, row.target, row.origin,
        platform=row.platform, listing=False, now=row.now, zone=row.zone,
    )  # fmt: skip
    expected = row.reason if row.reason is not None else ("" if row.allow else denial(row.target))
    assert (d.allow, d.reason) == (row.allow, expected)
    if row.resolved is not None:
        assert d.resolved_target == row.resolved
