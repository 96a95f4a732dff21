"""``authz invites``: create, list and revoke invite codes (admin key)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from ..domain.invites import invite_status
from ..gen.authz.v1 import admin_pb2 as adm
from .durations import EXAMPLES, parse_duration
from .output import fmt, safe, ts
from .session import Session, call, pass_session, session_options

COLUMNS = ["invite_id", "channel", "uses", "status", "expires", "permissions", "note", "created_by"]


class Duration(click.ParamType[int]):
    """A duration option, in whole seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return int(parse_duration(str(value)).total_seconds())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Uses(click.ParamType[int]):
    name = "N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        if not str(value).isdigit() or len(str(value)) > 9:
            self.fail(f"{value!r} is not a number of uses", param, ctx)
        return int(value)


@click.group(help="invite codes: a user who sends one to the bot is allowed")
def invites() -> None:
    pass


def _row(i: adm.Invite, now: datetime) -> dict[str, Any]:
    return {
        "invite_id": i.invite_id,
        "channel": i.channel_id,
        "uses": f"{i.uses}/{i.max_uses}",
        "status": invite_status(
            revoked=i.HasField("revoked_at"),
            uses=i.uses,
            max_uses=i.max_uses,
            expires_at=ts(i, "expires_at"),
            now=now,
        ),
        "created": ts(i, "created_at"),
        "expires": ts(i, "expires_at"),
        "revoked": ts(i, "revoked_at"),
        "permissions": list(i.permissions),
        "note": i.note,
        "created_by": i.created_by,
    }


@invites.command(help="create an invite code for a channel and print it (once)")
@click.argument("channel")
@click.option("--max-uses", type=Uses(), default=0, help="users it admits, 1-10000 (default 1)")
@click.option("--ttl", type=Duration(), default=0, help=f"lifetime: {EXAMPLES} (default 7d; 60s..90d)")
@click.option("--permission", multiple=True, help="permission given to who redeems it (repeatable)")
@click.option("--note", help="who it is for (admins only; at most 200 characters)")
@session_options
@pass_session
def create(
    s: Session, channel: str, max_uses: int, ttl: int, permission: tuple[str, ...], note: str | None
) -> int:
    req = adm.CreateInviteRequest(channel_id=channel, max_uses=max_uses, ttl_seconds=ttl,
                                  permissions=list(permission), note=note or "")  # fmt: skip
    resp = call(s.client().admin.CreateInvite, req, what=f"cannot create an invite on {channel}")
    i = resp.invite
    if s.json:
        click.echo(json.dumps({**_row(i, datetime.now(UTC)), "code": resp.code}, indent=2, default=fmt))
        return 0
    uses = "1 use" if i.max_uses == 1 else f"{i.max_uses} uses"
    click.echo(
        safe(
            f"invite {i.invite_id} for channel {i.channel_id}: {uses}, expires {fmt(ts(i, 'expires_at'))} UTC"
        )
    )
    click.echo("\nThe code is shown only this once (only its hash is stored):\n")
    click.echo(f"    {resp.code}\n")
    click.echo("The user sends it to the bot in a direct message (or opens the bot's /start link with it).")
    return 0


@invites.command("list", help="list invites, newest first (active ones unless --all)")
@click.argument("channel", required=False)
@click.option("--all", "all_", is_flag=True, help="include used-up, expired and revoked invites")
@session_options
@pass_session
def list_(s: Session, channel: str | None, all_: bool) -> int:
    req = adm.ListInvitesRequest(channel_id=channel or "", include_inactive=all_)
    resp = call(s.client().admin.ListInvites, req)
    now = datetime.now(UTC)
    s.emit([_row(i, now) for i in resp.invites], COLUMNS)
    return 0


@invites.command(help="revoke an invite (its code stops working at once)")
@click.argument("invite_id")
@session_options
@pass_session
def revoke(s: Session, invite_id: str) -> int:
    i = call(s.client().admin.RevokeInvite, adm.RevokeInviteRequest(invite_id=invite_id),
             what=f"cannot revoke {invite_id}")  # fmt: skip
    click.echo(safe(f"revoked invite {i.invite_id} on {i.channel_id} (used {i.uses}/{i.max_uses})"))
    return 0
