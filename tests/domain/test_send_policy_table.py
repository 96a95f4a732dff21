"""Send policy, table-driven: precedence, target normalisation, aliases, time
windows in the tenant's zone (DST included) and per-agent rules. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from authz_service.domain import policy as policy_codec
from authz_service.domain import targets
from authz_service.domain.errors import InvalidArgument
from authz_service.domain.model import (
    WEEKDAYS,
    ChannelPolicy,
    Platform,
    SendDefault,
    SendPolicy,
    TimeRestriction,
    TimeWindow,
)
from authz_service.domain.send import EVALUATION_ERROR, denial, evaluate, validate_timezone

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


# --- normalisation ----------------------------------------------------------------------

NORMALISED = {
    "plain": ("slack:#exec", "slack:#exec"),
    "case": ("Slack:#Exec", "slack:#exec"),
    "spaces": ("  SLACK : #EXEC ", "slack:#exec"),
    "slack-mention": ("slack:<#C0123456|exec>", "slack:C0123456"),
    "slack-mention-bare": ("<#C0123456|exec>", "slack:C0123456"),
    "slack-mention-no-label": ("<#C0123456>", "slack:C0123456"),
    "slack-user-mention": ("slack:<@U0456789|bob>", "slack:U0456789"),
    # Slack ids are id-shaped as Slack writes them (C0EXEC1); anything else is a channel name.
    "slack-id-as-written": ("slack:C0EXEC1", "slack:C0EXEC1"),
    "slack-lower-id-is-a-name": ("slack:c0exec1", "slack:#c0exec1"),
    "slack-bare-name": ("slack:exec", "slack:#exec"),
    "slack-upper-name": ("Slack:EXEC", "slack:#exec"),
    "slack-short-id-is-a-name": ("slack:C0EXEC", "slack:#c0exec"),
    "slack-id-without-digit-is-a-name": ("slack:GENERAL", "slack:#general"),
    "slack-mention-lower-is-a-name": ("<#c0123456>", "slack:#c0123456"),
    "slack-mention-of-a-name": ("slack:<#exec>", "slack:#exec"),
    "slack-user-mention-of-a-name": ("<@bob>", "slack:@bob"),
    "slack-team-user-is-a-name": ("slack:T0123abc:U0456def", "slack:#t0123abc:u0456def"),
    "slack-handle": ("slack:@Bob", "slack:@bob"),
    "slack-nothing": ("slack:", "slack:"),
    "discord-mention": ("discord:<#123>", "discord:123"),
    "discord-mention-bare": ("<#123>", "discord:123"),
    "discord-user-mention": ("discord:<@!42>", "discord:42"),
    "discord-name": ("Discord:#General", "discord:#general"),
    "telegram-username": ("telegram:@Name", "telegram:@name"),
    "telegram-id": ("telegram:-100123", "telegram:-100123"),
    # Telegram and Discord numbers as int() reads them: one number, one spelling.
    "telegram-id-leading-zero": ("telegram:-0100123", "telegram:-100123"),
    "telegram-id-zeros": ("Telegram:007", "telegram:7"),
    "telegram-plus-is-not-a-number": ("telegram:+100123", "telegram:+100123"),
    "telegram-underscore-is-not-a-number": ("telegram:100_123", "telegram:100_123"),
    "discord-leading-zero": ("discord:0123", "discord:123"),
    "discord-mention-leading-zero": ("<#0123>", "discord:123"),
    "discord-user-mention-leading-zero": ("discord:<@!0042>", "discord:42"),
    "whatsapp": ("WhatsApp:+4915112345678", "whatsapp:+4915112345678"),
    "alias": ("Ops-Alerts", "ops-alerts"),
    "unknown-prefix": ("Mailto:Boss@Example.com", "mailto:boss@example.com"),
    "origin": (" Origin ", "origin"),
}


@pytest.mark.parametrize(("raw", "canonical"), NORMALISED.values(), ids=NORMALISED.keys())
def test_normalise(raw: str, canonical: str) -> None:
    assert targets.normalise(raw) == canonical
    assert targets.normalise(canonical) == canonical  # idempotent


SPELLED = {
    "platform-target-canonical": ("Slack:#Exec", "slack:#exec"),
    "mention-gets-its-platform": ("<#C0123456|exec>", "slack:C0123456"),
    "bare-slack-id-keeps-case": ("DU0ALICE01", "DU0ALICE01"),
    "alias-name-keeps-case": (" Ops-Alerts ", "Ops-Alerts"),
    "origin": ("Origin", "origin"),
}


@pytest.mark.parametrize(("raw", "spelling"), SPELLED.values(), ids=SPELLED.keys())
def test_spelling_for_delivery(raw: str, spelling: str) -> None:
    assert targets.spelled(raw) == spelling
    assert targets.normalise(raw) == targets.normalise(spelling)


SLACK_IDS = {
    "channel": ("C0EXEC1", True),
    "dm": ("DU0ALICE01", True),
    "private": ("G0123456", True),
    "user": ("U0MALLORY", True),
    "enterprise-user": ("W0123456", True),
    "too-short": ("C0EXEC", False),
    "lower-case": ("c0exec1", False),
    "mixed-case": ("C0Exec1", False),
    "no-digit": ("GENERAL", False),
    "other-letter": ("EXEC123", False),
    "team": ("T0FAKE01", False),
    "name": ("#c0exec1", False),
    "full-width": ("Ｃ０ＥＸＥＣ１", False),
}


@pytest.mark.parametrize(("token", "is_id"), SLACK_IDS.values(), ids=SLACK_IDS.keys())
def test_slack_id_shape(token: str, is_id: bool) -> None:
    assert targets.is_slack_id(token) is is_id


FOREIGN_DIGITS = {
    "arabic-indic": "-١٠٠١٢٣",
    "prefixed-arabic-indic": "telegram:-١٠٠١٢٣",
    "full-width": "１２３",
    "full-width-mention": "<#１２３>",
    "one-digit-among-ascii": "-10012٣",
    "devanagari": "discord:१२३",
    "superscript": "-10012³",
    "in-a-slack-name": "slack:#exec٣",
    "in-an-alias-name": "board٣",
}


@pytest.mark.parametrize("raw", FOREIGN_DIGITS.values(), ids=FOREIGN_DIGITS.keys())
def test_a_non_ascii_digit_is_refused(raw: str) -> None:
    with pytest.raises(targets.ForeignDigit):
        targets.spelled(raw)
    with pytest.raises(targets.ForeignDigit):
        targets.canonical(raw, Platform.TELEGRAM)


# --- delivery: what resolved_target says ------------------------------------------------
# Connectors deliver resolved_target as it is: a target on the channel's own platform is
# answered platform-native (no prefix, canonical case); another platform's keeps its prefix.

HOME = "DU0ALICE01"  # what the Slack connector sends as origin: a bare conversation id
DELIVERY = {
    "bare-id": Row(None, HOME, True, origin=HOME, resolved=HOME),
    # Slack ids are written as Slack shows them: lower-case is a channel name, not the origin.
    "bare-id-lower-case-is-a-name": Row(None, "du0alice01", False, origin=HOME, resolved="#du0alice01"),
    "prefixed-id-delivered-bare": Row(None, "slack:DU0ALICE01", True, origin=HOME, resolved=HOME),
    "mention-delivered-bare": Row(None, f"<@{HOME}|alice>", True, origin=HOME, resolved=HOME),
    "alias-to-bare-id": Row(None, "Home", True, origin=HOME, aliases={"home": HOME}, resolved=HOME),
    "alias-to-prefixed-id": Row(
        None, "Home", True, origin=HOME, aliases={"home": "slack:DU0ALICE01"}, resolved=HOME
    ),
    "origin": Row(None, "origin", True, origin=HOME, resolved=HOME),
    "origin-written-prefixed": Row(None, "ORIGIN", True, origin=f"Slack:{HOME}", resolved=HOME),
    "slack-channel-name": Row(SendPolicy(ALLOW), "Slack:#Random", True, resolved="#random"),
    "slack-bare-channel-name": Row(SendPolicy(ALLOW), "Random", True, resolved="#random"),
    "telegram-chat-id": Row(
        None, "telegram:-100123", True, origin="-100123", platform=TG, resolved="-100123"
    ),
    "telegram-username": Row(None, "@Board", True, origin="telegram:@board", platform=TG, resolved="@board"),
    "telegram-chat-id-leading-zero": Row(
        None, "-0100123", True, origin="-100123", platform=TG, resolved="-100123"
    ),
    "discord-mention": Row(None, "<#123>", True, origin="123", platform=DC, resolved="123"),
    "discord-leading-zero": Row(None, "<#0123>", True, origin="123", platform=DC, resolved="123"),
    "another-platform-keeps-its-prefix": Row(
        SendPolicy(ALLOW), "Slack:#Random", True, platform=TG, resolved="slack:#random"
    ),
    # Nothing to deliver to: never allowed (a connector must not deliver to the raw text).
    "no-origin-nothing-to-deliver": Row(None, "origin", False, origin="", resolved=""),
}


@pytest.mark.parametrize("row", DELIVERY.values(), ids=DELIVERY.keys())
def test_resolved_target_is_deliverable(row: Row) -> None:
    run(row)


EXEC_ALIASES = {"slack:#exec": "slack:C0EXEC1", "Boss": "Slack:#EXEC"}
ONE_TARGET = [
    "slack:#exec",
    "Slack:#Exec",
    " slack:#EXEC ",
    "#exec",  # bare name on a Slack channel: slack:#exec, then the alias
    "exec",  # a bare token that is not id-shaped is a channel name: slack:#exec
    "EXEC",
    "slack:Exec",
    "<#exec>",
    "slack:C0EXEC1",
    "C0EXEC1",  # bare id on a Slack channel
    "<#C0EXEC1|exec>",
    "slack:<#C0EXEC1>",
    "boss",
    "BOSS",
    "slack:boss",  # an alias name is on the channel's platform too
]


@pytest.mark.parametrize(
    "deny_entry", ["slack:#exec", "SLACK:C0EXEC1", "C0EXEC1", "#Exec", "exec", "boss", "<#C0EXEC1|whatever>"]
)
@pytest.mark.parametrize("spelling", ONE_TARGET)
def test_every_spelling_of_one_target_is_denied(deny_entry: str, spelling: str) -> None:
    c = ChannelPolicy(send_policy=SendPolicy(ALLOW, deny=(deny_entry,)), aliases=EXEC_ALIASES)
    d = evaluate(c, "a", spelling, "", platform=SL, listing=False, now=FRI_NOON, zone="UTC")
    assert (d.allow, d.reason, d.resolved_target) == (False, denial(spelling), "C0EXEC1")


@pytest.mark.parametrize(
    ("spelling", "resolved"), [("c0exec1", "#c0exec1"), ("slack:c0exec1", "#c0exec1"), ("C0EXEC", "#c0exec")]
)
def test_a_spelling_that_is_not_id_shaped_is_a_name_and_delivered_as_one(
    spelling: str, resolved: str
) -> None:
    """Not the id C0EXEC1 (Slack ids are written as Slack shows them), so not denied by it;
    delivered with '#', so Slack reads it as the channel name it was judged as."""
    c = ChannelPolicy(send_policy=SendPolicy(ALLOW, deny=("slack:C0EXEC1",)))
    d = evaluate(c, "a", spelling, "", platform=SL, listing=False, now=FRI_NOON)
    assert (d.allow, d.resolved_target) == (True, resolved)


def test_other_targets_stay_allowed_and_resolve_canonically() -> None:
    c = ChannelPolicy(send_policy=SendPolicy(ALLOW, deny=("slack:#exec",)), aliases=EXEC_ALIASES)
    d = evaluate(c, "a", "Slack:<#C0RANDOM|random>", "", platform=SL, listing=False, now=FRI_NOON)
    assert (d.allow, d.reason, d.resolved_target) == (True, "", "C0RANDOM")


def test_origin_resolves_to_the_canonical_conversation() -> None:
    c = ChannelPolicy(send_policy=SendPolicy(DENY, allow=("origin",)))
    d = evaluate(c, "a", "ORIGIN", "Telegram:@Support", platform=TG, listing=False, now=FRI_NOON)
    assert (d.allow, d.resolved_target) == (True, "@support")
    for spelling in ("telegram:@SUPPORT", "@Support"):
        assert evaluate(c, "a", spelling, "Telegram:@Support", platform=TG, listing=False, now=FRI_NOON).allow


def test_a_channel_without_a_platform_fails_closed() -> None:
    c = ChannelPolicy(send_policy=SendPolicy(ALLOW))
    d = evaluate(c, "a", "slack:#random", "", platform=None, listing=False, now=FRI_NOON)
    assert (d.allow, d.reason) == (False, EVALUATION_ERROR)


# --- bypasses: one conversation, two names -----------------------------------------------
# Each row was allowed before the fix (review findings: "origin" skipped entries naming the
# conversation by id; a bare id skipped entries written with the platform prefix).

EXEC_DENIED = SendPolicy(DENY, allow=("origin",), deny=("slack:#exec",))
BY_ID_DENIED = SendPolicy(ALLOW, deny=("slack:C0EXEC1",))
GROUP_HOURS = SendPolicy(ALLOW, time_restrictions=(only(("telegram:-100123",), BUSINESS),))
ORIGIN_HOURS = SendPolicy(ALLOW, time_restrictions=(only(("origin",), BUSINESS),))
BYPASSES = {
    # "origin" answers to the conversation's real name: deny and windows by name/id apply.
    "origin-vs-deny-by-name": Row(EXEC_DENIED, "origin", False, origin="Slack:#Exec"),
    "origin-any-case-vs-deny-by-name": Row(EXEC_DENIED, " Origin ", False, origin="slack:#exec"),
    "origin-vs-deny-by-bare-origin-id": Row(BY_ID_DENIED, "origin", False, origin="C0EXEC1"),
    "origin-vs-deny-by-alias": Row(
        SendPolicy(ALLOW, deny=("exec",)),
        "origin",
        False,
        origin="C0EXEC1",
        aliases={"exec": "slack:C0EXEC1"},
    ),
    "origin-vs-window-by-id-outside": Row(
        GROUP_HOURS, "origin", False, origin="telegram:-100123", platform=TG, now=SAT_NOON
    ),
    "origin-vs-window-by-id-bare-origin-outside": Row(
        GROUP_HOURS, "origin", False, origin="-100123", platform=TG, now=SAT_NOON
    ),
    "origin-vs-window-by-id-inside": Row(
        GROUP_HOURS, "origin", True, origin="-100123", platform=TG, resolved="-100123"
    ),
    "origin-elsewhere-not-over-blocked": Row(EXEC_DENIED, "origin", True, origin="slack:#random"),
    # ...and the conversation's name answers to "origin".
    "bare-origin-id-vs-deny-origin": Row(
        SendPolicy(ALLOW, deny=("origin",)), "C0HOME1", False, origin="slack:C0HOME1"
    ),
    "prefixed-origin-id-vs-window-on-origin": Row(
        ORIGIN_HOURS, "telegram:-100123", False, origin="-100123", platform=TG, now=SAT_NOON
    ),
    # No origin in the request: "origin" matches only entries written "origin" (fails closed there).
    "no-origin-vs-deny-origin": Row(SendPolicy(ALLOW, deny=("origin",)), "origin", False, origin=""),
    "no-origin-vs-window-on-origin": Row(ORIGIN_HOURS, "origin", False, origin="", now=SAT_NOON),
    # ...and an allow on "origin" has nothing to deliver to: denied (review 2).
    "no-origin-allow-origin": Row(EXEC_DENIED, "origin", False, origin="", resolved=""),
    # A bare id is the prefixed id on the channel's platform, both ways.
    "slack-bare-vs-prefixed-deny": Row(BY_ID_DENIED, "C0EXEC1", False),
    "slack-bare-lower-is-a-name": Row(BY_ID_DENIED, "c0exec1", True, resolved="#c0exec1"),
    "slack-prefixed-vs-bare-deny": Row(SendPolicy(ALLOW, deny=("C0EXEC1",)), "slack:C0EXEC1", False),
    "slack-bare-vs-prefixed-allow": Row(
        SendPolicy(DENY, allow=("slack:C0OPS01",)), "C0OPS01", True, resolved="C0OPS01"
    ),
    "slack-prefixed-vs-bare-allow": Row(
        SendPolicy(DENY, allow=("C0OPS01",)), "slack:C0OPS01", True, resolved="C0OPS01"
    ),
    "slack-bare-vs-prefixed-window": Row(
        SendPolicy(ALLOW, time_restrictions=(only(("slack:C0EXEC1",), BUSINESS),)),
        "C0EXEC1",
        False,
        now=SAT_NOON,
    ),
    "slack-bare-name-vs-prefixed-deny": Row(SendPolicy(ALLOW, deny=("slack:#exec",)), "#Exec", False),
    "telegram-bare-username-vs-prefixed-deny": Row(
        SendPolicy(ALLOW, deny=("telegram:@Board",)), "@board", False, platform=TG
    ),
    "telegram-prefixed-username-vs-bare-deny": Row(
        SendPolicy(ALLOW, deny=("@Board",)), "Telegram:@BOARD", False, platform=TG
    ),
    "telegram-bare-chat-vs-prefixed-deny": Row(
        SendPolicy(ALLOW, deny=("telegram:-100123",)), "-100123", False, platform=TG
    ),
    "telegram-prefixed-chat-vs-bare-deny": Row(
        SendPolicy(ALLOW, deny=("-100123",)), "telegram:-100123", False, platform=TG
    ),
    "discord-bare-vs-prefixed-deny": Row(SendPolicy(ALLOW, deny=("discord:123",)), "123", False, platform=DC),
    "discord-mention-vs-bare-deny": Row(SendPolicy(ALLOW, deny=("123",)), "<#123>", False, platform=DC),
    # Aliases: to a bare id, to a prefixed id, and names reached with or without the prefix.
    "alias-to-bare-id-vs-prefixed-deny": Row(
        BY_ID_DENIED, "exec", False, aliases={"exec": "C0EXEC1"}, resolved="C0EXEC1"
    ),
    "alias-to-prefixed-id-vs-bare-deny": Row(
        SendPolicy(ALLOW, deny=("C0EXEC1",)), "Exec", False, aliases={"exec": "slack:C0EXEC1"}
    ),
    "deny-by-alias-to-bare-id-vs-prefixed": Row(
        SendPolicy(ALLOW, deny=("exec",)), "slack:C0EXEC1", False, aliases={"exec": "C0EXEC1"}
    ),
    "prefixed-alias-name-reached-bare": Row(
        BY_ID_DENIED, "#exec", False, aliases={"slack:#exec": "slack:C0EXEC1"}, resolved="C0EXEC1"
    ),
    "telegram-alias-to-bare-chat-vs-prefixed-deny": Row(
        SendPolicy(ALLOW, deny=("telegram:-100123",)),
        "board",
        False,
        aliases={"board": "-100123"},
        platform=TG,
    ),
    # Only on the channel's own platform: a bare C0EXEC1 on Telegram is a Telegram target.
    "bare-id-is-not-another-platforms": Row(BY_ID_DENIED, "C0EXEC1", True, platform=TG, resolved="c0exec1"),
}


@pytest.mark.parametrize("row", BYPASSES.values(), ids=BYPASSES.keys())
def test_one_conversation_two_names(row: Row) -> None:
    run(row)


# --- bypasses, second review: numbers, Slack names, nothing to deliver to -----------------
# Each row was allowed before the fix. The connectors read Telegram chat ids and Discord
# snowflakes with int(), which takes leading zeros and any Unicode decimal digit; Slack's
# chat.postMessage takes channel names; and an allowed "origin" without an origin made the
# connector deliver to the text "origin".

TG_DENIED = SendPolicy(ALLOW, deny=("telegram:-100123",))
DC_DENIED = SendPolicy(ALLOW, deny=("discord:123",))
NAME_DENIED = SendPolicy(ALLOW, deny=("slack:#exec",))
SECOND_REVIEW = {
    "telegram-leading-zero": Row(TG_DENIED, "-0100123", False, platform=TG, resolved="-100123"),
    "telegram-prefixed-leading-zero": Row(TG_DENIED, "telegram:-0100123", False, platform=TG),
    "telegram-leading-zero-vs-window": Row(GROUP_HOURS, "-00100123", False, platform=TG, now=SAT_NOON),
    "telegram-deny-entry-with-leading-zero": Row(
        SendPolicy(ALLOW, deny=("telegram:-0100123",)), "-100123", False, platform=TG
    ),
    "telegram-alias-to-leading-zero": Row(
        TG_DENIED, "board", False, aliases={"board": "-0100123"}, platform=TG, resolved="-100123"
    ),
    "telegram-origin-with-leading-zero": Row(TG_DENIED, "origin", False, origin="-0100123", platform=TG),
    "telegram-arabic-indic-digits": Row(TG_DENIED, "-١٠٠١٢٣", False, platform=TG, reason=EVALUATION_ERROR),
    "telegram-prefixed-arabic-indic-digits": Row(
        TG_DENIED, "telegram:-١٠٠١٢٣", False, platform=TG, reason=EVALUATION_ERROR
    ),
    "telegram-one-foreign-digit": Row(TG_DENIED, "-10012٣", False, platform=TG, reason=EVALUATION_ERROR),
    "telegram-foreign-digit-origin": Row(
        SendPolicy(ALLOW), "origin", False, origin="-١٠٠١٢٣", platform=TG, reason=EVALUATION_ERROR
    ),
    "telegram-foreign-digit-alias": Row(
        SendPolicy(ALLOW),
        "-100999",
        False,
        aliases={"board": "-١٠٠١٢٣"},
        platform=TG,
        reason=EVALUATION_ERROR,
    ),
    "telegram-foreign-digit-entry-after-a-match": Row(
        SendPolicy(DENY, allow=("-100999", "-١٠٠١٢٣")), "-100999", False, platform=TG, reason=EVALUATION_ERROR
    ),
    "discord-leading-zero": Row(DC_DENIED, "0123", False, platform=DC, resolved="123"),
    "discord-mention-leading-zero": Row(DC_DENIED, "<#0123>", False, platform=DC, resolved="123"),
    "discord-user-mention-leading-zero": Row(DC_DENIED, "discord:<@!00123>", False, platform=DC),
    "discord-full-width": Row(DC_DENIED, "１２３", False, platform=DC, reason=EVALUATION_ERROR),
    "discord-full-width-mention": Row(DC_DENIED, "<#１２３>", False, platform=DC, reason=EVALUATION_ERROR),
    "discord-prefixed-full-width": Row(
        DC_DENIED, "discord:１２３", False, platform=DC, reason=EVALUATION_ERROR
    ),
    "slack-bare-name-vs-deny-by-name": Row(NAME_DENIED, "exec", False, resolved="#exec"),
    "slack-prefixed-bare-name-vs-deny-by-name": Row(NAME_DENIED, "slack:exec", False, resolved="#exec"),
    "slack-upper-name-vs-deny-by-name": Row(NAME_DENIED, "EXEC", False, resolved="#exec"),
    "slack-name-mention-vs-deny-by-name": Row(NAME_DENIED, "<#exec>", False, resolved="#exec"),
    "slack-bare-deny-entry-is-a-name": Row(SendPolicy(ALLOW, deny=("exec",)), "#Exec", False),
    "slack-short-upper-token-is-a-name": Row(
        SendPolicy(ALLOW, deny=("slack:#c0exec",)), "C0EXEC", False, resolved="#c0exec"
    ),
    "slack-lower-id-is-a-name": Row(
        SendPolicy(ALLOW, deny=("slack:#c0exec1",)), "c0exec1", False, resolved="#c0exec1"
    ),
    "no-origin-default-allow": Row(SendPolicy(ALLOW), "origin", False, origin="", resolved=""),
    "no-origin-alias-to-origin": Row(
        SendPolicy(ALLOW), "reply", False, origin="", aliases={"reply": "origin"}, resolved=""
    ),
    "no-origin-allow-alias-to-origin": Row(
        SendPolicy(DENY, allow=("reply",)), "Reply", False, origin=" ", aliases={"reply": "origin"}
    ),
    "origin-that-names-origin": Row(SendPolicy(ALLOW), "origin", False, origin="Origin", resolved=""),
    "empty-target": Row(SendPolicy(ALLOW), "", False, resolved=""),
    "platform-without-a-target": Row(SendPolicy(ALLOW), "slack:", False, resolved=""),
    "other-platform-without-a-target": Row(SendPolicy(ALLOW), "Telegram: ", False),
}


@pytest.mark.parametrize("row", SECOND_REVIEW.values(), ids=SECOND_REVIEW.keys())
def test_second_review_bypasses(row: Row) -> None:
    run(row)


def test_ids_and_names_stay_apart() -> None:
    """The id-shaped C0EXEC1 is an id: a deny on the name #exec does not cover it."""
    run(Row(NAME_DENIED, "C0EXEC1", True, resolved="C0EXEC1"))


