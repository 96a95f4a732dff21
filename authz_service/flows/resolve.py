"""ResolveApproval: find the approval the caller names (by id, by button, by
pairing code or by the requester), then hand it to its kind's decision, ``flows.pairing`` or
``flows.tools``, inside one transaction with the row locked.

This dispatcher is the one module that knows both kinds, so neither of them
imports the other."""

from __future__ import annotations

from ..domain import scope
from ..domain.errors import AuthzError, InvalidArgument, NotFound
from ..domain.model import ApprovalAction
from ..domain.pairing import invalid_callback, normalize_code
from ..store import approvals
from . import Context, pairing, tools
from .approvals import ResolveResult, ResolveTarget


async def resolve(
    ctx: Context, target: ResolveTarget, action: ApprovalAction | None, actor_id: str, reason: str
) -> ResolveResult:
    t = ctx.tenant_id
    approval_id = target.approval_id
    if target.callback_payload:
        approval_id, button_action = ctx.keyring.open_callback(t, target.callback_payload)
        if action is not None and action is not button_action:
            raise InvalidArgument("action", "does not match the button's action")
        action = button_action
    deferred: AuthzError | None = None
    result: ResolveResult | None = None
    # Some refusals must be committed (the expiry, the audit of an unauthorized
    # actor, a failed code lookup's count) and still reach the caller as
    # errors: raise them after commit.
    async with ctx.db.tenant(t) as conn:
        if approval_id:
            approval = await approvals.get(conn, t, approval_id, for_update=True)
            if approval is not None and not scope.approval_in_scope(ctx.principal, approval):
                # Outside a bound key's channels: as a made-up button or approval id.
                if target.callback_payload:
                    raise invalid_callback()
                approval = None
        elif target.user_id:
            if action is None:
                raise InvalidArgument("action", "is required")
            approval = await pairing.approval_by_user(ctx, conn, target.channel_id, target.user_id)
        else:
            code = normalize_code(target.code)
            if action is None:  # before the lookup: a request that cannot succeed is no guess
                raise InvalidArgument("action", "is required")
            approval, deferred = await pairing.approval_by_code(ctx, conn, target.channel_id, code)
        if deferred is None:
            if action is None:
                raise InvalidArgument("action", "is required")
            if approval is None:
                raise NotFound("no such approval")
            if approval.kind == "tool":
                deferred, result = await tools.decide(ctx, conn, approval, action, actor_id, reason)
            else:
                deferred, result = await pairing.decide(ctx, conn, approval, action, actor_id, reason)
    if deferred is not None:
        raise deferred
    assert result is not None
    return result
