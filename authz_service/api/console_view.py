"""What the web console shows of the API's messages: the one place a proto
message becomes the plain values a template prints.

Every text that came from a stranger, an agent or an operator goes through
``domain.display.visible`` (hidden and reordering characters shown as escapes,
as approvers see them in chat and the CLI); the templates then HTML-escape
everything (Jinja2 autoescape), so nothing here is markup.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from .. import names
from ..domain.display import visible
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import common_pb2 as cm


def when(ts: timestamp_pb2.Timestamp) -> str:
    """A timestamp in UTC, or an empty string when unset."""
    if not ts.seconds and not ts.nanos:
        return ""
    return datetime.fromtimestamp(ts.seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def requester_details(a: cm.Approval) -> list[tuple[str, str]]:
    """What the requester told about themselves, as stored with the request
    (empty for requests made before the fields existed)."""
    shown = [("First message", a.first_message), ("Handle", "@" + a.handle if a.handle else "")]
    return [(label, visible(value)) for label, value in shown if value]


def pretty_json(canonical: str) -> str:
    """Tool arguments, indented, with hidden characters made visible. json.dumps
    never writes a raw line break inside a string, so each line is escaped alone."""
    try:
        pretty = json.dumps(json.loads(canonical), indent=2, ensure_ascii=False, sort_keys=True)
    except ValueError:
        return visible(canonical)
    return "\n".join(visible(line) for line in pretty.split("\n"))


@dataclass(frozen=True)
class ApprovalView:
    approval_id: str
    kind: str
    status: str
    channel_id: str
    platform: str
    user_id: str
    display_name: str
    created_at: str
    expires_at: str
    quorum: str
    approved_by: list[str]
    details: list[tuple[str, str]] = field(default_factory=list)
    tool_name: str = ""
    agent_id: str = ""
    risk: str = ""
    arguments: str = ""
    digest: str = ""

    @property
    def is_tool(self) -> bool:
        return self.kind == "tool"


def approval(a: cm.Approval, platforms: dict[str, str]) -> ApprovalView:
    """One approval as every console page shows it."""
    kind = names.APPROVAL_KIND.label(a.kind)
    quorum = f"{len(a.approved_by)} of {a.required_approvals}" if a.required_approvals > 1 else ""
    view = ApprovalView(
        approval_id=a.approval_id,
        kind=kind,
        status=names.APPROVAL_STATUS.label(a.status),
        channel_id=a.channel_id,
        platform=visible(a.platform) or platforms.get(a.channel_id, ""),
        user_id=visible(a.user_id),
        display_name=visible(a.display_name),
        created_at=when(a.created_at),
        expires_at=when(a.expires_at),
        quorum=quorum,
        approved_by=[visible(x) for x in a.approved_by],
        details=requester_details(a),
    )
    if a.HasField("tool"):
        t = a.tool
        return replace(
            view,
            tool_name=visible(t.tool_name),
            agent_id=visible(t.agent_id),
            risk=names.RISK.label(t.risk) if t.risk else "",
            arguments=pretty_json(t.arguments_json),
            digest=t.arguments_digest,
        )
    return view


@dataclass(frozen=True)
class SubjectView:
    user_id: str
    raw_user_id: str
    display_name: str
    status: str
    source: str
    permissions: str
    updated_at: str
    expires_at: str

    @property
    def blocked(self) -> bool:
        return self.status == "blocked"


def subject(s: adm.Subject) -> SubjectView:
    return SubjectView(
        user_id=visible(s.user_id),
        raw_user_id=s.user_id,
        display_name=visible(s.display_name),
        status=names.SUBJECT_STATUS.label(s.status),
        source=names.SUBJECT_SOURCE.label(s.source),
        permissions=", ".join(visible(p) for p in s.permissions),
        updated_at=when(s.updated_at),
        expires_at=when(s.expires_at),
    )


def policy_summary(channel: adm.Channel) -> list[tuple[str, str]]:
    p = channel.policy
    return [
        ("Platform", names.PLATFORM.label(channel.platform)),
        ("DM policy", names.DM_POLICY.label(p.dm_policy)),
        ("Group policy", names.GROUP_POLICY.label(p.group_policy)),
        ("Owner", visible(p.owner_id) or "none (requesters are told the CLI command)"),
        ("Approvers", ", ".join(visible(x) for x in p.approvers) or "none"),
        ("Pairing code lifetime", f"{p.pairing_code_ttl_seconds or 300} s"),
        ("Live requests at most", str(p.max_pending or 20)),
        ("Updated", when(channel.updated_at)),
    ]


def audit_row(e: adm.AuditEvent) -> dict[str, str]:
    return {
        "event_id": str(e.event_id),
        "at": when(e.at),
        "event": visible(e.event),
        "actor": visible(e.actor),
        "channel_id": visible(e.channel_id),
        "subject": visible(e.subject),
        "approval_id": e.approval_id,
        "trace_id": e.trace_id,
        "details": visible(e.details_json),
    }


def route(found: adm.ExplainUserResponse) -> tuple[str, str]:
    """Where the user's direct messages go and what the matching binding adds,
    as ExplainUser found them. No agent: no binding names one and CheckUser does
    not allow the user now (the channel's own agent is named only with an ALLOW)."""
    binding = found.binding if found.HasField("binding") else None
    agent = (binding.agent_id if binding is not None else "") or found.check.agent_id
    extra = ", ".join(visible(p) for p in binding.permissions) if binding is not None else ""
    return visible(agent), extra


def decision(found: adm.ExplainUserResponse) -> str:
    """CheckUser's answer to a direct message from the user now, e.g. ``allow (allowlisted)``."""
    return f"{names.DECISION.label(found.check.decision)} ({visible(found.check.reason)})"