# --- aliases: chains, loops, duplicates ---------------------------------------------------

ALIAS_ROWS = {
    "chain": (
        {"Boss": "exec-room", "EXEC-ROOM": "slack:#Exec", "slack:#exec": "slack:C0EXEC1"},
        "boss",
        False,
        "",
    ),
    "chain-of-eight-hops": (
        {f"x{i}": f"x{i + 1}" for i in range(7)} | {"x7": "slack:#exec"},
        "x0",
        False,
        "",
    ),
    "chain-too-long": (
        {f"x{i}": f"x{i + 1}" for i in range(8)} | {"x8": "slack:#exec"},
        "x0",
        False,
        "error",
    ),
    "loop": ({"a": "b", "b": "A"}, "a", False, "error"),
    "self-alias-after-normalisation": ({"Slack:#Exec": "slack:#exec"}, "slack:#exec", False, ""),
    "duplicates-after-normalisation": ({"Exec": "slack:#a", "exec": "slack:#b"}, "slack:#z", False, "error"),
    "alias-to-origin": ({"reply": "origin"}, "Reply", True, ""),
    "stored-alias-named-origin": ({"Origin": "slack:#ops"}, "origin", False, "error"),
    "duplicates-bare-and-prefixed": (
        {"C0EXEC1": "slack:#a", "slack:C0EXEC1": "slack:#b"},
        "slack:#z",
        False,
        "error",
    ),
}


