"""``authz context``: named deployments (address, key, TLS), like ``zed context``.

Kept in ``contexts.json`` under the user's config folder (``AUTHZ_CONFIG_DIR``,
else click's ``get_app_dir("authz")``: ``~/.config/authz`` on Linux), 0600 in a
0700 folder, since it holds API keys. Flags and ``AUTHZ_*`` variables win over
the context in use (``AUTHZ_CONTEXT``, else the one ``authz context use`` chose).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from ..config import write_private
from .errors import NOT_DONE, CliError
from .output import emit, safe

FILE = "contexts.json"


def folder() -> Path:
    return Path(os.environ.get("AUTHZ_CONFIG_DIR") or click.get_app_dir("authz"))


def load() -> dict[str, Any]:
    path = folder() / FILE
    if not path.exists():
        return {"current": "", "contexts": {}}
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CliError(f"{path}: cannot read the contexts ({exc})") from None
    data.setdefault("current", "")
    data.setdefault("contexts", {})
    return data


def save(data: dict[str, Any]) -> None:
    home = folder()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(home / FILE, json.dumps(data, indent=2, sort_keys=True) + "\n", replace=True)


def in_use() -> dict[str, Any]:
    """The context in use (``AUTHZ_CONTEXT`` or ``authz context use``), or an empty one."""
    data = load()
    name = os.environ.get("AUTHZ_CONTEXT") or data["current"]
    if not name:
        return {}
    if name not in data["contexts"]:
        raise CliError(f"context {name!r} not found: `authz context list` shows the ones there are")
    found: dict[str, Any] = data["contexts"][name]
    return found


@click.group(help="named deployments: address, API key and TLS (stored 0600 in your config folder)")
def context() -> None:
    pass


@context.command(help="add or replace a context")
@click.argument("name")
@click.option("--address", required=True, help="service address, host:port")
@click.option("--api-key", metavar="KEY", help="API key (default: read from --api-key-file)")
@click.option("--api-key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tls", is_flag=True, help="connect with TLS")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--use", "use_it", is_flag=True, help="also make it the context in use")
def add(name: str, address: str, api_key: str | None, api_key_file: Path | None, tls: bool,
        ca_file: Path | None, use_it: bool) -> int:  # fmt: skip
    key = api_key or (api_key_file.read_text().strip() if api_key_file else "")
    if not key:
        raise CliError("give the context's key: --api-key KEY or --api-key-file FILE")
    entry: dict[str, Any] = {"address": address, "api_key": key, "tls": {}}
    if tls:
        entry["tls"]["AUTHZ_TLS"] = "on"
    if ca_file:
        entry["tls"]["AUTHZ_CA_FILE"] = str(ca_file.resolve())
    data = load()
    data["contexts"][name] = entry
    if use_it or not data["current"]:
        data["current"] = name
    save(data)
    click.echo(f"context {safe(name)} saved" + (" and in use" if data["current"] == name else ""))
    return 0


@context.command(help="use this context from now on")
@click.argument("name")
def use(name: str) -> int:
    data = load()
    if name not in data["contexts"]:
        raise CliError(f"context {name!r} not found: `authz context list` shows the ones there are")
    data["current"] = name
    save(data)
    click.echo(f"using context {safe(name)}")
    return 0


@context.command("list", help="list the contexts (the one in use is marked *)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> int:
    data = load()
    current = os.environ.get("AUTHZ_CONTEXT") or data["current"]
    rows = [
        {"current": "*" if name == current else "", "name": name, "address": c["address"],
         "tls": "on" if c.get("tls") else "off"}
        for name, c in sorted(data["contexts"].items())
    ]  # fmt: skip
    emit(
        as_json or getattr(ctx.obj, "json", False),
        rows,  # or `authz --json context list`
        ["current", "name", "address", "tls"],
    )
    return 0


@context.command(help="remove a context")
@click.argument("name")
def remove(name: str) -> int:
    data = load()
    if data["contexts"].pop(name, None) is None:
        click.echo(f"no context {safe(name)}: nothing to do", err=True)
        return NOT_DONE
    if data["current"] == name:
        data["current"] = ""
    save(data)
    click.echo(f"context {safe(name)} removed")
    return 0
