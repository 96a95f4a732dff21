"""How commands print: tables, JSON, UTC timestamps and enum labels.

Every value from the server that a command prints for people goes through
``safe``: names, targets, reasons and the like are chosen by chat users and
agents, and a newline in one would forge a row, an ANSI or bidi control would
rewrite what the operator reads. JSON output is exact JSON (``json.dumps``
escapes what needs escaping); CSV cells are neutralised by ``domain.display.csv_cell``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click
from google.protobuf import json_format
from google.protobuf.message import Message

from .. import names
from ..domain.display import visible
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


def safe(text: str) -> str:
    """``text`` as one inert line for a terminal: every control, format and
    line separator character is shown as an escape (``\\n``, ``\\u001b``,
    ``\\u202e``), by the same rule approvers see in chat
    (``domain.display.visible``). For every value from the server in a
    human-readable line or table; never for JSON."""
    return visible(text)


def fmt(value: Any) -> str:
    """One cell: times in UTC as ``YYYY-MM-DD HH:MM:SS``, lists comma-separated,
    text made ``safe``."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return safe(",".join(map(str, value)))
    return "" if value is None else safe(str(value))


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
