"""Send targets in one canonical form, so that one destination has one name.

An agent (or a prompt steering it) may spell a target many ways: ``Slack:#Exec``,
``slack:#exec``, ``<#C0EXEC|exec>``, or the bare id ``C0EXEC`` the connector
delivers to. A deny list that knows only one spelling would be bypassed by
another, so the requested target, the origin, every policy entry and both sides
of every alias are normalised before anything is compared:

* surrounding spaces are dropped (also around the platform part);
* ``origin`` in any case is the reserved token ``origin``;
* a mention without a platform prefix names its platform by its shape: digits
  only (``<#123>``) is Discord, anything else (``<#C0123|exec>``) is Slack;
* a token without a platform prefix (``telegram``, ``slack``, ``discord``,
  ``whatsapp``) is on the channel's own platform (a channel has exactly one):
  on a Slack channel ``C0EXEC`` is ``slack:C0EXEC``, on a Telegram channel
  ``-100123`` is ``telegram:-100123`` and ``@Board`` is ``telegram:@board``.
  This includes alias names (``ops-alerts`` on Slack is the key
  ``slack:OPS-ALERTS``), so an alias is found whichever way it is written;
* the platform prefix is lower-cased;
* Slack: ``#name`` and ``@name`` are lower-cased (Slack names are lower-case);
  ids and anything else are upper-cased (``slack:c0exec`` is ``slack:C0EXEC``);
  the mention syntax ``<#C0123|exec>`` / ``<@U0123>`` is its id: ``slack:C0123``;
* Discord: the mention syntax ``<#123>``, ``<@123>``, ``<@!123>`` is its id:
  ``discord:123``; the rest is lower-cased;
* Telegram and WhatsApp: lower-cased (``telegram:@Name`` is ``telegram:@name``).

So every name but ``origin`` carries a platform once canonical (``canonical``),
and the canonical spelling is the comparison key. For delivery (``deliverable``)
a target on the channel's own platform drops the prefix, because connectors
deliver platform-native ids as they are (``slack:C0EXEC`` -> ``C0EXEC``); a
target on another platform keeps it.

Names and ids stay different targets (``slack:#exec`` is not ``slack:C0EXEC``)
unless an alias joins them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

from .model import Platform

ORIGIN = "origin"
MAX_ALIAS_HOPS = 8

_PLATFORMS = frozenset(p.value for p in Platform)
_DISCORD_MENTION = re.compile(r"<(?:#|@!?)([0-9]+)>")
_SLACK_MENTION = re.compile(r"<[#@]([A-Za-z0-9]+)(?:\|[^>]*)?>")


class AliasLoop(ValueError):
    pass


class DuplicateAlias(ValueError):
    """Two alias names that are one name once normalised."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first!r} and {second!r} are the same alias")
        self.first = first
        self.second = second


def _slack(rest: str) -> str:
    m = _SLACK_MENTION.fullmatch(rest)
    if m is not None:
        return m[1].upper()
    if rest.startswith(("#", "@")):
        return rest.lower()
    return rest.upper()


def _discord(rest: str) -> str:
    m = _DISCORD_MENTION.fullmatch(rest)
    return m[1] if m is not None else rest.lower()


@lru_cache(maxsize=8192)
def spelled(target: str) -> str:
    """The canonical spelling without a channel's platform: a platform target
    in canonical form; a token without a platform prefix trimmed, its case kept."""
    t = target.strip()
    if t.lower() == ORIGIN:
        return ORIGIN
    m = _DISCORD_MENTION.fullmatch(t)
    if m is not None:
        return f"discord:{m[1]}"
    m = _SLACK_MENTION.fullmatch(t)
    if m is not None:
        return f"slack:{m[1].upper()}"
    head, sep, rest = t.partition(":")
    platform = head.strip().lower()
    if not sep or platform not in _PLATFORMS:
        return t
    rest = rest.strip()
    if platform == Platform.SLACK:
        rest = _slack(rest)
    elif platform == Platform.DISCORD:
        rest = _discord(rest)
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
    its own platform's targets without the prefix (``slack:C0EXEC`` ->
    ``C0EXEC``), another platform's as they are."""
    head, _, rest = key.partition(":")
    return rest if head == platform.value else key


def normalise_aliases(aliases: Mapping[str, str], platform: Platform) -> dict[str, str]:
    """Alias key -> target key, both ``canonical`` on ``platform``. Raises
    DuplicateAlias when two names collapse into one (ambiguous: which target did
    the author mean?) and ValueError for the name ``origin``. An alias of itself
    (``Slack:#Exec`` -> ``slack:#exec``, ``C0X`` -> ``slack:C0X`` on Slack) is
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
