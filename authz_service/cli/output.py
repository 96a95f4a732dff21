"""How commands print: tables, JSON, UTC timestamps and enum labels."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click
from google.protobuf import json_format
from google.protobuf.message import Message

from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import common_pb2 as cm

# The CLI's spelling of proto enum values (the value name without its prefix, lower case).
PLATFORMS = {"telegram": cm.PLATFORM_TELEGRAM, "slack": cm.PLATFORM_SLACK, "discord": cm.PLATFORM_DISCORD,
             "whatsapp": cm.PLATFORM_WHATSAPP}  # fmt: skip
DM = {"pairing": cm.DM_POLICY_PAIRING, "allowlist": cm.DM_POLICY_ALLOWLIST, "open": cm.DM_POLICY_OPEN,
      "disabled": cm.DM_POLICY_DISABLED}  # fmt: skip
GROUP = {
    "open": cm.GROUP_POLICY_OPEN,
    "allowlist": cm.GROUP_POLICY_ALLOWLIST,
    "disabled": cm.GROUP_POLICY_DISABLED,
}
ROLES = {"connector": adm.ROLE_CONNECTOR, "approver": adm.ROLE_APPROVER, "admin": adm.ROLE_ADMIN,
         "agent": adm.ROLE_AGENT}  # fmt: skip
KINDS = {
    "tool": cm.APPROVAL_KIND_TOOL,
    "pairing": cm.APPROVAL_KIND_PAIRING,
    "all": cm.APPROVAL_KIND_UNSPECIFIED,
}
STATUSES = {
    "pending": cm.APPROVAL_STATUS_PENDING,
    "approved": cm.APPROVAL_STATUS_APPROVED,
    "denied": cm.APPROVAL_STATUS_DENIED,
    "blocked": cm.APPROVAL_STATUS_BLOCKED,
    "expired": cm.APPROVAL_STATUS_EXPIRED,
}


def label(enum_type: Any, value: int) -> str:
    """``DM_POLICY_OPEN`` -> ``open``: the value's name without its enum's prefix."""
    prefix = str(enum_type.DESCRIPTOR.values_by_number[0].name).removesuffix("UNSPECIFIED")
    return str(enum_type.Name(value)).removeprefix(prefix).lower()


def fmt(value: Any) -> str:
    """One cell: times in UTC as ``YYYY-MM-DD HH:MM:SS``, lists comma-separated."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return "" if value is None else str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def emit(as_json: bool, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """A listing: a table, or with ``--json`` a JSON array of every row's fields."""
    click.echo(json.dumps(rows, indent=2, default=fmt) if as_json else table(rows, columns))


def as_dict(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def ts(msg: Message, field: str) -> datetime | None:
    return getattr(msg, field).ToDatetime().replace(tzinfo=UTC) if msg.HasField(field) else None
