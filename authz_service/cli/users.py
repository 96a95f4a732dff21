"""``authz users``: a channel's users, and their data rights (admin key)."""

from __future__ import annotations

import json
import os
from collections import deque
from typing import Any

import click

from .. import names
from ..client import paging
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import common_pb2 as cm
from .errors import NOT_DONE, CliError
from .output import fmt, safe, table, ts
from .session import Session, admin_call, call, each, pass_session, session_options, wait


@click.group(help="users of a channel")
def users() -> None:
    pass


def _row(u: adm.Subject) -> dict[str, Any]:
    status = (
        "blocked"
        if u.status == adm.SUBJECT_STATUS_BLOCKED
        else ("paired" if u.source == adm.SUBJECT_SOURCE_PAIRING else "allowlisted")
    )
    return {"user": u.user_id, "name": u.display_name, "status": status, "permissions": list(u.permissions),
            "updated": ts(u, "updated_at"), "expires": ts(u, "expires_at")}  # fmt: skip


@users.command("list", help="list allowlisted, paired and blocked users")
@click.argument("channel")
@click.option("--paired", is_flag=True, help="only paired users")
@click.option("--blocked", is_flag=True, help="only blocked users")
@click.option("--allowlisted", is_flag=True, help="only allowlisted users")
@session_options
@pass_session
def list_(s: Session, channel: str, paired: bool, blocked: bool, allowlisted: bool) -> int:
    chosen = [
        name
        for name, given in (("paired", paired), ("blocked", blocked), ("allowlisted", allowlisted))
        if given
    ]
    if len(chosen) > 1:
        raise click.UsageError(f"--{chosen[0]} and --{chosen[1]} do not go together")
    which = adm.UserFilter.ValueType(names.USER_FILTER.number(chosen[0]) if chosen else 0)
    found = wait(
        paging.all_users(admin_call(s.client()), adm.ListUsersRequest(channel_id=channel, filter=which))
    )
    s.emit([_row(u) for u in found], ["user", "name", "status", "permissions", "updated", "expires"])
    return 0


RECENT_AUDIT = 10


def _recent_audit(s: Session, channel: str, user: str) -> list[adm.AuditEvent]:
    """The user's last ``RECENT_AUDIT`` events on the channel (the trail pages oldest first)."""
    req = adm.QueryAuditRequest(channel_id=channel, user_id=user, limit=1000)
    return list(deque(each(paging.audit_events(admin_call(s.client()), req)), maxlen=RECENT_AUDIT))


def _explained(found: adm.ExplainUserResponse, events: list[adm.AuditEvent]) -> dict[str, Any]:
    check, b = found.check, found.binding
    return {
        "decision": names.DECISION.label(check.decision), "reason": check.reason,
        "standing": _row(found.subject) if found.HasField("subject") else None,
        "agent": check.agent_id,
        "binding": {"user": b.user_id or "*", "group": b.group_id or "*", "agent": b.agent_id,
                    "permissions": list(b.permissions)} if found.HasField("binding") else None,
        "permissions": list(check.permissions),
        "tools": {"allowed": list(check.tools.allowed), "denied": list(check.tools.denied)},
        "retry_after_seconds": check.retry_after_seconds,
        "pending": [{"approval_id": a.approval_id, "kind": names.APPROVAL_KIND.label(a.kind),
                     "tool": a.tool.tool_name, "created": ts(a, "created_at"), "expires": ts(a, "expires_at"),
                     "first_message": a.first_message} for a in found.pending],
        "recent_audit": [{"id": e.event_id, "at": ts(e, "at"), "event": e.event, "actor": e.actor,
                          "approval_id": e.approval_id} for e in events],
    }  # fmt: skip


