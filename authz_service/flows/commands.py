"""RunChatCommand: an approver's command typed in a DM with the bot.

The connector sends any direct message that looks like a command; this flow
acts only when the sender is one of the channel's chat approvers
(``domain.pairing.may_resolve``, the same rule as for a button press), and then
as that approver: decisions go through ``flows.resolve`` (so they are checked
and audited exactly like a button press), block / unblock / unpair write the
subject and audit it with the approver as actor. For anyone else nothing
changes and the answer is "not handled": the connector treats the text as an
ordinary message, so a stranger learns nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..domain import commands as dc
from ..domain import ids
from ..domain.errors import AuthzError, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from ..domain.model import ApprovalAction, ApprovalStatus, Channel, Platform, SubjectSource, SubjectStatus
from ..domain.pairing import CODE_LENGTH, canonical_code, may_resolve
from ..store import approvals, audit, db, subjects, tenants
from ..store.db import Connection
from ..store.subjects import PutSubjectInput
from . import Context, resolve
from .approvals import ResolveTarget, load_channel_for

MAX_LISTED = 20


@dataclass(frozen=True)
class CommandResult:
    handled: bool
    text: str = ""
    notices: tuple[tuple[str, str], ...] = ()  # (user id, text) to DM


NOT_HANDLED = CommandResult(False)
_ACTIONS = {"approve": ApprovalAction.APPROVE, "deny": ApprovalAction.DENY, "block": ApprovalAction.BLOCK}


async def run(ctx: Context, channel_id: str, actor_id: str, text: str) -> CommandResult:
    command = dc.parse(text)
    if command is None:
        return NOT_HANDLED
    t = ctx.tenant_id
    async with ctx.db.tenant(t) as conn:
        channel = await load_channel_for(ctx, conn, channel_id, for_update=False)
        if not may_resolve(channel, await tenants.approvers(conn, t), actor_id):
            # Audited as a refused button press would be; the sender is answered as usual.
            await audit.record(
                conn, t, "approval.unauthorized", actor=f"{channel.platform.value}:{actor_id}",
                channel_id=channel_id, trace_id=ctx.trace_id,
                details={"command": command.name, "via": "chat", "key": ctx.principal.key_id},
            )  # fmt: skip
            return NOT_HANDLED
        if command.name == "help":
            return CommandResult(True, dc.HELP)
        if command.name == "pending":
            return CommandResult(True, await _pending(conn, t, channel_id))
        if command.name == "users":
            return CommandResult(True, await _users(conn, t, channel_id))
    if command.name in dc.TARGETED:
        return await _decide(ctx, channel, actor_id, command)
    return await _remove(ctx, channel, actor_id, command)


async def _pending(conn: Connection, tenant_id: str, channel_id: str) -> str:
    now = await db.now(conn)
    rows = await approvals.list_recent(
        conn, tenant_id, channel_id, ApprovalStatus.PENDING, MAX_LISTED, "pairing"
    )
    live = [a for a in rows if a.expires_at > now]
    if not live:
        return "No pending pairing requests."
    lines = [f"Pending pairing requests ({len(live)}):"]
    for a in live:
        name = f" ({a.display_name})" if a.display_name else ""
        minutes = max(1, int((a.expires_at - now).total_seconds() // 60))
        lines.append(f"• {a.user_id}{name}, expires in {minutes} min")
    lines.append("Answer with /approve <user> or /deny <user>.")
    return "\n".join(lines)


async def _users(conn: Connection, tenant_id: str, channel_id: str) -> str:
    rows = await subjects.list_for_channel(conn, subjects.SubjectPage(tenant_id, channel_id))
    if not rows:
        return "No allowed or blocked users."
    lines = []
    for s in rows[:MAX_LISTED]:
        standing = "blocked" if s.status is SubjectStatus.BLOCKED else f"allowed ({s.source.value})"
        name = f" ({s.display_name})" if s.display_name else ""
        lines.append(f"• {s.user_id}{name}: {standing}")
    if len(rows) > MAX_LISTED:
        lines.append(f"… and {len(rows) - MAX_LISTED} more (authz users list)")
    return "\n".join(lines)


def _user(channel: Channel, argument: str, actor_id: str) -> str | None:
    """The user id named, or None. On Slack a bare member id (``U…``, as a
    mention gives it) is taken in the approver's own workspace."""
    if channel.platform is Platform.SLACK and ":" not in argument and ":" in actor_id:
        argument = f"{actor_id.split(':', 1)[0]}:{argument}"
    try:
        return ids.user_id(channel.platform, argument)
    except InvalidArgument:
        return None


