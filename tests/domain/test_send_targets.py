"""Send policy, table-driven: target normalisation, delivery (what resolved_target says)
and the bypasses of one conversation under two names. Pure.
"""

from __future__ import annotations

import pytest

from authz_service.domain import targets
from authz_service.domain.model import (
    ChannelPolicy,
    Platform,
    SendPolicy,
)
from authz_service.domain.send import EVALUATION_ERROR, denial, evaluate
from tests.domain.send_rows import (
    ALLOW,
    BUSINESS,
    DC,
    DENY,
    FRI_NOON,
    SAT_NOON,
    SL,
    TG,
    Row,
    only,
    run,
)

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
