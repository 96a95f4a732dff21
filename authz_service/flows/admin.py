"""Tenant, key, channel and user management. Every change is audited in the
same transaction as the change itself."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

from ..domain import ids, scope
from ..domain import policy as policy_codec
from ..domain import send as send_policy
from ..domain.errors import FailedPrecondition, InvalidArgument, NotFound
from ..domain.model import (
    Approval,
    Channel,
    ChannelPolicy,
    Platform,
    Role,
    Subject,
    SubjectSource,
    SubjectStatus,
)
from ..domain.policy import CorruptPolicy
from ..store import approvals, audit, channels, keys, subjects, tenants

# Re-exported: the rows and inputs of these flows are the store's dataclasses.
from ..store.approvals import ApprovalPage as ApprovalPage
from ..store.audit import AuditEvent as AuditEvent
from ..store.audit import AuditQuery as AuditQuery
from ..store.audit import PrunedPartition as PrunedPartition
from ..store.channels import ChannelRow
from ..store.db import Connection
from ..store.keys import KeyRow
from ..store.subjects import GroupSender as GroupSender
from ..store.subjects import PutSubjectInput
from ..store.tenants import TenantRow as TenantRow
from . import Context
from .approvals import load_channel
from .auth import new_key

log = logging.getLogger(__name__)


async def _audit(ctx: Context, conn: Connection, event: str, **kw: Any) -> None:
    await audit.record(conn, ctx.tenant_id, event, actor=ctx.principal.actor, trace_id=ctx.trace_id, **kw)


# --- tenants and keys ------------------------------------------------------------


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    role: Role
    name: str
    created_at: datetime
    revoked_at: datetime | None
    secret: str = ""
    channels: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()


def _issued(row: KeyRow, secret: str = "") -> IssuedKey:
    return IssuedKey(
        row.key_id, row.role, row.name, row.created_at, row.revoked_at, secret, row.channels, row.agents
    )


async def create_tenant(ctx: Context, tenant_id: str, display_name: str) -> tuple[TenantRow, IssuedKey]:
    # One transaction: a tenant never exists without its first admin key.
    async with ctx.db.operator(tenant_id) as conn:
        tenant = await tenants.insert(conn, tenant_id, display_name)
        key_id, secret, digest = new_key(tenant_id, ctx.keyring)
        row = await keys.insert(conn, keys.NewKey(tenant_id, key_id, Role.ADMIN, "initial admin", digest))
        await audit.record(conn, tenant_id, "tenant.created", actor="operator", trace_id=ctx.trace_id)
        await audit.record(conn, tenant_id, "key.created", actor="operator", subject=key_id, trace_id=ctx.trace_id,
                      details={"role": "admin"})  # fmt: skip
    return tenant, _issued(row, secret)


async def list_tenants(ctx: Context) -> list[TenantRow]:
    async with ctx.db.operator() as conn:
        return await tenants.list_all(conn)


@dataclass(frozen=True)
class TenantSettings:
    approvers: tuple[str, ...]
    agent_approvers: dict[str, tuple[str, ...]]
    timezone: str = "UTC"


async def get_settings(ctx: Context) -> TenantSettings:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        return TenantSettings(
            await tenants.approvers(conn, ctx.tenant_id),
            await tenants.agent_approvers(conn, ctx.tenant_id),
            await tenants.timezone(conn, ctx.tenant_id),
        )


def normalise_settings(
    approvers: list[str], agent_approvers: dict[str, list[str]], timezone: str
) -> tuple[list[str], dict[str, list[str]], str]:
    """What ``set_settings`` stores: checked (InvalidArgument names the entry), sorted, de-duplicated.
    Also what a ``validate_only`` SetTenantSettings returns."""
    timezone = send_policy.validate_timezone(timezone)
    for i, a in enumerate(approvers):
        ids.qualified_actor(a, f"approvers[{i}]")
    for agent, actors in agent_approvers.items():
        ids.agent_id(agent, f"agent_approvers[{agent}]")
        for j, a in enumerate(actors):
            ids.qualified_actor(a, f"agent_approvers[{agent}][{j}]")
    per_agent = {agent: sorted(set(actors)) for agent, actors in sorted(agent_approvers.items())}
    return sorted(set(approvers)), per_agent, timezone


async def set_settings(
    ctx: Context, approvers: list[str], agent_approvers: dict[str, list[str]], timezone: str = ""
) -> TenantSettings:
    """Replace the tenant's settings, all of them (an empty ``timezone`` is UTC)."""
    approvers, per_agent, timezone = normalise_settings(approvers, agent_approvers, timezone)
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        await tenants.set_approvers(conn, ctx.tenant_id, approvers)
        await tenants.set_agent_approvers(conn, ctx.tenant_id, per_agent)
        # A changed zone is announced to every replica's cache (migration 0008).
        old_timezone = await tenants.set_timezone(conn, ctx.tenant_id, timezone)
        await _audit(
            ctx,
            conn,
            "tenant.approvers_updated",
            details={"approvers": approvers, "agent_approvers": per_agent, "timezone": timezone},
        )
        if old_timezone != timezone:
            await _audit(ctx, conn, "tenant.timezone_updated", details={"from": old_timezone, "to": timezone})
    return await get_settings(ctx)


