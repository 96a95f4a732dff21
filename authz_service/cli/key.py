"""``authz key``: the tenant's API keys (admin key)."""

from __future__ import annotations

from typing import Any

import click

from .. import names
from ..gen.authz.v1 import admin_pb2 as adm
from .output import ts
from .session import Session, call, pass_session, session_options


@click.group(help="manage the tenant's API keys")
def key() -> None:
    pass


def _bound(k: adm.ApiKey) -> str:
    """What the key is bound to; "*" for a connector or agent key that is not."""
    if k.channels:
        return ",".join(f"channel:{c}" for c in k.channels)
    if k.agents:
        return ",".join(f"agent:{a}" for a in k.agents)
    return "*" if names.ROLE.label(k.role) in ("connector", "agent") else ""


def _row(k: adm.ApiKey) -> dict[str, Any]:
    return {"key_id": k.key_id, "role": names.ROLE.label(k.role), "name": k.name, "bound_to": _bound(k),
            "created": ts(k, "created_at"), "revoked": ts(k, "revoked_at")}  # fmt: skip


@key.command(help="create a key (several may be live: rotate by create, deploy, revoke)")
@click.argument("role", type=click.Choice(names.ROLE.labels))
@click.option("--name")
@click.option("--channel", "channels", multiple=True, metavar="ID",
              help="connector keys: a channel the key acts on (repeat for several)")  # fmt: skip
@click.option("--agent", "agents", multiple=True, metavar="ID",
              help="agent keys: an agent id the key speaks for (repeat for several)")  # fmt: skip
@session_options
@pass_session
def create(
    s: Session, role: str, name: str | None, channels: tuple[str, ...], agents: tuple[str, ...]
) -> int:
    resp = call(
        s.client().admin.CreateApiKey,
        adm.CreateApiKeyRequest(
            role=adm.Role.ValueType(names.ROLE.number(role)),
            name=name or "",
            channels=channels,
            agents=agents,
        ),
    )
    click.echo(f"created {role} key {resp.key.key_id} (shown once, store it now):\n{resp.secret}")
    if role == "connector" and not channels:
        click.echo("warning: not bound to channels, it acts on every channel (--channel ID)", err=True)
    if role == "agent" and not agents:
        click.echo("warning: not bound to agent ids, it may speak for any agent (--agent ID)", err=True)
    return 0


@key.command("list", help="list keys")
@session_options
@pass_session
def list_(s: Session) -> int:
    resp = call(s.client().admin.ListApiKeys, adm.ListApiKeysRequest())
    s.emit([_row(k) for k in resp.keys], ["key_id", "role", "name", "bound_to", "created", "revoked"])
    return 0


@key.command(help="revoke a key")
@click.argument("key_id")
@session_options
@pass_session
def revoke(s: Session, key_id: str) -> int:
    resp = call(s.client().admin.RevokeApiKey, adm.RevokeApiKeyRequest(key_id=key_id))
    click.echo(f"revoked key {resp.key.key_id}")
    return 0
