"""Send targets in one canonical form, so that one destination has one name.

An agent (or a prompt steering it) may spell a target many ways: ``Slack:#Exec``,
``slack:#exec``, ``<#C0EXEC1|exec>``, or the bare id ``C0EXEC1`` the connector
delivers to. A deny list that knows only one spelling would be bypassed by
another, so the requested target, the origin, every policy entry and both sides
of every alias are normalised before anything is compared:

* surrounding spaces are dropped (also around the platform part);
* ``origin`` in any case is the reserved token ``origin``;
* a mention without a platform prefix names its platform by its shape: digits
  only (``<#123>``) is Discord, anything else (``<#C0123456|exec>``) is Slack;
* a token without a platform prefix (``telegram``, ``slack``, ``discord``,
  ``whatsapp``) is on the channel's own platform (a channel has exactly one):
  on a Slack channel ``C0EXEC1`` is ``slack:C0EXEC1``, on a Telegram channel
  ``-100123`` is ``telegram:-100123`` and ``@Board`` is ``telegram:@board``.
  This includes alias names (``ops-alerts`` on Slack is the key
  ``slack:#ops-alerts``), so an alias is found whichever way it is written;
* the platform prefix is lower-cased;
* Slack: a mention ``<#C0123456|exec>`` / ``<@U0123456>`` is its content;
  ``#name`` and ``@name`` are lower-cased (Slack names are lower-case); a token
  without ``#``/``@`` is an id only if it is id-shaped as written (upper-case
  letters and digits, starting with C, D, G, U or W, at least 7 characters,
  with a digit: ``C0EXEC1``, as Slack shows ids); anything else is a channel
  name: ``exec``, ``EXEC`` and ``c0exec1`` are ``slack:#exec``, ``slack:#exec``
  and ``slack:#c0exec1`` (Slack's chat.postMessage accepts names, so a name must
  never pass for an id);
* Discord: the mention syntax ``<#123>``, ``<@123>``, ``<@!123>`` is its id:
  ``discord:123``; the rest is lower-cased;
* Telegram and WhatsApp: lower-cased (``telegram:@Name`` is ``telegram:@name``);
* Telegram and Discord numbers (ASCII ``-?[0-9]+``) are written as ``int`` does
  (``-0100123`` is ``-100123``, ``0123`` is ``123``): the connectors read them
  as numbers, so every spelling of one number is one target;
* a digit outside ASCII (``１２３``, ``-١٠٠١٢٣``) anywhere raises ForeignDigit:
  ``int()`` reads such digits as numbers, so they would spell a numeric id
  past a deny; evaluation fails closed instead.

So every name but ``origin`` carries a platform once canonical (``canonical``),
and the canonical spelling is the comparison key. For delivery (``deliverable``)
a target on the channel's own platform drops the prefix, because connectors
deliver platform-native ids as they are (``slack:C0EXEC1`` -> ``C0EXEC1``); a
target on another platform keeps it.

Names and ids stay different targets (``slack:#exec`` is not ``slack:C0EXEC1``)
unless an alias joins them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from functools import lru_cache

from .model import Platform

ORIGIN = "origin"
MAX_ALIAS_HOPS = 8

_PLATFORMS = frozenset(p.value for p in Platform)
_DISCORD_MENTION = re.compile(r"<(?:#|@!?)([0-9]+)>")
_SLACK_MENTION = re.compile(r"<([#@])([A-Za-z0-9]+)(?:\|[^>]*)?>")
_SLACK_ID = re.compile(r"[CDGUW][A-Z0-9]{6,}")
_NUMBER = re.compile(r"-?[0-9]+")  # ASCII only: [0-9] is a code point range


class AliasLoop(ValueError):
    pass


class ForeignDigit(ValueError):
    """A target with a digit outside ASCII: refused, never compared."""


def check_digits(value: str) -> str:
    """``value``, unless it has a non-ASCII digit (``int()`` would read
    ``１２３`` or ``١٢٣`` as 123): then ForeignDigit."""
    if not value.isascii():
        for c in value:
            if not c.isascii() and (c.isdigit() or unicodedata.decimal(c, None) is not None):
                raise ForeignDigit(f"{value[:80]!r} has a non-ASCII digit")
    return value


def is_slack_id(token: str) -> bool:
    """Id-shaped as Slack writes ids: ``C0EXEC1``, ``DU0ALICE01``; not ``exec``,
    ``EXEC`` or ``c0exec1``."""
    return _SLACK_ID.fullmatch(token) is not None and any(c.isdigit() for c in token)


class DuplicateAlias(ValueError):
    """Two alias names that are one name once normalised."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first!r} and {second!r} are the same alias")
        self.first = first
        self.second = second