@users.command("show", help="one user: standing, what CheckUser decides now, route, tools, requests, audit")
@click.argument("channel")
@click.argument("user")
@click.option("--group", help="explain a message in this group (default: a direct message)")
@click.option("--text", default="", help="the message text to judge (commands, mention patterns)")
@session_options
@pass_session
def show(s: Session, channel: str, user: str, group: str | None, text: str) -> int:
    kind = cm.CHAT_KIND_GROUP if group else cm.CHAT_KIND_DIRECT
    req = adm.ExplainUserRequest(
        channel_id=channel, user_id=user, chat_kind=kind, group_id=group or "", text=text
    )
    found = call(s.client().admin.ExplainUser, req)  # read only: no token taken, no request made
    d = _explained(found, _recent_audit(s, channel, user))
    if s.json:
        click.echo(json.dumps({"channel": channel, "user": user, **d}, indent=2, default=fmt))
        return 0
    where = f"in group {group}" if group else "in a direct message"
    click.echo(safe(f"user {user} on {channel}"))
    standing = d["standing"]
    lines = [("decision", f"{d['decision']} ({d['reason']}) {where}")]
    if d["retry_after_seconds"]:
        lines.append(("retry after", f"{d['retry_after_seconds']} s"))
    if standing is None:
        lines.append(("status", "unknown (not allowlisted, paired or blocked)"))
    else:
        lines += [("status", standing["status"]), ("name", fmt(standing["name"]) or "-"),
                  ("expires", fmt(standing["expires"]) or "never"),
                  ("own permissions", fmt(standing["permissions"]) or "-")]  # fmt: skip
    b = d["binding"]
    route = (
        f"binding user {b['user']}, group {b['group']}" if b else "the channel's agent (no binding matches)"
    )
    lines += [("agent", f"{fmt(d['agent']) or '-'} via {route}"), ("permissions", fmt(d["permissions"]) or "-"),
              ("tools allowed", fmt(d["tools"]["allowed"]) or "(no restriction)"),
              ("tools denied", fmt(d["tools"]["denied"]) or "-")]  # fmt: skip
    width = max(len(k) for k, _ in lines) + 1
    for key, value in lines:
        click.echo(f"{key + ':':<{width}} {safe(value)}")
    click.echo("pending requests:")
    click.echo(_indented(table(d["pending"], ["approval_id", "kind", "tool", "expires", "first_message"])))
    click.echo(f"recent audit (last {RECENT_AUDIT}):")
    click.echo(_indented(table(d["recent_audit"], ["at", "event", "actor", "approval_id"])))
    return 0


