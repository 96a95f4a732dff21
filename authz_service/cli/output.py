"""How commands print: tables, JSON, UTC timestamps and enum labels."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click
from google.protobuf import json_format
from google.protobuf.message import Message

from .. import names
from ..gen.authz.v1 import common_pb2 as cm

# `--kind all` asks for every kind: the request's UNSPECIFIED.
KINDS = {
    **{
        kind: cm.ApprovalKind.ValueType(names.APPROVAL_KIND.number(kind))
        for kind in names.APPROVAL_KIND.labels
    },
    "all": cm.APPROVAL_KIND_UNSPECIFIED,
}
STATUSES = {status: cm.ApprovalStatus.ValueType(names.APPROVAL_STATUS.number(status))
            for status in names.APPROVAL_STATUS.labels}  # fmt: skip


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