@pytest.mark.parametrize(("aliases", "target", "allow", "error"), ALIAS_ROWS.values(), ids=ALIAS_ROWS.keys())
def test_aliases(aliases: dict[str, str], target: str, allow: bool, error: str) -> None:
    policy = SendPolicy(DENY, allow=("origin",), deny=("slack:#exec",))
    reason = EVALUATION_ERROR if error else None
    run(Row(policy, target, allow, aliases=aliases, reason=reason))


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        pytest.param({"Exec": "slack:#a", "exec": "slack:#b"}, "same alias", id="duplicate-case"),
        pytest.param({"<#C012345|x>": "a", "slack:C012345": "b"}, "same alias", id="duplicate-mention"),
        pytest.param({"C012345": "a", "slack:C012345": "b"}, "same alias", id="duplicate-bare-and-prefixed"),
        pytest.param({"exec": "a", "#Exec": "b"}, "same alias", id="duplicate-bare-name-and-hash"),
        pytest.param({"#ops": "a", "Slack:#OPS": "b"}, "same alias", id="duplicate-bare-name-and-prefixed"),
        pytest.param({"a": "b", "b": "a"}, "loop", id="loop"),
        pytest.param({f"x{i}": f"x{i + 1}" for i in range(9)}, "loop", id="too-deep"),
        pytest.param({"Origin": "slack:#ops"}, "reserved", id="origin-any-case"),
    ],
)
def test_validation_rejects_ambiguous_aliases(aliases: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        policy_codec.validate(Platform.SLACK, ChannelPolicy(aliases=aliases))
    # A reserved name is one entry; a duplicate or a loop is the map as a whole.
    assert exc.value.field == ("policy.aliases[Origin]" if message == "reserved" else "policy.aliases")
    assert message in str(exc.value)


def test_validation_keeps_aliases_as_written() -> None:
    aliases = {"Boss": "Slack:#Exec", "Slack:#EXEC": "slack:C0EXEC1", "Me": "me"}
    assert policy_codec.validate(Platform.SLACK, ChannelPolicy(aliases=aliases)).aliases == aliases


def test_a_bare_alias_name_is_on_the_channels_platform() -> None:
    """``C012345`` is ``slack:C012345`` on Slack (a duplicate above) but ``telegram:c012345`` on Telegram."""
    aliases = {"C012345": "-100123", "slack:C012345": "telegram:-100123"}
    assert policy_codec.validate(Platform.TELEGRAM, ChannelPolicy(aliases=aliases)).aliases == aliases


# --- per-agent rules (the seed's RBAC example) -----------------------------------------

RBAC = {
    "support-bot": SendPolicy(DENY, allow=("origin", "slack:#support")),
    "ops-bot": SendPolicy(DENY, allow=("origin", "slack:#ops", "slack:#incidents")),
}
AGENT_ROWS = {
    # No channel policy: an agent without its own list may reply to its origin only.
    "support-own-list": (None, "support-bot", "slack:#support", True),
    "support-not-ops": (None, "support-bot", "slack:#ops", False),
    "support-origin": (None, "support-bot", "origin", True),
    "ops-incidents": (None, "ops-bot", "Slack:#Incidents", True),
    "ops-not-support": (None, "ops-bot", "slack:#support", False),
    "unknown-agent-origin": (None, "web-bot", "origin", True),
    "unknown-agent-origin-by-id": (None, "web-bot", "telegram:42", True),
    "unknown-agent-elsewhere": (None, "web-bot", "slack:#support", False),
    # A channel policy: agents without their own list fall back to it.
    "fallback-channel-allows": (SendPolicy(ALLOW, deny=("slack:#exec",)), "web-bot", "slack:#support", True),
    "fallback-channel-denies": (SendPolicy(ALLOW, deny=("slack:#exec",)), "web-bot", "slack:#exec", False),
    "own-list-replaces-channel": (SendPolicy(ALLOW), "support-bot", "slack:#random", False),
    "agent-id-is-exact": (None, "Support-Bot", "slack:#support", False),
}


@pytest.mark.parametrize(
    ("channel_policy", "agent", "target", "allow"), AGENT_ROWS.values(), ids=AGENT_ROWS.keys()
)
def test_per_agent_rules(channel_policy: SendPolicy | None, agent: str, target: str, allow: bool) -> None:
    c = ChannelPolicy(send_policy=channel_policy, agent_send_policies=RBAC)
    d = evaluate(c, agent, target, "telegram:42", platform=SL, listing=False, now=FRI_NOON, zone=BERLIN)
    assert (d.allow, d.reason) == (allow, "" if allow else denial(target))


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
