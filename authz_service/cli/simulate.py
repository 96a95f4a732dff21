"""``authz simulate message``: what a connector does with one inbound message."""

from __future__ import annotations

import click

from .. import names
from ..client import invite_code_to_redeem
from ..gen.authz.v1 import authz_pb2 as az
from ..gen.authz.v1 import common_pb2 as cm
from .errors import CliError
from .output import safe
from .session import Session, call, pass_session, session_options


@click.group(help="act as a connector, from the terminal")
def simulate() -> None:
    pass


@simulate.command(help="send one inbound message through CheckUser (and pairing)")
@click.argument("channel")
@click.argument("user")
@click.argument("text")
@click.option("--name", help="display name")
@click.option("--group", help="group id: simulate a group message")
@click.option("--mention", is_flag=True, help="the message mentions the bot")
@session_options
@pass_session
def message(s: Session, channel: str, user: str, text: str, name: str | None, group: str | None,
            mention: bool) -> int:  # fmt: skip
    c = s.client()
    group = group or ""
    req = az.CheckUserRequest(channel_id=channel, user_id=user, text=text,
                              chat_kind=cm.CHAT_KIND_GROUP if group else cm.CHAT_KIND_DIRECT, group_id=group,
                              mentioned=mention, display_name=name or "")  # fmt: skip
    check = call(c.authz.CheckUser, req)
    if check.reason == "channel_not_configured":
        # A connector is told this in-band; from the terminal it is a mistyped channel.
        raise CliError(f"channel {channel!r} not found")
    click.echo(safe(f"CheckUser: {names.DECISION.label(check.decision)} ({check.reason})"))
    code = invite_code_to_redeem(check, direct=not group, text=text)
    if check.decision == az.DECISION_ALLOW:
        click.echo(
            f"→ routed to agent '{safe(check.agent_id)}'"
            + (f" with permissions {list(check.permissions)}" if check.permissions else "")
        )
        if check.tools.allowed or check.tools.denied:
            click.echo(f"  tools allowed {list(check.tools.allowed)}, denied {list(check.tools.denied)}")
        click.echo(f"bot → {user}: (echo) {text}")
    elif code is not None:
        redeemed = call(c.authz.RedeemInvite, az.RedeemInviteRequest(channel_id=channel, user_id=user, code=code,
                                                                     display_name=name or ""))  # fmt: skip
        click.echo(f"RedeemInvite: {names.INVITE_OUTCOME.label(redeemed.outcome)}")
        click.echo(safe(f"bot → {user}: {redeemed.text}") if redeemed.text else "(the bot stays silent)")
    elif check.decision == az.DECISION_RATE_LIMITED:
        click.echo(f"(the bot stays silent; the next message is admitted in {check.retry_after_seconds} s)")
    elif check.decision == az.DECISION_PAIRING_REQUIRED:
        pr = call(c.authz.RequestPairing, az.RequestPairingRequest(channel_id=channel, user_id=user,
                                                                   display_name=name or "", first_message=text))  # fmt: skip
        click.echo(
            f"RequestPairing: {names.PAIRING_OUTCOME.label(pr.outcome)}"
            + (f" (code {pr.code})" if pr.code else "")
        )
        if pr.text:
            click.echo(safe(f"bot → {user}:") + "".join("\n  " + safe(line) for line in pr.text.split("\n")))
        elif pr.outcome == az.PAIRING_OUTCOME_EXISTING:
            click.echo(f"(request already pending with code {pr.code}; the bot stays quiet)")
        if pr.HasField("notification"):
            n = pr.notification
            click.echo(
                safe(f"bot → owner {n.owner_id}:")
                + "".join("\n  " + safe(line) for line in n.text.split("\n"))
            )
            click.echo(safe("  buttons: " + "  ".join(f"[{b.label}]" for b in n.buttons)))
    elif check.text:
        click.echo(safe(f"bot → {user}: {check.text}"))
    else:
        click.echo("(the bot stays silent)")
    return 0