def _slack(rest: str) -> str:
    m = _SLACK_MENTION.fullmatch(rest)
    sigil, token = (m[1], m[2]) if m is not None else ("#", rest)
    if m is None and (rest == "" or rest.startswith(("#", "@"))):
        return rest.lower()
    return token if is_slack_id(token) else sigil + token.lower()


def _number(token: str) -> str:
    """A Telegram/Discord number as ``int`` reads it; anything else as it is."""
    return str(int(token)) if _NUMBER.fullmatch(token) else token


def _discord(rest: str) -> str:
    m = _DISCORD_MENTION.fullmatch(rest)
    return _number(m[1] if m is not None else rest.lower())


@lru_cache(maxsize=8192)
def spelled(target: str) -> str:
    """The canonical spelling without a channel's platform: a platform target
    in canonical form; a token without a platform prefix trimmed, its case kept.
    Raises ForeignDigit for a target with a non-ASCII digit."""
    t = check_digits(target).strip()
    if t.lower() == ORIGIN:
        return ORIGIN
    m = _DISCORD_MENTION.fullmatch(t)
    if m is not None:
        return f"discord:{_number(m[1])}"
    if _SLACK_MENTION.fullmatch(t) is not None:
        return f"slack:{_slack(t)}"
    head, sep, rest = t.partition(":")
    platform = head.strip().lower()
    if not sep or platform not in _PLATFORMS:
        return t
    rest = rest.strip()
    if platform == Platform.SLACK:
        rest = _slack(rest)
    elif platform == Platform.DISCORD:
        rest = _discord(rest)
    elif platform == Platform.TELEGRAM:
        rest = _number(rest.lower())
    else:
        rest = rest.lower()
    return f"{platform}:{rest}"


@lru_cache(maxsize=8192)
def normalise(target: str) -> str:
    """A platform-free comparison key: the canonical spelling, lower-cased when
    it has no platform prefix. (Policies compare ``canonical`` keys, which also
    know the channel's platform; this is for names that must never be ``origin``.)"""
    s = spelled(target)
    return s if _platform_of(s) else s.lower()


def _platform_of(spelling: str) -> str:
    head, sep, _ = spelling.partition(":")
    return head if sep and head in _PLATFORMS else ""


@lru_cache(maxsize=8192)
def canonical(target: str, platform: Platform) -> str:
    """The comparison key and canonical spelling on a channel of ``platform``:
    ``origin``, or a platform target in canonical form; a token without a
    platform prefix is on ``platform``."""
    s = spelled(target)
    if s == ORIGIN or _platform_of(s):
        return s
    return spelled(f"{platform.value}:{s}")


def deliverable(key: str, platform: Platform) -> str:
    """What a connector of ``platform`` delivers to for a canonical ``key``:
    its own platform's targets without the prefix (``slack:C0EXEC1`` ->
    ``C0EXEC1``), another platform's as they are."""
    head, _, rest = key.partition(":")
    return rest if head == platform.value else key


def normalise_aliases(aliases: Mapping[str, str], platform: Platform) -> dict[str, str]:
    """Alias key -> target key, both ``canonical`` on ``platform``. Raises
    DuplicateAlias when two names collapse into one (ambiguous: which target did
    the author mean?) and ValueError for the name ``origin``. An alias of itself
    (``Slack:#Exec`` -> ``slack:#exec``, ``C0EXEC1`` -> ``slack:C0EXEC1`` on Slack) is
    dropped: it names nothing new."""
    out: dict[str, str] = {}
    written: dict[str, str] = {}
    for alias, target in aliases.items():
        key = canonical(alias, platform)
        if key == ORIGIN:
            raise ValueError("'origin' is reserved")
        if key in written:
            raise DuplicateAlias(written[key], alias)
        written[key] = alias
        to = canonical(target, platform)
        if to != key:
            out[key] = to
    return out


def resolve(target: str, aliases: Mapping[str, str], platform: Platform) -> str:
    """Follow aliases (from normalise_aliases on the same platform) from a
    target to the end of the chain; returns its ``canonical`` key. Raises
    AliasLoop for a cycle or a chain longer than MAX_ALIAS_HOPS."""
    key = canonical(target, platform)
    seen = {key}
    for _ in range(MAX_ALIAS_HOPS + 1):
        nxt = aliases.get(key)
        if nxt is None:
            return key
        key = nxt
        if key in seen:
            raise AliasLoop(target)
        seen.add(key)
    raise AliasLoop(target)
