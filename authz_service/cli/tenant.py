"""``authz tenant``: create and list tenants (operator key)."""

from __future__ import annotations

import click

from ..gen.authz.v1 import admin_pb2 as adm
from .output import ts
from .session import Session, call, pass_session, session_options


@click.group(help="manage tenants (operator key)")
def tenant() -> None:
    pass


@tenant.command(help="create a tenant and print its first admin key")
@click.argument("tenant_id", metavar="TENANT")
@click.option("--name")
@session_options
@pass_session
def create(s: Session, tenant_id: str, name: str | None) -> int:
    req = adm.CreateTenantRequest(tenant_id=tenant_id, display_name=name or "")
    resp = call(s.client(operator=True).admin.CreateTenant, req)
    click.echo(f"created tenant {resp.tenant.tenant_id}")
    click.echo(f"admin key (shown once, store it now):\n{resp.secret}")
    return 0


@tenant.command("list", help="list tenants")
@session_options
@pass_session
def list_(s: Session) -> int:
    resp = call(s.client(operator=True).admin.ListTenants, adm.ListTenantsRequest())
    rows = [
        {"tenant": t.tenant_id, "name": t.display_name, "created": ts(t, "created_at")} for t in resp.tenants
    ]
    s.emit(rows, ["tenant", "name", "created"])
    return 0
