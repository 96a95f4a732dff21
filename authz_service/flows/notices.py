"""The outbox of approval notifications (issue #17): WatchNotifications and
AckNotification.

Every approver of a channel gets a copy of each approval notification
(``domain.notices.recipients``), delivered by the channel's connector: the
stream hands out every copy that is behind its approval (a new request: post
it; a vote, a decision, an expiry: edit it), and the connector acknowledges
each with the platform's message reference, or with the reason it could not
reach the approver. A copy handed out is leased for ``LEASE_SECONDS``, so a
second connector process on the channel does not post it too; a copy whose
connector died before acknowledging it is handed out again when the lease
lapses (it may then be posted twice: the platform call was made, the
acknowledgement lost).

The stream re-reads the channel's backlog when an approval of the tenant
changes (the ``authz_approvals`` notification every watcher uses), and on a
timer (a lapsed lease; a lost notification). An acknowledgement of a copy
that fell behind meanwhile answers with its next version at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from ..domain import messages
from ..domain import notices as dn
from ..domain.errors import NotFound
from ..domain.model import Approval, ApprovalStatus, Channel
from ..store import audit, db, notices, tenants
from ..store.db import Connection
from ..store.notices import AckInput, ClaimInput, Copy, NoticeSubject
from . import Context
from .approvals import Button, load_channel_for
from .watch import ApprovalFeed

LEASE_SECONDS = 30.0
# Approvals per scan, oldest first. Above what a channel can hold pending (the
# pairing cap, the tenant's cap of pending tool calls), so none is starved.
BACKLOG = 1000


@dataclass(frozen=True)
class CopyItem:
    """One copy to post ("" ``message_ref``) or edit."""

    approval_id: str
    approver_id: str
    version: int
    text: str
    buttons: tuple[Button, ...]
    message_ref: str
    kind: str  # "pairing" | "tool"


@dataclass(frozen=True)
class Ack:
    channel_id: str
    approval_id: str
    approver_id: str
    version: int
    message_ref: str = ""
    failure: str = ""  # a reason class, e.g. "chat_not_found"


@dataclass(frozen=True)
class _Approvers:
    tenant: tuple[str, ...]
    agents: dict[str, tuple[str, ...]]


def _render(ctx: Context, channel: Channel, s: NoticeSubject, copy: Copy, now: datetime) -> CopyItem:
    a = s.approval
    if a.kind == "tool":
        view = dn.tool_copy(a, now)
    else:
        code = ctx.keyring.code_from_seed(s.code_seed) if s.code_seed else ""
        view = dn.pairing_copy(channel.channel_id, a, code, now)
    t = ctx.tenant_id
    buttons = tuple(
        Button(x, messages.BUTTON_LABELS[x], ctx.keyring.callback_payload(t, a.approval_id, x))
        for x in view.actions
    )
    return CopyItem(a.approval_id, copy.approver_id, s.version, view.text, buttons, copy.message_ref, a.kind)


async def _copies_due(
    ctx: Context,
    conn: Connection,
    channel: Channel,
    s: NoticeSubject,
    existing: list[Copy],
    approvers: _Approvers,
    now: datetime,
) -> list[CopyItem]:
    """Claim and render the copies of one approval that are behind it."""
    a: Approval = s.approval
    have = {c.approver_id: c for c in existing}
    due: dict[str, bool] = {}  # approver -> create the copy if missing
    if a.status is ApprovalStatus.PENDING and a.expires_at > now:
        for approver in dn.recipients(channel, a, approvers.tenant, approvers.agents):
            due[approver] = True
    for c in existing:  # a copy already shown is kept up to date, even if its approver left the list
        if c.state == notices.POSTED:
            due.setdefault(c.approver_id, False)
    out = []
    for approver, create in due.items():
        known = have.get(approver)
        if known is not None and (known.state == notices.UNREACHABLE or known.shown_version >= s.version):
            continue
        claim = ClaimInput(
            ctx.tenant_id, a.approval_id, channel.channel_id, approver, s.version, LEASE_SECONDS, create
        )
        claimed = await notices.claim(conn, claim)
        if claimed is not None:
            out.append(_render(ctx, channel, s, claimed, now))
    return out


async def _approvers(conn: Connection, tenant_id: str) -> _Approvers:
    return _Approvers(
        await tenants.approvers(conn, tenant_id), await tenants.agent_approvers(conn, tenant_id)
    )


async def due(ctx: Context, channel_id: str) -> list[CopyItem]:
    """Every copy of the channel that is behind its approval and not leased
    (now leased to the caller)."""
    t = ctx.tenant_id
    async with ctx.db.tenant(t) as conn:
        channel = await load_channel_for(ctx, conn, channel_id, for_update=False)
        backlog = await notices.backlog(conn, t, channel_id, BACKLOG)
        if not backlog:
            return []
        copies = await notices.copies_of(conn, t, [s.approval.approval_id for s in backlog])
        by_approval: dict[str, list[Copy]] = {}
        for c in copies:
            by_approval.setdefault(c.approval_id, []).append(c)
        approvers = await _approvers(conn, t)
        now = await db.now(conn)
        out: list[CopyItem] = []
        for s in backlog:
            existing = by_approval.get(s.approval.approval_id, [])
            out += await _copies_due(ctx, conn, channel, s, existing, approvers, now)
        return out


async def watch(ctx: Context, feed: ApprovalFeed, channel_id: str) -> AsyncIterator[CopyItem]:
    """The copies behind at once, then again whenever an approval of the tenant
    changes (or the lease time passes). Never ends by itself."""
    notifier = feed.notifier
    # Subscribe before the first read, so a change between the two is not missed.
    with notifier.subscribe(ctx.tenant_id) as sub:
        while True:
            async with feed.reads:
                items = await due(ctx, channel_id)
            for item in items:
                yield item
            await sub.wait(min(notifier.fallback_interval, LEASE_SECONDS))
            sub.drain()


@dataclass(frozen=True)
class Acked:
    """What an acknowledgement leaves to the connector: the copy's next version
    if it fell behind meanwhile (now leased to the caller), and the requester to
    tell when no approver of their pairing request can be reached."""

    next: CopyItem | None = None
    unnotified_requester_id: str = ""


async def _unnotified_requester(conn: Connection, tenant_id: str, channel: Channel, approval_id: str) -> str:
    """The requester of a pending pairing request none of whose approvers can
    be reached on the platform (every copy undeliverable, none posted); ""
    otherwise."""
    s = await notices.subject(conn, tenant_id, approval_id)
    if s is None or s.approval.kind != "pairing" or s.approval.status is not ApprovalStatus.PENDING:
        return ""
    approvers = await _approvers(conn, tenant_id)
    wanted = set(dn.recipients(channel, s.approval, approvers.tenant, approvers.agents))
    copies = await notices.copies_of(conn, tenant_id, [approval_id])
    if any(c.state != notices.UNREACHABLE for c in copies):
        return ""  # delivered to someone, or still being delivered
    if not wanted <= {c.approver_id for c in copies}:
        return ""  # an approver's copy is still to come
    return s.approval.user_id


async def ack(ctx: Context, done: Ack) -> Acked:
    """Record a copy's delivery (idempotent); the first failure of a copy is
    audited as ``notification.undeliverable`` (the approver and the reason
    class, never the text), and when it leaves a pending pairing request with
    no approver reachable, its requester is named to be told. Also the copy's
    next version if it fell behind meanwhile (now leased to the caller)."""
    t = ctx.tenant_id
    async with ctx.db.tenant(t) as conn:
        channel = await load_channel_for(ctx, conn, done.channel_id, for_update=False)
        before = await notices.get(conn, t, done.approval_id, done.approver_id)
        if before is None or before.channel_id != done.channel_id:
            raise NotFound("no such notification copy")
        recorded = AckInput(
            t, done.approval_id, done.approver_id, done.version, done.message_ref, done.failure
        )
        # Reached again after a failure (they opened a DM with the bot): doctor stops reporting them.
        back = not done.failure and before.state == "new"
        back = back and await notices.was_unreachable(conn, recorded, done.channel_id)
        after = await notices.ack(conn, recorded)
        if after is None:  # older than what the copy shows: nothing to record
            return Acked()
        if done.failure and before.state != notices.UNREACHABLE:
            await audit.record(
                conn, t, "notification.undeliverable", actor=ctx.principal.actor, channel_id=done.channel_id,
                subject=done.approver_id, approval_id=done.approval_id, trace_id=ctx.trace_id,
                details={"reason": done.failure},
            )  # fmt: skip
            return Acked(
                unnotified_requester_id=await _unnotified_requester(conn, t, channel, done.approval_id)
            )
        if back:
            await audit.record(
                conn, t, "notification.reachable", actor=ctx.principal.actor, channel_id=done.channel_id,
                subject=done.approver_id, approval_id=done.approval_id, trace_id=ctx.trace_id,
            )  # fmt: skip
        if after.state == notices.UNREACHABLE:
            return Acked()
        s = await notices.subject(conn, t, done.approval_id)
        if s is None or s.version <= after.shown_version:
            return Acked()
        claim = ClaimInput(
            t, done.approval_id, done.channel_id, done.approver_id, s.version, LEASE_SECONDS, create=False
        )
        claimed = await notices.claim(conn, claim)
        return Acked(None if claimed is None else _render(ctx, channel, s, claimed, await db.now(conn)))
