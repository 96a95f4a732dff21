"""Protobuf <-> domain. Unknown enum values are INVALID_ARGUMENT naming the field."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from .. import names, policy_proto
from ..domain import ids
from ..domain.access import Inbound, Verdict
from ..domain.errors import InvalidArgument
from ..domain.invites import Invite
from ..domain.model import (
    Approval,
    ChatKind,
    Grant,
    Risk,
    Role,
    Subject,
    SubjectSource,
    SubjectStatus,
    ToolCall,
)
from ..flows.approvals import OwnerNotification
from ..flows.notices import CopyItem
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import authz_pb2 as az
from ..gen.authz.v1 import common_pb2 as cm

# Tables from the proto's names (authz_service.names); UNSPECIFIED means what the
# contract documents for it, or is refused by enum_in.
PLATFORM = names.PLATFORM.domain_map()
CHAT_KIND = names.CHAT_KIND.domain_map()
ACTION = names.APPROVAL_ACTION.domain_map()
RISK = {cm.RISK_UNSPECIFIED: Risk.MEDIUM, **names.RISK.domain_map()}
KIND = {cm.APPROVAL_KIND_UNSPECIFIED: "", **names.APPROVAL_KIND.label_map()}
APPROVAL_STATUS = names.APPROVAL_STATUS.domain_map()
# The channel policy's codec is shared with the CLI, so it lives outside api/ (policy_proto).
DM_POLICY, GROUP_POLICY, SEND_DEFAULT = (
    policy_proto.DM_POLICY,
    policy_proto.GROUP_POLICY,
    policy_proto.SEND_DEFAULT,
)
enum_in, enum_out = policy_proto.enum_in, policy_proto.enum_out
policy_in, policy_out = policy_proto.policy_in, policy_proto.policy_out
send_policy_in, send_policy_out = policy_proto.send_policy_in, policy_proto.send_policy_out
ROLE = {number: Role(label) for number, label in names.ROLE.label_map().items()}
DECISION = {
    decision: az.Decision.ValueType(number) for number, decision in names.DECISION.domain_map().items()
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ts(value: datetime | None) -> Timestamp | None:
    """A naive datetime is UTC (as ``Timestamp.FromDatetime`` has it), in a
    quarter of its time: answers carry several timestamps."""
    if value is None:
        return None
    since = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - _EPOCH
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000)


def from_ts(value: Timestamp, present: bool) -> datetime | None:
    return value.ToDatetime().replace(tzinfo=UTC) if present else None


def tool_out(t: ToolCall) -> cm.ToolCall:
    return cm.ToolCall(
        tool_name=t.tool_name,
        arguments_json=t.arguments,
        arguments_digest=t.digest.hex(),
        agent_id=t.agent_id,
        session_id=t.session_id,
        risk=enum_out(RISK, t.risk),
        request_key=t.request_key,
    )


def approval_out(a: Approval) -> cm.Approval:
    msg = cm.Approval(
        approval_id=a.approval_id,
        kind=enum_out(KIND, a.kind),
        status=enum_out(APPROVAL_STATUS, a.status),
        channel_id=a.channel_id,
        user_id=a.user_id,
        display_name=a.display_name,
        created_at=ts(a.created_at),
        expires_at=ts(a.expires_at),
        resolved_at=ts(a.resolved_at),
        resolved_by=a.resolved_by,
        reason=a.reason,
        redeemed_at=ts(a.redeemed_at),
        grant_id=a.grant_id,
        required_approvals=a.required_approvals,
        approved_by=list(a.approved_by),
        first_message=a.first_message,
        handle=a.handle,
        platform=a.platform,
    )
    if a.tool is not None:
        msg.tool.CopyFrom(tool_out(a.tool))
    return msg


def notification_out(n: OwnerNotification) -> az.OwnerNotification:
    return az.OwnerNotification(
        owner_id=n.owner_id,
        text=n.text,
        buttons=[
            az.Button(action=enum_out(ACTION, b.action), label=b.label, callback_payload=b.callback_payload)
            for b in n.buttons
        ],
    )


def copy_out(c: CopyItem) -> az.NotificationCopy:
    return az.NotificationCopy(
        approval_id=c.approval_id,
        approver_id=c.approver_id,
        version=c.version,
        text=c.text,
        buttons=[
            az.Button(action=enum_out(ACTION, b.action), label=b.label, callback_payload=b.callback_payload)
            for b in c.buttons
        ],
        message_ref=c.message_ref,
        kind=c.kind,
    )


def grant_out(g: Grant) -> adm.Grant:
    return adm.Grant(
        grant_id=g.grant_id,
        agent_id=g.agent_id,
        tool=tool_out(g.tool),
        approval_id=g.approval_id,
        created_by=g.created_by,
        created_at=ts(g.created_at),
        revoked_at=ts(g.revoked_at),
        revoked_by=g.revoked_by,
    )


def invite_out(i: Invite) -> adm.Invite:
    return adm.Invite(
        invite_id=i.invite_id,
        channel_id=i.channel_id,
        max_uses=i.max_uses,
        uses=i.uses,
        created_at=ts(i.created_at),
        expires_at=ts(i.expires_at),
        revoked_at=ts(i.revoked_at),
        created_by=i.created_by,
        permissions=list(i.permissions),
        note=i.note,
    )


def subject_out(s: Subject) -> adm.Subject:
    return adm.Subject(
        channel_id=s.channel_id,
        user_id=s.user_id,
        display_name=s.display_name,
        status=adm.SUBJECT_STATUS_ALLOWED
        if s.status is SubjectStatus.ALLOWED
        else adm.SUBJECT_STATUS_BLOCKED,
        source=adm.SUBJECT_SOURCE_PAIRING if s.source is SubjectSource.PAIRING else adm.SUBJECT_SOURCE_ADMIN,
        permissions=list(s.permissions),
        updated_at=ts(s.updated_at),
        expires_at=ts(s.expires_at),
    )


def text(value: str, field: str, max_len: int) -> str:
    return ids.bounded_text(value, field, max_len)


def inbound_in(
    request: az.CheckUserRequest | adm.ExplainUserRequest, max_text: int, *, chat_kind_default: bool = False
) -> Inbound:
    """CheckUser's message (also ExplainUser's), validated. ``chat_kind_default``:
    an unset chat kind means a direct message."""
    user_id = ids.user_id_shape(request.user_id)
    if chat_kind_default and request.chat_kind == cm.CHAT_KIND_UNSPECIFIED:
        kind = ChatKind.DIRECT
    else:
        kind = enum_in(CHAT_KIND, request.chat_kind, "chat_kind")
    if kind is ChatKind.GROUP:
        group_id = ids.group_id(request.group_id)
        if group_id == "*":
            raise InvalidArgument("group_id", "must be a real group id, not '*'")
    elif request.group_id:
        raise InvalidArgument("group_id", "must be empty for direct messages")
    else:
        group_id = ""
    text(request.text, "text", max_text)
    return Inbound(user_id, kind, group_id, request.mentioned, request.text)


def verdict_out(verdict: Verdict, trace_id: str) -> az.CheckUserResponse:
    return az.CheckUserResponse(
        decision=DECISION[verdict.decision],
        reason=verdict.reason,
        text=verdict.text,
        agent_id=verdict.agent_id,
        permissions=list(verdict.permissions),
        tools=cm.ToolList(allowed=list(verdict.tools_allowed), denied=list(verdict.tools_denied)),
        retry_after_seconds=verdict.retry_after_seconds,
        trace_id=trace_id,
    )
