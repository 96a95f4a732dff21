"""What ``domain.doctor`` looks at, read from the admin API's messages.

Shared by ``authz doctor`` (the CLI reads the messages over gRPC) and the web
console's Doctor page (api.console calls the servicers): both run :func:`read`,
so they make the same calls and judge the same snapshot. It needs nothing of
the server.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.message import Message

from . import names, policy_proto
from .client import paging
from .domain import doctor
from .domain.model import (
    Approval,
    ApprovalStatus,
    Channel,
    Role,
    Subject,
    SubjectSource,
    SubjectStatus,
)
from .gen.authz.v1 import admin_pb2 as adm
from .gen.authz.v1 import common_pb2 as cm


def _ts(msg: Message, field: str) -> datetime | None:
    return getattr(msg, field).ToDatetime().replace(tzinfo=UTC) if msg.HasField(field) else None


def subject(s: adm.Subject) -> Subject:
    return Subject(
        channel_id=s.channel_id,
        user_id=s.user_id,
        status=SubjectStatus.BLOCKED if s.status == adm.SUBJECT_STATUS_BLOCKED else SubjectStatus.ALLOWED,
        source=SubjectSource.PAIRING if s.source == adm.SUBJECT_SOURCE_PAIRING else SubjectSource.ADMIN,
        display_name=s.display_name,
        permissions=tuple(s.permissions),
        expires_at=_ts(s, "expires_at"),
        updated_at=_ts(s, "updated_at"),
    )


def approval(a: cm.Approval) -> Approval:
    created = _ts(a, "created_at") or datetime.fromtimestamp(0, UTC)
    return Approval(
        approval_id=a.approval_id,
        channel_id=a.channel_id,
        user_id=a.user_id,
        status=names.APPROVAL_STATUS.domain_map().get(a.status, ApprovalStatus.PENDING),
        created_at=created,
        expires_at=_ts(a, "expires_at") or created,
        required_approvals=a.required_approvals or 1,
        approved_by=tuple(a.approved_by),
    )


def _channel(c: adm.Channel) -> Channel:
    return Channel("", c.channel_id, names.PLATFORM.to_domain(c.platform), policy_proto.policy_in(c.policy))


@dataclass(frozen=True)
class ChannelRead:
    """One channel as read: the channel, all its users and its group senders."""

    channel: adm.Channel
    users: Sequence[adm.Subject]
    senders: Sequence[adm.GroupSender]


def snapshot(
    settings: adm.TenantSettings,
    channels: Sequence[ChannelRead],
    pending: Sequence[cm.Approval],
    keys: Sequence[adm.ApiKey],
    now: datetime,
    notices: Sequence[adm.AuditEvent] = (),
) -> doctor.Snapshot:
    """The snapshot of a tenant; ``pending`` are its pending pairing requests,
    ``notices`` its ``notification.*`` audit events of the last
    ``doctor.UNREACHABLE_WINDOW`` (approvers who could not be reached)."""
    ordered = sorted(channels, key=lambda c: c.channel.channel_id)
    return doctor.Snapshot(
        unreachable=unreachable(notices),
        tenant=doctor.TenantView(
            approvers=tuple(settings.approvers),
            agent_approvers={a: tuple(v.actors) for a, v in settings.agent_approvers.items()},
            timezone=settings.timezone or "UTC",
        ),
        channels=tuple(_channel(c.channel) for c in ordered),
        subjects={c.channel.channel_id: tuple(subject(s) for s in c.users) for c in ordered},
        group_senders={
            c.channel.channel_id: tuple(sorted({(s.group_id, s.user_id) for s in c.senders})) for c in ordered
        },
        pending=tuple(approval(a) for a in pending),
        now=now,
        keys=tuple(
            doctor.KeyView(k.key_id, Role(names.ROLE.label(k.role)), tuple(k.channels), tuple(k.agents))
            for k in keys
            if not k.HasField("revoked_at")
        ),
    )


async def read(call: paging.Call, now: datetime) -> doctor.Snapshot:
    """Everything the checks look at, read with the admin API: the tenant's
    settings, each channel with all its users and group senders, the pending
    pairing requests, the API keys and the recent ``notification.*`` events."""
    settings = await call("GetTenantSettings", adm.GetTenantSettingsRequest())
    channels = []
    for ch in (await call("ListChannels", adm.ListChannelsRequest())).channels:
        users = await paging.all_users(call, adm.ListUsersRequest(channel_id=ch.channel_id))
        senders = await call("ListGroupSenders", adm.ListGroupSendersRequest(channel_id=ch.channel_id))
        channels.append(ChannelRead(ch, users, senders.senders))
    pending = await call("ListApprovals", adm.ListApprovalsRequest(
        status=cm.APPROVAL_STATUS_PENDING, kind=cm.APPROVAL_KIND_PAIRING, page_size=1000))  # fmt: skip
    keys = await call("ListApiKeys", adm.ListApiKeysRequest())
    notices = [e async for e in paging.audit_events(call, notices_request(now), max_pages=MAX_NOTICE_PAGES)]
    return snapshot(settings, channels, pending.approvals, keys.keys, now, notices)


def notices_request(now: datetime) -> adm.QueryAuditRequest:
    """The first page of the audit events :func:`unreachable` reads."""
    req = adm.QueryAuditRequest(event="notification.", limit=1000)
    req.since.FromDatetime(now - doctor.UNREACHABLE_WINDOW)
    return req


# At most this many pages of notices (50,000 events): the rest is beyond what a check should read.
MAX_NOTICE_PAGES = 50


def unreachable(events: Sequence[adm.AuditEvent]) -> tuple[doctor.UnreachableView, ...]:
    """Approvers whose notifications could not be delivered, from the audit trail."""
    seen = [
        (e.event, e.channel_id, e.subject, str(json.loads(e.details_json or "{}").get("reason", "")))
        for e in events
    ]
    return doctor.unreachable_approvers(seen)
