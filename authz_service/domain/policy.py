"""Validating and (de)serialising a channel policy.

Stored as JSON. Reading is strict: an unknown mode or a malformed field makes
the whole channel unreadable, and an unreadable channel denies (Evonic's
channels went open when ``mode`` went missing; ours go closed).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from . import ids, mention, targets
from .autoapprove import MIN_PHONE_PREFIX, literal_prefix
from .errors import InvalidArgument
from .model import (
    WEEKDAYS,
    AutoApprove,
    Binding,
    ChannelPolicy,
    DmPolicy,
    GroupPolicy,
    GroupRule,
    Platform,
    RateLimit,
    SendDefault,
    SendPolicy,
    TimeRestriction,
    TimeWindow,
)

MAX_LIST = 256
MAX_TARGET = 256
MAX_REQUIRED_APPROVALS = 5
MAX_RATE = 1_000_000
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.:*-]{1,128}")  # permissions: ids.PERMISSION
_PHONE_GLOB = re.compile(r"\+[0-9?*]{1,16}")
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


def _target(value: str, field: str) -> str:
    if not value or len(value) > MAX_TARGET or value != value.strip():
        raise InvalidArgument(field, f"entries must be 1-{MAX_TARGET} characters without surrounding spaces")
    ids.bounded_text(value, field, MAX_TARGET)
    try:
        targets.check_digits(value)
    except targets.ForeignDigit:
        raise InvalidArgument(field, f"{value[:80]!r} has a digit outside ASCII (0-9)") from None
    return value


def _targets(values: tuple[str, ...], field: str) -> tuple[str, ...]:
    if len(values) > MAX_LIST:
        raise InvalidArgument(field, f"at most {MAX_LIST} entries")
    return tuple(_target(v, f"{field}[{i}]") for i, v in enumerate(values))


def _bounded(values: tuple[object, ...], field: str, max_items: int = 64) -> None:
    if len(values) > max_items:
        raise InvalidArgument(field, f"at most {max_items} entries")


def _tool_name(value: str, field: str) -> str:
    if not _TOOL_NAME.fullmatch(value):
        raise InvalidArgument(field, f"{value[:80]!r} must be 1-128 characters [A-Za-z0-9_.:*-]")
    return value


def _names(values: tuple[str, ...], field: str, check: Callable[[str, str], str]) -> tuple[str, ...]:
    """Permissions (``ids.permission``) or tool names (``_tool_name``), duplicates dropped."""
    _bounded(values, field, MAX_LIST)
    return tuple(dict.fromkeys(check(v, f"{field}[{i}]") for i, v in enumerate(values)))


def minute_of(value: str, field: str) -> int:
    """'09:30' -> 570."""
    m = _HHMM.fullmatch(value)
    if m is None:
        raise InvalidArgument(field, f"{value!r} must be HH:MM (24-hour)")
    return int(m[1]) * 60 + int(m[2])


def validate_window(w: TimeWindow, field: str) -> TimeWindow:
    for d in w.days:
        if d not in WEEKDAYS:
            raise InvalidArgument(f"{field}.days", f"{d!r} must be one of {', '.join(WEEKDAYS)}")
    if not (0 <= w.start_minute < 1440 and 0 <= w.end_minute < 1440):
        raise InvalidArgument(field, "start and end must be within a day")
    if w.start_minute == w.end_minute:
        raise InvalidArgument(field, "start and end must differ")
    return replace(w, days=tuple(dict.fromkeys(w.days)))


def validate_send_policy(policy: SendPolicy, field: str) -> SendPolicy:
    _bounded(policy.time_restrictions, f"{field}.time_restrictions")
    restrictions = []
    for i, r in enumerate(policy.time_restrictions):
        f = f"{field}.time_restrictions[{i}]"
        if not r.targets or not r.windows:
            raise InvalidArgument(f, "needs at least one target and one window")
        _bounded(r.windows, f"{f}.windows")
        restrictions.append(
            TimeRestriction(
                targets=_targets(r.targets, f"{f}.targets"),
                windows=tuple(validate_window(w, f"{f}.windows[{j}]") for j, w in enumerate(r.windows)),
            )
        )
    return replace(
        policy,
        allow=_targets(policy.allow, f"{field}.allow"),
        deny=_targets(policy.deny, f"{field}.deny"),
        time_restrictions=tuple(restrictions),
    )


def validate_rate_limit(rate: RateLimit | None, field: str) -> RateLimit | None:
    """``None`` or a zero rate: no limit. A zero burst becomes min(rate, 10)."""
    if rate is None or rate.max_messages_per_hour == 0:
        return None
    if not 1 <= rate.max_messages_per_hour <= MAX_RATE:
        raise InvalidArgument(
            f"{field}.max_messages_per_hour", f"must be between 0 (no limit) and {MAX_RATE}"
        )
    burst = rate.burst or min(rate.max_messages_per_hour, 10)
    if not 1 <= burst <= MAX_RATE:
        raise InvalidArgument(f"{field}.burst", f"must be between 0 (default) and {MAX_RATE}")
    return RateLimit(rate.max_messages_per_hour, burst)


def validate_group_rule(rule: GroupRule, field: str) -> GroupRule:
    _bounded(rule.allowed_commands, f"{field}.allowed_commands")
    _bounded(rule.denied_commands, f"{field}.denied_commands")
    return replace(
        rule,
        mention_patterns=mention.validate_patterns(rule.mention_patterns, f"{field}.mention_patterns"),
        allowed_commands=tuple(
            dict.fromkeys(
                mention.normalise_command(c, f"{field}.allowed_commands[{i}]")
                for i, c in enumerate(rule.allowed_commands)
            )
        ),
        denied_commands=tuple(
            dict.fromkeys(
                mention.normalise_command(c, f"{field}.denied_commands[{i}]")
                for i, c in enumerate(rule.denied_commands)
            )
        ),
        rate_limit=validate_rate_limit(rule.rate_limit, f"{field}.rate_limit"),
    )


def validate_binding(platform: Platform, b: Binding, field: str) -> Binding:
    user = b.user_id or "*"
    group = b.group_id or "*"
    if user != "*":
        ids.user_id(platform, user, f"{field}.user_id")
    if group != "*":
        ids.group_id(group, f"{field}.group_id")
    if b.agent_id:
        ids.agent_id(b.agent_id, f"{field}.agent_id")
    return Binding(
        user_id=user,
        group_id=group,
        agent_id=b.agent_id,
        permissions=_names(b.permissions, f"{field}.permissions", ids.permission),
        tools_allowed=_names(b.tools_allowed, f"{field}.tools.allowed", _tool_name),
        tools_denied=_names(b.tools_denied, f"{field}.tools.denied", _tool_name),
    )


def validate_auto_approve(a: AutoApprove, field: str) -> AutoApprove:
    _bounded(a.phone_patterns, f"{field}.phone_patterns")
    _bounded(a.email_domains, f"{field}.email_domains")
    for i, p in enumerate(a.phone_patterns):
        if not _PHONE_GLOB.fullmatch(p):
            raise InvalidArgument(
                f"{field}.phone_patterns[{i}]", f"{p!r} must be '+' then digits, '?' or '*'"
            )
        if p.strip("+*?") == "":
            raise InvalidArgument(
                f"{field}.phone_patterns[{i}]", f"{p!r} must contain digits (no match-all pattern)"
            )
        if literal_prefix(p) < MIN_PHONE_PREFIX:
            raise InvalidArgument(
                f"{field}.phone_patterns[{i}]",
                f"{p!r} must start with at least {MIN_PHONE_PREFIX} digits after '+' before any '?' or '*'"
                " (a shorter prefix admits a whole country or more)",
            )
    domains = []
    for i, d in enumerate(a.email_domains):
        norm = d.strip().removeprefix("@").lower()
        if not _DOMAIN.fullmatch(norm):
            raise InvalidArgument(
                f"{field}.email_domains[{i}]", f"{d!r} must be a domain such as company.com"
            )
        domains.append(norm)
    return AutoApprove(
        phone_patterns=tuple(dict.fromkeys(a.phone_patterns)), email_domains=tuple(dict.fromkeys(domains))
    )


def validate(platform: Platform, policy: ChannelPolicy) -> ChannelPolicy:
    """Check bounds and identity formats; return the policy with defaults applied."""
    if policy.owner_id:
        ids.user_id(platform, policy.owner_id, "policy.owner_id")
    if len(policy.approvers) > MAX_LIST:
        raise InvalidArgument("policy.approvers", f"at most {MAX_LIST} entries")
    for i, approver in enumerate(policy.approvers):
        ids.user_id(platform, approver, f"policy.approvers[{i}]")
    if not 30 <= policy.pairing_code_ttl_seconds <= 86_400:
        raise InvalidArgument("policy.pairing_code_ttl_seconds", "must be between 30 and 86400")
    if not 1 <= policy.max_pending <= 10_000:
        raise InvalidArgument("policy.max_pending", "must be between 1 and 10000")
    if not 0 <= policy.pairing_ttl_seconds <= 10 * 365 * 86_400:
        raise InvalidArgument("policy.pairing_ttl_seconds", "must be between 0 (never) and ten years")
    ids.agent_id(policy.agent_id, "policy.agent_id")
    if len(policy.aliases) > MAX_LIST:
        raise InvalidArgument("policy.aliases", f"at most {MAX_LIST} entries")
    for alias, target in policy.aliases.items():
        _target(alias, f"policy.aliases[{alias}]")
        _target(target, f"policy.aliases[{alias}]")
        if targets.normalise(alias) == targets.ORIGIN:
            raise InvalidArgument(f"policy.aliases[{alias}]", "'origin' is reserved")
    try:  # names are compared canonical on the platform (domain.targets): C0X is slack:C0X
        normalised = targets.normalise_aliases(policy.aliases, platform)
        for alias in normalised:
            targets.resolve(alias, normalised, platform)
    except targets.DuplicateAlias as exc:
        raise InvalidArgument(
            "policy.aliases", f"{exc.first[:80]!r} and {exc.second[:80]!r} are the same alias once normalised"
        ) from None
    except targets.AliasLoop:
        raise InvalidArgument(
            "policy.aliases", f"aliases must not loop or chain more than {targets.MAX_ALIAS_HOPS} deep"
        ) from None
    if len(policy.agent_send_policies) > MAX_LIST:
        raise InvalidArgument("policy.agent_send_policies", f"at most {MAX_LIST} entries")
    per_agent = {
        ids.agent_id(agent, f"policy.agent_send_policies[{agent}]"): validate_send_policy(
            p, f"policy.agent_send_policies[{agent}]"
        )
        for agent, p in policy.agent_send_policies.items()
    }
    send = validate_send_policy(policy.send_policy, "policy.send_policy") if policy.send_policy else None
    if len(policy.groups) > MAX_LIST:
        raise InvalidArgument("policy.groups", f"at most {MAX_LIST} entries")
    groups = {
        ids.group_id(g, f"policy.groups[{g}]"): validate_group_rule(rule, f"policy.groups[{g}]")
        for g, rule in policy.groups.items()
    }
    if len(policy.bindings) > MAX_LIST:
        raise InvalidArgument("policy.bindings", f"at most {MAX_LIST} entries")
    bindings = tuple(
        validate_binding(platform, b, f"policy.bindings[{i}]") for i, b in enumerate(policy.bindings)
    )
    seen: set[tuple[str, str]] = set()
    for i, b in enumerate(bindings):
        if (b.user_id, b.group_id) in seen:
            raise InvalidArgument(
                f"policy.bindings[{i}]",
                f"a binding for user {b.user_id!r} in group {b.group_id!r} already exists",
            )
        seen.add((b.user_id, b.group_id))
    if not 1 <= policy.required_approvals <= MAX_REQUIRED_APPROVALS:
        raise InvalidArgument(
            "policy.required_approvals", f"must be between 0 (one) and {MAX_REQUIRED_APPROVALS}"
        )
    return replace(
        policy,
        send_policy=send,
        agent_send_policies=per_agent,
        mention_patterns=mention.validate_patterns(policy.mention_patterns, "policy.mention_patterns"),
        groups=groups,
        bindings=bindings,
        auto_approve=validate_auto_approve(policy.auto_approve, "policy.auto_approve"),
        rate_limit=validate_rate_limit(policy.rate_limit, "policy.rate_limit"),
    )


def _window_to_json(w: TimeWindow) -> dict[str, Any]:
    return {"days": list(w.days), "start": w.start_minute, "end": w.end_minute}


def _send_to_json(p: SendPolicy) -> dict[str, Any]:
    return {
        "default": p.default.value,
        "allow": list(p.allow),
        "deny": list(p.deny),
        "time_restrictions": [
            {"targets": list(r.targets), "windows": [_window_to_json(w) for w in r.windows]}
            for r in p.time_restrictions
        ],
    }


def _rate_to_json(r: RateLimit | None) -> dict[str, int] | None:
    return None if r is None else {"max_messages_per_hour": r.max_messages_per_hour, "burst": r.burst}


def _group_to_json(g: GroupRule) -> dict[str, Any]:
    return {
        "policy": None if g.policy is None else g.policy.value,
        "require_mention": g.require_mention,
        "mention_patterns": list(g.mention_patterns),
        "allowed_commands": list(g.allowed_commands),
        "denied_commands": list(g.denied_commands),
        "rate_limit": _rate_to_json(g.rate_limit),
    }


def _binding_to_json(b: Binding) -> dict[str, Any]:
    return {
        "user_id": b.user_id,
        "group_id": b.group_id,
        "agent_id": b.agent_id,
        "permissions": list(b.permissions),
        "tools_allowed": list(b.tools_allowed),
        "tools_denied": list(b.tools_denied),
    }


def to_json(policy: ChannelPolicy) -> dict[str, Any]:
    return {
        "dm_policy": policy.dm_policy.value,
        "group_policy": policy.group_policy.value,
        "require_mention": policy.require_mention,
        "owner_id": policy.owner_id,
        "approvers": list(policy.approvers),
        "pairing_code_ttl_seconds": policy.pairing_code_ttl_seconds,
        "max_pending": policy.max_pending,
        "pairing_ttl_seconds": policy.pairing_ttl_seconds,
        "agent_id": policy.agent_id,
        "send_policy": _send_to_json(policy.send_policy) if policy.send_policy else None,
        "agent_send_policies": {a: _send_to_json(p) for a, p in policy.agent_send_policies.items()},
        "aliases": dict(policy.aliases),
        "mention_patterns": list(policy.mention_patterns),
        "groups": {g: _group_to_json(r) for g, r in policy.groups.items()},
        "bindings": [_binding_to_json(b) for b in policy.bindings],
        "required_approvals": policy.required_approvals,
        "auto_approve": {
            "phone_patterns": list(policy.auto_approve.phone_patterns),
            "email_domains": list(policy.auto_approve.email_domains),
        },
        "rate_limit": _rate_to_json(policy.rate_limit),
        "approvers_trusted": policy.approvers_trusted,
    }


class CorruptPolicy(ValueError):
    """A stored policy that does not parse. Callers deny."""


def _strs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CorruptPolicy("expected a list of strings")
    return tuple(value)


def _obj(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise CorruptPolicy(f"{what} must be an object")
    return data


def _int(value: Any) -> int:
    if type(value) is not int:
        raise CorruptPolicy("expected an integer")
    return value


def _window_from_json(data: Any) -> TimeWindow:
    d = _obj(data, "time window")
    return TimeWindow(days=_strs(d["days"]), start_minute=_int(d["start"]), end_minute=_int(d["end"]))


def _send_from_json(data: Any) -> SendPolicy:
    d = _obj(data, "send policy")
    restrictions = d.get("time_restrictions", [])  # absent in policies stored before 0.3
    if not isinstance(restrictions, list):
        raise CorruptPolicy("time_restrictions must be a list")
    return SendPolicy(
        default=SendDefault(d["default"]),
        allow=_strs(d["allow"]),
        deny=_strs(d["deny"]),
        time_restrictions=tuple(
            TimeRestriction(
                targets=_strs(_obj(r, "time restriction")["targets"]),
                windows=tuple(_window_from_json(w) for w in r["windows"]),
            )
            for r in restrictions
        ),
    )


def _rate_from_json(data: Any) -> RateLimit | None:
    if data is None:
        return None
    d = _obj(data, "rate limit")
    return RateLimit(_int(d["max_messages_per_hour"]), _int(d["burst"]))


def _group_from_json(data: Any) -> GroupRule:
    d = _obj(data, "group rule")
    mention_required = d["require_mention"]
    if mention_required is not None and type(mention_required) is not bool:
        raise CorruptPolicy("require_mention must be a boolean or null")
    return GroupRule(
        policy=None if d["policy"] is None else GroupPolicy(d["policy"]),
        require_mention=mention_required,
        mention_patterns=_strs(d["mention_patterns"]),
        allowed_commands=_strs(d["allowed_commands"]),
        denied_commands=_strs(d["denied_commands"]),
        rate_limit=_rate_from_json(d["rate_limit"]),
    )


def _binding_from_json(data: Any) -> Binding:
    d = _obj(data, "binding")
    for k in ("user_id", "group_id", "agent_id"):
        if not isinstance(d[k], str):
            raise CorruptPolicy(f"binding {k} must be a string")
    return Binding(
        user_id=d["user_id"],
        group_id=d["group_id"],
        agent_id=d["agent_id"],
        permissions=_strs(d["permissions"]),
        tools_allowed=_strs(d["tools_allowed"]),
        tools_denied=_strs(d["tools_denied"]),
    )


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise CorruptPolicy("expected a boolean")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise CorruptPolicy("expected a list")
    return value


def from_json(data: Any) -> ChannelPolicy:
    """Parse a stored policy. Every field must be present and well-typed."""
    try:
        if not isinstance(data, dict):
            raise CorruptPolicy("policy must be an object")
        ints = ("pairing_code_ttl_seconds", "max_pending", "pairing_ttl_seconds")
        if any(type(data[k]) is not int for k in ints) or type(data["require_mention"]) is not bool:
            raise CorruptPolicy("wrong field type")
        for k in ("owner_id", "agent_id"):
            if not isinstance(data[k], str):
                raise CorruptPolicy(f"{k} must be a string")
        aliases = data["aliases"]
        per_agent = data["agent_send_policies"]
        if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
            raise CorruptPolicy("aliases must map strings to strings")
        if not isinstance(per_agent, dict):
            raise CorruptPolicy("agent_send_policies must be an object")
        auto = _obj(data.get("auto_approve", {}), "auto_approve")
        return ChannelPolicy(
            dm_policy=DmPolicy(data["dm_policy"]),
            group_policy=GroupPolicy(data["group_policy"]),
            require_mention=data["require_mention"],
            owner_id=data["owner_id"],
            approvers=_strs(data["approvers"]),
            pairing_code_ttl_seconds=data["pairing_code_ttl_seconds"],
            max_pending=data["max_pending"],
            pairing_ttl_seconds=data["pairing_ttl_seconds"],
            agent_id=data["agent_id"],
            send_policy=None if data["send_policy"] is None else _send_from_json(data["send_policy"]),
            agent_send_policies={str(a): _send_from_json(p) for a, p in per_agent.items()},
            aliases=dict(aliases),
            # Absent in policies stored before 0.3: the neutral defaults.
            mention_patterns=_strs(data.get("mention_patterns", [])),
            groups={str(g): _group_from_json(r) for g, r in _obj(data.get("groups", {}), "groups").items()},
            bindings=tuple(_binding_from_json(b) for b in _list(data.get("bindings", []))),
            required_approvals=_int(data.get("required_approvals", 1)),
            auto_approve=AutoApprove(
                phone_patterns=_strs(auto.get("phone_patterns", [])),
                email_domains=_strs(auto.get("email_domains", [])),
            ),
            rate_limit=_rate_from_json(data.get("rate_limit")),
            approvers_trusted=_bool(data.get("approvers_trusted", True)),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CorruptPolicy(str(exc)) from exc
