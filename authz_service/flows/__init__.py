"""Use cases. Each runs in one tenant-scoped transaction: read from the store,
decide with the pure domain functions, write, audit. Multi-row changes are
therefore all-or-nothing."""

from __future__ import annotations

from dataclasses import dataclass

from ..cache import StateCache
from ..domain.model import Principal
from ..domain.pairing import Keyring
from ..store.db import Database


@dataclass(frozen=True)
class CodeAttemptLimits:
    """Failed pairing code lookups (ResolveApproval by code) allowed per window,
    counted in PostgreSQL per channel, per API key and per tenant
    (AUTHZ_CODE_ATTEMPTS_*; see flows.pairing)."""

    per_channel: int = 10
    per_key: int = 10
    per_tenant: int = 50
    window_seconds: int = 600


@dataclass(frozen=True)
class ToolApprovalLimits:
    """Live pending tool approvals allowed per agent and per tenant
    (AUTHZ_PENDING_TOOL_APPROVALS_*; see flows.tools)."""

    per_agent: int = 20
    per_tenant: int = 200


@dataclass(frozen=True)
class Context:
    """Everything a use case needs besides its request."""

    db: Database
    keyring: Keyring
    principal: Principal
    trace_id: str
    # The hot path's cache (None: always read the database).
    cache: StateCache | None = None
    code_limits: CodeAttemptLimits = CodeAttemptLimits()
    tool_limits: ToolApprovalLimits = ToolApprovalLimits()

    @property
    def tenant_id(self) -> str:
        return self.principal.tenant_id
