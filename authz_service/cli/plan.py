"""What ``authz apply`` changes: the tenant's current state, the plan (what
differs from the file, compared in the normalised document form that ``authz
export`` writes) and the writes that carry it out."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .. import names, policy_proto
from ..client import paging
from ..domain.model import ChannelPolicy, Platform
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import common_pb2 as cm
from .errors import NOT_DONE, CliError
from .policyfile import (
    MASS_REMOVAL,
    USER_REMOVALS,
    FileChannel,
    FileTenant,
    FileUsers,
    PolicyFile,
    tenant_from_proto,
)
from .schema import FileError
from .session import TIMEOUT, admin_call, wait

# --- the normalised document form (export, diff) --------------------------------------


class Map(dict[str, Any]):
    """A proto map in document form: flattened as ``field[key]``, not ``field.key``."""


def _doc_value(fd: Any, value: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return names.EnumNames(fd.enum_type).label(value)
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return message_doc(value)
    return value


def message_doc(msg: Message, *, top: bool = False) -> dict[str, Any]:
    """A proto message as a policy-file mapping, in field-number order, map keys
    sorted. Unset fields are left out; with ``top``, scalar fields other than
    strings are always written (the channel's full policy, defaults included)."""
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            if value:
                value_fd = fd.message_type.fields_by_name["value"]
                out[fd.name] = Map({k: _doc_value(value_fd, value[k]) for k in sorted(value)})
        elif fd.is_repeated:
            if value:
                out[fd.name] = [_doc_value(fd, v) for v in value]
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            if msg.HasField(fd.name):
                sub = message_doc(value)
                if sub or fd.name == "send_policy":
                    out[fd.name] = sub
        elif fd.has_presence:
            if msg.HasField(fd.name):
                out[fd.name] = _doc_value(fd, value)
        elif value or (top and fd.type != FieldDescriptor.TYPE_STRING):
            out[fd.name] = _doc_value(fd, value)
    return out


def policy_doc(policy: ChannelPolicy) -> dict[str, Any]:
    return message_doc(policy_proto.policy_out(policy), top=True)


def tenant_doc(t: FileTenant) -> dict[str, Any]:
    return {
        "approvers": list(t.approvers),
        "agent_approvers": Map({a: list(v) for a, v in sorted(t.agent_approvers.items())}),
        "timezone": t.timezone,
    }


def flatten(doc: Any, prefix: str) -> dict[str, Any]:
    """Leaves by path: ``policy.groups[*].require_mention``; lists of scalars stay whole."""
    out: dict[str, Any] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.update(flatten(v, f"{prefix}[{k}]" if isinstance(doc, Map) else f"{prefix}.{k}"))
        if not doc and isinstance(doc, Map):
            return out
        if not doc:
            out[prefix] = {}
    elif isinstance(doc, list) and any(isinstance(v, dict) for v in doc):
        for i, v in enumerate(doc):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = doc
    return out


_UNSET = object()


def fmt_value(value: Any) -> str:
    if value is _UNSET:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value and value.strip() == value and not value.startswith("[") else json.dumps(value)
    return json.dumps(value, ensure_ascii=False)


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(path, old, new) for every leaf that differs; missing leaves are _UNSET."""
    keys = list(new) + [k for k in old if k not in new]
    return [
        (k, old.get(k, _UNSET), new.get(k, _UNSET)) for k in keys if old.get(k, _UNSET) != new.get(k, _UNSET)
    ]


# --- the tenant's current state ------------------------------------------------------


@dataclass(frozen=True)
class UserNow:
    """A user's standing as the service holds it, in the file's terms."""

    status: str  # allowlisted, blocked, paired
    name: str
    permissions: tuple[str, ...]


@dataclass
class Current:
    tenant: FileTenant
    channels: dict[str, tuple[Platform, ChannelPolicy]]
    senders: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    users: dict[str, dict[str, UserNow]] = field(default_factory=dict)


def rpc_call(fn: Callable[..., Any], request: Message) -> Any:
    return fn(request, timeout=TIMEOUT)


def fetch_current(c: Any, sender_channels: Sequence[str], user_channels: Sequence[str] = ()) -> Current:
    settings = rpc_call(c.admin.GetTenantSettings, adm.GetTenantSettingsRequest())
    channels = {}
    for ch in rpc_call(c.admin.ListChannels, adm.ListChannelsRequest()).channels:
        platform = names.PLATFORM.to_domain(ch.platform)
        channels[ch.channel_id] = (platform, policy_proto.policy_in(ch.policy))
    cur = Current(tenant_from_proto(settings), channels)
    for cid in sender_channels:
        if cid in channels:
            cur.senders[cid] = list_senders(c, cid)
    for cid in user_channels:
        if cid in channels:
            cur.users[cid] = list_users(c, cid)
    return cur


def list_users(c: Any, channel_id: str) -> dict[str, UserNow]:
    """All the channel's users, page after page (a large channel has many)."""
    found = wait(paging.all_users(admin_call(c, rpc_call), adm.ListUsersRequest(channel_id=channel_id)))
    out = {}
    for u in found:
        if u.status == adm.SUBJECT_STATUS_BLOCKED:
            status = "blocked"
        else:
            status = "paired" if u.source == adm.SUBJECT_SOURCE_PAIRING else "allowlisted"
        out[u.user_id] = UserNow(status, u.display_name, tuple(u.permissions))
    return dict(sorted(out.items()))


def list_senders(c: Any, channel_id: str) -> tuple[tuple[str, str], ...]:
    resp = rpc_call(c.admin.ListGroupSenders, adm.ListGroupSendersRequest(channel_id=channel_id))
    return tuple(sorted({(s.group_id, s.user_id) for s in resp.senders}))


# --- the plan ------------------------------------------------------------------------


@dataclass(frozen=True)
class UserChange:
    """One user's change: ``after`` None removes them from the set they are in."""

    user_id: str
    before: UserNow | None
    after: UserNow | None


def _user_changes(
    users: FileUsers, now: dict[str, UserNow], channel_id: str
) -> tuple[list[UserChange], list[str]]:
    """What makes the channel's users match the file's managed sets: each set
    present is exact (missing users added or changed, absent ones removed); a
    set left out is not touched. Pairing cannot be written: a paired user the
    file lists who is not paired now is a note, not a change."""
    managed = users.managed()
    listed = {u.user_id: (which, u) for which, found in managed.items() for u in found}
    changes: list[UserChange] = []
    notes: list[str] = []
    for user_id, (which, u) in sorted(listed.items()):
        before = now.get(user_id)
        if which == "paired":
            if before is None or before.status != "paired":
                notes.append(f"note: channel {channel_id}: user {user_id} is listed as paired but is "
                             f"{before.status if before else 'unknown'} now; pairing is not written from a file "
                             "(list them under allowlisted to allow them)")  # fmt: skip
            continue
        after = (
            UserNow(which, u.name, u.permissions) if which == "allowlisted" else UserNow("blocked", "", ())
        )
        if before != after and not (which == "blocked" and before is not None and before.status == "blocked"):
            changes.append(UserChange(user_id, before, after))
    for user_id, before in now.items():
        if user_id not in listed and before.status in managed:
            changes.append(UserChange(user_id, before, None))
    return changes, notes


@dataclass
class ChannelPlan:
    channel_id: str
    action: str  # create, change, same, keep, delete
    platform: Platform
    file: FileChannel | None = None
    fields: list[tuple[str, Any, Any]] = field(default_factory=list)
    add: list[tuple[str, str]] = field(default_factory=list)
    remove: list[tuple[str, str]] = field(default_factory=list)
    users: list[UserChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def user_removals(self) -> list[UserChange]:
        return [u for u in self.users if u.after is None]

    @property
    def write_policy(self) -> bool:
        return self.action == "create" or bool(self.fields)


@dataclass
class Plan:
    tenant: FileTenant | None  # the settings to write, when they differ
    tenant_fields: list[tuple[str, Any, Any]]
    channels: list[ChannelPlan]

    @property
    def has_changes(self) -> bool:
        return bool(self.tenant_fields) or any(
            c.action in ("create", "change", "delete") for c in self.channels
        )


def make_plan(pf: PolicyFile, cur: Current, prune: bool) -> Plan:
    tenant_fields: list[tuple[str, Any, Any]] = []
    if pf.tenant is not None:
        tenant_fields = diff(
            flatten(tenant_doc(cur.tenant), "tenant"), flatten(tenant_doc(pf.tenant), "tenant")
        )
    plans = []
    for ch in pf.channels:
        desired_doc = {"platform": ch.platform.value, **flatten(policy_doc(ch.policy), "policy")}
        existing = cur.channels.get(ch.channel_id)
        p = ChannelPlan(ch.channel_id, "create" if existing is None else "same", ch.platform, ch)
        if existing is None:
            p.fields = diff({}, desired_doc)
        else:
            platform, policy = existing
            current_doc = {"platform": platform.value, **flatten(policy_doc(policy), "policy")}
            p.fields = diff(current_doc, desired_doc)
        if ch.group_senders is not None:
            now = set(cur.senders.get(ch.channel_id, ()))
            p.add = sorted(set(ch.group_senders) - now)
            p.remove = sorted(now - set(ch.group_senders))
        if ch.users is not None:
            p.users, p.notes = _user_changes(ch.users, cur.users.get(ch.channel_id, {}), ch.channel_id)
        if existing is not None and (p.fields or p.add or p.remove or p.users):
            p.action = "change"
        plans.append(p)
    in_file = {ch.channel_id for ch in pf.channels}
    for cid in sorted(set(cur.channels) - in_file):
        plans.append(ChannelPlan(cid, "delete" if prune else "keep", cur.channels[cid][0]))
    return Plan(pf.tenant if tenant_fields else None, tenant_fields, plans)


def _sender(s: tuple[str, str]) -> str:
    return f"group {s[0]} user {s[1]}"


def _standing(u: UserNow) -> str:
    extra = [f"name {fmt_value(u.name)}"] if u.name else []
    extra += [f"permissions {','.join(u.permissions)}"] if u.permissions else []
    return u.status + (f" ({'; '.join(extra)})" if extra else "")


def _user_line(u: UserChange) -> str:
    if u.before is None:
        assert u.after is not None
        return f"    + user {u.user_id}: {_standing(u.after)}"
    if u.after is None:
        return f"    - user {u.user_id}: {_standing(u.before)} (not in file)"
    return f"    ~ user {u.user_id}: {_standing(u.before)} -> {_standing(u.after)}"


def unacknowledged_removals(pf: PolicyFile, plan: Plan) -> list[FileError]:
    """Channels whose plan removes ``MASS_REMOVAL`` users or more without
    acknowledging ``user_removals``: like a risky setting, it must be meant."""
    errors = []
    for c in plan.channels:
        n = len(c.user_removals)
        if c.file is None or n < MASS_REMOVAL or USER_REMOVALS in c.file.acknowledge:
            continue
        path = f"{c.file.path}.users"
        errors.append(FileError(pf.line_of(path), path,
                                f"risk {USER_REMOVALS} is not acknowledged: this apply removes {n} users "
                                f"(at least {MASS_REMOVAL} need it). If this is intended, add {USER_REMOVALS} "
                                "to the channel's acknowledge list"))  # fmt: skip
    return errors


def render_plan(plan: Plan) -> list[str]:
    out: list[str] = []
    if plan.tenant_fields:
        out.append("~ tenant settings: change")
        out += [f"    {p}: {fmt_value(a)} -> {fmt_value(b)}" for p, a, b in plan.tenant_fields]
    for c in plan.channels:
        head = f"channel {c.channel_id} ({c.platform.value})"
        if c.action == "create":
            out.append(f"+ {head}: create")
            out += [f"    {p}: {fmt_value(b)}" for p, _, b in c.fields]
        elif c.action == "change":
            out.append(f"~ {head}: change")
            out += [f"    {p}: {fmt_value(a)} -> {fmt_value(b)}" for p, a, b in c.fields]
        elif c.action == "same":
            out.append(f"= {head}: no changes")
        elif c.action == "keep":
            out.append(f"  {head}: not in file; kept (--prune deletes)")
        else:
            out.append(f"- {head}: delete (not in file)")
        out += [f"    + group sender: {_sender(s)}" for s in c.add]
        out += [f"    - group sender: {_sender(s)}" for s in c.remove]
        out += [_user_line(u) for u in c.users]
        out += c.notes
    if plan.has_changes:
        n = {a: sum(1 for c in plan.channels if c.action == a) for a in ("create", "change", "delete")}
        out.append(
            f"plan: {n['create']} to create, {n['change']} to change, {n['delete']} to delete"
            + ("; tenant settings change" if plan.tenant_fields else "")
        )
    else:
        out.append("no changes")
    return out


# --- applying ------------------------------------------------------------------------


class ApplyFailed(CliError):
    """A write the service refused: what failed, what was already applied and what was not."""

    def __init__(self, message: str) -> None:
        super().__init__(message, NOT_DONE)


def _server_error_line(pf: PolicyFile, ch: FileChannel | None, details: str) -> str:
    """'policy.x: problem' from the server -> 'FILE:LINE: channels[i].policy.x: problem'."""
    m = re.match(r"(policy(?:\.[A-Za-z_]+|\[[^\]]*\])*): (.*)", details, re.S)
    if ch is None or m is None:
        return ""
    path = f"{ch.path}.{m[1]}"
    return f"{pf.line_of(path)}: {path}: {m[2]}"


_REMOVAL = {"allowlisted": ("RemoveUser", "removed"), "blocked": ("UnblockUser", "unblocked"),
            "paired": ("UnpairUser", "unpaired")}  # fmt: skip


def _write_user(c: Any, channel_id: str, change: UserChange) -> str:
    """One user's change (RemoveUser, UnblockUser, UnpairUser, AllowUser,
    BlockUser); a blocked user is unblocked before being allowed."""
    ref = adm.UserRef(channel_id=channel_id, user_id=change.user_id)
    before, after = change.before, change.after
    if after is None:
        assert before is not None
        method, verb = _REMOVAL[before.status]
        rpc_call(getattr(c.admin, method), ref)
        return f"{verb} user {change.user_id}"
    if after.status == "blocked":
        rpc_call(c.admin.BlockUser, adm.BlockUserRequest(channel_id=channel_id, user_id=change.user_id))
        return f"blocked user {change.user_id}"
    if before is not None and before.status == "blocked":
        rpc_call(c.admin.UnblockUser, ref)
    rpc_call(c.admin.AllowUser, adm.AllowUserRequest(channel_id=channel_id, user_id=change.user_id,
                                                     display_name=after.name, permissions=list(after.permissions)))  # fmt: skip
    return f"allowed user {change.user_id}"


def execute(c: Any, pf: PolicyFile, plan: Plan, filename: str) -> list[str]:
    """Write what differs. Returns what was done; raises ApplyFailed with a
    message that says what failed and what was already applied."""
    done: list[str] = []
    pending = (["tenant settings"] if plan.tenant is not None else []) + [
        f"channel {c.channel_id} ({c.action})"
        for c in plan.channels
        if c.action in ("create", "change", "delete")
    ]

    def fail(step: str, exc: grpc.RpcError, ch: FileChannel | None = None) -> ApplyFailed:
        code = exc.code()
        details = exc.details() or ""
        where = _server_error_line(pf, ch, details)
        lines = [f"apply stopped: {step} failed: {code.name if code else 'UNKNOWN'}: {details}"]
        if where:
            lines.append(f"  at {filename}:{where}")
        lines.append("already applied: " + ("; ".join(done) if done else "nothing"))
        lines.append("not applied: " + "; ".join(pending))
        return ApplyFailed("\n".join(lines))

    if plan.tenant is not None:
        t = plan.tenant
        req = adm.TenantSettings(
            approvers=list(t.approvers),
            agent_approvers={a: adm.ActorList(actors=list(v)) for a, v in t.agent_approvers.items()},
            timezone=t.timezone,
        )
        try:
            rpc_call(c.admin.SetTenantSettings, req)
        except grpc.RpcError as exc:
            raise fail("tenant settings: SetTenantSettings", exc) from None
        done.append("tenant settings")
        pending.pop(0)
    for p in plan.channels:
        if p.action not in ("create", "change", "delete"):
            continue
        step = f"channel {p.channel_id}"
        try:
            if p.action == "delete":
                step += ": DeleteChannel"
                rpc_call(c.admin.DeleteChannel, adm.DeleteChannelRequest(channel_id=p.channel_id))
                done.append(f"channel {p.channel_id} deleted")
                pending.pop(0)
                continue
            assert p.file is not None
            parts = []
            if p.write_policy:
                step = f"channel {p.channel_id}: SetChannel"
                rpc_call(c.admin.SetChannel, adm.SetChannelRequest(
                    channel_id=p.channel_id, platform=cm.Platform.ValueType(names.PLATFORM.from_domain(p.platform)),
                    policy=policy_proto.policy_out(p.file.policy)))  # fmt: skip
                parts.append("created" if p.action == "create" else "policy updated")
            for g, u in p.remove:
                step = f"channel {p.channel_id}: RemoveGroupSender {_sender((g, u))}"
                rpc_call(
                    c.admin.RemoveGroupSender,
                    adm.GroupSenderRef(channel_id=p.channel_id, group_id=g, user_id=u),
                )
                parts.append(f"removed {_sender((g, u))}")
            for g, u in p.add:
                step = f"channel {p.channel_id}: AllowGroupSender {_sender((g, u))}"
                rpc_call(
                    c.admin.AllowGroupSender,
                    adm.GroupSenderRef(channel_id=p.channel_id, group_id=g, user_id=u),
                )
                parts.append(f"added {_sender((g, u))}")
            for change in p.users:
                step = f"channel {p.channel_id}: user {change.user_id}"
                parts.append(_write_user(c, p.channel_id, change))
        except grpc.RpcError as exc:
            if parts:
                done.append(f"channel {p.channel_id} ({', '.join(parts)})")
            raise fail(step, exc, p.file) from None
        done.append(f"channel {p.channel_id} ({', '.join(parts)})")
        pending.pop(0)
    return done
