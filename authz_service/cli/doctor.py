"""`authz doctor`: read the tenant, run ``domain.doctor.findings``, print them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from .. import doctor_proto
from ..client import SyncClient
from ..domain import doctor
from .errors import NOT_DONE
from .output import safe
from .session import Session, admin_call, pass_session, session_options, wait

FAIL_ON = [s.value for s in doctor.Severity] + ["never"]


def snapshot(c: SyncClient, now: datetime) -> doctor.Snapshot:
    """Everything the checks look at, read as the console's Doctor page reads it."""
    return wait(doctor_proto.read(admin_call(c), now))


def render(found: list[doctor.Finding], threshold: doctor.Severity | None) -> list[str]:
    lines = []
    width = max((len(f.channel_id) for f in found), default=0)
    for f in found:
        lines.append(f"{f.severity.value.upper():<8}  {f.channel_id:<{width}}  {f.code}: {f.message}; "
                     f"fix: {f.fix}")  # fmt: skip
    counts = doctor.summary(found)
    total = len(found)
    tail = ", ".join(f"{n} {s}" for s, n in counts.items())
    verdict = ""
    if threshold is not None:
        verdict = "; failing (--fail-on " + threshold.value + ")" if doctor.fails(found, threshold) else ""
    lines.append(
        ("no findings" if not total else f"{total} finding{'s' if total != 1 else ''}: {tail}") + verdict
    )
    return lines


@click.command("doctor", help="audit the tenant's policies for risky settings (exit 1 at or above --fail-on)")
@click.option("--fail-on", type=click.Choice(FAIL_ON), default="high",
              help="exit 1 when a finding is at or above this severity (default: high; never: always 0)")  # fmt: skip
@session_options
@pass_session
def doctor_command(s: Session, fail_on: str) -> int:
    threshold = None if fail_on == "never" else doctor.Severity(fail_on)
    found = doctor.findings(snapshot(s.client(), datetime.now(UTC)))
    failed = doctor.fails(found, threshold)
    if s.json:
        doc = {
            "findings": [
                {"severity": f.severity.value, "code": f.code, "channel_id": f.channel_id,
                 "message": f.message, "fix": f.fix}
                for f in found
            ],
            "summary": {**doctor.summary(found), "total": len(found), "fail_on": fail_on, "failed": failed},
        }  # fmt: skip
        click.echo(json.dumps(doc, indent=2))
    else:
        for line in render(found, threshold):
            click.echo(safe(line))  # a finding quotes policy text: targets, aliases, names
    return NOT_DONE if failed else 0
