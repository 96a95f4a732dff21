"""``authz group``: the group sender allowlist (admin key), separate from DM pairing."""

from __future__ import annotations

import click

from ..gen.authz.v1 import admin_pb2 as adm
from .errors import NOT_DONE
from .output import ts
from .session import Session, call, pass_session, session_options


@click.group(help="the group sender allowlist (separate from DM pairing)")
def group() -> None:
    pass


@group.command(help="let a user speak to the bot in a group ('*' for every group)")
@click.argument("channel")
@click.argument("group_id", metavar="GROUP")
@click.argument("user")
@session_options
@pass_session
def allow(s: Session, channel: str, group_id: str, user: str) -> int:
    call(
        s.client().admin.AllowGroupSender,
        adm.GroupSenderRef(channel_id=channel, group_id=group_id, user_id=user),
    )
    click.echo(f"{user} may speak in group {group_id} on {channel}")
    return 0


@group.command(help="remove a group sender")
@click.argument("channel")
@click.argument("group_id", metavar="GROUP")
@click.argument("user")
@session_options
@pass_session
def remove(s: Session, channel: str, group_id: str, user: str) -> int:
    ref = adm.GroupSenderRef(channel_id=channel, group_id=group_id, user_id=user)
    resp = call(s.client().admin.RemoveGroupSender, ref)
    click.echo("removed" if resp.removed else "nothing to remove")
    return 0 if resp.removed else NOT_DONE


@group.command("list", help="list group senders")
@click.argument("channel")
@click.argument("group_id", metavar="[GROUP]", required=False)
@session_options
@pass_session
def list_(s: Session, channel: str, group_id: str | None) -> int:
    req = adm.ListGroupSendersRequest(channel_id=channel, group_id=group_id or "")
    resp = call(s.client().admin.ListGroupSenders, req)
    rows = [{"group": g.group_id, "user": g.user_id, "created": ts(g, "created_at")} for g in resp.senders]
    s.emit(rows, ["group", "user", "created"])
    return 0
