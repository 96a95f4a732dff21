"""Pairing's one-statement calls (migration 0010): their SQL functions set
the tenant themselves and run in the statement's own transaction, so they
take the Database, not a connection."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..domain.model import Approval, ApprovalStatus, Channel, SubjectSource, SubjectStatus
from .approvals import approval_from_row
from .channels import ChannelRow
from .db import Database


@dataclass(frozen=True, slots=True)
class PairingCreateInput:
    """A stranger's pairing request, decided on ``channel`` as stored
    (``policy_json`` exactly) at the clock reading behind ``expires_at``."""

    tenant_id: str
    channel: Channel
    policy_json: str
    user_id: str
    approval_id: str
    display_name: str
    code_seed: bytes
    code_hash: bytes
    expires_at: datetime
    ttl_seconds: int
    required_approvals: int
    max_pending: int
    actor: str
    trace_id: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PairingDecideInput:
    """The single decision on a live request, decided on ``channel`` as stored
    and (for a press in chat) the tenant's ``approvers``; ``subject`` is the
    requester's standing it writes (status, source, TTL in seconds), if any."""

    tenant_id: str
    approval_id: str
    channel: Channel
    policy_json: str
    approvers: tuple[str, ...] | None
    status: ApprovalStatus
    actor: str
    reason: str
    subject: tuple[SubjectStatus, SubjectSource, int] | None
    trace_id: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ApprovalState:
    """ResolveApproval's read: the approval, its channel as stored, the
    database's clock, the tenant's approvers and the requester's standing
    (``subject_status``, None: no subject row)."""

    approval: Approval
    channel: ChannelRow
    now: datetime
    approvers: tuple[str, ...]
    subject_status: str | None


async def create(db: Database, new: PairingCreateInput) -> str:
    """RequestPairing's common case in one statement (migration 0010): the
    request and its audit row, written only if the user still has no subject
    row and no pending request, the channel's platform is still
    ``channel.platform`` and its policy ``policy_json``, it is under its cap and ``expires_at`` is within 2 s of the database's
    ``now()`` + ``ttl_seconds``. Returns ``created``, or why nothing was
    written: ``policy_changed``, ``state_changed`` or ``clock_skew``."""
    row = await db.fetchrow_as(
        new.tenant_id,
        """SELECT authz_pairing_create($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                                       $15, $16::jsonb)""",
        new.tenant_id, new.channel.channel_id, new.channel.platform.value, new.policy_json, new.user_id,
        new.approval_id, new.display_name, new.code_seed, new.code_hash, new.expires_at, new.ttl_seconds,
        new.required_approvals, new.max_pending, new.actor, new.trace_id, json.dumps(new.details),
    )  # fmt: skip
    assert row is not None
    return str(row[0])


async def approval_state(db: Database, tenant_id: str, approval_id: str) -> ApprovalState | None:
    """ResolveApproval's read in one round trip (migration 0010). None: no such
    approval in the tenant."""
    row = await db.fetchrow_as(
        tenant_id, "SELECT * FROM authz_approval_state($1, $2)", tenant_id, approval_id
    )
    if row is None:
        return None
    return ApprovalState(
        approval_from_row(row["approval"]),
        ChannelRow(row["channel_id"], row["platform"], row["policy"]),
        row["now"],
        tuple(row["approvers"] or ()),
        row["subject_status"],
    )


async def decide(db: Database, d: PairingDecideInput) -> Approval | None:
    """The single decision on a live pairing request with no votes that needs
    one (migration 0010): the request, the requester's ``subject`` (status,
    source, TTL in seconds) and the audit row in one statement, written only if
    the request is on ``channel``, whose platform is still ``channel.platform``
    and policy ``policy_json``, and the tenant's approvers are still
    ``approvers`` (None: not checked). None: the state moved (nothing
    was written)."""
    status_, source, ttl = (
        (None, None, 0) if d.subject is None else (d.subject[0].value, d.subject[1].value, d.subject[2])
    )
    row = await db.fetchrow_as(
        d.tenant_id,
        """SELECT * FROM authz_pairing_decide($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, $12, $13,
                                              $14::jsonb)""",
        d.tenant_id, d.approval_id, d.channel.channel_id, d.channel.platform.value, d.policy_json,
        None if d.approvers is None else list(d.approvers), d.status.value, d.actor, d.reason, status_, source, ttl,
        d.trace_id, json.dumps(d.details),
    )  # fmt: skip
    return None if row is None else approval_from_row(row)
