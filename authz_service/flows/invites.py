"""Invite codes: CreateInvite, ListInvites, RevokeInvite (admin) and
RedeemInvite (connector).

Redeeming, in one transaction:

1. the channel must exist and take direct messages (else REFUSED, silently);
2. a blocked user is REFUSED; a user already allowed (and not expired) is
   ALREADY_ALLOWED, and no use is consumed;
3. the attempt limits (migration 0005's counters, scopes
   ``invite:channel:<channel>`` and ``invite:user:<channel>:<user>``) are
   checked before the lookup: over a limit even the right code is refused
   (TOO_MANY_ATTEMPTS), audited once per window with the scope kinds only
   (``invite:user``: never the user id, which the subject already names);
4. the code's keyed hash is looked up and the invite row locked; unknown,
   expired, used-up and revoked codes all answer INVALID and count as a failure
   in both scopes;
5. a use is taken with a compare-and-set (``uses < max_uses``): of two
   concurrent redeems of a single-use code, exactly one succeeds; the user is
   allowed (source admin, the invite's permissions, the channel's
   ``pairing_ttl_seconds``) and ``invite.redeemed`` names the invite.

Codes are never stored, logged or audited; only their keyed hash is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..domain import ids, messages, scope
from ..domain.errors import NotFound
from ..domain.invites import (
    Invite,
    format_invite_code,
    invite_limits,
    new_invite_code,
    new_invite_id,
)
from ..domain.model import DmPolicy, RedeemOutcome, SubjectSource, SubjectStatus
from ..domain.policy import CorruptPolicy
from ..store import attempts, audit, channels, db, invites, subjects
from ..store.invites import InviteInput
from ..store.subjects import PutSubjectInput
from . import Context
from .approvals import load_channel
from .attempts import over_limit


@dataclass(frozen=True)
class RedeemResult:
    outcome: RedeemOutcome
    text: str = ""
    retry_after_seconds: int = 0


@dataclass(frozen=True)
class CreatedInvite:
    invite: Invite
    code: str  # "XXXX-XXXX-XXXX-XXXX", shown once


async def create_invite(
    ctx: Context,
    channel_id: str,
    *,
    max_uses: int,
    ttl_seconds: int,
    permissions: list[str],
    note: str,
) -> CreatedInvite:
    uses, ttl = invite_limits(max_uses, ttl_seconds)
    t = ctx.tenant_id
    code = new_invite_code()
    async with ctx.db.tenant(t) as conn:
        await load_channel(conn, t, channel_id, for_update=False)
        new = InviteInput(
            t, new_invite_id(), channel_id, ctx.keyring.invite_hash(t, channel_id, code),
            max_uses=uses, ttl_seconds=ttl, permissions=tuple(permissions), note=note, created_by=ctx.principal.actor,
        )  # fmt: skip
        invite = await invites.insert(conn, new)
        await audit.record(
            conn, t, "invite.created", actor=ctx.principal.actor, channel_id=channel_id, trace_id=ctx.trace_id,
            details={
                "invite_id": invite.invite_id, "max_uses": invite.max_uses,
                "expires_at": invite.expires_at.isoformat(), "permissions": list(invite.permissions),
            },
        )  # fmt: skip
    return CreatedInvite(invite, format_invite_code(code))


async def list_invites(ctx: Context, channel_id: str, include_inactive: bool) -> list[Invite]:
    async with ctx.db.tenant(ctx.tenant_id) as conn:
        return await invites.list_recent(conn, ctx.tenant_id, channel_id, include_inactive)


async def revoke_invite(ctx: Context, invite_id: str) -> Invite:
    """Idempotent: revoking a revoked invite returns it unchanged (audited once)."""
    t = ctx.tenant_id
    async with ctx.db.tenant(t) as conn:
        found = await invites.revoke(conn, t, invite_id)
        if found is None:
            raise NotFound("no such invite")
        invite, changed = found
        if changed:
            await audit.record(
                conn, t, "invite.revoked", actor=ctx.principal.actor, channel_id=invite.channel_id,
                trace_id=ctx.trace_id, details={"invite_id": invite_id, "uses": invite.uses},
            )  # fmt: skip
    return invite


async def redeem_invite(
    ctx: Context, channel_id: str, user_id: str, code: str, display_name: str
) -> RedeemResult:
    """``code``: canonical (domain.invites.normalize_invite_code)."""
    t = ctx.tenant_id
    async with ctx.db.tenant(t) as conn:
        try:
            # Outside a bound key's channels: the answer of an unknown channel.
            channel = (
                await channels.get(conn, t, channel_id)
                if scope.channel_in_scope(ctx.principal, channel_id)
                else None
            )
        except CorruptPolicy:
            channel = None  # fail closed
        if channel is None or channel.policy.dm_policy is DmPolicy.DISABLED:
            return RedeemResult(RedeemOutcome.REFUSED)
        ids.user_id(channel.platform, user_id)
        subject = await subjects.get(conn, t, channel_id, user_id)
        if subject is not None and subject.status is SubjectStatus.BLOCKED:
            return RedeemResult(RedeemOutcome.REFUSED)
        now = await db.now(conn)
        if subject is not None and subject.admitted(now):
            return RedeemResult(RedeemOutcome.ALREADY_ALLOWED, messages.ALREADY_ALLOWED)

        limits = ctx.code_limits
        scopes = [
            (f"invite:channel:{channel_id}", limits.per_channel),
            (f"invite:user:{channel_id}:{user_id}", limits.per_key),
        ]
        wait = await over_limit(
            ctx, conn, scopes, event="invite.attempts_exceeded", message="invite attempts exceeded",
            channel_id=channel_id, subject=user_id,
        )  # fmt: skip
        if wait:
            return RedeemResult(
                RedeemOutcome.TOO_MANY_ATTEMPTS,
                messages.invite_attempts_exceeded(wait),
                retry_after_seconds=wait,
            )

        invite = await invites.by_hash(conn, t, channel_id, ctx.keyring.invite_hash(t, channel_id, code))
        used = await invites.use(conn, t, invite.invite_id) if invite is not None else None
        if used is None:
            await attempts.count_failure(conn, t, [s for s, _ in scopes], limits.window_seconds)
            return RedeemResult(RedeemOutcome.INVALID, messages.INVITE_INVALID)

        await subjects.put(
            conn,
            PutSubjectInput(
                t,
                channel_id,
                user_id,
                status=SubjectStatus.ALLOWED,
                source=SubjectSource.ADMIN,
                display_name=display_name,
                permissions=tuple(used.permissions),
                ttl_seconds=channel.policy.pairing_ttl_seconds,
            ),
        )
        await audit.record(
            conn, t, "invite.redeemed", actor=f"{channel.platform.value}:{user_id}", channel_id=channel_id,
            subject=user_id, trace_id=ctx.trace_id,
            details={
                "invite_id": used.invite_id, "uses": used.uses, "max_uses": used.max_uses, "key": ctx.principal.key_id,
                "permissions": list(used.permissions),
            },
        )  # fmt: skip
    if ctx.cache is not None:  # read our own write: the next CheckUser here sees the subject
        ctx.cache.forget_tenant(t)
    return RedeemResult(RedeemOutcome.ACCEPTED, messages.INVITE_ACCEPTED)