def _indented(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


@users.command(help="add a user to the channel's DM allowlist")
@click.argument("channel")
@click.argument("user")
@click.option("--name")
@click.option("--permission", multiple=True, help="permission returned with ALLOW (repeatable)")
@session_options
@pass_session
def allow(s: Session, channel: str, user: str, name: str | None, permission: tuple[str, ...]) -> int:
    req = adm.AllowUserRequest(channel_id=channel, user_id=user, display_name=name or "",
                               permissions=list(permission))  # fmt: skip
    call(s.client().admin.AllowUser, req)
    click.echo(f"allowed {user} on {channel}")
    return 0


@users.command(help="block a user (cancels their pending pairing)")
@click.argument("channel")
@click.argument("user")
@click.option("--reason")
@session_options
@pass_session
def block(s: Session, channel: str, user: str, reason: str | None) -> int:
    call(
        s.client().admin.BlockUser,
        adm.BlockUserRequest(channel_id=channel, user_id=user, reason=reason or ""),
    )
    click.echo(f"blocked {user} on {channel}")
    return 0


def _removal(name: str, method: str, verb: str, help_: str) -> click.Command:
    @click.argument("channel")
    @click.argument("user")
    @session_options
    @pass_session
    def remove(s: Session, channel: str, user: str) -> int:
        resp = call(getattr(s.client().admin, method), adm.UserRef(channel_id=channel, user_id=user))
        click.echo(f"{verb} {user} on {channel}" if resp.removed else f"nothing to do: {user} was not {verb}")
        return 0 if resp.removed else NOT_DONE

    return click.command(name, help=help_)(remove)


for _args in (
    ("unblock", "UnblockUser", "unblocked", "unblock a user (they start again as unknown)"),
    ("unpair", "UnpairUser", "unpaired", "revoke a pairing"),
    ("remove", "RemoveUser", "removed", "remove a user from the allowlist (paired or not)"),
):
    users.add_command(_removal(*_args))


@users.command("export", help="print everything held about one user on a channel, as JSON")
@click.argument("channel")
@click.argument("user")
@click.option("-o", "--output", help="file to write (created readable by you only; default: stdout)")
@session_options
@pass_session
def export(s: Session, channel: str, user: str, output: str | None) -> int:
    resp = call(s.client().admin.ExportUser, adm.UserRef(channel_id=channel, user_id=user))
    text = json.dumps(json.loads(resp.json), indent=2, ensure_ascii=False) + "\n"
    if not output:
        click.echo(text, nl=False)
        return 0
    try:
        # Personal data: readable by the owner only (a new file; an existing one keeps its mode).
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        raise CliError(f"{output}: {exc.strerror or exc}") from None
    click.echo(f"wrote the data of {user} on {channel} to {output}", err=True)
    return 0


PURGE_REFUSED = (
    "refusing to delete without --purge: `users delete` erases {user} from every table on {channel} "
    "(standing, group sender entries, pairing and tool approvals) and rewrites their audit events under "
    "a pseudonym; it cannot be undone. Run `authz users export {channel} {user}` first if you need a copy, "
    "`authz users anonymize {channel} {user}` to keep their access but drop their personal data, or "
    "`authz users remove|unpair|unblock` to change only their access. Repeat with --purge to proceed."
)


@users.command(help="erase a user from every table on a channel; audit events kept under a pseudonym")
@click.argument("channel")
@click.argument("user")
@click.option("--purge", is_flag=True, help="required: confirms the erasure (it cannot be undone)")
@session_options
@pass_session
def delete(s: Session, channel: str, user: str, purge: bool) -> int:
    if not purge:
        raise CliError(PURGE_REFUSED.format(user=user, channel=channel))
    r = call(s.client().admin.PurgeUser, adm.UserRef(channel_id=channel, user_id=user))
    if s.json:
        click.echo(json.dumps({"pseudonym": r.pseudonym, "subjects": r.subjects_deleted,
                               "group_senders": r.group_senders_deleted, "approvals": r.approvals_deleted,
                               "audit_events_anonymized": r.audit_events_anonymized}, indent=2))  # fmt: skip
        return 0
    click.echo(f"purged {user} on {channel}; the audit trail now names them {r.pseudonym}")
    click.echo(f"  subjects deleted:         {r.subjects_deleted}")
    click.echo(f"  group senders deleted:    {r.group_senders_deleted}")
    click.echo(f"  approvals deleted:        {r.approvals_deleted}")
    click.echo(f"  audit events anonymised:  {r.audit_events_anonymized}")
    return 0


@users.command(help="drop a user's personal data (names, message texts, arguments) but keep their access")
@click.argument("channel")
@click.argument("user")
@session_options
@pass_session
def anonymize(s: Session, channel: str, user: str) -> int:
    r = call(s.client().admin.AnonymizeUser, adm.UserRef(channel_id=channel, user_id=user))
    if s.json:
        click.echo(json.dumps({"subjects": r.subjects_updated, "approvals": r.approvals_updated,
                               "audit_events_anonymized": r.audit_events_anonymized}, indent=2))  # fmt: skip
        return 0
    click.echo(f"anonymised {user} on {channel} (their access is unchanged)")
    click.echo(f"  subjects updated:         {r.subjects_updated}")
    click.echo(f"  approvals updated:        {r.approvals_updated}")
    click.echo(f"  audit events anonymised:  {r.audit_events_anonymized}")
    return 0
