"""Tool-call approvals: what a decision binds to, and who may make it.

A decision binds to one exact call: the tool name and its arguments in
canonical JSON (sorted keys, no insignificant whitespace), hashed together.
Approving ``{"cmd": "rm -rf /tmp/cache"}`` yields a digest that no other
arguments share, and redeeming the approval requires presenting arguments
with that digest.

Approvers are ``<platform>:<user id>`` strings: the agent's own list when the
tenant configured one for it, else the tenant's approvers. A connector reports
a button presser as a platform id; it is qualified with the platform of the
approval's channel, or must already carry its platform.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from .errors import InvalidArgument
from .model import ApprovalAction, ApprovalStatus, Platform

TOOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")
MAX_ARGUMENTS = 65536
MAX_DEPTH = 32
DEFAULT_TIMEOUT_SECONDS = 300
MAX_TIMEOUT_SECONDS = 86400
REQUEST_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def tool_name(value: str, field: str = "tool_name") -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if not TOOL_NAME.fullmatch(value):
        raise InvalidArgument(field, "must be 1-128 characters [A-Za-z0-9_.:/-], starting alphanumeric")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Two parsers could disagree on which value wins: refuse.
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _depth(value: Any, level: int = 1) -> int:
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def canonical_arguments(text: str, field: str = "arguments_json") -> str:
    """Strict JSON in, canonical JSON out. Empty means ``{}``."""
    if len(text) > MAX_ARGUMENTS:
        raise InvalidArgument(field, f"must be at most {MAX_ARGUMENTS} characters")
    if not text.strip():
        return "{}"
    try:
        value = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(field, f"is not valid JSON ({exc})") from None
    if _depth(value) > MAX_DEPTH:
        raise InvalidArgument(field, f"nests deeper than {MAX_DEPTH} levels")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def call_digest(tool: str, canonical_args: str) -> bytes:
    return hashlib.sha256(f"authz/v1/tool\x00{tool}\x00{canonical_args}".encode()).digest()


def tool_approvers(
    tenant_approvers: tuple[str, ...], agent_approvers: Mapping[str, tuple[str, ...]], agent_id: str
) -> tuple[str, ...]:
    """The agent's own list if configured, else the tenant's."""
    own = agent_approvers.get(agent_id) if agent_id else None
    return own if own is not None else tenant_approvers


def qualify_actor(actor_id: str, channel_platform: Platform | None) -> str:
    """'<platform>:<id>' for a presser's id, or '' if it cannot be qualified."""
    head, sep, _ = actor_id.partition(":")
    if sep and head in {p.value for p in Platform}:
        return actor_id
    if channel_platform is None or not actor_id:
        return ""
    return f"{channel_platform.value}:{actor_id}"


def check_action(kind: str, action: ApprovalAction) -> None:
    if kind == "tool" and action is ApprovalAction.BLOCK:
        raise InvalidArgument("action", "block applies to pairing requests only")
    if kind != "tool" and action is ApprovalAction.ALWAYS_ALLOW:
        raise InvalidArgument("action", "always_allow applies to tool approvals only")


def redeem_refusal(status: ApprovalStatus, resolved_by: str, tool: str) -> str:
    """Model-readable reason for a call that may not run."""
    if status is ApprovalStatus.PENDING:
        return f"tool call '{tool}' is still waiting for approval"
    if status is ApprovalStatus.EXPIRED:
        return f"tool call '{tool}' was not approved in time"
    return f"tool call '{tool}' was denied by {resolved_by or 'an approver'}"


ARGUMENTS_MISMATCH = "the arguments differ from the approved call; request a new approval"
ALREADY_REDEEMED = "this approval was already used; request a new approval"


def pending_cap_refusal(
    agent_id: str, agent_pending: int, tenant_pending: int, per_agent: int, per_tenant: int
) -> str:
    """Why a new pending tool approval is refused ('' when it is not): the
    agent's cap first (the narrower scope names the culprit), then the tenant's.
    Counts are live pending approvals, before this one."""
    if agent_pending >= per_agent:
        return (
            f"agent {agent_id or '(none)'} has {agent_pending} pending tool approvals, the limit per agent"
            f" (AUTHZ_PENDING_TOOL_APPROVALS_PER_AGENT={per_agent}); decide or let some expire first"
        )
    if tenant_pending >= per_tenant:
        return (
            f"the tenant has {tenant_pending} pending tool approvals, the limit per tenant"
            f" (AUTHZ_PENDING_TOOL_APPROVALS_PER_TENANT={per_tenant}); decide or let some expire first"
        )
    return ""


AUDIT_EXCERPT_BYTES = 512


def audit_arguments(canonical_args: str) -> dict[str, Any]:
    """What the audit keeps of a call's arguments: their SHA-256 (of the
    canonical JSON, so it identifies the exact call), their size, and the first
    AUDIT_EXCERPT_BYTES bytes. The full call lives once, in the approval row;
    repeating it in every event made a big call cost its size twice or more."""
    raw = canonical_args.encode()
    excerpt = raw[:AUDIT_EXCERPT_BYTES].decode(errors="ignore")
    return {
        "arguments_sha256": hashlib.sha256(raw).hexdigest(),
        "arguments_bytes": len(raw),
        "arguments_excerpt": excerpt + ("…" if len(raw) > AUDIT_EXCERPT_BYTES else ""),
    }
