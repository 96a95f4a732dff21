"""Tenant, key, channel and user management. Every change is audited in the
same transaction as the change itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ..domain import ids
from ..domain import policy as policy_codec
from ..domain import send as send_policy
from ..domain.errors import FailedPrecondition, InvalidArgument, NotFound
from ..domain.model import (
    Approval,
    ApprovalStatus,
    Channel,
    ChannelPolicy,
    Platform,
    Role,
    Subject,
    SubjectSource,
    SubjectStatus,
)
from ..domain.policy import CorruptPolicy
from ..store import queries as q
from . import Context
from .approvals import load_channel
from .auth import new_key


async def _audit(ctx: Context, conn: asyncpg.Connection, event: str, **kw: Any) -> None:
    await q.audit(conn, ctx.tenant_id, event, actor=ctx.principal.actor, trace_id=ctx.trace_id, **kw)


# --- tenants and keys ------------------------------------------------------------


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    role: Role
    name: str
    created_at: datetime
    revoked_at: datetime | None
    secret: str = ""


def _issued(row: asyncpg.Record, secret: str = "") -> IssuedKey:
    return IssuedKey(
        row["key_id"], Role(row["role"]), row["name"], row["created_at"], row["revoked_at"], secret
    )


async def create_tenant(ctx: Context, tenant_id: str, display_name: str) -> tuple[asyncpg.Record, IssuedKey]:
    # One transaction: a tenant never exists without its first admin key.
    async with ctx.db.operator(tenant_id) as conn:
        tenant = await q.insert_tenant(conn, tenant_id, display_name)
        key_id, secret, digest = new_key(tenant_id)
        row = await q.insert_key(conn, tenant_id, key_id, Role.ADMIN, "initial admin", digest)
        await q.audit(conn, tenant_id, "tenant.created", actor="operator", trace_id=ctx.trace_id)
        await q.audit(conn, tenant_id, "key.created", actor="operator", subject=key_id, trace_id=ctx.trace_id,
                      details={"role": "admin"})  # fmt: skip
    return tenant, _issued(row, secret)


async def list_tenants(ctx: Context) -> list[asyncpg.Record]:
    async with ctx.db.operator() as conn:
        return await q.list_tenants(conn)


@dataclass(frozen=True)
class TenantSettings:
    approvers: tuple[str, ...]
    agent_approvers: dict[str, tuple[str, ...]]
    timezone: str = "UTC"


async def get_settings(ctx: Context) -> TenantSettings:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        return TenantSettings(
            await q.tenant_approvers(conn, ctx.tenant_id),
            await q.agent_approvers(conn, ctx.tenant_id),
            await q.tenant_timezone(conn, ctx.tenant_id),
        )


async def set_settings(
    ctx: Context, approvers: list[str], agent_approvers: dict[str, list[str]], timezone: str = ""
) -> TenantSettings:
    """Replace the tenant's settings, all of them (an empty ``timezone`` is UTC)."""
    timezone = send_policy.validate_timezone(timezone)
    for a in approvers:
        ids.qualified_actor(a)
    for agent, actors in agent_approvers.items():
        ids.agent_id(agent, "agent_approvers")
        for a in actors:
            ids.qualified_actor(a, f"agent_approvers[{agent}]")
    approvers = sorted(set(approvers))
    per_agent = {agent: sorted(set(actors)) for agent, actors in sorted(agent_approvers.items())}
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        await q.set_tenant_approvers(conn, ctx.tenant_id, approvers)
        await q.set_agent_approvers(conn, ctx.tenant_id, per_agent)
        # A changed zone is announced to every replica's cache (migration 0008).
        old_timezone = await q.set_tenant_timezone(conn, ctx.tenant_id, timezone)
        await _audit(
            ctx,
            conn,
            "tenant.approvers_updated",
            details={"approvers": approvers, "agent_approvers": per_agent, "timezone": timezone},
        )
        if old_timezone != timezone:
            await _audit(ctx, conn, "tenant.timezone_updated", details={"from": old_timezone, "to": timezone})
    return await get_settings(ctx)


async def create_key(ctx: Context, role: Role, name: str) -> IssuedKey:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        key_id, secret, digest = new_key(ctx.tenant_id)
        row = await q.insert_key(conn, ctx.tenant_id, key_id, role, name, digest)
        await _audit(ctx, conn, "key.created", subject=key_id, details={"role": role.value, "name": name})
    return _issued(row, secret)


async def list_keys(ctx: Context) -> list[IssuedKey]:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        return [_issued(r) for r in await q.list_keys(conn, ctx.tenant_id)]


async def revoke_key(ctx: Context, key_id: str) -> IssuedKey:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        row = await q.revoke_key(conn, ctx.tenant_id, key_id)
        if row is None:
            raise NotFound(f"key {key_id!r} not found")
        await _audit(ctx, conn, "key.revoked", subject=key_id)
    return _issued(row)


# --- channels ------------------------------------------------------------------


@dataclass(frozen=True)
class StoredChannel:
    channel: Channel
    updated_at: datetime


