"""Pairing's one-statement paths (#6): the common cases of RequestPairing
and ResolveApproval, each written by one guarded SQL function (migration
0010) after one read, or none when this process remembers what they were
decided on (``cache.PairingMemo``).

Each operation has one entry point, ``request`` and ``decide``. It returns
what it wrote, or ``TAKE_GENERAL_PATH``: not its case, or what it decided on
has moved (the SQL function then wrote nothing). The caller then runs the
general path (``flows.pairing``), which handles, and audits, every case. The
decisions are the general path's, in Python: the SQL functions only check
that their inputs still hold, take the same locks and write.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from ..domain import ids
from ..domain.autoapprove import Requester, matching_rule
from ..domain.errors import InvalidArgument
from ..domain.model import Approval, ApprovalAction, ApprovalStatus, Channel, DmPolicy, Role, SubjectStatus
from ..domain.pairing import may_resolve, new_approval_id, new_code_seed, request_details, standing
from ..domain.policy import CorruptPolicy
from ..domain.tools import check_action
from ..store import channels
from ..store import pairing_fast as guarded
from ..store.pairing_fast import PairingCreateInput, PairingDecideInput
from . import Context


class Fallback(enum.Enum):
    TAKE_GENERAL_PATH = "take the general path"


TAKE_GENERAL_PATH: Literal[Fallback.TAKE_GENERAL_PATH] = Fallback.TAKE_GENERAL_PATH


@dataclass(frozen=True)
class Created:
    """A new pending request, written with its audit event."""

    channel: Channel
    approval: Approval
    code: str
    now: datetime  # the database's clock (or the cache's estimate of it) it was decided at


@dataclass(frozen=True)
class Decided:
    """A decided request, written with the requester's standing and the audit event."""

    approval: Approval
    actor: str


async def request(
    ctx: Context, channel_id: str, user_id: str, display_name: str, email: str, phone_number: str
) -> Created | Literal[Fallback.TAKE_GENERAL_PATH]:
    """The common case: a stranger (no subject row, no pending request) on a
    pairing channel with no matching auto-approve rule. One guarded write
    (migration 0010) that refuses if anything it was decided on moved, after
    one read (``authz_check_state``), or none when this process remembers the
    channel (``PairingMemo``; the clock is then the cache's estimate of the
    database's)."""
    t, memo = ctx.tenant_id, ctx.memo
    known = memo.channel(t, channel_id) if memo is not None and ctx.cache is not None else None
    if known is not None:
        assert ctx.cache is not None
        channel, policy_json = known
        now = ctx.cache.db_now()
    else:
        read = await channels.check_state(ctx.db, t, channel_id, user_id, "")
        if read is None or read.subject is not None:  # no such channel, or the user has a standing
            return TAKE_GENERAL_PATH
        try:
            channel = read.channel.decode(t)
        except CorruptPolicy:
            return TAKE_GENERAL_PATH
        policy_json, now = read.channel.policy_json, read.now
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
        return TAKE_GENERAL_PATH
    seed = new_code_seed()
    code = ctx.keyring.code_from_seed(seed)
    ttl = policy.pairing_code_ttl_seconds
    approval = Approval(
        approval_id=new_approval_id(), channel_id=channel_id, user_id=user_id, status=ApprovalStatus.PENDING,
        created_at=now, expires_at=now + timedelta(seconds=ttl), display_name=display_name,
        required_approvals=policy.required_approvals,
    )  # fmt: skip
    new = PairingCreateInput(
        t, channel, policy_json, user_id, approval.approval_id, display_name, seed,
        ctx.keyring.code_hash(t, channel_id, code), approval.expires_at, ttl, policy.required_approvals,
        policy.max_pending, f"{channel.platform.value}:{user_id}", ctx.trace_id,
        request_details(display_name, approval.expires_at, policy.required_approvals, renewal=False),
    )  # fmt: skip
    outcome = await guarded.create(ctx.db, new)
    if outcome != "created":
        if memo is not None and outcome != "state_changed":  # the user's state says nothing of the channel
            memo.forget_channel(t, channel_id)
        return TAKE_GENERAL_PATH
    if memo is not None:
        memo.remember_approval(t, approval.approval_id, channel_id)
    return Created(channel, approval, code, now)


async def decide(
    ctx: Context, approval_id: str, action: ApprovalAction, actor_id: str, reason: str
) -> Decided | Literal[Fallback.TAKE_GENERAL_PATH]:
    """The common decision: a live pairing request that needs one approval and
    has no votes, decided by someone who may (no refusal to audit). One
    guarded write (migration 0010) that refuses if the request, the channel's
    policy, the tenant's approvers or the user's block moved; after one read
    (``authz_approval_state``), or none when this process created the request
    and remembers its channel (``PairingMemo``). A refusal (an actor who may
    not decide) is left to the general path, which audits it."""
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
        state = await guarded.approval_state(ctx.db, t, approval_id)
        if state is None:
            return TAKE_GENERAL_PATH
        approval = state.approval
        if (
            approval.kind != "pairing"
            or approval.status is not ApprovalStatus.PENDING
            or approval.expires_at <= state.now
            or approval.required_approvals != 1
            or approval.approved_by
            or (action is ApprovalAction.APPROVE and state.subject_status == SubjectStatus.BLOCKED.value)
        ):
            return TAKE_GENERAL_PATH
        try:
            channel = state.channel.decode(t)
        except CorruptPolicy:
            return TAKE_GENERAL_PATH
        policy_json, approvers = state.channel.policy_json, state.approvers
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
            return TAKE_GENERAL_PATH
        actor = f"{channel.platform.value}:{actor_id}"
    else:
        actor = ctx.principal.actor
    decision = PairingDecideInput(
        t, approval_id, channel, policy_json, approvers if connector else None, action.resulting_status, actor,
        reason, standing(action, channel.policy), ctx.trace_id, {"reason": reason} if reason else {},
    )  # fmt: skip
    done = await guarded.decide(ctx.db, decision)
    if memo is not None:
        memo.forget_approval(t, approval_id)  # decided, or left to the general path: done with here
        if done is None and known is not None:  # perhaps stale: read next time
            memo.forget_channel(t, channel.channel_id)
            memo.forget_approvers(t)
    return TAKE_GENERAL_PATH if done is None else Decided(done, actor)
