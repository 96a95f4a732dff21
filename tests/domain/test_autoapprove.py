"""Auto-approve rules, invite code parsing and quorum votes: pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from authz_service.domain import ids
from authz_service.domain.autoapprove import (
    Requester,
    email_domain,
    matching_rule,
    phone_matches,
    reported_email,
    reported_phone,
)
from authz_service.domain.errors import InvalidArgument
from authz_service.domain.invites import (
    INVITE_CODE_LENGTH,
    format_invite_code,
    invite_code_in_message,
    invite_limits,
    invite_status,
    new_invite_code,
    parse_invite_code,
)
from authz_service.domain.model import AutoApprove, Binding, Platform
from authz_service.domain.pairing import CODE_ALPHABET, Vote, approve_vote
from authz_service.domain.policy import validate_auto_approve, validate_binding


@pytest.mark.parametrize(
    ("pattern", "number", "matches"),
    [
        ("+8498*", "+84981234567", True),
        ("+8498*", "+8498", True),  # '*' may be empty
        ("+8498*", "+84971234567", False),
        ("+8498*", "+184981234567", False),  # anchored at the start
        ("+1555???????", "+15551234567", True),
        ("+1555???????", "+1555123456", False),  # '?' is exactly one digit
        ("+1555???????", "+155512345678", False),
        ("+1*7", "+15551234567", True),
        ("+1*7", "+15551234568", False),  # anchored at the end
        ("+1*5*7", "+15551234567", True),
        ("+*", "+15551234567", True),
        ("+15551234567", "+15551234567", True),
        ("+15551234567", "+15551234568", False),
        ("+1?", "+1+", False),  # '?' is a digit, not any character
        ("+1*", "+1a", False),  # '*' swallows digits only
        ("+44*", "", False),
    ],
    ids=lambda v: str(v),
)
def test_phone_glob(pattern: str, number: str, matches: bool) -> None:
    assert phone_matches(pattern, number) is matches


def test_phone_glob_with_many_stars_stays_fast() -> None:
    # A backtracking regex would explode here; the matcher is linear-ish.
    assert not phone_matches("+" + "*" * 15 + "9", "+" + "1" * 15)


@pytest.mark.parametrize(
    ("email", "domain"),
    [
        ("alice@company.com", "company.com"),
        ("Alice@Company.COM", "company.com"),
        ('"a@b"@company.com', "company.com"),  # the part after the last '@'
        ("no-at-sign", ""),
    ],
)
def test_email_domain(email: str, domain: str) -> None:
    assert email_domain(email) == domain


RULES = validate_auto_approve(
    AutoApprove(phone_patterns=("+8498*", "+1555???????"), email_domains=("@Company.com", "partner.org")),
    "policy.auto_approve",
)


@pytest.mark.parametrize(
    "pattern",
    ["+8498*", "+1555???????", "+15551234567", "+4930123456*", "+1555*7", "+4420794600??"],
)
def test_phone_patterns_with_a_long_enough_prefix_are_accepted(pattern: str) -> None:
    checked = validate_auto_approve(AutoApprove(phone_patterns=(pattern,)), "policy.auto_approve")
    assert checked.phone_patterns == (pattern,)


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("+*", "must contain digits"),
        ("+???", "must contain digits"),
        ("+*1*", r"at least 4 digits after '\+'"),  # every number with a 1 in it
        ("+1*", r"at least 4 digits after '\+'"),  # all of North America
        ("+49*", r"at least 4 digits after '\+'"),
        ("+849*", r"at least 4 digits after '\+'"),  # three digits: one short
        ("+84?8*", r"at least 4 digits after '\+'"),  # a '?' ends the prefix
        ("+123", r"at least 4 digits after '\+'"),
        ("8498*", r"must be '\+' then digits"),
        ("+8498#", r"must be '\+' then digits"),
    ],
    ids=lambda v: str(v),
)
def test_phone_patterns_that_admit_too_much_are_refused(pattern: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why) as caught:
        validate_auto_approve(AutoApprove(phone_patterns=("+8498*", pattern)), "policy.auto_approve")
    assert caught.value.field == "policy.auto_approve.phone_patterns[1]"  # the entry, by index


@pytest.mark.parametrize(
    ("who", "rule"),
    [
        (Requester(Platform.WHATSAPP, "+84981234567"), "phone_pattern:+8498*"),
        # On WhatsApp the user id is the number; a reported number is not looked at.
        (Requester(Platform.WHATSAPP, "+4420000000", phone_number="+84981234567"), None),
        (Requester(Platform.TELEGRAM, "42", phone_number="+15551234567"), "phone_pattern:+1555???????"),
        (Requester(Platform.TELEGRAM, "42", phone_number="+15551234"), None),
        (Requester(Platform.TELEGRAM, "42"), None),
        (Requester(Platform.SLACK, "T1:U1", email="bob@company.com"), "email_domain:company.com"),
        (Requester(Platform.SLACK, "T1:U1", email="BOB@COMPANY.COM"), "email_domain:company.com"),
        (Requester(Platform.SLACK, "T1:U1", email="bob@partner.org"), "email_domain:partner.org"),
        # Exact domain only: a subdomain, a look-alike suffix or a prefix do not match.
        (Requester(Platform.SLACK, "T1:U1", email="bob@sub.company.com"), None),
        (Requester(Platform.SLACK, "T1:U1", email="bob@evilcompany.com"), None),
        (Requester(Platform.SLACK, "T1:U1", email="bob@company.com.evil.org"), None),
        (Requester(Platform.SLACK, "T1:U1", email="company.com"), None),
        # Phone patterns are tried before email domains.
        (
            Requester(Platform.TELEGRAM, "42", email="a@company.com", phone_number="+84980000000"),
            "phone_pattern:+8498*",
        ),
        (
            Requester(Platform.TELEGRAM, "42", email="a@company.com", phone_number="+4400000000"),
            "email_domain:company.com",
        ),
    ],
    ids=lambda v: repr(v)[:80],
)
def test_matching_rule(who: Requester, rule: str | None) -> None:
    assert matching_rule(RULES, who) == rule


def test_stored_patterns_too_broad_for_validation_never_match() -> None:
    """A pattern stored before the 4-digit prefix rule (it bypasses validation
    here, as a stored policy does) approves nobody; the narrow one still works."""
    stored = AutoApprove(phone_patterns=("+1*", "+*1*", "+8498*"))
    assert matching_rule(stored, Requester(Platform.WHATSAPP, "+15551234567")) is None
    assert matching_rule(stored, Requester(Platform.WHATSAPP, "+84981234567")) == "phone_pattern:+8498*"


def test_no_rules_means_off() -> None:
    off = AutoApprove()
    assert not off.enabled
    for who in (
        Requester(Platform.WHATSAPP, "+84981234567"),
        Requester(Platform.SLACK, "T1:U1", email="bob@company.com", phone_number="+84981234567"),
    ):
        assert matching_rule(off, who) is None


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("", True),
        ("alice@company.com", True),
        ("a@b", True),
        ("alice", False),
        ("@company.com", False),
        ("alice@", False),
        ("a@b@c", False),
        ("alice @company.com", False),
        ("alice@company.com\n", False),
        ("a" * 250 + "@b.co", False),
    ],
)
def test_reported_email_is_checked(value: str, ok: bool) -> None:
    if ok:
        assert reported_email(value) == value
    else:
        with pytest.raises(InvalidArgument, match="email"):
            reported_email(value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("", True),
        ("+15551234567", True),
        ("15551234567", False),
        ("+05551234567", False),
        ("+1555", False),
        ("+1234567890123456", False),
        ("+1555123456a", False),
        ("+15551234567\n", False),
    ],
)
def test_reported_phone_is_e164(value: str, ok: bool) -> None:
    if ok:
        assert reported_phone(value) == value
    else:
        with pytest.raises(InvalidArgument, match="phone_number"):
            reported_phone(value)


# --- invite codes ---------------------------------------------------------------------


def test_new_invite_codes_are_long_unambiguous_and_distinct() -> None:
    codes = {new_invite_code() for _ in range(200)}
    assert len(codes) == 200
    for code in codes:
        assert len(code) == INVITE_CODE_LENGTH and set(code) <= set(CODE_ALPHABET)
        shown = format_invite_code(code)
        assert len(shown) == 19 and shown.count("-") == 3
        assert parse_invite_code(shown) == code


CODE = "ABCDEFGHJKMNPQRS"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("ABCD-EFGH-JKMN-PQRS", CODE),
        ("abcd-efgh-jkmn-pqrs", CODE),
        ("abcdefghjkmnpqrs", CODE),
        ("  ABCD EFGH JKMN PQRS ", CODE),
        ("AB-CD EF-GH JK MN-PQ RS", CODE),
        ("/start ABCD-EFGH-JKMN-PQRS", CODE),
        ("/START abcdefghjkmnpqrs", CODE),
        ("/start@my_bot ABCD-EFGH-JKMN-PQRS", CODE),
        ("/start", None),
        ("/startABCDEFGHJKMNPQRS", None),
        ("/pair ABCD-EFGH-JKMN-PQRS", None),
        ("ABCD-EFGH-JKMN-PQR", None),  # 15 characters
        ("ABCD-EFGH-JKMN-PQRST", None),  # 17
        ("ABCD-EFGH-JKMN-PQR0", None),  # 0 is not in the alphabet
        ("ABCD-EFGH-JKMN-PQRO", None),  # nor O, I, L, 1
        ("ABCD_EFGH_JKMN_PQRS", None),
        ("ABCD.EFGH.JKMN.PQRS", None),
        ("hello, how are you", None),
        ("ABCD-EFGH-JKMN-PQRS please", None),
        ("", None),
        ("-" * 100 + CODE, None),  # absurdly long texts are not looked at
    ],
)
def test_invite_code_in_message(text: str, code: str | None) -> None:
    assert invite_code_in_message(text) == code


@pytest.mark.parametrize(
    ("max_uses", "ttl", "expected"),
    [
        (0, 0, (1, 7 * 86_400)),
        (1, 60, (1, 60)),
        (10_000, 90 * 86_400, (10_000, 90 * 86_400)),
    ],
)
def test_invite_limits_defaults_and_bounds(max_uses: int, ttl: int, expected: tuple[int, int]) -> None:
    assert invite_limits(max_uses, ttl) == expected


@pytest.mark.parametrize(
    ("max_uses", "ttl", "field"),
    [(10_001, 0, "max_uses"), (1, 59, "ttl_seconds"), (1, 90 * 86_400 + 1, "ttl_seconds")],
)
def test_invite_limits_refuse_out_of_range(max_uses: int, ttl: int, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        invite_limits(max_uses, ttl)


NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("revoked", "uses", "expires_at", "status"),
    [
        (False, 0, NOW + timedelta(seconds=1), "active"),
        (False, 0, None, "active"),
        (False, 2, NOW + timedelta(days=1), "used_up"),
        (False, 1, NOW, "expired"),
        (False, 2, NOW - timedelta(days=1), "used_up"),  # used up wins over expired
        (True, 2, NOW - timedelta(days=1), "revoked"),  # revoked wins over both
    ],
)
def test_invite_status(revoked: bool, uses: int, expires_at: datetime | None, status: str) -> None:
    assert invite_status(revoked=revoked, uses=uses, max_uses=2, expires_at=expires_at, now=NOW) == status


# --- permission names: one rule for bindings, AllowUser and CreateInvite ---------------


@pytest.mark.parametrize(
    ("name", "ok"), [("p" * 64, True), ("deploy:*", True), ("p" * 65, False), ("", False)]
)
def test_permission_names_have_one_limit(name: str, ok: bool) -> None:
    binding = Binding(user_id="42", permissions=(name,))
    if ok:
        assert ids.permission(name) == name
        assert validate_binding(Platform.TELEGRAM, binding, "policy.bindings[0]").permissions == (name,)
        return
    with pytest.raises(InvalidArgument, match="1-64 characters"):
        ids.permission(name)
    with pytest.raises(InvalidArgument, match="1-64 characters") as caught:
        validate_binding(Platform.TELEGRAM, binding, "policy.bindings[0]")
    assert caught.value.field == "policy.bindings[0].permissions[0]"


def test_binding_tool_names_keep_their_own_limit() -> None:
    tool = "t" * 128  # tool names are longer than permissions (domain.tools.TOOL_NAME)
    binding = Binding(tools_allowed=(tool,), tools_denied=("x" * 128,))
    assert validate_binding(Platform.TELEGRAM, binding, "b").tools_allowed == (tool,)
    with pytest.raises(InvalidArgument, match="1-128 characters"):
        validate_binding(Platform.TELEGRAM, Binding(tools_denied=("x" * 129,)), "b")


# --- quorum ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("required", "approved_by", "actor", "vote"),
    [
        (1, (), "telegram:1", Vote.FINAL),
        (2, (), "telegram:1", Vote.RECORDED),
        (2, ("telegram:1",), "telegram:1", Vote.REPEAT),
        (2, ("telegram:1",), "telegram:2", Vote.FINAL),
        (2, ("telegram:1",), "key:abc", Vote.FINAL),  # an approver key is another actor
        (3, ("telegram:1",), "telegram:2", Vote.RECORDED),
        (5, ("a", "b", "c", "d"), "e", Vote.FINAL),
        (5, ("a", "b", "c", "d"), "d", Vote.REPEAT),
    ],
)
def test_quorum_vote(required: int, approved_by: tuple[str, ...], actor: str, vote: Vote) -> None:
    assert approve_vote(required, approved_by, actor) is vote