def _stored(ctx: Context, row: asyncpg.Record) -> StoredChannel:
    try:
        return StoredChannel(q.channel_from_row(ctx.tenant_id, row), row["updated_at"])
    except CorruptPolicy:
        raise FailedPrecondition(
            f"channel {row['channel_id']!r} has an unreadable policy (it denies everything); set it again"
        ) from None


async def set_channel(
    ctx: Context, channel_id: str, platform: Platform, policy: ChannelPolicy
) -> StoredChannel:
    policy = policy_codec.validate(platform, policy)
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        row = await q.upsert_channel(conn, ctx.tenant_id, channel_id, platform, policy)
        await _audit(ctx, conn, "channel.updated", channel_id=channel_id,
                     details={"platform": platform.value, "policy": policy_codec.to_json(policy)})  # fmt: skip
    return _stored(ctx, row)


async def get_channel(ctx: Context, channel_id: str) -> StoredChannel:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        row = await q.get_channel_row(conn, ctx.tenant_id, channel_id)
    if row is None:
        raise NotFound(f"channel {channel_id!r} not found")
    return _stored(ctx, row)


async def list_channels(ctx: Context) -> list[StoredChannel]:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        return [_stored(ctx, r) for r in await q.list_channel_rows(conn, ctx.tenant_id)]


async def delete_channel(ctx: Context, channel_id: str) -> bool:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        deleted = await q.delete_channel(conn, ctx.tenant_id, channel_id)
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
        current = await q.get_subject(conn, ctx.tenant_id, channel_id, user_id)
        if current is not None and current.status is SubjectStatus.BLOCKED:
            raise InvalidArgument("user_id", "is blocked on this channel; unblock first")
        subject = await q.put_subject(
            conn, ctx.tenant_id, channel_id, user_id, status=SubjectStatus.ALLOWED,
            source=SubjectSource.ADMIN, display_name=display_name, permissions=permissions,
        )  # fmt: skip
        await _audit(ctx, conn, "user.allowed", channel_id=channel_id, subject=user_id,
                     details={"permissions": permissions})  # fmt: skip
    return subject


async def block_user(ctx: Context, channel_id: str, user_id: str, reason: str) -> Subject:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        channel = await load_channel(conn, ctx.tenant_id, channel_id, for_update=False)
        ids.user_id(channel.platform, user_id)
        subject = await q.put_subject(
            conn, ctx.tenant_id, channel_id, user_id, status=SubjectStatus.BLOCKED,
            source=SubjectSource.ADMIN, display_name="", permissions=[],
        )  # fmt: skip
        # Blocked wins over a pairing in flight: its request can no longer be approved.
        cancelled = await q.cancel_pending_for_user(
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
        removed = await q.delete_subject(
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


async def list_users(ctx: Context, channel_id: str, which: str) -> list[Subject]:
    status, source = _FILTERS[which]
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        await load_channel(conn, ctx.tenant_id, channel_id, for_update=False)
        return await q.list_subjects(conn, ctx.tenant_id, channel_id, status, source)


async def add_group_sender(ctx: Context, channel_id: str, group_id: str, user_id: str) -> asyncpg.Record:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        channel = await load_channel(conn, ctx.tenant_id, channel_id, for_update=False)
        ids.user_id(channel.platform, user_id)
        row = await q.add_group_sender(conn, ctx.tenant_id, channel_id, group_id, user_id)
        await _audit(ctx, conn, "group_sender.added", channel_id=channel_id, subject=user_id,
                     details={"group_id": group_id})  # fmt: skip
    return row


async def remove_group_sender(ctx: Context, channel_id: str, group_id: str, user_id: str) -> bool:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        removed = await q.remove_group_sender(conn, ctx.tenant_id, channel_id, group_id, user_id)
        if removed:
            await _audit(ctx, conn, "group_sender.removed", channel_id=channel_id, subject=user_id,
                         details={"group_id": group_id})  # fmt: skip
    return removed


async def list_group_senders(ctx: Context, channel_id: str, group_id: str) -> list[asyncpg.Record]:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        await load_channel(conn, ctx.tenant_id, channel_id, for_update=False)
        return await q.list_group_senders(conn, ctx.tenant_id, channel_id, group_id)


# --- approvals and audit ---------------------------------------------------------


async def list_approvals(
    ctx: Context, channel_id: str, status: ApprovalStatus, limit: int, kind: str = ""
) -> list[Approval]:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        rows = await q.list_approvals(conn, ctx.tenant_id, channel_id, status, limit, kind)
    return [q.approval_from_row(r) for r in rows]


async def get_approval(ctx: Context, approval_id: str) -> Approval:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        row = await q.get_approval(conn, ctx.tenant_id, approval_id)
    if row is None:
        raise NotFound("no such approval")
    return q.approval_from_row(row)


async def query_audit(ctx: Context, **filters: Any) -> list[asyncpg.Record]:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        return await q.query_audit(conn, ctx.tenant_id, **filters)