async def create_key(
    ctx: Context, role: Role, name: str, channels: Sequence[str] = (), agents: Sequence[str] = ()
) -> IssuedKey:
    """A new key; ``channels`` (connector) or ``agents`` (agent) bind it (domain.scope)."""
    bound_channels, bound_agents = scope.binding(role, channels, agents)
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        key_id, secret, digest = new_key(ctx.tenant_id, ctx.keyring)
        new = keys.NewKey(ctx.tenant_id, key_id, role, name, digest, bound_channels, bound_agents)
        row = await keys.insert(conn, new)
        details: dict[str, Any] = {"role": role.value, "name": name}
        if bound_channels:
            details["channels"] = list(bound_channels)
        if bound_agents:
            details["agents"] = list(bound_agents)
        await _audit(ctx, conn, "key.created", subject=key_id, details=details)
    return _issued(row, secret)


async def list_keys(ctx: Context) -> list[IssuedKey]:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        return [_issued(r) for r in await keys.list_all(conn, ctx.tenant_id)]


async def revoke_key(ctx: Context, key_id: str) -> IssuedKey:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        row = await keys.revoke(conn, ctx.tenant_id, key_id)
        if row is None:
            raise NotFound(f"key {key_id!r} not found")
        await _audit(ctx, conn, "key.revoked", subject=key_id)
    return _issued(row)


# --- channels ------------------------------------------------------------------


@dataclass(frozen=True)
class StoredChannel:
    channel: Channel
    updated_at: datetime


def _stored(ctx: Context, row: ChannelRow) -> StoredChannel:
    assert row.updated_at is not None
    try:
        return StoredChannel(row.decode(ctx.tenant_id), row.updated_at)
    except CorruptPolicy:
        raise FailedPrecondition(
            f"channel {row.channel_id!r} has an unreadable policy (it denies everything); set it again"
        ) from None


def normalise_channel(platform: Platform, policy: ChannelPolicy) -> ChannelPolicy:
    """What ``set_channel`` stores (raises InvalidArgument naming the field); also what a
    ``validate_only`` SetChannel returns."""
    return policy_codec.validate(platform, policy)


async def set_channel(
    ctx: Context, channel_id: str, platform: Platform, policy: ChannelPolicy
) -> StoredChannel:
    policy = normalise_channel(platform, policy)
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        row = await channels.upsert(conn, ctx.tenant_id, channel_id, platform, policy)
        await _audit(ctx, conn, "channel.updated", channel_id=channel_id,
                     details={"platform": platform.value, "policy": policy_codec.to_json(policy)})  # fmt: skip
    return _stored(ctx, row)


async def get_channel(ctx: Context, channel_id: str) -> StoredChannel:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        row = await channels.get_row(conn, ctx.tenant_id, channel_id)
    if row is None:
        raise NotFound(f"channel {channel_id!r} not found")
    return _stored(ctx, row)


async def list_channels(ctx: Context) -> list[StoredChannel]:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        return [_stored(ctx, r) for r in await channels.list_rows(conn, ctx.tenant_id)]


async def delete_channel(ctx: Context, channel_id: str) -> bool:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        deleted = await channels.delete(conn, ctx.tenant_id, channel_id)
        if deleted:
            await _audit(ctx, conn, "channel.deleted", channel_id=channel_id)
    return deleted


# --- users -----------------------------------------------------------------------


async def allow_user(
    ctx: Context, channel_id: str, user_id: str, display_name: str, permissions: list[str]
) -> Subject:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        channel = await load_channel(conn, ctx.tenant_id, channel_id, for_update=False)
        ids.user_id(channel.platform, user_id)
        current = await subjects.get(conn, ctx.tenant_id, channel_id, user_id)
        if current is not None and current.status is SubjectStatus.BLOCKED:
            raise InvalidArgument("user_id", "is blocked on this channel; unblock first")
        subject = await subjects.put(
            conn,
            PutSubjectInput(
                ctx.tenant_id,
                channel_id,
                user_id,
                status=SubjectStatus.ALLOWED,
                source=SubjectSource.ADMIN,
                display_name=display_name,
                permissions=tuple(permissions),
            ),
        )
        await _audit(ctx, conn, "user.allowed", channel_id=channel_id, subject=user_id,
                     details={"permissions": permissions})  # fmt: skip
    return subject


