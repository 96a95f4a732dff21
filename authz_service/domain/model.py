"""Domain types: what the service reasons about, independent of gRPC and SQL."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Platform(enum.StrEnum):
    TELEGRAM = "telegram"
    SLACK = "slack"
    DISCORD = "discord"
    WHATSAPP = "whatsapp"


class ChatKind(enum.StrEnum):
    DIRECT = "direct"
    GROUP = "group"


class DmPolicy(enum.StrEnum):
    PAIRING = "pairing"
    ALLOWLIST = "allowlist"
    OPEN = "open"
    DISABLED = "disabled"


class GroupPolicy(enum.StrEnum):
    OPEN = "open"
    ALLOWLIST = "allowlist"
    DISABLED = "disabled"


class Role(enum.StrEnum):
    CONNECTOR = "connector"
    APPROVER = "approver"
    ADMIN = "admin"
    # Agent runtimes: may ask for approvals, never give them.
    AGENT = "agent"
    # Not stored: the deployment's operator key, which manages tenants.
    OPERATOR = "operator"


class SubjectStatus(enum.StrEnum):
    ALLOWED = "allowed"
    BLOCKED = "blocked"


class SubjectSource(enum.StrEnum):
    ADMIN = "admin"
    PAIRING = "pairing"


class ApprovalStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    BLOCKED = "blocked"
    EXPIRED = "expired"


class ApprovalAction(enum.StrEnum):
    APPROVE = "approve"
    DENY = "deny"
    BLOCK = "block"
    # Tool approvals: approve and grant the exact call from now on.
    ALWAYS_ALLOW = "always_allow"

    @property
    def resulting_status(self) -> ApprovalStatus:
        return {
            ApprovalAction.APPROVE: ApprovalStatus.APPROVED,
            ApprovalAction.DENY: ApprovalStatus.DENIED,
            ApprovalAction.BLOCK: ApprovalStatus.BLOCKED,
            ApprovalAction.ALWAYS_ALLOW: ApprovalStatus.APPROVED,
        }[self]


class Decision(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    PAIRING_REQUIRED = "pairing_required"
    BLOCKED = "blocked"
    RATE_LIMITED = "rate_limited"


class PairingOutcome(enum.StrEnum):
    """What RequestPairing did (``authz.v1.PairingOutcome``)."""

    CREATED = "created"
    EXISTING = "existing"
    ALREADY_ALLOWED = "already_allowed"
    BLOCKED = "blocked"
    CAPACITY = "capacity"
    NOT_ACCEPTED = "not_accepted"
    AUTO_APPROVED = "auto_approved"


class RedeemOutcome(enum.StrEnum):
    """What RedeemInvite did (``authz.v1.InviteOutcome``)."""

    ACCEPTED = "accepted"
    ALREADY_ALLOWED = "already_allowed"
    INVALID = "invalid"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    REFUSED = "refused"


class SendDefault(enum.StrEnum):
    DENY = "deny"
    ALLOW = "allow"


DEFAULT_PAIRING_CODE_TTL = 300
DEFAULT_MAX_PENDING = 20
DEFAULT_AGENT = "default"


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A weekly window: ``days`` (empty: every day), minutes since midnight.

    ``end`` is exclusive; ``end <= start`` wraps past midnight and the window
    belongs to the day it starts on.
    """

    days: tuple[str, ...]
    start_minute: int
    end_minute: int


@dataclass(frozen=True, slots=True)
class TimeRestriction:
    """These targets are sendable only inside one of the windows."""

    targets: tuple[str, ...]
    windows: tuple[TimeWindow, ...]


