"""Where an agent may send: the seed's send_policy, evaluated fail-closed.

Precedence, first match wins:

1. ``list`` actions are never gated.
2. The requested target, the origin, every policy entry and both sides of
   every alias are normalised (``domain.targets``) on the channel's platform
   (a bare ``C0EXEC1`` on a Slack channel is ``slack:C0EXEC1``), then aliases
   resolve to a canonical target, for the request and every policy entry
   alike, so neither another spelling of what a deny names (bare or
   prefixed, any case, a mention) nor an alias of it can bypass the deny. A
   name and an id stay two targets unless an alias joins them: a deny of
   ``#exec`` does not cover ``C0EXEC1`` (``domain.doctor.name_only_denies``).
3. The policy is the agent's own on the channel (``agent_send_policies``),
   else the channel's (``send_policy``). With no policy at all, only the origin
   conversation is allowed (the seed allows everything; we fail closed: a
   prompt-injected agent on a channel nobody configured can still answer, but
   not exfiltrate).
4. A deny entry matching the target denies.
5. A time restriction covering the target denies while the tenant's local time
   is outside every one of its windows (each covering restriction must be
   satisfied). A window never allows by itself.
6. An allow entry matching the target allows.
7. ``default``.

The origin conversation has two names: the token ``origin`` and its own
canonical name. A request for either (``origin``, or a target that is the
origin) is matched against entries written either way, so a deny or a time
restriction naming the conversation by its id also covers ``origin``. Without
an origin in the request, ``origin`` is matched only against entries written
``origin``, and is never allowed: there is nothing to deliver to.

An allowed decision always has a target to deliver to: a target that names no
conversation (``origin`` without an origin; ``slack:`` or ``telegram:`` with
nothing after the prefix) is denied with the seed's string, so a connector
never falls back to the raw text it was asked for.

Any evaluation error (an alias loop, two aliases that collapse into one name,
a digit outside ASCII in the target, the origin, an alias or an entry of the
policy in force, an unknown time zone, no clock, no platform) denies with
"send_policy evaluation error".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

from . import targets
from .errors import InvalidArgument
from .model import WEEKDAYS, ChannelPolicy, Platform, SendDefault, SendPolicy, TimeWindow
from .targets import ORIGIN

EVALUATION_ERROR = "send_policy evaluation error"
DEFAULT_TIMEZONE = "UTC"
_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+/-]{0,63}")


@dataclass(frozen=True, slots=True)
class SendDecision:
    allow: bool
    reason: str = ""
    resolved_target: str = ""


def denial(target: str) -> str:
    """The seed's model-readable denial, exactly."""
    return f"Failed to send to {target}: target '{target}' is not permitted by send_policy"


def load_zone(name: str) -> ZoneInfo:
    """An IANA zone by name; raises ValueError for anything else. ``zoneinfo``
    caches instances, so this is cheap after the first call per name."""
    if not _ZONE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a time zone name")
    try:
        return ZoneInfo(name)
    except Exception as exc:  # ZoneInfoNotFoundError, ValueError, OSError...
        raise ValueError(f"unknown time zone {name!r}") from exc


def validate_timezone(name: str, field: str = "timezone") -> str:
    """A tenant's zone: empty means UTC; otherwise an IANA name zoneinfo knows."""
    if name == "":
        return DEFAULT_TIMEZONE
    try:
        return load_zone(name).key
    except ValueError:
        raise InvalidArgument(
            field, f"{name[:80]!r} must be an IANA time zone such as Europe/Berlin"
        ) from None


def policy_for(channel: ChannelPolicy, agent_id: str) -> SendPolicy | None:
    return channel.agent_send_policies.get(agent_id, channel.send_policy)