async def block_user(ctx: Context, channel_id: str, user_id: str, reason: str) -> Subject:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        channel = await load_channel(conn, ctx.tenant_id, channel_id, for_update=False)
        ids.user_id(channel.platform, user_id)
        subject = await subjects.put(
            conn,
            PutSubjectInput(
                ctx.tenant_id,
                channel_id,
                user_id,
                status=SubjectStatus.BLOCKED,
                source=SubjectSource.ADMIN,
                display_name="",
                permissions=(),
            ),
        )
        # Blocked wins over a pairing in flight: its request can no longer be approved.
        cancelled = await approvals.cancel_pending_for_user(
            conn, ctx.tenant_id, channel_id, user_id, ctx.principal.actor
        )
        await _audit(ctx, conn, "user.blocked", channel_id=channel_id, subject=user_id,
                     details={"reason": reason, "cancelled_approvals": cancelled})  # fmt: skip
    return subject


async def remove_subject(
    ctx: Context,
    channel_id: str,
    user_id: str,
    *,
    status: SubjectStatus,
    source: SubjectSource | None,
    event: str,
) -> bool:
    """Remove (any allow), unpair (pairing allows only) or unblock."""
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        await load_channel(conn, ctx.tenant_id, channel_id, for_update=False)
        removed = await subjects.delete(
            conn, ctx.tenant_id, channel_id, user_id, status=status, source=source
        )
        if removed:
            await _audit(ctx, conn, event, channel_id=channel_id, subject=user_id)
    return removed


_FILTERS: dict[str, tuple[SubjectStatus | None, SubjectSource | None]] = {
    "all": (None, None),
    "allowlisted": (SubjectStatus.ALLOWED, SubjectSource.ADMIN),
    "paired": (SubjectStatus.ALLOWED, SubjectSource.PAIRING),
    "blocked": (SubjectStatus.BLOCKED, None),
}


async def list_users(
    ctx: Context, channel_id: str, which: str, *, after: str = "", limit: int | None = None, query: str = ""
) -> list[Subject]:
    """A channel's users by user id: every one, or ``limit`` after ``after``, matching ``query``."""
    status, source = _FILTERS[which]
    page = subjects.SubjectPage(ctx.tenant_id, channel_id, status, source, after, limit, query)
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        await load_channel(conn, ctx.tenant_id, channel_id, for_update=False)
        return await subjects.list_for_channel(conn, page)


async def add_group_sender(ctx: Context, channel_id: str, group_id: str, user_id: str) -> GroupSender:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        channel = await load_channel(conn, ctx.tenant_id, channel_id, for_update=False)
        ids.user_id(channel.platform, user_id)
        row = await subjects.add_group_sender(conn, ctx.tenant_id, channel_id, group_id, user_id)
        await _audit(ctx, conn, "group_sender.added", channel_id=channel_id, subject=user_id,
                     details={"group_id": group_id})  # fmt: skip
    return row


async def remove_group_sender(ctx: Context, channel_id: str, group_id: str, user_id: str) -> bool:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        removed = await subjects.remove_group_sender(conn, ctx.tenant_id, channel_id, group_id, user_id)
        if removed:
            await _audit(ctx, conn, "group_sender.removed", channel_id=channel_id, subject=user_id,
                         details={"group_id": group_id})  # fmt: skip
    return removed


async def list_group_senders(ctx: Context, channel_id: str, group_id: str) -> list[GroupSender]:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        await load_channel(conn, ctx.tenant_id, channel_id, for_update=False)
        return await subjects.list_group_senders(conn, ctx.tenant_id, channel_id, group_id)


# --- approvals and audit ---------------------------------------------------------


async def list_approvals(ctx: Context, page: ApprovalPage) -> tuple[list[Approval], bool]:
    """One page of ``page.tenant_id``'s approvals (the caller's tenant), and whether more follow."""
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        return await approvals.list_page(conn, replace(page, tenant_id=ctx.tenant_id))


async def get_approval(ctx: Context, approval_id: str) -> Approval:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        approval = await approvals.get(conn, ctx.tenant_id, approval_id)
    if approval is None:
        raise NotFound("no such approval")
    return approval


async def query_audit(ctx: Context, filters: AuditQuery) -> list[AuditEvent]:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        return await audit.query(conn, ctx.tenant_id, filters)


async def prune_audit(ctx: Context, before: date) -> list[PrunedPartition]:
    """Retention across tenants (the operator key): whole months of audit go,
    each affected tenant's trail says so (``audit.pruned``)."""
    async with ctx.db.operator() as conn:
        pruned = await audit.prune(conn, before)
    log.info(
        "audit pruned", extra={"before": before.isoformat(), "partitions": [p.partition for p in pruned]}
    )
    return pruned
