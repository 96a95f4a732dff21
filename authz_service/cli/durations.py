"""Durations as operators write them: ``90``, ``90s``, ``30m``, ``12h``, ``7d``,
``2w``, or in words: ``30 days``, ``1 week``, ``2 hours``, ``45 min``."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"(\d{1,9})\s*([a-z]*)")
_SECONDS = {
    1: ("", "s", "sec", "secs", "second", "seconds"),
    60: ("m", "min", "mins", "minute", "minutes"),
    3600: ("h", "hr", "hrs", "hour", "hours"),
    86_400: ("d", "day", "days"),
    604_800: ("w", "wk", "wks", "week", "weeks"),
}
UNITS = {name: size for size, names in _SECONDS.items() for name in names}
EXAMPLES = "3600, 30m, 12h, 7d, 2w or '30 days'"


def parse_duration(text: str) -> timedelta:
    """A whole number of seconds (no unit) or of one unit; raises ValueError otherwise."""
    m = _DURATION.fullmatch(text.strip().lower())
    if m is None or m.group(2) not in UNITS:
        raise ValueError(f"{text!r} is not a duration such as {EXAMPLES}")
    return timedelta(seconds=int(m.group(1)) * UNITS[m.group(2)])
