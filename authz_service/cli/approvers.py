"""``authz approvers`` and ``authz timezone``: the tenant settings (admin key).

``SetTenantSettings`` replaces every setting, so both read the stored settings,
change what was asked and write them all back.
"""

from __future__ import annotations

import json

import click

from ..gen.authz.v1 import admin_pb2 as adm
from .errors import NOT_DONE, CliError
from .output import safe
from .session import Session, call, pass_session, session_options


def _print_settings(s: Session, settings: adm.TenantSettings) -> None:
    agents = {
        agent: list(settings.agent_approvers[agent].actors) for agent in sorted(settings.agent_approvers)
    }
    if s.json:
        click.echo(json.dumps({"approvers": list(settings.approvers), "agent_approvers": agents}, indent=2))
        return
    click.echo("tenant approvers:" + "".join(f"\n  {safe(a)}" for a in settings.approvers) if settings.approvers
               else "tenant approvers: (none)")  # fmt: skip
    if not agents:
        click.echo("agent approvers: (none: every agent's tool calls go to the tenant approvers)")
        return
    click.echo("agent approvers (tool calls of these agents; other agents use the tenant approvers):")
    for agent, actors in agents.items():
        click.echo(safe(f"  {agent}: {' '.join(actors) or '(nobody)'}"))


@click.command(help="show or set tenant-level and per-agent approvers ('<platform>:<user id>')")
@click.argument("actors", nargs=-1, metavar="[ACTOR]...")
@click.option("--agent", help="show or set this agent's own tool-call approvers")
@click.option("--set", "set_", is_flag=True, help="replace the list with the ACTORs given (none: empty it)")
@click.option(
    "--unset", is_flag=True, help="with --agent: drop the agent's own list (the tenant approvers apply)"
)
@session_options
@pass_session
def approvers(s: Session, actors: tuple[str, ...], agent: str | None, set_: bool, unset: bool) -> int:
    if set_ and unset:
        raise click.UsageError("--set and --unset do not go together")
    if actors and not set_:
        raise click.UsageError(f"unexpected {actors[0]!r}: actors follow --set")
    if unset and not agent:
        raise CliError("--unset needs --agent AGENT")
    c = s.client()
    settings: adm.TenantSettings = call(c.admin.GetTenantSettings, adm.GetTenantSettingsRequest())
    if not set_ and not unset:
        if agent is None:
            _print_settings(s, settings)
        elif agent in settings.agent_approvers:
            listed = list(settings.agent_approvers[agent].actors)
            click.echo(json.dumps(listed) if s.json else "\n".join(listed) or "(nobody)")
        else:
            click.echo(json.dumps(None) if s.json else
                       f"(agent {agent} has no approvers of its own: the tenant approvers apply)")  # fmt: skip
        return 0
    if unset:
        assert agent is not None  # checked above
        if agent not in settings.agent_approvers:
            click.echo(f"nothing to do: agent {agent} has no approvers of its own")
            return NOT_DONE
        del settings.agent_approvers[agent]
    elif agent is not None:
        del settings.agent_approvers[agent].actors[:]
        settings.agent_approvers[agent].actors.extend(actors)
    else:
        del settings.approvers[:]
        settings.approvers.extend(actors)
    _print_settings(s, call(c.admin.SetTenantSettings, settings))
    return 0


@click.command(help="show or set the tenant's time zone (IANA), in which send-policy time windows are judged")
@click.argument("zone", required=False)
@session_options
@pass_session
def timezone(s: Session, zone: str | None) -> int:
    c = s.client()
    settings: adm.TenantSettings = call(c.admin.GetTenantSettings, adm.GetTenantSettingsRequest())
    if zone is not None:  # write back the rest as read
        settings.timezone = zone
        settings = call(c.admin.SetTenantSettings, settings)
    shown = settings.timezone or "UTC"
    click.echo(json.dumps({"timezone": shown}) if s.json else shown)
    return 0
