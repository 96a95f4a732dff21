"""``authz audit`` and ``authz audit export``: the audit trail (admin key)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from ..client import paging
from ..domain.display import csv_cell
from ..domain.events import AUDIT_EVENTS, FAMILIES, event_filter
from ..gen.authz.v1 import admin_pb2 as adm
from .durations import EXAMPLES, parse_duration
from .errors import CliError
from .output import fmt, ts
from .session import Session, admin_call, call, each, pass_session, session_options

F = TypeVar("F", bound=Callable[..., Any])
FILTERS = ("since", "until", "user", "channel", "event")
CSV_COLUMNS = ["id", "at", "event", "actor", "channel", "subject", "approval_id", "trace_id", "details"]


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """``2026-11-01``, an ISO time (UTC unless it names a zone), or a duration ago (``30m``, ``7 days``)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        pass
    else:
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        return (now or datetime.now(UTC)) - parse_duration(text)
    except ValueError:
        raise CliError(
            f"--since/--until: cannot read {text!r} (use 2026-11-01, an ISO time, or {EXAMPLES})"
        ) from None


def _event(text: str) -> str:
    """``--event``: a known name or family, else an error listing them."""
    if not text:
        return ""
    found = event_filter(text)
    if found is None:
        raise CliError(
            f"--event: unknown event {text!r}; families: {', '.join(sorted(FAMILIES))}; "
            f"events: {', '.join(sorted(AUDIT_EVENTS))}"
        )
    return found


def _filters(f: F) -> F:
    """The filters, kept in ``ctx.meta``: ``audit --since 1d export`` and ``audit export --since 1d`` agree."""

    def keep(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            ctx.meta[f"audit.{param.name}"] = value

    for name, help_ in reversed((
        ("since", f"events at or after: 2026-11-01, an ISO time, or a duration ago ({EXAMPLES})"),
        ("until", "events before (same forms as --since)"),
        ("user", "events whose subject is this id"),
        ("channel", "one channel"),
        ("event", "an event name (pairing.approved) or a family (pairing: every pairing.* event)"),
    )):  # fmt: skip
        f = click.option(f"--{name}", expose_value=False, callback=keep, help=help_)(f)
    return f


def events(s: Session, ctx: click.Context) -> Iterator[adm.AuditEvent]:
    """Every matching event, oldest first, fetching page after page."""
    given = {name: ctx.meta.get(f"audit.{name}") for name in FILTERS}
    c = s.client()
    req = adm.QueryAuditRequest(channel_id=given["channel"] or "", user_id=given["user"] or "",
                                event=_event(given["event"] or ""), limit=1000)  # fmt: skip
    if given["since"]:
        req.since.FromDatetime(parse_when(given["since"]))
    if given["until"]:
        req.until.FromDatetime(parse_when(given["until"]))
    yield from each(paging.audit_events(admin_call(c), req))


def _row(e: adm.AuditEvent) -> dict[str, Any]:
    return {"id": e.event_id, "at": ts(e, "at"), "event": e.event, "actor": e.actor, "channel": e.channel_id,
            "subject": e.subject, "approval_id": e.approval_id, "trace_id": e.trace_id,
            "details": json.loads(e.details_json or "{}")}  # fmt: skip


@click.group(invoke_without_command=True, help="query the audit trail")
@_filters
@session_options
@pass_session
@click.pass_context
def audit(ctx: click.Context, s: Session) -> int:
    if ctx.invoked_subcommand is not None:
        return 0
    # "key": the API key that carried the event (details.key), e.g. the connector key behind a press.
    rows = [{**r, "key": r["details"].get("key", "")} for r in map(_row, events(s, ctx))]
    s.emit(rows, ["id", "at", "event", "actor", "key", "channel", "subject"])
    return 0


@audit.command("export", help="export the audit trail as CSV or JSON")
@click.option("--format", "format_", type=click.Choice(["csv", "json"]), default="csv")
@click.option("-o", "--output", help="file to write (default: stdout)")
@_filters
@session_options
@pass_session
@click.pass_context
def export(ctx: click.Context, s: Session, format_: str, output: str | None) -> int:
    out = open(output, "w", newline="", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
    count = 0
    try:
        if format_ == "json":
            out.write("[")
            for count, e in enumerate(events(s, ctx), start=1):
                out.write(("," if count > 1 else "") + "\n  " + json.dumps(_row(e), default=fmt))
            out.write("\n]\n")
        else:
            writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for e in events(s, ctx):
                count += 1
                row = _row(e)
                row["at"] = fmt(row["at"])
                row["details"] = json.dumps(row["details"], sort_keys=True)
                writer.writerow({k: csv_cell(str(v)) for k, v in row.items()})
    finally:
        if output:
            out.close()
    if output:
        click.echo(f"wrote {count} events to {output}", err=True)
    return 0


@audit.command(help="drop whole months of audit, all tenants, ending on or before DATE (operator key)")
@click.option("--before", required=True, help="a date, YYYY-MM-DD (UTC); the current month is always kept")
@session_options
@pass_session
def prune(s: Session, before: str) -> int:
    resp = call(s.client(operator=True).admin.PruneAudit, adm.PruneAuditRequest(before=before))
    rows = [{"partition": p.partition, "from": ts(p, "range_from"), "until": ts(p, "range_to"), "events": p.events}
            for p in resp.partitions]  # fmt: skip
    s.emit(rows, ["partition", "from", "until", "events"])
    return 0