async def _decide(ctx: Context, channel: Channel, actor_id: str, command: dc.Command) -> CommandResult:
    """``/approve``, ``/deny``, ``/block`` of a pending request, by user (no
    attempt counted) else by code; ``/block`` of a user without one blocks them."""
    action = _ACTIONS[command.name]
    user = _user(channel, command.argument, actor_id)
    code = canonical_code(command.argument, CODE_LENGTH)
    targets = []
    if user is not None:
        targets.append(ResolveTarget(channel_id=channel.channel_id, user_id=user))
    if code is not None:
        targets.append(ResolveTarget(channel_id=channel.channel_id, code=code))
    if not targets:
        return CommandResult(True, f"“{command.argument}” is neither a pairing code nor a user id.")
    refusal: AuthzError | None = None
    for target in targets:
        try:
            result = await resolve.resolve(ctx, target, action, actor_id, "chat command")
        except NotFound as exc:
            refusal = exc
            continue
        except (FailedPrecondition, ResourceExhausted) as exc:
            return CommandResult(True, f"Not done: {exc}.")
        notices = ((result.approval.user_id, result.requester_text),) if result.requester_text else ()
        return CommandResult(True, f"{result.owner_text} ({result.approval.user_id}).", notices)
    if action is ApprovalAction.BLOCK and user is not None:
        return await _block(ctx, channel, f"{channel.platform.value}:{actor_id}", user)
    assert refusal is not None
    return CommandResult(True, f"No pending request for “{command.argument}”.")


async def _block(ctx: Context, channel: Channel, actor: str, user_id: str) -> CommandResult:
    t = ctx.tenant_id
    async with ctx.db.tenant(t) as conn:
        await subjects.put(
            conn,
            PutSubjectInput(t, channel.channel_id, user_id, status=SubjectStatus.BLOCKED,
                            source=SubjectSource.ADMIN, display_name="", permissions=()),
        )  # fmt: skip
        await audit.record(
            conn, t, "user.blocked", actor=actor, channel_id=channel.channel_id, subject=user_id,
            trace_id=ctx.trace_id, details={"via": "chat", "key": ctx.principal.key_id},
        )  # fmt: skip
    return CommandResult(True, f"⛔ Blocked {user_id}.")


async def _remove(ctx: Context, channel: Channel, actor_id: str, command: dc.Command) -> CommandResult:
    """``/unblock`` and ``/unpair``."""
    actor = f"{channel.platform.value}:{actor_id}"
    user = _user(channel, command.argument, actor_id)
    if user is None:
        return CommandResult(True, f"“{command.argument}” is not a user id.")
    status, source, event, done, missing = (
        (SubjectStatus.BLOCKED, None, "user.unblocked", "Unblocked", "is not blocked")
        if command.name == "unblock"
        else (SubjectStatus.ALLOWED, SubjectSource.PAIRING, "user.unpaired", "Unpaired", "is not paired")
    )
    t = ctx.tenant_id
    async with ctx.db.tenant(t) as conn:
        removed = await subjects.delete(conn, t, channel.channel_id, user, status=status, source=source)
        if removed:
            await audit.record(
                conn, t, event, actor=actor, channel_id=channel.channel_id, subject=user,
                trace_id=ctx.trace_id, details={"via": "chat", "key": ctx.principal.key_id},
            )  # fmt: skip
    return CommandResult(True, f"{done} {user}." if removed else f"{user} {missing}.")