@dataclass(frozen=True, slots=True)
class SendPolicy:
    """The seed's send_policy. Deny wins over allow; ``default`` covers the rest."""

    default: SendDefault = SendDefault.DENY
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    time_restrictions: tuple[TimeRestriction, ...] = ()


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``burst`` at once, refilled at ``max_messages_per_hour``."""

    max_messages_per_hour: int
    burst: int


@dataclass(frozen=True, slots=True)
class GroupRule:
    """Rules for one group (or "*"). ``None`` and empty lists inherit."""

    policy: GroupPolicy | None = None
    require_mention: bool | None = None
    mention_patterns: tuple[str, ...] = ()
    allowed_commands: tuple[str, ...] = ()
    denied_commands: tuple[str, ...] = ()
    rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class Binding:
    """Routes (user, group) to an agent; ``"*"`` matches anything."""

    user_id: str = "*"
    group_id: str = "*"
    agent_id: str = ""
    permissions: tuple[str, ...] = ()
    tools_allowed: tuple[str, ...] = ()
    tools_denied: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AutoApprove:
    """Off unless a list is non-empty."""

    phone_patterns: tuple[str, ...] = ()
    email_domains: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.phone_patterns or self.email_domains)


@dataclass(frozen=True, slots=True)
class ChannelPolicy:
    """Everything configured for one channel. Defaults fail closed."""

    dm_policy: DmPolicy = DmPolicy.PAIRING
    group_policy: GroupPolicy = GroupPolicy.ALLOWLIST
    require_mention: bool = True
    owner_id: str = ""
    approvers: tuple[str, ...] = ()
    pairing_code_ttl_seconds: int = DEFAULT_PAIRING_CODE_TTL
    max_pending: int = DEFAULT_MAX_PENDING
    pairing_ttl_seconds: int = 0
    agent_id: str = DEFAULT_AGENT
    send_policy: SendPolicy | None = None
    agent_send_policies: dict[str, SendPolicy] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    mention_patterns: tuple[str, ...] = ()
    groups: dict[str, GroupRule] = field(default_factory=dict)
    bindings: tuple[Binding, ...] = ()
    required_approvals: int = 1
    auto_approve: AutoApprove = AutoApprove()
    rate_limit: RateLimit | None = None
    # The owner and ``approvers`` reach the agent in DMs without pairing.
    approvers_trusted: bool = True


@dataclass(frozen=True, slots=True)
class Channel:
    tenant_id: str
    channel_id: str
    platform: Platform
    policy: ChannelPolicy
    # The tenant's IANA time zone (TenantSettings.timezone), loaded with the
    # channel so cached send decisions judge time windows without a lookup.
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class Subject:
    """A user's standing on one channel, DM scope."""

    channel_id: str
    user_id: str
    status: SubjectStatus
    source: SubjectSource
    display_name: str = ""
    permissions: tuple[str, ...] = ()
    expires_at: datetime | None = None
    updated_at: datetime | None = None

    def lapsed(self, now: datetime | None) -> bool:
        """An expiring entry past its expiry. Without a clock (``None``) an
        expiring entry counts as lapsed: fail closed."""
        return self.expires_at is not None and (now is None or self.expires_at <= now)

    def admitted(self, now: datetime | None) -> bool:
        """Allowed, and not lapsed."""
        return self.status is SubjectStatus.ALLOWED and not self.lapsed(now)


@dataclass(frozen=True, slots=True)
class Approval:
    approval_id: str
    channel_id: str
    user_id: str
    status: ApprovalStatus
    created_at: datetime
    expires_at: datetime
    display_name: str = ""
    resolved_at: datetime | None = None
    resolved_by: str = ""
    kind: str = "pairing"
    reason: str = ""
    tool: ToolCall | None = None
    redeemed_at: datetime | None = None
    grant_id: str = ""
    required_approvals: int = 1
    approved_by: tuple[str, ...] = ()
    # Pairing requests: what the approver decides on (#17), as stored: the
    # first message cut and made visible (domain/display.py), the @handle
    # without "@", and the channel's platform when it was asked.
    first_message: str = ""
    handle: str = ""
    platform: str = ""
    renewal: bool = False  # a pairing request renewing a lapsed pairing


class Risk(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The exact call a tool approval is bound to."""

    tool_name: str
    arguments: str  # canonical JSON
    digest: bytes  # see domain.tools.call_digest
    agent_id: str = ""
    session_id: str = ""
    risk: Risk = Risk.MEDIUM
    summary: str = ""
    request_key: str = ""  # the caller's idempotency key (approvals only, not grants)


@dataclass(frozen=True, slots=True)
class Grant:
    """A standing "always allow" for one agent's exact tool call."""

    grant_id: str
    agent_id: str
    tool: ToolCall
    approval_id: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None = None
    revoked_by: str = ""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: resolved from the API key in call metadata."""

    tenant_id: str
    role: Role
    key_id: str
    # A connector key's channels and an agent key's agent ids; empty: not bound
    # (keys made before binding). See domain.scope.
    channels: frozenset[str] = frozenset()
    agents: frozenset[str] = frozenset()

    @property
    def actor(self) -> str:
        return "operator" if self.role is Role.OPERATOR else f"key:{self.key_id}"
