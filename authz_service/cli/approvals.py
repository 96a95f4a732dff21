"""``authz approvals``: tool-call approvals and standing grants (approver or admin key)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click
import grpc

from .. import names
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import authz_pb2 as az
from ..gen.authz.v1 import common_pb2 as cm
from .errors import CliError, RpcFailed
from .output import KINDS, STATUSES, fmt, safe, ts
from .session import Session, call, pass_session, session_options


@click.group(help="tool-call approvals and standing grants")
def approvals() -> None:
    pass


def _span(seconds: float) -> str:
    s = int(abs(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _relative(when: datetime | None, now: datetime) -> str:
    if when is None:
        return ""
    delta = (when - now).total_seconds()
    return f"in {_span(delta)}" if delta > 0 else f"{_span(delta)} ago"


def short(text: str, width: int = 40) -> str:
    """A column's view of agent- or user-written text: hidden characters
    escaped (docs/security.md), then cut. Never what an approval is decided on:
    `authz approvals show` prints the call in full."""
    text = safe(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def parse_arguments(arguments_json: str) -> Any:
    try:
        return json.loads(arguments_json) if arguments_json else None
    except ValueError:
        return arguments_json


def approval_dict(a: cm.Approval) -> dict[str, Any]:
    """Every field of an approval (tool fields are empty for pairing requests)."""
    t = a.tool
    return {"approval_id": a.approval_id, "kind": names.APPROVAL_KIND.label(a.kind),
            "status": names.APPROVAL_STATUS.label(a.status),
            "tool": t.tool_name, "agent": t.agent_id, "session": t.session_id,
            "risk": names.RISK.label(t.risk) if a.HasField("tool") else "",
            "channel": a.channel_id, "platform": a.platform, "user": a.user_id, "name": a.display_name,
            "handle": f"@{a.handle}" if a.handle else "", "first_message": a.first_message,
            "created": ts(a, "created_at"), "expires": ts(a, "expires_at"), "resolved": ts(a, "resolved_at"),
            "resolved_by": a.resolved_by, "reason": a.reason, "redeemed": ts(a, "redeemed_at"),
            "grant_id": a.grant_id, "arguments_digest": t.arguments_digest,
            "arguments": parse_arguments(t.arguments_json)}  # fmt: skip


def _describe(a: cm.Approval) -> str:
    if a.kind == cm.APPROVAL_KIND_TOOL:
        return f"tool {a.tool.tool_name}" + (f" for agent {a.tool.agent_id}" if a.tool.agent_id else "")
    return f"user {a.user_id} on {a.channel_id}"


@approvals.command("list", help="list approvals, newest first")
@click.option("--status", type=click.Choice([*STATUSES, "all"]), default="pending")
@click.option("--kind", type=click.Choice(list(KINDS)), default="tool")
@click.option("--agent", help="only this agent's tool calls")
@click.option("--limit", type=int, default=100, help="at most this many (1..1000, default 100)")
@session_options
@pass_session
def list_(s: Session, status: str, kind: str, agent: str | None, limit: int) -> int:
    if not 1 <= limit <= 1000:
        raise CliError("--limit must be between 1 and 1000")
    c = s.client()
    # The service filters by one status and no agent: merge and filter here,
    # following pages (each bounded in bytes by the service) until ``limit`` match.
    found: list[cm.Approval] = []
    for name in STATUSES if status == "all" else (status,):
        matched = 0
        token = ""
        while True:
            req = adm.ListApprovalsRequest(
                status=STATUSES[name], kind=KINDS[kind], page_size=min(limit, 100), page_token=token
            )
            page = call(c.admin.ListApprovals, req)
            for a in page.approvals:
                if agent is None or (a.HasField("tool") and a.tool.agent_id == agent):
                    found.append(a)
                    matched += 1
            token = page.next_page_token
            if not token or matched >= limit:
                break
    found.sort(key=lambda a: (a.created_at.seconds, a.created_at.nanos), reverse=True)  # newest first
    found = found[:limit]
    columns = ["approval_id", "status", "tool", "agent", "risk", "age", "expires", "arguments"]
    if kind != "tool":  # pairing requests: show whose and where
        columns = ["approval_id", "kind", *columns[1:5], "channel", "user", *columns[5:]]
    now = datetime.now(UTC)
    rows = [approval_dict(a) for a in found]
    if not s.json:
        for a, row in zip(found, rows, strict=True):
            pending = a.status == cm.APPROVAL_STATUS_PENDING  # expiry means nothing once decided
            row.update(age=_span((now - row["created"]).total_seconds()) if row["created"] else "",
                       expires=_relative(row["expires"], now) if pending else "",
                       arguments=short(a.tool.arguments_json))  # fmt: skip
    s.emit(rows, columns)
    return 0


@approvals.command(help="show every field of one approval")
@click.argument("approval_id")
@session_options
@pass_session
def show(s: Session, approval_id: str) -> int:
    a = call(s.client().admin.GetApproval, adm.GetApprovalRequest(approval_id=approval_id),
             what=f"approval {approval_id}")  # fmt: skip
    d = approval_dict(a)
    if s.json:
        click.echo(json.dumps(d, indent=2, default=fmt))
        return 0
    arguments = d.pop("arguments")
    now = datetime.now(UTC)
    width = max(map(len, d)) + 1
    for key, value in d.items():
        text = fmt(value) or "-"
        if key in ("created", "expires") and value is not None:
            text += f" ({_relative(value, now)})"
        click.echo(f"{key + ':':<{width}} {text}")
    if a.HasField("tool"):
        # In full, never cut; hidden characters escaped (still JSON for the same value).
        pretty = json.dumps(arguments, indent=2, sort_keys=True, ensure_ascii=False)
        click.echo("arguments:" + "".join("\n  " + safe(line) for line in pretty.split("\n")))
    return 0


def _resolve(s: Session, approval_id: str, action: cm.ApprovalAction.ValueType, reason: str | None) -> int:
    verb = {cm.APPROVAL_ACTION_APPROVE: "approve", cm.APPROVAL_ACTION_DENY: "deny",
            cm.APPROVAL_ACTION_ALWAYS_ALLOW: "always allow"}[action]  # fmt: skip
    c = s.client()
    req = az.ResolveApprovalRequest(approval_id=approval_id, action=action, reason=reason or "")
    resp = call(c.authz.ResolveApproval, req, what=f"cannot {verb} {approval_id}")
    a = resp.approval
    click.echo(safe(f"{resp.owner_text}: {_describe(a)} ({a.approval_id})"))
    if resp.requester_text:
        click.echo(f"the requester will be told: {safe(resp.requester_text)}")
    if action == cm.APPROVAL_ACTION_ALWAYS_ALLOW:
        grants = call(c.admin.ListGrants, adm.ListGrantsRequest(agent_id=a.tool.agent_id)).grants
        for g in grants:
            if g.approval_id == a.approval_id:
                click.echo(f"standing grant {g.grant_id}: this exact call runs without asking until "
                           f"`authz approvals revoke-grant {g.grant_id}`")  # fmt: skip
    return 0


@approvals.command(help="approve a pending approval")
@click.argument("approval_id")
@click.option("--reason")
@click.option(
    "--always", is_flag=True, help="approve and allow this exact tool call for this agent from now on"
)
@session_options
@pass_session
def approve(s: Session, approval_id: str, reason: str | None, always: bool) -> int:
    action = cm.APPROVAL_ACTION_ALWAYS_ALLOW if always else cm.APPROVAL_ACTION_APPROVE
    return _resolve(s, approval_id, action, reason)


@approvals.command(help="deny a pending approval")
@click.argument("approval_id")
@click.option("--reason")
@session_options
@pass_session
def deny(s: Session, approval_id: str, reason: str | None) -> int:
    return _resolve(s, approval_id, cm.APPROVAL_ACTION_DENY, reason)


def _watch_event(a: cm.Approval) -> tuple[str, str, datetime | None]:
    """(event, by whom, when) for one approval seen on the stream."""
    status = names.APPROVAL_STATUS.label(a.status)
    if a.status == cm.APPROVAL_STATUS_PENDING:
        return "new", "", ts(a, "created_at")
    if a.status == cm.APPROVAL_STATUS_APPROVED and a.HasField("redeemed_at"):
        return "redeemed", "", ts(a, "redeemed_at")
    if a.status == cm.APPROVAL_STATUS_APPROVED and a.grant_id:
        return status, f"grant {a.grant_id}", ts(a, "resolved_at") or ts(a, "created_at")
    if a.status == cm.APPROVAL_STATUS_EXPIRED:
        return status, "", ts(a, "resolved_at") or ts(a, "expires_at")
    return status, a.resolved_by, ts(a, "resolved_at")


def _watch_line(a: cm.Approval) -> str:
    event, by, when = _watch_event(a)
    line = f"{fmt(when or datetime.now(UTC))}  {event.upper()}{' by ' + by if by else ''}  {a.approval_id}  "
    line += _describe(a)
    if a.HasField("tool"):
        line += f" (risk {names.RISK.label(a.tool.risk)}) {short(a.tool.arguments_json, 60)}"
    elif a.display_name:
        line += f" ({a.display_name})"
    return safe(line + (f"; reason: {a.reason}" if a.reason and event != "new" else ""))


@approvals.command(help="print approvals as they are requested and resolved")
@click.option("--kind", type=click.Choice(list(KINDS)), default="tool")
@session_options
@pass_session
def watch(s: Session, kind: str) -> int:
    c = s.client()  # streams get no deadline by default: a watch runs until Ctrl-C
    try:
        stream = c.admin.WatchApprovals(adm.WatchApprovalsRequest(kind=KINDS[kind]))
        try:
            for a in stream:
                if s.json:
                    event, by, _ = _watch_event(a)
                    line = json.dumps({"event": event, "by": by, **approval_dict(a)}, default=fmt)
                else:
                    line = _watch_line(a)
                click.echo(line)  # flushed: a watch is read as it happens
        finally:
            stream.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs
    except KeyboardInterrupt:  # Ctrl-C is how a watch ends
        return 0
    except grpc.RpcError as exc:
        raise RpcFailed(exc, "watch") from None
    finally:
        c.close()
    return 0


def _grant_dict(g: adm.Grant) -> dict[str, Any]:
    return {"grant_id": g.grant_id, "agent": g.agent_id, "tool": g.tool.tool_name,
            "arguments": parse_arguments(g.tool.arguments_json), "arguments_digest": g.tool.arguments_digest,
            "approval_id": g.approval_id, "created": ts(g, "created_at"), "created_by": g.created_by,
            "revoked": ts(g, "revoked_at"), "revoked_by": g.revoked_by}  # fmt: skip


@approvals.command(help="list standing 'always allow' grants")
@click.option("--agent", help="only this agent's grants")
@click.option("--all", "all_", is_flag=True, help="include revoked grants")
@session_options
@pass_session
def grants(s: Session, agent: str | None, all_: bool) -> int:
    req = adm.ListGrantsRequest(agent_id=agent or "", include_revoked=all_)
    found = call(s.client().admin.ListGrants, req).grants
    rows = [_grant_dict(g) for g in found]
    if not s.json:
        for g, row in zip(found, rows, strict=True):
            row["arguments"] = short(g.tool.arguments_json)
    columns = ["grant_id", "agent", "tool", "arguments", "created", "created_by"]
    s.emit(rows, columns + (["revoked", "revoked_by"] if all_ else []))
    return 0


@approvals.command("revoke-grant", help="revoke a standing grant")
@click.argument("grant_id")
@session_options
@pass_session
def revoke_grant(s: Session, grant_id: str) -> int:
    g = call(s.client().admin.RevokeGrant, adm.RevokeGrantRequest(grant_id=grant_id),
             what=f"cannot revoke {grant_id}")  # fmt: skip
    click.echo(safe(f"revoked grant {g.grant_id}: tool {g.tool.tool_name} for agent {g.agent_id or '-'} "
                    f"(revoked {fmt(ts(g, 'revoked_at'))} by {g.revoked_by})"))  # fmt: skip
    return 0
