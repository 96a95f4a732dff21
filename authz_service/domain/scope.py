"""What a bound API key may act on (issue #15).

A connector key bound to channels acts only on them: on any other channel, and
on anything without a channel (a tenant-level tool approval), it is answered
as for a channel or approval that does not exist, so a stolen key learns
nothing about the rest of its tenant. An agent key bound to agent ids speaks
only for them. A key with no binding is one made before binding existed: it
keeps working tenant-wide and ``authz doctor`` flags it (domain.doctor).
"""

from __future__ import annotations

from collections.abc import Iterable

from . import ids
from .errors import InvalidArgument, PermissionDenied
from .model import Approval, Principal, Role

MAX_BOUND = 100


def channel_in_scope(principal: Principal, channel_id: str) -> bool:
    """May this caller act on ``channel_id`` ('' for no channel)? Only
    connector keys are bound to channels; approvers and admins act tenant-wide."""
    if principal.role is not Role.CONNECTOR or not principal.channels:
        return True
    return channel_id in principal.channels


def agent_in_scope(principal: Principal, agent_id: str) -> bool:
    """May this caller speak for ``agent_id``? Only agent keys are bound to agents."""
    if principal.role is not Role.AGENT or not principal.agents:
        return True
    return agent_id in principal.agents


def require_agent(principal: Principal, agent_id: str) -> None:
    """Refuse an agent id the key does not speak for. PERMISSION_DENIED, not
    NOT_FOUND: agent ids are not stored objects a caller could probe for, and
    the key's holder knows which agents it was issued for."""
    if not agent_in_scope(principal, agent_id):
        raise PermissionDenied(f"this key does not act for agent {agent_id!r}")


def sees_approvers(principal: Principal) -> bool:
    """Approver lists go to the keys that deliver or decide approvals
    (connectors, approvers, admins), never to agent keys."""
    return principal.role is not Role.AGENT


def binding(
    role: Role, channels: Iterable[str], agents: Iterable[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A new key's validated, de-duplicated, sorted binding (raises InvalidArgument)."""
    chans = tuple(sorted({ids.channel_id(c, "channels") for c in channels}))
    agts = tuple(sorted({ids.agent_id(a, "agents") for a in agents}))
    if chans and role is not Role.CONNECTOR:
        raise InvalidArgument("channels", "only connector keys are bound to channels")
    if agts and role is not Role.AGENT:
        raise InvalidArgument("agents", "only agent keys are bound to agent ids")
    if len(chans) > MAX_BOUND:
        raise InvalidArgument("channels", f"at most {MAX_BOUND}")
    if len(agts) > MAX_BOUND:
        raise InvalidArgument("agents", f"at most {MAX_BOUND}")
    return chans, agts


def approval_in_scope(principal: Principal, approval: Approval) -> bool:
    """May this caller see or act on ``approval``? Outside its scope an approval
    is answered as one that does not exist."""
    if not channel_in_scope(principal, approval.channel_id):
        return False
    return approval.tool is None or agent_in_scope(principal, approval.tool.agent_id)
