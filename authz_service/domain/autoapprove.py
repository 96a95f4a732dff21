"""Auto-approve rules: which pairing requests are approved without a person.

Pure. A rule matches on what the connector reports about the requester:

* ``phone_patterns``: globs on E.164 numbers, ``*`` = any number of digits
  (none included), ``?`` = exactly one digit, everything else literal. On
  WhatsApp the user id *is* the number and is the only one looked at; on other
  platforms the reported ``phone_number`` is.
* ``email_domains``: the part of the reported email after its last ``@``,
  lower-cased, must equal a listed domain exactly: ``sub.company.com`` does not
  match ``company.com``.

Phone patterns are tried first, in order, then email domains. The result names
the rule (``phone_pattern:+8498*`` or ``email_domain:company.com``): that is
what the audit trail records, never the number or the address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidArgument
from .model import AutoApprove, Platform

_DIGITS = frozenset("0123456789")
# Auto-approve phone patterns: literal digits after "+" before any wildcard.
MIN_PHONE_PREFIX = 4


def literal_prefix(pattern: str) -> int:
    """How many literal digits follow the '+' before the first '?' or '*'."""
    rest = pattern[1:]
    return len(rest) - len(rest.lstrip("0123456789"))


E164 = re.compile(r"\+[1-9][0-9]{6,14}")
MAX_EMAIL = 254  # RFC 5321's path limit


def reported_email(value: str) -> str:
    """The connector's verified email, checked at the edge ('' = not reported):
    at most 254 characters, exactly one '@' with text on both sides, no
    whitespace or control characters."""
    if not value:
        return ""
    local, at, domain = value.partition("@")
    if (
        len(value) > MAX_EMAIL
        or not at
        or not local
        or not domain
        or "@" in domain
        or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        raise InvalidArgument("email", "must be an email address (one '@', at most 254 characters)")
    return value


def reported_phone(value: str) -> str:
    """The connector's verified phone number ('' = not reported): E.164."""
    if value and not E164.fullmatch(value):
        raise InvalidArgument("phone_number", "must be an E.164 number such as +15551234567")
    return value


@dataclass(frozen=True, slots=True)
class Requester:
    """What the connector reported about who asks to pair."""

    platform: Platform
    user_id: str
    email: str = ""
    phone_number: str = ""


def phone_matches(pattern: str, number: str) -> bool:
    """Glob match (``*`` any digits, ``?`` one digit) over the whole number.

    Iterative with one backtrack point, so linear-ish in the lengths (no
    regular expression, no exponential backtracking)."""
    p = n = 0
    star_p, star_n = -1, 0
    while n < len(number):
        if p < len(pattern) and pattern[p] == "*":
            star_p, star_n = p, n
            p += 1
        elif p < len(pattern) and (
            (pattern[p] == "?" and number[n] in _DIGITS)
            or (pattern[p] not in "*?" and pattern[p] == number[n])
        ):
            p += 1
            n += 1
        elif star_p >= 0 and number[star_n] in _DIGITS:
            # The star swallows one more digit; retry the rest after it.
            star_n += 1
            p, n = star_p + 1, star_n
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def email_domain(email: str) -> str:
    """The lower-cased domain after the last ``@`` ("" when there is none)."""
    _, at, domain = email.strip().rpartition("@")
    return domain.lower() if at else ""


def matching_rule(rules: AutoApprove, who: Requester) -> str | None:
    """The first rule that approves ``who``, as ``kind:value``; None if none does."""
    if not rules.enabled:
        return None
    number = who.user_id if who.platform is Platform.WHATSAPP else who.phone_number
    if number:
        for pattern in rules.phone_patterns:
            # A too-broad pattern stored before validation required the prefix never matches.
            if literal_prefix(pattern) >= MIN_PHONE_PREFIX and phone_matches(pattern, number):
                return f"phone_pattern:{pattern}"
    domain = email_domain(who.email) if who.email else ""
    if domain:
        for allowed in rules.email_domains:
            if domain == allowed.lower():
                return f"email_domain:{allowed.lower()}"
    return None
