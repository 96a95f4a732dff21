"""``authz pairing``: list pairing requests and resolve them by code or by
requester (approver or admin key)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from .. import names
from ..domain.display import visible_prefix
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import authz_pb2 as az
from ..gen.authz.v1 import common_pb2 as cm
from .output import STATUSES, safe, ts
from .session import Session, call, pass_session, session_options


@click.group(help="pending pairing requests")
def pairing() -> None:
    pass


# The table shows the start of the first message; --json and `authz approvals show` all of it.
MESSAGE_IN_TABLE = 40


def _row(a: cm.Approval) -> dict[str, Any]:
    return {"approval_id": a.approval_id, "channel": a.channel_id, "platform": a.platform, "user": a.user_id,
            "name": a.display_name, "handle": f"@{a.handle}" if a.handle else "",
            "status": names.APPROVAL_STATUS.label(a.status), "created": ts(a, "created_at"),
            "expires": ts(a, "expires_at"), "resolved_by": a.resolved_by,
            "first_message": a.first_message}  # fmt: skip


def _table_row(a: cm.Approval) -> dict[str, Any]:
    row = _row(a)
    row["message"] = visible_prefix(a.first_message, MESSAGE_IN_TABLE)
    return row


@pairing.command("list", help="list pairing requests")
@click.argument("channel", required=False)
@click.option("--status", type=click.Choice(list(STATUSES)), default="pending", show_default=True)
@session_options
@pass_session
def list_(s: Session, channel: str | None, status: str) -> int:
    c, token = s.client(), ""
    found: list[cm.Approval] = []
    while len(found) < 100:  # the first 100, newest first, page by page
        req = adm.ListApprovalsRequest(channel_id=channel or "", status=STATUSES[status], page_token=token)
        resp = call(c.admin.ListApprovals, req)
        found.extend(resp.approvals)
        token = resp.next_page_token
        if not token:
            break
    if status == "pending":
        # Past its expiry a request can no longer be decided: never list it as
        # pending, even before the service's expiry sweep has moved it.
        now = datetime.now(UTC)
        found = [
            a for a in found if not a.HasField("expires_at") or a.expires_at.ToDatetime(tzinfo=UTC) > now
        ]
    if s.json:
        s.emit([_row(a) for a in found[:100]], [])
    else:
        columns = ["approval_id", "channel", "user", "name", "handle", "status", "expires", "message"]
        s.emit([_table_row(a) for a in found[:100]], columns)
    return 0


def _resolver(name: str, action: cm.ApprovalAction.ValueType) -> click.Command:
    @click.argument("channel")
    @click.argument("code", required=False)
    @click.option("--user", "user_id", help="the requester's platform user id, when the code was lost")
    @click.option("--reason")
    @session_options
    @pass_session
    def resolve(s: Session, channel: str, code: str | None, user_id: str | None, reason: str | None) -> int:
        if (code is None) == (user_id is None):
            raise click.UsageError("give the request's CODE or --user, not both")
        if user_id is not None:
            target: dict[str, Any] = {"user": az.RequesterRef(channel_id=channel, user_id=user_id)}
        else:
            target = {"code": az.CodeRef(channel_id=channel, code=code or "")}
        req = az.ResolveApprovalRequest(**target, action=action, reason=reason or "")
        resp = call(s.client().authz.ResolveApproval, req)
        a = resp.approval
        click.echo(safe(f"{resp.owner_text}: user {a.user_id} on {a.channel_id} ({a.approval_id})"))
        if resp.requester_text:
            click.echo(f"the requester will be told: {safe(resp.requester_text)}")
        return 0

    return click.command(name, help=f"{name} the request with this code, or the pending request of --user")(
        resolve
    )


for _name, _action in (("approve", cm.APPROVAL_ACTION_APPROVE), ("deny", cm.APPROVAL_ACTION_DENY),
                       ("block", cm.APPROVAL_ACTION_BLOCK)):  # fmt: skip
    pairing.add_command(_resolver(_name, _action))
