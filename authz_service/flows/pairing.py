"""RequestPairing, and ResolveApproval's decision on a pairing request
(``flows.resolve`` finds the request and calls ``decide``).

Concurrency: RequestPairing locks the channel row, so the per-channel cap and
the one-live-request-per-user rule hold under concurrent calls (backed by a
partial unique index). ResolveApproval locks the approval row and then moves it
out of ``pending`` with a compare-and-set, so two racing resolves produce one
winner. Expiry is always judged by the database clock.

Lifecycle (#5):

* Renewal: a user whose time-limited pairing expired may ask again; the new
  request is an ordinary one (the owner is told it is a renewal) and approving
  it sets a new expiry.
* Quorum: a request captures the channel's ``required_approvals`` when it is
  created. Each APPROVE from a distinct approver is a vote stored on the row
  (``approved_by``, changed under the row lock with a compare-and-set), so
  votes survive restarts and add up across processes; the vote that reaches
  the quorum approves. A repeat vote changes nothing. One DENY or BLOCK ends
  the request at once. The deciding vote checks the earlier ones again
  against the channel's current approvers and keys: votes that no longer
  qualify are dropped, and the request stays pending with the rest.
* Auto-approve: a matching rule (domain.autoapprove) approves at once, as
  ``auto:<rule>``, audited as ``pairing.auto_approved`` with the rule only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime

from ..domain import ids, messages, scope
from ..domain.access import is_channel_approver
from ..domain.autoapprove import Requester, matching_rule
from ..domain.errors import (
    AuthzError,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from ..domain.model import (
    Approval,
    ApprovalAction,
    Channel,
    DmPolicy,
    PairingOutcome,
    Role,
    SubjectSource,
    SubjectStatus,
)
from ..domain.pairing import (
    Vote,
    approve_vote,
    chat_approvers,
    may_resolve,
    new_approval_id,
    new_code_seed,
    request_details,
    standing,
    stored_first_message,
)
from ..domain.tools import check_action
from ..store import approvals, attempts, audit, db, keys, subjects, tenants
from ..store.approvals import AutoApprovedInput, FinishInput, PairingInsertInput, PendingPairing
from ..store.db import Connection
from ..store.subjects import PutSubjectInput
from . import Context
from .approvals import (
    Button,
    OwnerNotification,
    ResolveResult,
    expire,
    load_channel,
    load_channel_for,
    refuse_unless_pending,
)
from .attempts import over_limit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairingResult:
    outcome: PairingOutcome
    text: str = ""
    code: str = ""
    approval_id: str = ""
    expires_at: datetime | None = None
    notification: OwnerNotification | None = None

    @property
    def created(self) -> bool:
        return self.outcome == PairingOutcome.CREATED


def _minutes(expires_at: datetime, now: datetime) -> int:
    return max(1, math.ceil((expires_at - now).total_seconds() / 60))


async def request_pairing(
    ctx: Context,
    channel_id: str,
    user_id: str,
    display_name: str,
    first_message: str,
    *,
    email: str = "",
    phone_number: str = "",
    handle: str = "",
) -> PairingResult:
    """``email`` and ``phone_number``: as the connector reports them, only for
    auto-approve rules; never stored, logged or audited. ``first_message``,
    ``display_name`` and ``handle`` are stored with a new request for its
    approvers (the message cut and made visible), never logged."""
    t = ctx.tenant_id
    async with ctx.db.tenant(t) as conn:
        channel = await load_channel_for(ctx, conn, channel_id, for_update=True)
        ids.user_id(channel.platform, user_id)
        policy = channel.policy
        if policy.dm_policy is not DmPolicy.PAIRING:
            return PairingResult(PairingOutcome.NOT_ACCEPTED)
        now = await db.now(conn)
        # Lock the live request first: a concurrent approve holds it, so the
        # subject read below then sees that approve's outcome, not the old state.
        existing = await approvals.pending_pairing_for_user(conn, t, channel_id, user_id)
        subject = await subjects.get(conn, t, channel_id, user_id)
        if subject is not None and subject.status is SubjectStatus.BLOCKED:
            return PairingResult(PairingOutcome.BLOCKED)
        if policy.approvers_trusted and is_channel_approver(policy, user_id):
            return PairingResult(PairingOutcome.ALREADY_ALLOWED, text=messages.ALREADY_ALLOWED)
        renewal = False
        if subject is not None and subject.status is SubjectStatus.ALLOWED:
            if subject.lapsed(now):
                renewal = True  # allowed but past its expiry: this request renews the pairing
            else:
                return PairingResult(PairingOutcome.ALREADY_ALLOWED, text=messages.ALREADY_ALLOWED)

        rule = matching_rule(policy.auto_approve, Requester(channel.platform, user_id, email, phone_number))
        if rule is not None:
            auto = await _auto_approve(ctx, conn, channel, existing, user_id, display_name, rule)
        else:
            auto = None
            if existing is not None:
                if existing.approval.expires_at > now:
                    # Same code again, and no second owner notification.
                    return PairingResult(
                        PairingOutcome.EXISTING,
                        code=ctx.keyring.code_from_seed(existing.code_seed),
                        approval_id=existing.approval.approval_id,
                        expires_at=existing.approval.expires_at,
                    )
                await expire(ctx, conn, existing.approval)

            if await approvals.count_live_pending(conn, t, channel_id) >= policy.max_pending:
                return PairingResult(PairingOutcome.CAPACITY, text=messages.CAPACITY)

            seed = new_code_seed()
            code = ctx.keyring.code_from_seed(seed)
            new = PairingInsertInput(
                t, new_approval_id(), channel_id, user_id, display_name, seed,
                ctx.keyring.code_hash(t, channel_id, code), policy.pairing_code_ttl_seconds,
                required_approvals=policy.required_approvals, first_message=stored_first_message(first_message),
                handle=handle, platform=channel.platform.value, renewal=renewal,
            )  # fmt: skip
            approval = await approvals.insert_pairing(conn, new)
            details = request_details(
                display_name, approval.expires_at, approval.required_approvals, renewal=renewal
            )
            await audit.record(
                conn, t, "pairing.requested", actor=f"{channel.platform.value}:{user_id}", channel_id=channel_id,
                subject=user_id, approval_id=approval.approval_id, trace_id=ctx.trace_id, details=details,
            )  # fmt: skip
            # Someone is asked in chat (the outbox posts them a copy), or the
            # requester is told how the owner approves from the CLI.
            in_chat = bool(policy.owner_id or policy.approvers) or bool(
                chat_approvers(channel, await tenants.approvers(conn, t))
            )

    if auto is not None:
        if ctx.cache is not None:  # read our own write: the next CheckUser here sees the subject
            ctx.cache.forget_tenant(t)
        return auto

    return _created(ctx, channel, approval, code, now, in_chat=in_chat)


def _created(
    ctx: Context,
    channel: Channel,
    approval: Approval,
    code: str,
    now: datetime,
    *,
    in_chat: bool,
) -> PairingResult:
    """A new request's answer: the requester's text and code, and the owner's
    notification with its three buttons. ``in_chat``: an approver (the owner
    or another) is notified in chat."""
    t, policy = ctx.tenant_id, channel.policy
    minutes = _minutes(approval.expires_at, now)
    notification = None
    if policy.owner_id:
        notification = OwnerNotification(
            owner_id=policy.owner_id,
            text=messages.owner_notification(
                channel.channel_id,
                approval.user_id,
                approval.display_name,
                approval.first_message,
                code,
                minutes,
                renewal=approval.renewal,
                handle=approval.handle,
                platform=approval.platform,
            ),
            buttons=tuple(
                Button(a, messages.BUTTON_LABELS[a], ctx.keyring.callback_payload(t, approval.approval_id, a))
                for a in (ApprovalAction.APPROVE, ApprovalAction.DENY, ApprovalAction.BLOCK)
            ),
        )
    return PairingResult(
        PairingOutcome.CREATED,
        text=messages.pairing_code(code, minutes, channel.channel_id, in_chat=in_chat),
        code=code,
        approval_id=approval.approval_id,
        expires_at=approval.expires_at,
        notification=notification,
    )


async def _auto_approve(
    ctx: Context,
    conn: Connection,
    channel: Channel,
    existing: PendingPairing | None,
    user_id: str,
    display_name: str,
    rule: str,
) -> PairingResult:
    """Approve at once by ``rule`` (a live request of the user's is approved
    rather than left pending). No code, no owner notification."""
    t, actor = ctx.tenant_id, f"auto:{rule}"
    approval = None
    if existing is not None:
        approval = await approvals.auto_approve_pending(conn, t, existing.approval.approval_id, actor)
        if approval is None:
            await expire(ctx, conn, existing.approval)
    if approval is None:
        new = AutoApprovedInput(t, new_approval_id(), channel.channel_id, user_id, display_name, actor)
        approval = await approvals.insert_auto_approved_pairing(conn, new)
    await subjects.put(
        conn,
        PutSubjectInput(
            t,
            channel.channel_id,
            user_id,
            status=SubjectStatus.ALLOWED,
            source=SubjectSource.PAIRING,
            display_name=display_name,
            permissions=(),
            ttl_seconds=channel.policy.pairing_ttl_seconds,
        ),
    )
    # The rule only: never the reported email or phone number.
    await audit.record(
        conn, t, "pairing.auto_approved", actor=actor, channel_id=channel.channel_id, subject=user_id,
        approval_id=approval.approval_id, trace_id=ctx.trace_id, details={"rule": rule, **_key(ctx)},
    )  # fmt: skip
    log.info(
        "pairing auto-approved",
        extra={"trace_id": ctx.trace_id, "tenant": t, "channel": channel.channel_id, "rule": rule},
    )
    return PairingResult(
        PairingOutcome.AUTO_APPROVED, text=messages.AUTO_APPROVED, approval_id=approval.approval_id
    )


def _key(ctx: Context) -> dict[str, str]:
    """Which API key carried a decision, for its audit event (issue #15)."""
    return {"key": ctx.principal.key_id}


def _decided(action: ApprovalAction, actor: str, done: Approval) -> ResolveResult:
    owner_text = messages.owner_outcome(action, actor)
    if action is ApprovalAction.APPROVE and done.required_approvals > 1:
        owner_text += f" ({len(done.approved_by)} of {done.required_approvals} approvals)"
    return ResolveResult(done, messages.requester_outcome(action), owner_text)


async def approval_by_code(
    ctx: Context, conn: Connection, channel_id: str, code: str
) -> tuple[Approval | None, AuthzError | None]:
    """Look a pairing code up under the brute-force limits (migration 0005).

    Returns the approval, or a refusal to raise after commit:
    RESOURCE_EXHAUSTED when the caller's key, the tenant or the channel is over
    its limit of failed lookups (checked before the lookup, so even the right
    code is refused: fail closed), NOT_FOUND for a miss, which is counted in all
    three scopes. The guessed code is never stored, logged or audited."""
    t, limits = ctx.tenant_id, ctx.code_limits
    scopes = [(f"code:key:{ctx.principal.key_id}", limits.per_key), ("code:tenant", limits.per_tenant)]
    # Key and tenant first: a refused guess must not create a row for a made-up channel.
    refusal = await _over_limit(ctx, conn, scopes, channel_id)
    if refusal is None and not scope.channel_in_scope(ctx.principal, channel_id):
        # A bound key guessing on another channel: a miss, as on a made-up
        # channel, without spending that channel's own attempts.
        await attempts.count_failure(conn, t, [s for s, _ in scopes], limits.window_seconds)
        return None, NotFound("no such approval")
    if refusal is None:
        channel_scope = [(f"code:channel:{channel_id}", limits.per_channel)]
        refusal = await _over_limit(ctx, conn, channel_scope, channel_id)
        scopes += channel_scope
    if refusal is not None:
        return None, refusal
    approval = await approvals.by_code(conn, t, channel_id, ctx.keyring.code_hash(t, channel_id, code))
    if approval is None:
        await attempts.count_failure(conn, t, [s for s, _ in scopes], limits.window_seconds)
        return None, NotFound("no such approval")
    return approval, None


async def approval_by_user(ctx: Context, conn: Connection, channel_id: str, user_id: str) -> Approval | None:
    """The user's pending pairing request on the channel (locked), or None. A
    channel outside a bound key's channels has none (as a made-up one)."""
    if not scope.channel_in_scope(ctx.principal, channel_id):
        return None
    pending = await approvals.pending_pairing_for_user(conn, ctx.tenant_id, channel_id, user_id)
    return None if pending is None else pending.approval


async def _over_limit(
    ctx: Context, conn: Connection, scopes: list[tuple[str, int]], channel_id: str
) -> ResourceExhausted | None:
    wait = await over_limit(
        ctx, conn, scopes, event="pairing.code_attempts_exceeded", message="pairing code attempts exceeded",
        channel_id=channel_id, details={"key": ctx.principal.key_id},
    )  # fmt: skip
    return (
        ResourceExhausted(f"too many failed pairing code attempts; try again in {wait} s") if wait else None
    )


async def decide(
    ctx: Context,
    conn: Connection,
    approval: Approval,
    action: ApprovalAction,
    actor_id: str,
    reason: str,
) -> tuple[AuthzError | None, ResolveResult | None]:
    """ResolveApproval for a pairing request (called from ``flows.resolve``
    inside its transaction, with the row locked). Errors that must be
    committed first (expiry, the audit of an unauthorized actor) are returned."""
    check_action("pairing", action)
    t = ctx.tenant_id
    channel = await load_channel(conn, t, approval.channel_id, for_update=False)
    if ctx.principal.role is Role.CONNECTOR:
        actor = f"{channel.platform.value}:{actor_id}"
        if not may_resolve(channel, await tenants.approvers(conn, t), actor_id):
            await audit.record(
                conn, t, "approval.unauthorized", actor=actor, channel_id=approval.channel_id,
                subject=approval.user_id, approval_id=approval.approval_id, trace_id=ctx.trace_id,
                details={"action": action.value, "key": ctx.principal.key_id},
            )  # fmt: skip
            return PermissionDenied("this actor is not an approver for the channel"), None
    else:
        actor = ctx.principal.actor
    return await _decide(ctx, conn, channel, approval, action, actor, reason)


async def _stale_votes(
    ctx: Context, conn: Connection, channel: Channel, voters: tuple[str, ...]
) -> list[str]:
    """The ``voters`` who may no longer resolve the channel's requests: a
    ``<platform>:<user id>`` no longer its owner, a channel approver or a tenant
    approver (``may_resolve``, on the current policy); a ``key:<key id>`` whose
    key is revoked or gone; anything else (fail closed)."""
    t = ctx.tenant_id
    tenant_approvers: tuple[str, ...] | None = None
    stale = []
    for voter in voters:
        kind, _, ident = voter.partition(":")
        if kind == "key":
            key = await keys.get(conn, t, ident)
            ok = key is not None and key.revoked_at is None
        elif kind == channel.platform.value:
            if tenant_approvers is None:
                tenant_approvers = await tenants.approvers(conn, t)
            ok = may_resolve(channel, tenant_approvers, ident)
        else:
            ok = False
        if not ok:
            stale.append(voter)
    return stale


async def _decide(
    ctx: Context,
    conn: Connection,
    channel: Channel,
    approval: Approval,
    action: ApprovalAction,
    actor: str,
    reason: str,
) -> tuple[AuthzError | None, ResolveResult | None]:
    t = ctx.tenant_id
    refusal = await refuse_unless_pending(ctx, conn, approval)
    if refusal is not None:
        return refusal, None

    subject = await subjects.get(conn, t, approval.channel_id, approval.user_id)
    if action is ApprovalAction.APPROVE and subject is not None and subject.status is SubjectStatus.BLOCKED:
        return FailedPrecondition("the user is blocked; unblock them first"), None

    required = approval.required_approvals
    dropped: list[str] = []
    if action is ApprovalAction.APPROVE:
        vote = approve_vote(required, approval.approved_by, actor)
        if vote is Vote.REPEAT:  # idempotent: the same answer, nothing written
            text = messages.quorum_progress(len(approval.approved_by), required, actor)
            return None, ResolveResult(approval, "", text)
        if vote is Vote.FINAL and approval.approved_by:
            # The deciding vote: the earlier ones must still qualify (an approver
            # removed, or a key revoked, since they voted no longer counts).
            dropped = await _stale_votes(ctx, conn, channel, approval.approved_by)
            if dropped:
                kept = tuple(v for v in approval.approved_by if v not in dropped)
                if not await approvals.replace_votes(
                    conn, t, approval.approval_id, approval.approved_by, kept
                ):
                    return FailedPrecondition("approval was resolved concurrently"), None
                vote = approve_vote(required, kept, actor)
        if vote is Vote.RECORDED:
            voted = await approvals.add_vote(conn, t, approval.approval_id, actor)
            if voted is None:
                return FailedPrecondition("approval was resolved concurrently"), None
            votes = len(voted.approved_by)
            details: dict[str, object] = {"votes": votes, "required_approvals": required, **_key(ctx)}
            if reason:
                details["reason"] = reason
            if dropped:
                details["dropped"] = dropped
            await audit.record(
                conn, t, "pairing.vote", actor=actor, channel_id=approval.channel_id, subject=approval.user_id,
                approval_id=approval.approval_id, trace_id=ctx.trace_id, details=details,
            )  # fmt: skip
            return None, ResolveResult(voted, "", messages.quorum_progress(votes, required, actor))

    done = await approvals.finish(
        conn, FinishInput(t, approval.approval_id, action.resulting_status, actor, reason, live=True)
    )
    if done is None:
        return FailedPrecondition("approval was resolved concurrently"), None
    written = standing(action, channel.policy)
    if written is not None:
        status, source, ttl = written
        await subjects.put(
            conn,
            PutSubjectInput(
                t,
                approval.channel_id,
                approval.user_id,
                status=status,
                source=source,
                display_name=approval.display_name,
                permissions=(),
                ttl_seconds=ttl,
            ),
        )
    details = {"reason": reason} if reason else {}
    details.update(_key(ctx))
    if required > 1:
        details.update(required_approvals=required, approved_by=list(done.approved_by))
    if dropped:
        details["dropped"] = dropped
    await audit.record(
        conn, t, f"pairing.{done.status.value}", actor=actor, channel_id=approval.channel_id,
        subject=approval.user_id, approval_id=approval.approval_id, trace_id=ctx.trace_id, details=details,
    )  # fmt: skip
    return None, _decided(action, actor, done)
