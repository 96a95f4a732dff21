"""Send targets in one canonical form, so that one destination has one name.

An agent (or a prompt steering it) may spell a target many ways: ``Slack:#Exec``,
``slack:#exec``, ``<#C0EXEC|exec>``. A deny list that knows only one spelling
would be bypassed by another, so the requested target, the origin, every policy
entry and both sides of every alias are normalised before anything is compared:

* surrounding spaces are dropped (also around the platform part);
* ``origin`` in any case is the reserved token ``origin``;
* a platform prefix (``telegram``, ``slack``, ``discord``, ``whatsapp``) is
  lower-cased;
* Slack: ``#name`` and ``@name`` are lower-cased (Slack names are lower-case);
  ids are upper-cased (``slack:c0exec`` is ``slack:C0EXEC``); the mention
  syntax ``<#C0123|exec>`` / ``<@U0123>`` is its id: ``slack:C0123``;
* Discord: the mention syntax ``<#123>``, ``<@123>``, ``<@!123>`` is its id:
  ``discord:123``; the rest is lower-cased;
* Telegram and WhatsApp: lower-cased (``telegram:@Name`` is ``telegram:@name``);
* a mention without a platform prefix names its platform by its shape: digits
  only (``<#123>``) is Discord, anything else (``<#C0123|exec>``) is Slack;
* anything else (an alias such as ``Ops-Alerts``, an unknown prefix, a bare
  id such as Slack's ``C0123``) is compared lower-cased: aliases are
  case-insensitive. Its spelling for delivery (``spelled``) keeps the case, since
  connectors deliver bare ids as they are.

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
    """The canonical spelling, for delivery: a platform target in canonical form;
    a token without a platform prefix (an alias name, or a bare id a connector
    delivers to as is, such as Slack's ``DU0ALICE01``) trimmed, its case kept."""
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
    """The comparison key (pure; see the module docstring): the canonical
    spelling, lower-cased when it has no platform prefix."""
    s = spelled(target)
    head, sep, _ = s.partition(":")
    return s if sep and head in _PLATFORMS else s.lower()


def normalise_aliases(aliases: Mapping[str, str]) -> dict[str, str]:
    """Alias key (normalised) -> target (canonical spelling). Raises
    DuplicateAlias when two names collapse into one (ambiguous: which target did
    the author mean?). An alias of itself (``Slack:#Exec`` -> ``slack:#exec``)
    is dropped: it names nothing new."""
    out: dict[str, str] = {}
    written: dict[str, str] = {}
    for alias, target in aliases.items():
        key = normalise(alias)
        if key in written:
            raise DuplicateAlias(written[key], alias)
        written[key] = alias
        if normalise(target) != key:
            out[key] = spelled(target)
    return out


def resolve(target: str, aliases: Mapping[str, str]) -> str:
    """Follow aliases (from normalise_aliases) from a target to the end of the
    chain; returns its canonical spelling. Raises AliasLoop for a cycle or a
    chain longer than MAX_ALIAS_HOPS."""
    current = spelled(target)
    key = normalise(current)
    seen = {key}
    for _ in range(MAX_ALIAS_HOPS + 1):
        nxt = aliases.get(key)
        if nxt is None:
            return current
        current, key = nxt, normalise(nxt)
        if key in seen:
            raise AliasLoop(target)
        seen.add(key)
    raise AliasLoop(target)
