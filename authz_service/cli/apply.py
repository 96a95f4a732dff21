"""``authz apply`` and ``authz export``: a tenant's policy as a versioned YAML file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import yaml

from ..client import SyncClient
from ..domain import risks
from ..domain.model import ChannelPolicy, Platform
from .errors import NOT_DONE, CliError
from .plan import (
    Map,
    UserNow,
    execute,
    fetch_current,
    list_senders,
    list_users,
    make_plan,
    policy_doc,
    render_plan,
    tenant_doc,
    unacknowledged_removals,
)
from .policyfile import FORMAT_VERSION, FileTenant, PolicyFile, check, read_policy_file, read_text
from .schema import NestedTooDeeply, PolicyFileInvalid
from .session import Session, pass_session, session_options


def _confirm(question: str) -> bool:
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _refused(filename: str, exc: PolicyFileInvalid) -> CliError:
    """Print every error of the file; the returned error ends the command."""
    if isinstance(exc, NestedTooDeeply):  # the only error: the file was not read further
        return CliError(f"{filename}: line {exc.line}: {exc.errors[0].message}; nothing was applied")
    for e in exc.errors:
        click.echo(e.format(filename), err=True)
    n = len(exc.errors)
    return CliError(f"{filename}: {n} error{'s' if n != 1 else ''}; nothing was applied")


def load(filename: str, s: Session) -> tuple[PolicyFile, SyncClient]:
    """Read the file (its shape: no key needed to fail here), then have the service
    check it; print the warnings."""
    try:
        parsed = read_policy_file(read_text(filename))
    except PolicyFileInvalid as exc:
        raise _refused(filename, exc) from None
    c = s.client()
    try:
        pf = check(parsed, c)
    except PolicyFileInvalid as exc:
        raise _refused(filename, exc) from None
    for w in pf.warnings:
        click.echo(w.format(filename))
    for note in pf.notes:
        click.echo(note)
    return pf, c


@click.command(help="make the tenant match a policy file: show the changes, then write only what differs")
@click.option("-f", "--file", "file", required=True, help="policy file (version 1; '-' reads stdin)")
@click.option("--dry-run", is_flag=True, help="show the changes and change nothing")
@click.option("--prune", is_flag=True, help="delete channels that are not in the file")
@click.option("--yes", is_flag=True, help="apply without asking")
@session_options
@pass_session
def apply(s: Session, file: str, dry_run: bool, prune: bool, yes: bool) -> int:
    pf, c = load(file, s)
    cur = fetch_current(
        c,
        [ch.channel_id for ch in pf.channels if ch.group_senders is not None],
        [ch.channel_id for ch in pf.channels if ch.users is not None],
    )
    plan = make_plan(pf, cur, prune)
    for line in render_plan(plan):
        click.echo(line)
    refused = unacknowledged_removals(pf, plan)
    if refused:
        raise _refused(file, PolicyFileInvalid(refused))
    if not plan.has_changes:
        return 0
    if dry_run:
        click.echo("dry run: nothing was changed")
        return 0
    if not yes:
        if not sys.stdin.isatty() or file == "-":
            raise CliError(
                "not applied: pass --yes to apply without a prompt (or --dry-run to only show the plan)"
            )
        if not _confirm("apply these changes?"):
            click.echo("not applied")
            return NOT_DONE
    done = execute(c, pf, plan, file)
    click.echo("applied: " + "; ".join(done))
    return 0


# --- export --------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style, lists indented under their key, proto maps as plain mappings."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


_Dumper.add_representer(Map, yaml.SafeDumper.represent_dict)


HEADER = (
    "# authz policy file (format version 1), written by `authz export`.\n"
    '# Apply with `authz apply -f FILE` (see docs/policies.md, "Policy files").\n'
)


def _users_doc(users: dict[str, UserNow], include_paired: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"allowlisted": [], "blocked": []}
    if include_paired:
        out["paired"] = []
    for user_id, u in users.items():
        if u.status not in out:
            continue
        entry: dict[str, Any] = {"user_id": user_id}
        if u.status != "blocked":
            if u.name:
                entry["name"] = u.name
            if u.permissions:
                entry["permissions"] = list(u.permissions)
        out[u.status].append(entry)
    return out


def export_doc(
    tenant: FileTenant,
    channels: dict[str, tuple[Platform, ChannelPolicy]],
    senders: dict[str, tuple[tuple[str, str], ...]],
    users: dict[str, dict[str, UserNow]] | None = None,
    *,
    include_paired: bool = False,
) -> dict[str, Any]:
    out: dict[str, Any] = {"version": FORMAT_VERSION, "tenant": tenant_doc(tenant), "channels": []}
    for cid in sorted(channels):
        platform, policy = channels[cid]
        found = senders.get(cid, ())
        codes = {r.code for r in risks.channel_risks(policy, found)}
        entry: dict[str, Any] = {"id": cid, "platform": platform.value}
        if codes:
            entry["acknowledge"] = [code for code in risks.RISK_CODES if code in codes]
        entry["policy"] = policy_doc(policy)
        entry["group_senders"] = [{"group_id": g, "user_id": u} for g, u in sorted(found)]
        if users is not None:
            entry["users"] = _users_doc(users.get(cid, {}), include_paired)
        out["channels"].append(entry)
    return out


def dump(doc: dict[str, Any]) -> str:
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


@click.command(
    "export", help="write the tenant's settings, channels, group senders and users as a policy file"
)
@click.option("-o", "--output", help="file to write (default: stdout)")
@click.option(
    "--include-paired", is_flag=True, help="also list paired users (apply then unpairs those left out)"
)
@session_options
@pass_session
def export(s: Session, output: str | None, include_paired: bool) -> int:
    c = s.client()
    cur = fetch_current(c, [])
    for cid in cur.channels:
        cur.senders[cid] = list_senders(c, cid)
        cur.users[cid] = list_users(c, cid)
    text = dump(export_doc(cur.tenant, cur.channels, cur.senders, cur.users, include_paired=include_paired))
    if not output:
        click.echo(text, nl=False)
        return 0
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{output}: {exc.strerror or exc}") from None
    n = len(cur.channels)
    click.echo(f"wrote the tenant settings and {n} channel{'s' if n != 1 else ''} to {output}", err=True)
    return 0
