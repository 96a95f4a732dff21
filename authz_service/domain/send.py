"""Where an agent may send: the seed's send_policy, evaluated fail-closed.

Precedence, first match wins:

1. ``list`` actions are never gated.
2. Aliases resolve to a canonical target, for the request and every policy
   entry alike, so an alias can't bypass a deny.
3. The policy is the agent's own on the channel, else the channel's.
   With no policy at all, only the origin conversation is allowed (the seed
   allows everything; we fail closed: a prompt-injected agent on a channel
   nobody configured can still answer, but not exfiltrate).
4. A deny entry matching the target denies.
5. An allow entry matching the target allows.
6. ``default``.

Any evaluation error denies with "send_policy evaluation error".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .model import ChannelPolicy, SendDefault, SendPolicy

ORIGIN = "origin"
EVALUATION_ERROR = "send_policy evaluation error"
_MAX_ALIAS_HOPS = 8


@dataclass(frozen=True, slots=True)
class SendDecision:
    allow: bool
    reason: str = ""
    resolved_target: str = ""


def denial(target: str) -> str:
    """The seed's model-readable denial, exactly."""
    return f"Failed to send to {target}: target '{target}' is not permitted by send_policy"


class AliasLoop(ValueError):
    pass


def resolve(target: str, aliases: Mapping[str, str]) -> str:
    seen = {target}
    for _ in range(_MAX_ALIAS_HOPS):
        nxt = aliases.get(target)
        if nxt is None:
            return target
        if nxt in seen:
            raise AliasLoop(target)
        seen.add(nxt)
        target = nxt
    raise AliasLoop(target)


def policy_for(channel: ChannelPolicy, agent_id: str) -> SendPolicy | None:
    return channel.agent_send_policies.get(agent_id, channel.send_policy)


def evaluate(
    channel: ChannelPolicy | None, agent_id: str, target: str, origin: str, *, listing: bool
) -> SendDecision:
    if listing:
        return SendDecision(True, resolved_target=target)
    if channel is None:
        return SendDecision(False, denial(target), target)
    try:
        return _evaluate(channel, agent_id, target, origin)
    except Exception:  # fail closed on anything, by the seed's contract
        return SendDecision(False, EVALUATION_ERROR, "")


def _evaluate(channel: ChannelPolicy, agent_id: str, target: str, origin: str) -> SendDecision:
    aliases = channel.aliases
    canonical = resolve(target, aliases)
    origin_canonical = resolve(origin, aliases) if origin else ""
    is_origin = target == ORIGIN or (origin_canonical != "" and canonical == origin_canonical)
    resolved = origin_canonical if target == ORIGIN else canonical

    def matches(entry: str) -> bool:
        if entry == ORIGIN:
            return is_origin
        return resolve(entry, aliases) == canonical

    policy = policy_for(channel, agent_id)
    if policy is None:
        allowed = is_origin
    elif any(matches(e) for e in policy.deny):
        allowed = False
    elif any(matches(e) for e in policy.allow):
        allowed = True
    else:
        allowed = policy.default is SendDefault.ALLOW
    return SendDecision(allowed, "" if allowed else denial(target), resolved)
