"""`authz doctor`: read the tenant, run ``domain.doctor.findings``, print them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from .. import names, policy_proto
from ..domain import doctor
from ..domain.model import (
    Approval,
    ApprovalStatus,
    Channel,
    Role,
    Subject,
    SubjectSource,
    SubjectStatus,
)
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import common_pb2 as cm
from .errors import NOT_DONE
from .output import safe, ts
from .plan import list_senders, rpc_call
from .session import Session, pass_session, session_options

FAIL_ON = [s.value for s in doctor.Severity] + ["never"]


def _subject(s: adm.Subject) -> Subject:
    return Subject(
        channel_id=s.channel_id,
        user_id=s.user_id,
        status=SubjectStatus.BLOCKED if s.status == adm.SUBJECT_STATUS_BLOCKED else SubjectStatus.ALLOWED,
        source=SubjectSource.PAIRING if s.source == adm.SUBJECT_SOURCE_PAIRING else SubjectSource.ADMIN,
        display_name=s.display_name,
        permissions=tuple(s.permissions),
        expires_at=ts(s, "expires_at"),
        updated_at=ts(s, "updated_at"),
    )


def _approval(a: cm.Approval) -> Approval:
    created = ts(a, "created_at") or datetime.fromtimestamp(0, UTC)
    return Approval(
        approval_id=a.approval_id,
        channel_id=a.channel_id,
        user_id=a.user_id,
        status=names.APPROVAL_STATUS.domain_map().get(a.status, ApprovalStatus.PENDING),
        created_at=created,
        expires_at=ts(a, "expires_at") or created,
        required_approvals=a.required_approvals or 1,
        approved_by=tuple(a.approved_by),
    )


def snapshot(c: Any, now: datetime) -> doctor.Snapshot:
    """Everything the checks look at, read with the admin API."""
    rpc = rpc_call
    settings = rpc(c.admin.GetTenantSettings, adm.GetTenantSettingsRequest())
    channels = []
    subjects: dict[str, tuple[Subject, ...]] = {}
    senders: dict[str, tuple[tuple[str, str], ...]] = {}
    for ch in sorted(
        rpc(c.admin.ListChannels, adm.ListChannelsRequest()).channels, key=lambda x: x.channel_id
    ):
        platform = names.PLATFORM.to_domain(ch.platform)
        channels.append(Channel("", ch.channel_id, platform, policy_proto.policy_in(ch.policy)))
        users = rpc(c.admin.ListUsers, adm.ListUsersRequest(channel_id=ch.channel_id)).users
        subjects[ch.channel_id] = tuple(_subject(s) for s in users)
        senders[ch.channel_id] = list_senders(c, ch.channel_id)
    pending = rpc(c.admin.ListApprovals, adm.ListApprovalsRequest(
        status=cm.APPROVAL_STATUS_PENDING, kind=cm.APPROVAL_KIND_PAIRING, limit=1000)).approvals  # fmt: skip
    return doctor.Snapshot(
        unreachable=_unreachable(c, now),
        tenant=doctor.TenantView(
            approvers=tuple(settings.approvers),
            agent_approvers={a: tuple(v.actors) for a, v in settings.agent_approvers.items()},
            timezone=settings.timezone or "UTC",
        ),
        channels=tuple(channels),
        subjects=subjects,
        group_senders=senders,
        pending=tuple(_approval(a) for a in pending),
        now=now,
        keys=tuple(
            doctor.KeyView(k.key_id, Role(names.ROLE.label(k.role)), tuple(k.channels), tuple(k.agents))
            for k in rpc(c.admin.ListApiKeys, adm.ListApiKeysRequest()).keys
            if not k.HasField("revoked_at")
        ),
    )


def _unreachable(c: Any, now: datetime) -> tuple[doctor.UnreachableView, ...]:
    """Approvers whose notifications could not be delivered, from the audit trail."""
    req = adm.QueryAuditRequest(event="notification.", limit=1000)
    req.since.FromDatetime(now - doctor.UNREACHABLE_WINDOW)
    seen: list[tuple[str, str, str, str]] = []
    for _ in range(50):  # at most 50,000 events: the rest is beyond what a check should read
        resp = rpc_call(c.admin.QueryAudit, req)
        for e in resp.events:
            reason = str(json.loads(e.details_json or "{}").get("reason", ""))
            seen.append((e.event, e.channel_id, e.subject, reason))
        if not resp.next_after_event_id:
            break
        req.after_event_id = resp.next_after_event_id
    return doctor.unreachable_approvers(seen)


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
