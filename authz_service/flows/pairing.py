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

One-statement paths (#6): a stranger's request (``_request_fresh``) and a
decision on a live request that needs one approval and has no votes
(``_decide_single``) are decided here and written by one guarded SQL function
each (migration 0010), which takes the same locks and writes nothing if what
the decision used has moved; what they decide on is read in one statement or
remembered by the process (``cache.PairingMemo``). When they decline, the
general path below runs, in one transaction, and handles every case.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from ..domain import ids, messages
from ..domain.autoapprove import Requester, matching_rule
from ..domain.errors import (
    AuthzError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from ..domain.model import (
    Approval,
    ApprovalAction,
    ApprovalStatus,
    Channel,
    DmPolicy,
    Role,
    SubjectSource,
    SubjectStatus,
)
from ..domain.pairing import Vote, approve_vote, may_resolve, new_approval_id, new_code_seed
from ..domain.policy import CorruptPolicy
from ..domain.tools import check_action
from ..store import queries as q
from . import Context
from .approvals import Button, OwnerNotification, ResolveResult, expire, load_channel, refuse_unless_pending
from .attempts import over_limit

log = logging.getLogger(__name__)


class PairingOutcome:
    CREATED = "created"
    EXISTING = "existing"
    ALREADY_ALLOWED = "already_allowed"
    BLOCKED = "blocked"
    CAPACITY = "capacity"
    NOT_ACCEPTED = "not_accepted"
    AUTO_APPROVED = "auto_approved"


@dataclass(frozen=True)
class PairingResult:
    outcome: str
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
) -> PairingResult:
    """``email`` and ``phone_number``: as the connector reports them, only for
    auto-approve rules; never stored, logged or audited."""
    fast = await _request_fresh(ctx, channel_id, user_id, display_name, first_message, email, phone_number)
    if fast is not None:
        return fast
    t = ctx.tenant_id
    async with ctx.db.tenant(t) as conn:
        channel = await load_channel(conn, t, channel_id, for_update=True)
        ids.user_id(channel.platform, user_id)
        policy = channel.policy
        if policy.dm_policy is not DmPolicy.PAIRING:
            return PairingResult(PairingOutcome.NOT_ACCEPTED)
        now = await q.now(conn)
        # Lock the live request first: a concurrent approve holds it, so the
        # subject read below then sees that approve's outcome, not the old state.
        existing = await q.pending_pairing_for_user(conn, t, channel_id, user_id)
        subject = await q.get_subject(conn, t, channel_id, user_id)
        if subject is not None and subject.status is SubjectStatus.BLOCKED:
            return PairingResult(PairingOutcome.BLOCKED)
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
                if existing["expires_at"] > now:
                    # Same code again, and no second owner notification.
                    return PairingResult(
                        PairingOutcome.EXISTING,
                        code=ctx.keyring.code_from_seed(bytes(existing["code_seed"])),
                        approval_id=existing["approval_id"],
                        expires_at=existing["expires_at"],
                    )
                await expire(ctx, conn, q.approval_from_row(existing))

            if await q.count_live_pending(conn, t, channel_id) >= policy.max_pending:
                return PairingResult(PairingOutcome.CAPACITY, text=messages.CAPACITY)

            seed = new_code_seed()
            code = ctx.keyring.code_from_seed(seed)
            approval = await q.insert_pairing(
                conn, t, new_approval_id(), channel_id, user_id, display_name,
                seed, ctx.keyring.code_hash(t, channel_id, code), policy.pairing_code_ttl_seconds,
                required_approvals=policy.required_approvals,
            )  # fmt: skip
            details = _request_details(
                display_name, approval.expires_at, approval.required_approvals, renewal=renewal
            )
            await q.audit(
                conn, t, "pairing.requested", actor=f"{channel.platform.value}:{user_id}", channel_id=channel_id,
                subject=user_id, approval_id=approval.approval_id, trace_id=ctx.trace_id, details=details,
            )  # fmt: skip

    if auto is not None:
        if ctx.cache is not None:  # read our own write: the next CheckUser here sees the subject
            ctx.cache.forget_tenant(t)
        return auto

    return _created(ctx, channel, approval, code, now, user_id, display_name, first_message, renewal=renewal)


def _created(
    ctx: Context,
    channel: Channel,
    approval: Approval,
    code: str,
    now: datetime,
    user_id: str,
    display_name: str,
    first_message: str,
    *,
    renewal: bool,
) -> PairingResult:
    """A new request's answer: the requester's text and code, and the owner's
    notification with its three buttons."""
    t, policy = ctx.tenant_id, channel.policy
    minutes = _minutes(approval.expires_at, now)
    notification = None
    if policy.owner_id:
        notification = OwnerNotification(
            owner_id=policy.owner_id,
            text=messages.owner_notification(
                channel.channel_id, user_id, display_name, first_message, code, minutes, renewal=renewal
            ),
            buttons=tuple(
                Button(a, messages.BUTTON_LABELS[a], ctx.keyring.callback_payload(t, approval.approval_id, a))
                for a in (ApprovalAction.APPROVE, ApprovalAction.DENY, ApprovalAction.BLOCK)
            ),
        )
    return PairingResult(
        PairingOutcome.CREATED,
        text=messages.pairing_code(
            code, minutes, channel.channel_id, owner_notified=notification is not None
        ),
        code=code,
        approval_id=approval.approval_id,
        expires_at=approval.expires_at,
        notification=notification,
    )


def _request_details(
    display_name: str, expires_at: datetime, required: int, *, renewal: bool
) -> dict[str, object]:
    details: dict[str, object] = {"display_name": display_name, "expires_at": expires_at.isoformat()}
    if renewal:
        details["renewal"] = True
    if required > 1:
        details["required_approvals"] = required
    return details


async def _request_fresh(
    ctx: Context,
    channel_id: str,
    user_id: str,
    display_name: str,
    first_message: str,
    email: str,
    phone_number: str,
) -> PairingResult | None:
    """The common case: a stranger (no subject row, no pending request) on a
    pairing channel with no matching auto-approve rule. One guarded write
    (migration 0010) that refuses if anything it was decided on moved, after
    one read (``authz_check_state``), or none when this process remembers the
    channel (``PairingMemo``; the clock is then the cache's estimate of the
    database's). None: not this case, or the state moved; the caller then runs
    the general path, which handles everything."""
    t, memo = ctx.tenant_id, ctx.memo
    known = memo.channel(t, channel_id) if memo is not None and ctx.cache is not None else None
    if known is not None:
        assert ctx.cache is not None
        channel, policy_json = known
        now = ctx.cache.db_now()
    else:
        row = await q.check_state(ctx.db, t, channel_id, user_id, "")
        if row is None or row["status"] is not None:  # no such channel, or the user has a standing
            return None
        try:
            channel = q.channel_from_row(t, row)
        except CorruptPolicy:
            return None
        policy_json, now = row["policy"], row["now"]
        if ctx.cache is not None:
            ctx.cache.observe_db_clock(now)
        if memo is not None:
            memo.remember_channel(t, channel_id, channel, policy_json)
    policy = channel.policy
    try:
        ids.user_id(channel.platform, user_id)
        requester = Requester(channel.platform, user_id, email, phone_number)
        common = (
            policy.dm_policy is DmPolicy.PAIRING and matching_rule(policy.auto_approve, requester) is None
        )
    except InvalidArgument:
        if known is None:  # judged on the channel as stored now
            raise
        common = False
    if not common:
        if known is not None and memo is not None:  # perhaps stale: the general path reads
            memo.forget_channel(t, channel_id)
        return None
    seed = new_code_seed()
    code = ctx.keyring.code_from_seed(seed)
    ttl = policy.pairing_code_ttl_seconds
    approval = Approval(
        approval_id=new_approval_id(), channel_id=channel_id, user_id=user_id, status=ApprovalStatus.PENDING,
        created_at=now, expires_at=now + timedelta(seconds=ttl), display_name=display_name,
        required_approvals=policy.required_approvals,
    )  # fmt: skip
    outcome = await q.pairing_create(
        ctx.db, t, channel, policy_json, user_id, approval.approval_id, display_name, seed,
        ctx.keyring.code_hash(t, channel_id, code), approval.expires_at, ttl, policy.required_approvals,
        policy.max_pending, f"{channel.platform.value}:{user_id}", ctx.trace_id,
        _request_details(display_name, approval.expires_at, policy.required_approvals, renewal=False),
    )  # fmt: skip
    if outcome != "created":
        if memo is not None and outcome != "state_changed":  # the user's state says nothing of the channel
            memo.forget_channel(t, channel_id)
        return None
    if memo is not None:
        memo.remember_approval(t, approval.approval_id, channel_id)
    return _created(ctx, channel, approval, code, now, user_id, display_name, first_message, renewal=False)


async def _auto_approve(
    ctx: Context,
    conn: asyncpg.Connection,
    channel: Channel,
    existing: asyncpg.Record | None,
    user_id: str,
    display_name: str,
    rule: str,
) -> PairingResult:
    """Approve at once by ``rule`` (a live request of the user's is approved
    rather than left pending). No code, no owner notification."""
    t, actor = ctx.tenant_id, f"auto:{rule}"
    approval = None
    if existing is not None:
        approval = await q.auto_approve_pending(conn, t, existing["approval_id"], actor)
        if approval is None:
            await expire(ctx, conn, q.approval_from_row(existing))
    if approval is None:
        approval = await q.insert_auto_approved_pairing(
            conn, t, new_approval_id(), channel.channel_id, user_id, display_name, actor
        )
    await q.put_subject(
        conn, t, channel.channel_id, user_id, status=SubjectStatus.ALLOWED, source=SubjectSource.PAIRING,
        display_name=display_name, permissions=[], ttl_seconds=channel.policy.pairing_ttl_seconds,
    )  # fmt: skip
    # The rule only: never the reported email or phone number.
    await q.audit(
        conn, t, "pairing.auto_approved", actor=actor, channel_id=channel.channel_id, subject=user_id,
        approval_id=approval.approval_id, trace_id=ctx.trace_id, details={"rule": rule},
    )  # fmt: skip
    log.info(
        "pairing auto-approved",
        extra={"trace_id": ctx.trace_id, "tenant": t, "channel": channel.channel_id, "rule": rule},
    )
    return PairingResult(
        PairingOutcome.AUTO_APPROVED, text=messages.AUTO_APPROVED, approval_id=approval.approval_id
    )


async def _decide_single(
    ctx: Context, approval_id: str, action: ApprovalAction, actor_id: str, reason: str
) -> ResolveResult | None:
    """The common decision: a live pairing request that needs one approval and
    has no votes, decided by someone who may (no refusal to audit). One
    guarded write (migration 0010) that refuses if the request, the channel's
    policy, the tenant's approvers or the user's block moved; after one read
    (``authz_approval_state``), or none when this process created the request
    and remembers its channel (``PairingMemo``). None: not this case, or the
    state moved; the caller then runs the general path, which handles (and
    audits) everything."""
    t, memo = ctx.tenant_id, ctx.memo
    connector = ctx.principal.role is Role.CONNECTOR
    known = approvers = None
    if memo is not None:
        channel_id = memo.approval_channel(t, approval_id)
        known = memo.channel(t, channel_id) if channel_id is not None else None
        approvers = memo.approvers(t) if connector else ()
    if known is not None and approvers is not None:
        channel, policy_json = known
    else:
        known = None
        row = await q.approval_state(ctx.db, t, approval_id)
        if row is None:
            return None
        approval = q.approval_from_row(row["approval"])
        if (
            approval.kind != "pairing"
            or approval.status is not ApprovalStatus.PENDING
            or approval.expires_at <= row["now"]
            or approval.required_approvals != 1
            or approval.approved_by
            or (action is ApprovalAction.APPROVE and row["subject_status"] == SubjectStatus.BLOCKED.value)
        ):
            return None
        try:
            channel = q.channel_from_row(t, row)
        except CorruptPolicy:
            return None
        policy_json, approvers = row["policy"], tuple(row["approvers"] or ())
        if memo is not None:
            memo.remember_channel(t, channel.channel_id, channel, policy_json)
            memo.remember_approvers(t, approvers)
    check_action("pairing", action)
    if connector:
        assert approvers is not None
        if not may_resolve(channel, approvers, actor_id):  # refused and audited by the general path
            if known is not None and memo is not None:  # perhaps stale: the general path reads
                memo.forget_channel(t, channel.channel_id)
                memo.forget_approvers(t)
            return None
        actor = f"{channel.platform.value}:{actor_id}"
    else:
        actor = ctx.principal.actor
    done = await q.pairing_decide(
        ctx.db, t, approval_id, channel, policy_json, approvers if connector else None, action.resulting_status, actor,
        reason, _standing(action, channel), ctx.trace_id, {"reason": reason} if reason else {},
    )  # fmt: skip
    if memo is not None:
        memo.forget_approval(t, approval_id)  # decided, or left to the general path: done with here
        if done is None and known is not None:  # perhaps stale: read next time
            memo.forget_channel(t, channel.channel_id)
            memo.forget_approvers(t)
    return None if done is None else _decided(action, actor, done)


def _standing(action: ApprovalAction, channel: Channel) -> tuple[SubjectStatus, SubjectSource, int] | None:
    """The requester's subject row a decision writes (status, source, TTL in
    seconds; 0: none). DENY writes none: the code is consumed and no record is
    invented."""
    if action is ApprovalAction.APPROVE:
        return SubjectStatus.ALLOWED, SubjectSource.PAIRING, channel.policy.pairing_ttl_seconds
    if action is ApprovalAction.BLOCK:
        return SubjectStatus.BLOCKED, SubjectSource.ADMIN, 0
    return None


def _decided(action: ApprovalAction, actor: str, done: Approval) -> ResolveResult:
    owner_text = messages.owner_outcome(action, actor)
    if action is ApprovalAction.APPROVE and done.required_approvals > 1:
        owner_text += f" ({len(done.approved_by)} of {done.required_approvals} approvals)"
    return ResolveResult(done, messages.requester_outcome(action), owner_text)


async def approval_by_code(
    ctx: Context, conn: asyncpg.Connection, channel_id: str, code: str
) -> tuple[asyncpg.Record | None, AuthzError | None]:
    """Look a pairing code up under the brute-force limits (migration 0005).

    Returns the approval row, or a refusal to raise after commit:
    RESOURCE_EXHAUSTED when the caller's key, the tenant or the channel is over
    its limit of failed lookups (checked before the lookup, so even the right
    code is refused: fail closed), NOT_FOUND for a miss, which is counted in all
    three scopes. The guessed code is never stored, logged or audited."""
    t, limits = ctx.tenant_id, ctx.code_limits
    scopes = [(f"code:key:{ctx.principal.key_id}", limits.per_key), ("code:tenant", limits.per_tenant)]
    # Key and tenant first: a refused guess must not create a row for a made-up channel.
    refusal = await _over_limit(ctx, conn, scopes, channel_id)
    if refusal is None:
        channel_scope = [(f"code:channel:{channel_id}", limits.per_channel)]
        refusal = await _over_limit(ctx, conn, channel_scope, channel_id)
        scopes += channel_scope
    if refusal is not None:
        return None, refusal
    row = await q.approval_by_code(conn, t, channel_id, ctx.keyring.code_hash(t, channel_id, code))
    if row is None:
        await q.count_attempt_failure(conn, t, [s for s, _ in scopes], limits.window_seconds)
        return None, NotFound("no such approval")
    return row, None


async def _over_limit(
    ctx: Context, conn: asyncpg.Connection, scopes: list[tuple[str, int]], channel_id: str
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
    conn: asyncpg.Connection,
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
        if not may_resolve(channel, await q.tenant_approvers(conn, t), actor_id):
            await q.audit(
                conn, t, "approval.unauthorized", actor=actor, channel_id=approval.channel_id,
                subject=approval.user_id, approval_id=approval.approval_id, trace_id=ctx.trace_id,
                details={"action": action.value, "key": ctx.principal.key_id},
            )  # fmt: skip
            return PermissionDenied("this actor is not an approver for the channel"), None
    else:
        actor = ctx.principal.actor
    return await _decide(ctx, conn, channel, approval, action, actor, reason)


async def _stale_votes(
    ctx: Context, conn: asyncpg.Connection, channel: Channel, voters: tuple[str, ...]
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
            key = await q.get_key(conn, t, ident)
            ok = key is not None and key["revoked_at"] is None
        elif kind == channel.platform.value:
            if tenant_approvers is None:
                tenant_approvers = await q.tenant_approvers(conn, t)
            ok = may_resolve(channel, tenant_approvers, ident)
        else:
            ok = False
        if not ok:
            stale.append(voter)
    return stale


async def _decide(
    ctx: Context,
    conn: asyncpg.Connection,
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

    subject = await q.get_subject(conn, t, approval.channel_id, approval.user_id)
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
                if not await q.replace_approval_votes(
                    conn, t, approval.approval_id, approval.approved_by, kept
                ):
                    return FailedPrecondition("approval was resolved concurrently"), None
                vote = approve_vote(required, kept, actor)
        if vote is Vote.RECORDED:
            voted = await q.add_approval_vote(conn, t, approval.approval_id, actor)
            if voted is None:
                return FailedPrecondition("approval was resolved concurrently"), None
            votes = len(voted.approved_by)
            details: dict[str, object] = {"votes": votes, "required_approvals": required}
            if reason:
                details["reason"] = reason
            if dropped:
                details["dropped"] = dropped
            await q.audit(
                conn, t, "pairing.vote", actor=actor, channel_id=approval.channel_id, subject=approval.user_id,
                approval_id=approval.approval_id, trace_id=ctx.trace_id, details=details,
            )  # fmt: skip
            return None, ResolveResult(voted, "", messages.quorum_progress(votes, required, actor))

    done = await q.finish_approval(
        conn, t, approval.approval_id, action.resulting_status, actor, reason, live=True
    )
    if done is None:
        return FailedPrecondition("approval was resolved concurrently"), None
    standing = _standing(action, channel)
    if standing is not None:
        status, source, ttl = standing
        await q.put_subject(
            conn, t, approval.channel_id, approval.user_id, status=status, source=source,
            display_name=approval.display_name, permissions=[], ttl_seconds=ttl,
        )  # fmt: skip
    details = {"reason": reason} if reason else {}
    if required > 1:
        details.update(required_approvals=required, approved_by=list(done.approved_by))
    if dropped:
        details["dropped"] = dropped
    await q.audit(
        conn, t, f"pairing.{done.status.value}", actor=actor, channel_id=approval.channel_id,
        subject=approval.user_id, approval_id=approval.approval_id, trace_id=ctx.trace_id, details=details,
    )  # fmt: skip
    return None, _decided(action, actor, done)