def in_window(w: TimeWindow, local: datetime) -> bool:
    """``local`` is a wall-clock time in the tenant's zone. ``end`` is exclusive;
    ``end <= start`` wraps past midnight and belongs to the day it starts on."""
    minute = local.hour * 60 + local.minute
    weekday = local.weekday()

    def on(day: int) -> bool:
        return not w.days or WEEKDAYS[day % 7] in w.days

    if w.start_minute < w.end_minute:
        return on(weekday) and w.start_minute <= minute < w.end_minute
    return (on(weekday) and minute >= w.start_minute) or (on(weekday - 1) and minute < w.end_minute)


def evaluate(
    channel: ChannelPolicy | None,
    agent_id: str,
    target: str,
    origin: str,
    *,
    platform: Platform | None,
    listing: bool,
    now: datetime | None = None,
    zone: tzinfo | str = DEFAULT_TIMEZONE,
) -> SendDecision:
    """Pure: ``platform`` is the channel's (bare targets are on it), ``now`` the
    current instant (timezone-aware; the database's clock), ``zone`` the
    tenant's time zone (a tzinfo, or an IANA name). A time restriction that
    covers the target without a usable ``now``, or a channel without a
    platform, is an evaluation error."""
    if listing:
        return SendDecision(True, resolved_target=target)
    if channel is None:
        return SendDecision(False, denial(target), target)
    try:
        if platform is None:
            raise ValueError("no platform to read bare targets on")
        return _evaluate(channel, Platform(platform), agent_id, target, origin, now, zone)
    except Exception:  # fail closed on anything, by the seed's contract
        return SendDecision(False, EVALUATION_ERROR, "")


def _evaluate(
    channel: ChannelPolicy,
    platform: Platform,
    agent_id: str,
    target: str,
    origin: str,
    now: datetime | None,
    zone: tzinfo | str,
) -> SendDecision:
    tz = load_zone(zone) if isinstance(zone, str) else zone
    aliases = targets.normalise_aliases(channel.aliases, platform)

    def key(t: str) -> str:  # compared: the canonical end of the alias chain
        return targets.resolve(t, aliases, platform)

    target_key = key(target)
    origin_key = key(origin) if origin.strip() else ""
    if origin_key == ORIGIN:  # an origin naming "origin" names nothing
        origin_key = ""
    is_origin = target_key == ORIGIN or (origin_key != "" and target_key == origin_key)
    # The origin conversation answers to both of its names, whichever was asked for.
    names = {ORIGIN, origin_key} - {""} if is_origin else {target_key}
    delivered = origin_key if target_key == ORIGIN else target_key
    resolved = targets.deliverable(delivered, platform) if delivered else ""

    def matches(entries: tuple[str, ...]) -> bool:
        return any(key(e) in names for e in entries)

    policy = policy_for(channel, agent_id)
    if policy is not None:  # every entry, matched or not: a foreign digit fails closed
        for entry in (*policy.allow, *policy.deny, *(t for r in policy.time_restrictions for t in r.targets)):
            targets.check_digits(entry)
    if policy is None:
        allowed = is_origin
    elif matches(policy.deny) or _outside_windows(policy, matches, now, tz):  # deny first, then windows
        allowed = False
    elif matches(policy.allow):
        allowed = True
    else:
        allowed = policy.default is SendDefault.ALLOW
    # Nothing to deliver to ("origin" without an origin, "slack:"): never allowed.
    allowed = allowed and resolved != "" and delivered.partition(":")[2] != ""
    return SendDecision(allowed, "" if allowed else denial(target), resolved)


def _outside_windows(
    policy: SendPolicy, matches: Callable[[tuple[str, ...]], bool], now: datetime | None, tz: tzinfo
) -> bool:
    """True when a restriction covers the target and the local time is in none
    of its windows. The clock is read only when a restriction applies."""
    for r in policy.time_restrictions:
        if not matches(r.targets):
            continue
        if now is None or now.tzinfo is None:
            raise ValueError("no clock to judge a time restriction by")
        local = now.astimezone(tz)
        if not any(in_window(w, local) for w in r.windows):
            return True
    return False
