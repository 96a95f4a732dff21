"""Validating and (de)serialising a channel policy.

Stored as JSON. Reading is strict: an unknown mode or a malformed field makes
the whole channel unreadable, and an unreadable channel denies (Evonic's
channels went open when ``mode`` went missing; ours go closed).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from . import ids
from .errors import InvalidArgument
from .model import ChannelPolicy, DmPolicy, GroupPolicy, Platform, SendDefault, SendPolicy

MAX_LIST = 256
MAX_TARGET = 256


def _target(value: str, field: str) -> str:
    if not value or len(value) > MAX_TARGET or value != value.strip():
        raise InvalidArgument(field, f"entries must be 1-{MAX_TARGET} characters without surrounding spaces")
    ids.bounded_text(value, field, MAX_TARGET)
    return value


def _targets(values: tuple[str, ...], field: str) -> tuple[str, ...]:
    if len(values) > MAX_LIST:
        raise InvalidArgument(field, f"at most {MAX_LIST} entries")
    return tuple(_target(v, field) for v in values)


def validate_send_policy(policy: SendPolicy, field: str) -> SendPolicy:
    return replace(
        policy, allow=_targets(policy.allow, f"{field}.allow"), deny=_targets(policy.deny, f"{field}.deny")
    )


def validate(platform: Platform, policy: ChannelPolicy) -> ChannelPolicy:
    """Check bounds and identity formats; return the policy with defaults applied."""
    if policy.owner_id:
        ids.user_id(platform, policy.owner_id, "policy.owner_id")
    if len(policy.approvers) > MAX_LIST:
        raise InvalidArgument("policy.approvers", f"at most {MAX_LIST} entries")
    for approver in policy.approvers:
        ids.user_id(platform, approver, "policy.approvers")
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
        _target(alias, "policy.aliases")
        _target(target, "policy.aliases")
        if alias == "origin":
            raise InvalidArgument("policy.aliases", "'origin' is reserved")
    if len(policy.agent_send_policies) > MAX_LIST:
        raise InvalidArgument("policy.agent_send_policies", f"at most {MAX_LIST} entries")
    per_agent = {
        ids.agent_id(agent, "policy.agent_send_policies"): validate_send_policy(
            p, f"policy.agent_send_policies[{agent}]"
        )
        for agent, p in policy.agent_send_policies.items()
    }
    send = validate_send_policy(policy.send_policy, "policy.send_policy") if policy.send_policy else None
    return replace(policy, send_policy=send, agent_send_policies=per_agent)


def _send_to_json(p: SendPolicy) -> dict[str, Any]:
    return {"default": p.default.value, "allow": list(p.allow), "deny": list(p.deny)}


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
    }


class CorruptPolicy(ValueError):
    """A stored policy that does not parse. Callers deny."""


def _strs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CorruptPolicy("expected a list of strings")
    return tuple(value)


def _send_from_json(data: Any) -> SendPolicy:
    if not isinstance(data, dict):
        raise CorruptPolicy("send policy must be an object")
    return SendPolicy(
        default=SendDefault(data["default"]), allow=_strs(data["allow"]), deny=_strs(data["deny"])
    )


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
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CorruptPolicy(str(exc)) from exc
