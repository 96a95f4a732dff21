"""``authz``: the operator's command line.

Every command except ``serve``, ``dev`` and ``migrate`` talks to the service
over gRPC (``AUTHZ_ADDRESS``, ``AUTHZ_API_KEY``), so it works the same against
a laptop and a cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from ..client import DEFAULT_ADDRESS, SyncClient, TlsConfig, connect_sync, invite_code_to_redeem
from ..config import ConfigError, Settings
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import authz_pb2 as az
from ..gen.authz.v1 import common_pb2 as cm
from . import invites


class CliError(Exception):
    pass


# --- output ----------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return "" if value is None else str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def as_dict(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def enum_name(prefix: str, value: str) -> str:
    return value.removeprefix(prefix).lower()


def emit(args: argparse.Namespace, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(rows, indent=2, default=_fmt))
    else:
        print(table(rows, columns))


def ts(msg: Message, field: str) -> datetime | None:
    return getattr(msg, field).ToDatetime().replace(tzinfo=UTC) if msg.HasField(field) else None


# --- connection --------------------------------------------------------------------


def _read_key(env_name: str, fallback: Path | None) -> str | None:
    if os.environ.get(env_name):
        return os.environ[env_name].strip()
    file_name = os.environ.get(f"{env_name}_FILE")
    for path in (Path(file_name) if file_name else None, fallback):
        if path is not None and path.exists():
            return path.read_text().strip()
    return None


def api_key(args: argparse.Namespace, *, operator: bool = False) -> str:
    home = Path(os.environ.get("AUTHZ_HOME") or Path.home() / ".authz")
    if operator:
        key = _read_key("AUTHZ_OPERATOR_KEY", home / "operator.key")
        missing = "set AUTHZ_OPERATOR_KEY (or AUTHZ_OPERATOR_KEY_FILE)"
    else:
        key = args.api_key or _read_key("AUTHZ_API_KEY", None)
        missing = "set AUTHZ_API_KEY (or pass --api-key); `make run` prints one for the demo tenant"
    if not key:
        raise CliError(missing)
    return key


def client(args: argparse.Namespace, *, operator: bool = False) -> SyncClient:
    try:
        tls = TlsConfig.from_env(os.environ)
    except (ValueError, OSError) as exc:
        raise CliError(f"TLS settings: {exc}") from None
    return connect_sync(args.address, api_key(args, operator=operator), tls=tls)


def rpc_error(exc: grpc.RpcError, what: str = "") -> CliError:
    code = exc.code()
    name = code.name if code is not None else "UNKNOWN"
    return CliError(f"{name}: {what + ': ' if what else ''}{exc.details()}")


def call(fn: Callable[..., Any], request: Message, *, what: str = "") -> Any:
    """One unary call; an RPC error becomes ``<STATUS>: [what: ]<details>``."""
    try:
        return fn(request, timeout=15)
    except grpc.RpcError as exc:
        raise rpc_error(exc, what) from None


# --- commands ----------------------------------------------------------------------

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


def cmd_serve(args: argparse.Namespace) -> int:
    from ..logs import setup_logging
    from ..server import serve

    setup_logging()
    settings = Settings.from_env()
    workers = args.workers or settings.workers
    if workers > 1 and not settings.reuseport:
        from ..workers import run

        return run(settings, workers)
    asyncio.run(serve(settings))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from .dev import run_dev

    return run_dev()


def cmd_migrate(args: argparse.Namespace) -> int:
    from ..store import embedded
    from ..store.migrate import migrate

    explicit = os.environ.get("AUTHZ_MIGRATE_DATABASE_URL") or os.environ.get("AUTHZ_DATABASE_URL")
    settings = None if explicit else Settings.from_env()

    async def run() -> None:
        if settings is not None:
            emb = await asyncio.to_thread(embedded.start, settings.home)
            await embedded.ensure_database(emb)
            dsn = emb.owner_dsn
        else:
            dsn = explicit or ""
        applied = await migrate(dsn)
        if applied:
            for m in applied:
                print(f"applied {m.version:04d}_{m.name}")
        else:
            print("schema is up to date")

    asyncio.run(run())
    return 0


def _tenant_row(t: adm.Tenant) -> dict[str, Any]:
    return {"tenant": t.tenant_id, "name": t.display_name, "created": ts(t, "created_at")}


def cmd_tenant_create(args: argparse.Namespace) -> int:
    c = client(args, operator=True)
    resp = call(
        c.admin.CreateTenant, adm.CreateTenantRequest(tenant_id=args.tenant, display_name=args.name or "")
    )
    print(f"created tenant {resp.tenant.tenant_id}")
    print(f"admin key (shown once, store it now):\n{resp.secret}")
    return 0


def cmd_tenant_list(args: argparse.Namespace) -> int:
    c = client(args, operator=True)
    resp = call(c.admin.ListTenants, adm.ListTenantsRequest())
    emit(args, [_tenant_row(t) for t in resp.tenants], ["tenant", "name", "created"])
    return 0


def _key_row(k: adm.ApiKey) -> dict[str, Any]:
    return {"key_id": k.key_id, "role": enum_name("ROLE_", adm.Role.Name(k.role)), "name": k.name,
            "created": ts(k, "created_at"), "revoked": ts(k, "revoked_at")}  # fmt: skip


def cmd_key_create(args: argparse.Namespace) -> int:
    c = client(args)
    resp = call(c.admin.CreateApiKey, adm.CreateApiKeyRequest(role=ROLES[args.role], name=args.name or ""))
    print(f"created {args.role} key {resp.key.key_id} (shown once, store it now):\n{resp.secret}")
    return 0


def cmd_key_list(args: argparse.Namespace) -> int:
    resp = call(client(args).admin.ListApiKeys, adm.ListApiKeysRequest())
    emit(args, [_key_row(k) for k in resp.keys], ["key_id", "role", "name", "created", "revoked"])
    return 0


def cmd_key_revoke(args: argparse.Namespace) -> int:
    resp = call(client(args).admin.RevokeApiKey, adm.RevokeApiKeyRequest(key_id=args.key_id))
    print(f"revoked key {resp.key.key_id}")
    return 0


def cmd_channel_set(args: argparse.Namespace) -> int:
    c = client(args)
    from . import policyfile  # imports this module

    given = cm.ChannelPolicy()
    keys: list[str] = []
    platform: str | None = None
    if args.file:
        try:
            platform, given, keys = policyfile.read_policy_overlay(policyfile.read_text(args.file))
        except policyfile.PolicyFileInvalid as exc:
            lines = [e.format(args.file) for e in exc.errors]
            raise CliError("\n".join([*lines, f"{args.file}: nothing was saved"])) from None
    # Flags are applied after the file and win over it.
    platform = args.platform or platform
    for key, value in (("dm_policy", args.dm_policy and DM[args.dm_policy]),
                       ("group_policy", args.group_policy and GROUP[args.group_policy]),
                       ("owner_id", args.owner), ("agent_id", args.agent),
                       ("pairing_code_ttl_seconds", args.code_ttl), ("max_pending", args.max_pending),
                       ("pairing_ttl_seconds", args.pairing_ttl)):  # fmt: skip
        if value is not None:
            setattr(given, key, value)
            keys.append(key)
    if args.require_mention is not None:
        given.require_mention = args.require_mention == "true"
        keys.append("require_mention")
    if args.approver:
        del given.approvers[:]
        given.approvers.extend(args.approver)
        keys.append("approvers")
    # Keys given change only themselves: start from the stored policy if any.
    base = cm.ChannelPolicy()
    try:
        current = c.admin.GetChannel(adm.GetChannelRequest(channel_id=args.channel), timeout=15)
        base, platform = (
            current.policy,
            platform or enum_name("PLATFORM_", cm.Platform.Name(current.platform)),
        )
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise CliError(f"{exc.code().name}: {exc.details()}") from None
    if platform not in PLATFORMS:
        raise CliError(f"--platform is required for a new channel: one of {', '.join(PLATFORMS)}")
    policy = cm.ChannelPolicy()
    policy.CopyFrom(base)
    for key in keys:  # a key given replaces that field whole: lists and maps are not merged
        policy.ClearField(key)  # type: ignore[arg-type]
    policy.MergeFrom(given)
    resp = call(
        c.admin.SetChannel,
        adm.SetChannelRequest(channel_id=args.channel, platform=PLATFORMS[platform], policy=policy),
    )
    print(f"channel {resp.channel_id} saved")
    _print_channel(args, resp)
    return 0


def _channel_dict(ch: adm.Channel) -> dict[str, Any]:
    p = as_dict(ch.policy)
    out: dict[str, Any] = {
        "channel_id": ch.channel_id,
        "platform": enum_name("PLATFORM_", cm.Platform.Name(ch.platform)),
    }
    out["dm_policy"] = enum_name("DM_POLICY_", cm.DmPolicy.Name(ch.policy.dm_policy))
    out["group_policy"] = enum_name("GROUP_POLICY_", cm.GroupPolicy.Name(ch.policy.group_policy))
    for k, v in p.items():
        if k not in ("dm_policy", "group_policy"):
            out[k] = v
    return out


def _print_channel(args: argparse.Namespace, ch: adm.Channel) -> None:
    d = _channel_dict(ch)
    print(
        json.dumps(d, indent=2)
        if args.json
        else yaml.safe_dump(d, sort_keys=False, allow_unicode=True).rstrip()
    )


def cmd_channel_show(args: argparse.Namespace) -> int:
    _print_channel(args, call(client(args).admin.GetChannel, adm.GetChannelRequest(channel_id=args.channel)))
    return 0


def cmd_channel_list(args: argparse.Namespace) -> int:
    resp = call(client(args).admin.ListChannels, adm.ListChannelsRequest())
    emit(
        args,
        [_channel_dict(ch) for ch in resp.channels],
        ["channel_id", "platform", "dm_policy", "group_policy", "owner_id"],
    )
    return 0


def _approval_row(a: cm.Approval) -> dict[str, Any]:
    return {"approval_id": a.approval_id, "channel": a.channel_id, "user": a.user_id, "name": a.display_name,
            "status": enum_name("APPROVAL_STATUS_", cm.ApprovalStatus.Name(a.status)),
            "created": ts(a, "created_at"), "expires": ts(a, "expires_at"), "resolved_by": a.resolved_by}  # fmt: skip


def cmd_pairing_list(args: argparse.Namespace) -> int:
    status = getattr(cm, f"APPROVAL_STATUS_{args.status.upper()}")
    resp = call(
        client(args).admin.ListApprovals,
        adm.ListApprovalsRequest(channel_id=args.channel or "", status=status),
    )
    emit(
        args,
        [_approval_row(a) for a in resp.approvals],
        ["approval_id", "channel", "user", "name", "status", "expires"],
    )
    return 0


def _resolve(args: argparse.Namespace, action: Any) -> int:
    req = az.ResolveApprovalRequest(code=az.CodeRef(channel_id=args.channel, code=args.code), action=action,
                                    reason=args.reason or "")  # fmt: skip
    resp = call(client(args).authz.ResolveApproval, req)
    a = resp.approval
    print(f"{resp.owner_text}: user {a.user_id} on {a.channel_id} ({a.approval_id})")
    if resp.requester_text:
        print(f"the requester will be told: {resp.requester_text}")
    return 0


def _user_row(s: adm.Subject) -> dict[str, Any]:
    status = (
        "blocked"
        if s.status == adm.SUBJECT_STATUS_BLOCKED
        else ("paired" if s.source == adm.SUBJECT_SOURCE_PAIRING else "allowlisted")
    )
    return {"user": s.user_id, "name": s.display_name, "status": status, "permissions": list(s.permissions),
            "updated": ts(s, "updated_at"), "expires": ts(s, "expires_at")}  # fmt: skip


def cmd_users_list(args: argparse.Namespace) -> int:
    which = adm.USER_FILTER_UNSPECIFIED
    if args.paired:
        which = adm.USER_FILTER_PAIRED
    elif args.blocked:
        which = adm.USER_FILTER_BLOCKED
    elif args.allowlisted:
        which = adm.USER_FILTER_ALLOWLISTED
    resp = call(client(args).admin.ListUsers, adm.ListUsersRequest(channel_id=args.channel, filter=which))
    emit(
        args,
        [_user_row(s) for s in resp.users],
        ["user", "name", "status", "permissions", "updated", "expires"],
    )
    return 0


def cmd_users_allow(args: argparse.Namespace) -> int:
    req = adm.AllowUserRequest(channel_id=args.channel, user_id=args.user, display_name=args.name or "",
                               permissions=args.permission or [])  # fmt: skip
    call(client(args).admin.AllowUser, req)
    print(f"allowed {args.user} on {args.channel}")
    return 0


def cmd_users_block(args: argparse.Namespace) -> int:
    call(
        client(args).admin.BlockUser,
        adm.BlockUserRequest(channel_id=args.channel, user_id=args.user, reason=args.reason or ""),
    )
    print(f"blocked {args.user} on {args.channel}")
    return 0


def _removal(method: str, verb: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        resp = call(
            getattr(client(args).admin, method), adm.UserRef(channel_id=args.channel, user_id=args.user)
        )
        print(
            f"{verb} {args.user} on {args.channel}"
            if resp.removed
            else f"nothing to do: {args.user} was not {verb}"
        )
        return 0 if resp.removed else 1

    return run


def cmd_users_export(args: argparse.Namespace) -> int:
    resp = call(client(args).admin.ExportUser, adm.UserRef(channel_id=args.channel, user_id=args.user))
    text = json.dumps(json.loads(resp.json), indent=2, ensure_ascii=False) + "\n"
    if not args.output:
        sys.stdout.write(text)
        return 0
    try:
        # Personal data: readable by the owner only (a new file; an existing one keeps its mode).
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        raise CliError(f"{args.output}: {exc.strerror or exc}") from None
    print(f"wrote the data of {args.user} on {args.channel} to {args.output}", file=sys.stderr)
    return 0


PURGE_REFUSED = (
    "refusing to delete without --purge: `users delete` erases {user} from every table on {channel} "
    "(standing, group sender entries, pairing and tool approvals) and rewrites their audit events under "
    "a pseudonym; it cannot be undone. Run `authz users export {channel} {user}` first if you need a copy, "
    "`authz users anonymize {channel} {user}` to keep their access but drop their personal data, or "
    "`authz users remove|unpair|unblock` to change only their access. Repeat with --purge to proceed."
)


def cmd_users_delete(args: argparse.Namespace) -> int:
    if not args.purge:
        raise CliError(PURGE_REFUSED.format(user=args.user, channel=args.channel))
    r = call(client(args).admin.PurgeUser, adm.UserRef(channel_id=args.channel, user_id=args.user))
    counts = {"subjects": r.subjects_deleted, "group_senders": r.group_senders_deleted,
              "approvals": r.approvals_deleted, "audit_events_anonymized": r.audit_events_anonymized}  # fmt: skip
    if args.json:
        print(json.dumps({"pseudonym": r.pseudonym, **counts}, indent=2))
        return 0
    print(f"purged {args.user} on {args.channel}; the audit trail now names them {r.pseudonym}")
    print(f"  subjects deleted:         {r.subjects_deleted}")
    print(f"  group senders deleted:    {r.group_senders_deleted}")
    print(f"  approvals deleted:        {r.approvals_deleted}")
    print(f"  audit events anonymised:  {r.audit_events_anonymized}")
    return 0


def cmd_users_anonymize(args: argparse.Namespace) -> int:
    r = call(client(args).admin.AnonymizeUser, adm.UserRef(channel_id=args.channel, user_id=args.user))
    if args.json:
        print(json.dumps({"subjects": r.subjects_updated, "approvals": r.approvals_updated,
                          "audit_events_anonymized": r.audit_events_anonymized}, indent=2))  # fmt: skip
        return 0
    print(f"anonymised {args.user} on {args.channel} (their access is unchanged)")
    print(f"  subjects updated:         {r.subjects_updated}")
    print(f"  approvals updated:        {r.approvals_updated}")
    print(f"  audit events anonymised:  {r.audit_events_anonymized}")
    return 0


def cmd_group_allow(args: argparse.Namespace) -> int:
    call(
        client(args).admin.AllowGroupSender,
        adm.GroupSenderRef(channel_id=args.channel, group_id=args.group, user_id=args.user),
    )
    print(f"{args.user} may speak in group {args.group} on {args.channel}")
    return 0


def cmd_group_remove(args: argparse.Namespace) -> int:
    resp = call(client(args).admin.RemoveGroupSender,
                adm.GroupSenderRef(channel_id=args.channel, group_id=args.group, user_id=args.user))  # fmt: skip
    print("removed" if resp.removed else "nothing to remove")
    return 0 if resp.removed else 1


def cmd_group_list(args: argparse.Namespace) -> int:
    resp = call(
        client(args).admin.ListGroupSenders,
        adm.ListGroupSendersRequest(channel_id=args.channel, group_id=args.group or ""),
    )
    rows = [{"group": s.group_id, "user": s.user_id, "created": ts(s, "created_at")} for s in resp.senders]
    emit(args, rows, ["group", "user", "created"])
    return 0


# --- tool-call approvals and grants --------------------------------------------------

KINDS = {
    "tool": cm.APPROVAL_KIND_TOOL,
    "pairing": cm.APPROVAL_KIND_PAIRING,
    "all": cm.APPROVAL_KIND_UNSPECIFIED,
}
STATUSES = ("pending", "approved", "denied", "blocked", "expired")


def _span(seconds: float) -> str:
    s = int(abs(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _relative(when: datetime | None, now: datetime) -> str:
    if when is None:
        return ""
    delta = (when - now).total_seconds()
    return f"in {_span(delta)}" if delta > 0 else f"{_span(delta)} ago"


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _arguments(arguments_json: str) -> Any:
    try:
        return json.loads(arguments_json) if arguments_json else None
    except ValueError:
        return arguments_json


def _approval_dict(a: cm.Approval) -> dict[str, Any]:
    """Every field of an approval (tool fields are empty for pairing requests)."""
    t = a.tool
    return {"approval_id": a.approval_id, "kind": enum_name("APPROVAL_KIND_", cm.ApprovalKind.Name(a.kind)),
            "status": enum_name("APPROVAL_STATUS_", cm.ApprovalStatus.Name(a.status)),
            "tool": t.tool_name, "agent": t.agent_id, "session": t.session_id,
            "risk": enum_name("RISK_", cm.Risk.Name(t.risk)) if a.HasField("tool") else "",
            "channel": a.channel_id, "user": a.user_id, "name": a.display_name,
            "created": ts(a, "created_at"), "expires": ts(a, "expires_at"), "resolved": ts(a, "resolved_at"),
            "resolved_by": a.resolved_by, "reason": a.reason, "redeemed": ts(a, "redeemed_at"),
            "grant_id": a.grant_id, "arguments_digest": t.arguments_digest,
            "arguments": _arguments(t.arguments_json)}  # fmt: skip


def _describe(a: cm.Approval) -> str:
    if a.kind == cm.APPROVAL_KIND_TOOL:
        return f"tool {a.tool.tool_name}" + (f" for agent {a.tool.agent_id}" if a.tool.agent_id else "")
    return f"user {a.user_id} on {a.channel_id}"


def cmd_approvals_list(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        raise CliError("--limit must be between 1 and 1000")
    c = client(args)
    # The service filters by one status and no agent: merge and filter here.
    fetch = 1000 if args.agent is not None else args.limit
    found: list[cm.Approval] = []
    for status in STATUSES if args.status == "all" else (args.status,):
        req = adm.ListApprovalsRequest(status=cm.ApprovalStatus.Value(f"APPROVAL_STATUS_{status.upper()}"),
                                       limit=fetch, kind=KINDS[args.kind])  # fmt: skip
        found.extend(call(c.admin.ListApprovals, req).approvals)
    if args.agent is not None:
        found = [a for a in found if a.HasField("tool") and a.tool.agent_id == args.agent]
    found.sort(key=lambda a: (a.created_at.seconds, a.created_at.nanos), reverse=True)  # newest first
    found = found[: args.limit]
    columns = ["approval_id", "status", "tool", "agent", "risk", "age", "expires", "arguments"]
    if args.kind != "tool":  # pairing requests: show whose and where
        columns = ["approval_id", "kind", *columns[1:5], "channel", "user", *columns[5:]]
    now = datetime.now(UTC)
    rows = [_approval_dict(a) for a in found]
    if not args.json:
        for a, row in zip(found, rows, strict=True):
            pending = a.status == cm.APPROVAL_STATUS_PENDING  # expiry means nothing once decided
            row.update(age=_span((now - row["created"]).total_seconds()) if row["created"] else "",
                       expires=_relative(row["expires"], now) if pending else "",
                       arguments=_short(a.tool.arguments_json))  # fmt: skip
    emit(args, rows, columns)
    return 0


def cmd_approvals_show(args: argparse.Namespace) -> int:
    a = call(client(args).admin.GetApproval, adm.GetApprovalRequest(approval_id=args.approval_id),
             what=f"approval {args.approval_id}")  # fmt: skip
    d = _approval_dict(a)
    if args.json:
        print(json.dumps(d, indent=2, default=_fmt, ensure_ascii=False))
        return 0
    arguments = d.pop("arguments")
    now = datetime.now(UTC)
    width = max(map(len, d)) + 1
    for key, value in d.items():
        text = _fmt(value) or "-"
        if key in ("created", "expires") and value is not None:
            text += f" ({_relative(value, now)})"
        print(f"{key + ':':<{width}} {text}")
    if a.HasField("tool"):
        pretty = json.dumps(arguments, indent=2, sort_keys=True, ensure_ascii=False)
        print("arguments:\n  " + pretty.replace("\n", "\n  "))
    return 0


def cmd_approvals_resolve(args: argparse.Namespace, action: Any) -> int:
    if getattr(args, "always", False):
        action = cm.APPROVAL_ACTION_ALWAYS_ALLOW
    verb = {cm.APPROVAL_ACTION_APPROVE: "approve", cm.APPROVAL_ACTION_DENY: "deny",
            cm.APPROVAL_ACTION_ALWAYS_ALLOW: "always allow"}[action]  # fmt: skip
    c = client(args)
    req = az.ResolveApprovalRequest(approval_id=args.approval_id, action=action, reason=args.reason or "")
    resp = call(c.authz.ResolveApproval, req, what=f"cannot {verb} {args.approval_id}")
    a = resp.approval
    print(f"{resp.owner_text}: {_describe(a)} ({a.approval_id})")
    if resp.requester_text:
        print(f"the requester will be told: {resp.requester_text}")
    if action == cm.APPROVAL_ACTION_ALWAYS_ALLOW:
        grants = call(c.admin.ListGrants, adm.ListGrantsRequest(agent_id=a.tool.agent_id)).grants
        for g in grants:
            if g.approval_id == a.approval_id:
                print(f"standing grant {g.grant_id}: this exact call runs without asking until "
                      f"`authz approvals revoke-grant {g.grant_id}`")  # fmt: skip
    return 0


def _watch_event(a: cm.Approval) -> tuple[str, str, datetime | None]:
    """(event, by whom, when) for one approval seen on the stream."""
    status = enum_name("APPROVAL_STATUS_", cm.ApprovalStatus.Name(a.status))
    if a.status == cm.APPROVAL_STATUS_PENDING:
        return "new", "", ts(a, "created_at")
    if a.status == cm.APPROVAL_STATUS_APPROVED and a.HasField("redeemed_at"):
        return "redeemed", "", ts(a, "redeemed_at")
    if a.status == cm.APPROVAL_STATUS_APPROVED and a.grant_id:
        return status, f"grant {a.grant_id}", ts(a, "resolved_at") or ts(a, "created_at")
    if a.status == cm.APPROVAL_STATUS_EXPIRED:
        return status, "", ts(a, "resolved_at") or ts(a, "expires_at")
    return status, a.resolved_by, ts(a, "resolved_at")


def _watch_line(a: cm.Approval) -> str:
    event, by, when = _watch_event(a)
    line = f"{_fmt(when or datetime.now(UTC))}  {event.upper()}{' by ' + by if by else ''}  {a.approval_id}  "
    line += _describe(a)
    if a.HasField("tool"):
        line += f" (risk {enum_name('RISK_', cm.Risk.Name(a.tool.risk))}) {_short(a.tool.arguments_json, 60)}"
    elif a.display_name:
        line += f" ({a.display_name})"
    return line + (f"; reason: {a.reason}" if a.reason and event != "new" else "")


def cmd_approvals_watch(args: argparse.Namespace) -> int:
    c = client(args)  # streams get no deadline by default: a watch runs until Ctrl-C
    try:
        stream = c.admin.WatchApprovals(adm.WatchApprovalsRequest(kind=KINDS[args.kind]))
        try:
            for a in stream:
                if args.json:
                    event, by, _ = _watch_event(a)
                    line = json.dumps({"event": event, "by": by, **_approval_dict(a)}, default=_fmt,
                                      ensure_ascii=False)  # fmt: skip
                else:
                    line = _watch_line(a)
                print(line, flush=True)
        finally:
            stream.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs
    except KeyboardInterrupt:  # Ctrl-C is how a watch ends
        return 0
    except grpc.RpcError as exc:
        raise rpc_error(exc, "watch") from None
    finally:
        c.close()
    return 0


def _grant_dict(g: adm.Grant) -> dict[str, Any]:
    return {"grant_id": g.grant_id, "agent": g.agent_id, "tool": g.tool.tool_name,
            "arguments": _arguments(g.tool.arguments_json), "arguments_digest": g.tool.arguments_digest,
            "approval_id": g.approval_id, "created": ts(g, "created_at"), "created_by": g.created_by,
            "revoked": ts(g, "revoked_at"), "revoked_by": g.revoked_by}  # fmt: skip


def cmd_approvals_grants(args: argparse.Namespace) -> int:
    req = adm.ListGrantsRequest(agent_id=args.agent or "", include_revoked=args.all)
    grants = call(client(args).admin.ListGrants, req).grants
    rows = [_grant_dict(g) for g in grants]
    if not args.json:
        for g, row in zip(grants, rows, strict=True):
            row["arguments"] = _short(g.tool.arguments_json)
    columns = ["grant_id", "agent", "tool", "arguments", "created", "created_by"]
    emit(args, rows, columns + (["revoked", "revoked_by"] if args.all else []))
    return 0


def cmd_approvals_revoke_grant(args: argparse.Namespace) -> int:
    g = call(client(args).admin.RevokeGrant, adm.RevokeGrantRequest(grant_id=args.grant_id),
             what=f"cannot revoke {args.grant_id}")  # fmt: skip
    print(f"revoked grant {g.grant_id}: tool {g.tool.tool_name} for agent {g.agent_id or '-'} "
          f"(revoked {_fmt(ts(g, 'revoked_at'))} by {g.revoked_by})")  # fmt: skip
    return 0


def _print_settings(args: argparse.Namespace, s: adm.TenantSettings) -> None:
    agents = {agent: list(s.agent_approvers[agent].actors) for agent in sorted(s.agent_approvers)}
    if args.json:
        print(json.dumps({"approvers": list(s.approvers), "agent_approvers": agents}, indent=2))
        return
    print("tenant approvers:" + "".join(f"\n  {a}" for a in s.approvers) if s.approvers
          else "tenant approvers: (none)")  # fmt: skip
    if not agents:
        print("agent approvers: (none: every agent's tool calls go to the tenant approvers)")
        return
    print("agent approvers (tool calls of these agents; other agents use the tenant approvers):")
    for agent, actors in agents.items():
        print(f"  {agent}: {' '.join(actors) or '(nobody)'}")


def cmd_approvers(args: argparse.Namespace) -> int:
    if args.unset and not args.agent:
        raise CliError("--unset needs --agent AGENT")
    c = client(args)
    # SetTenantSettings replaces every setting: read, change what was asked, write back.
    settings: adm.TenantSettings = call(c.admin.GetTenantSettings, adm.GetTenantSettingsRequest())
    if args.set is None and not args.unset:
        if args.agent is None:
            _print_settings(args, settings)
        elif args.agent in settings.agent_approvers:
            actors = list(settings.agent_approvers[args.agent].actors)
            print(json.dumps(actors) if args.json else "\n".join(actors) or "(nobody)")
        else:
            print(json.dumps(None) if args.json else
                  f"(agent {args.agent} has no approvers of its own: the tenant approvers apply)")  # fmt: skip
        return 0
    if args.unset:
        if args.agent not in settings.agent_approvers:
            print(f"nothing to do: agent {args.agent} has no approvers of its own")
            return 1
        del settings.agent_approvers[args.agent]
    elif args.agent is not None:
        del settings.agent_approvers[args.agent].actors[:]
        settings.agent_approvers[args.agent].actors.extend(args.set)
    else:
        del settings.approvers[:]
        settings.approvers.extend(args.set)
    _print_settings(args, call(c.admin.SetTenantSettings, settings))
    return 0


def cmd_timezone(args: argparse.Namespace) -> int:
    c = client(args)
    settings: adm.TenantSettings = call(c.admin.GetTenantSettings, adm.GetTenantSettingsRequest())
    if args.zone is not None:  # SetTenantSettings replaces every setting: write back the rest as read
        settings.timezone = args.zone
        settings = call(c.admin.SetTenantSettings, settings)
    zone = settings.timezone or "UTC"
    print(json.dumps({"timezone": zone}) if args.json else zone)
    return 0


def parse_since(text: str) -> datetime:
    """'2026-11-01', an ISO timestamp, or a relative '30m', '24h', '7d'."""
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    if text[:-1].isdigit() and text[-1:] in units:
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(
            f"--since/--until: cannot read {text!r} (use 2026-11-01, an ISO time, or 30m/24h/7d)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def audit_events(args: argparse.Namespace) -> Iterable[adm.AuditEvent]:
    c = client(args)
    req = adm.QueryAuditRequest(
        channel_id=args.channel or "", user_id=args.user or "", event=args.event or "", limit=1000
    )
    if args.since:
        req.since.FromDatetime(parse_since(args.since))
    if args.until:
        req.until.FromDatetime(parse_since(args.until))
    while True:
        resp = call(c.admin.QueryAudit, req)
        yield from resp.events
        if not resp.next_after_event_id:
            return
        req.after_event_id = resp.next_after_event_id


def _event_row(e: adm.AuditEvent) -> dict[str, Any]:
    return {"id": e.event_id, "at": ts(e, "at"), "event": e.event, "actor": e.actor, "channel": e.channel_id,
            "subject": e.subject, "approval_id": e.approval_id, "trace_id": e.trace_id,
            "details": json.loads(e.details_json or "{}")}  # fmt: skip


def cmd_audit(args: argparse.Namespace) -> int:
    rows = [_event_row(e) for e in audit_events(args)]
    emit(args, rows, ["id", "at", "event", "actor", "channel", "subject"])
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    count = 0
    try:
        if args.format == "json":
            out.write("[")
            for count, e in enumerate(audit_events(args), start=1):
                out.write(("," if count > 1 else "") + "\n  " + json.dumps(_event_row(e), default=_fmt))
            out.write("\n]\n")
        else:
            columns = [
                "id",
                "at",
                "event",
                "actor",
                "channel",
                "subject",
                "approval_id",
                "trace_id",
                "details",
            ]
            writer = csv.DictWriter(out, fieldnames=columns)
            writer.writeheader()
            for e in audit_events(args):
                count += 1
                row = _event_row(e)
                row["at"] = _fmt(row["at"])
                row["details"] = json.dumps(row["details"], sort_keys=True)
                writer.writerow(row)
    finally:
        if args.output:
            out.close()
    if args.output:
        print(f"wrote {count} events to {args.output}", file=sys.stderr)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Act as a connector: what would the bot do with this message?"""
    c = client(args)
    group = args.group or ""
    req = az.CheckUserRequest(channel_id=args.channel, user_id=args.user, text=args.text,
                              chat_kind=cm.CHAT_KIND_GROUP if group else cm.CHAT_KIND_DIRECT, group_id=group,
                              mentioned=args.mention, display_name=args.name or "")  # fmt: skip
    check = call(c.authz.CheckUser, req)
    decision = enum_name("DECISION_", az.Decision.Name(check.decision))
    print(f"CheckUser: {decision} ({check.reason})")
    code = invite_code_to_redeem(check, direct=not group, text=args.text)
    if check.decision == az.DECISION_ALLOW:
        print(
            f"→ routed to agent '{check.agent_id}'"
            + (f" with permissions {list(check.permissions)}" if check.permissions else "")
        )
        if check.tools.allowed or check.tools.denied:
            print(f"  tools allowed {list(check.tools.allowed)}, denied {list(check.tools.denied)}")
        print(f"bot → {args.user}: (echo) {args.text}")
    elif code is not None:
        redeemed = call(c.authz.RedeemInvite, az.RedeemInviteRequest(channel_id=args.channel, user_id=args.user,
                                                                     code=code, display_name=args.name or ""))  # fmt: skip
        print(f"RedeemInvite: {enum_name('INVITE_OUTCOME_', az.InviteOutcome.Name(redeemed.outcome))}")
        print(f"bot → {args.user}: {redeemed.text}" if redeemed.text else "(the bot stays silent)")
    elif check.decision == az.DECISION_RATE_LIMITED:
        print(f"(the bot stays silent; the next message is admitted in {check.retry_after_seconds} s)")
    elif check.decision == az.DECISION_PAIRING_REQUIRED:
        pr = call(c.authz.RequestPairing, az.RequestPairingRequest(channel_id=args.channel, user_id=args.user,
                                                                   display_name=args.name or "", first_message=args.text))  # fmt: skip
        outcome = enum_name("PAIRING_OUTCOME_", az.PairingOutcome.Name(pr.outcome))
        print(f"RequestPairing: {outcome}" + (f" (code {pr.code})" if pr.code else ""))
        if pr.text:
            print(f"bot → {args.user}:\n  " + pr.text.replace("\n", "\n  "))
        elif pr.outcome == az.PAIRING_OUTCOME_EXISTING:
            print(f"(request already pending with code {pr.code}; the bot stays quiet)")
        if pr.HasField("notification"):
            n = pr.notification
            print(f"bot → owner {n.owner_id}:\n  " + n.text.replace("\n", "\n  "))
            print("  buttons: " + "  ".join(f"[{b.label}]" for b in n.buttons))
    elif check.text:
        print(f"bot → {args.user}: {check.text}")
    else:
        print("(the bot stays silent)")
    return 0


# --- parser ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    def common_options(suppress: bool) -> argparse.ArgumentParser:
        # A nested subcommand (audit export) must not reset options given before it.
        d: Any = argparse.SUPPRESS if suppress else None
        c = argparse.ArgumentParser(add_help=False)
        c.add_argument("--address", default=d if suppress else os.environ.get("AUTHZ_ADDRESS") or DEFAULT_ADDRESS,
                       help="service address (AUTHZ_ADDRESS, default 127.0.0.1:50051)")  # fmt: skip
        c.add_argument("--api-key", default=d, help="API key (default: AUTHZ_API_KEY)")
        c.add_argument("--json", action="store_true", default=argparse.SUPPRESS if suppress else False,
                       help="machine-readable output")  # fmt: skip
        return c

    common = common_options(False)

    p = argparse.ArgumentParser(prog="authz", description="Authorization service for chat-bot agents.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(
        parent: Any, name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, parents=[common], help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    def group(name: str, help: str) -> Any:
        g = sub.add_parser(name, help=help, description=help)
        return g.add_subparsers(dest="sub", required=True, metavar="SUBCOMMAND")

    serve_p = cmd(
        sub, "serve", cmd_serve, "run the gRPC service (embedded PostgreSQL when AUTHZ_DATABASE_URL is unset)"
    )
    serve_p.add_argument(
        "--workers",
        type=int,
        choices=range(1, 65),
        metavar="N",
        help="processes sharing the port with SO_REUSEPORT, 1-64 (default: AUTHZ_WORKERS or 1)",
    )
    cmd(sub, "dev", cmd_dev, "serve with a demo tenant and channel, and print how to try it (make run)")
    cmd(
        sub,
        "migrate",
        cmd_migrate,
        "apply database migrations (AUTHZ_MIGRATE_DATABASE_URL or AUTHZ_DATABASE_URL)",
    )

    t = group("tenant", "manage tenants (operator key)")
    sp = cmd(t, "create", cmd_tenant_create, "create a tenant and print its first admin key")
    sp.add_argument("tenant")
    sp.add_argument("--name")
    cmd(t, "list", cmd_tenant_list, "list tenants")

    k = group("key", "manage the tenant's API keys")
    sp = cmd(
        k, "create", cmd_key_create, "create a key (several may be live: rotate by create, deploy, revoke)"
    )
    sp.add_argument("role", choices=ROLES)
    sp.add_argument("--name")
    cmd(k, "list", cmd_key_list, "list keys")
    sp = cmd(k, "revoke", cmd_key_revoke, "revoke a key")
    sp.add_argument("key_id")

    ch = group("channel", "manage channels (one bot account each)")
    sp = cmd(ch, "set", cmd_channel_set, "create or update a channel's policy from flags and/or a YAML file")
    sp.add_argument("channel")
    sp.add_argument("-f", "--file", help="YAML file with policy keys (see docs/configuration.md)")
    sp.add_argument("--platform", choices=PLATFORMS)
    sp.add_argument("--dm-policy", choices=DM)
    sp.add_argument("--group-policy", choices=GROUP)
    sp.add_argument("--require-mention", choices=["true", "false"])
    sp.add_argument("--owner", help="owner's platform user id (gets Approve/Deny/Block buttons)")
    sp.add_argument("--approver", action="append", help="channel approver's platform user id (repeatable)")
    sp.add_argument("--agent", help="agent id messages route to")
    sp.add_argument("--code-ttl", type=int, help="pairing code lifetime in seconds (default 300)")
    sp.add_argument("--max-pending", type=int, help="live pairing requests allowed per channel (default 20)")
    sp.add_argument("--pairing-ttl", type=int, help="seconds until a pairing expires (0: never)")
    sp = cmd(ch, "show", cmd_channel_show, "show a channel's policy")
    sp.add_argument("channel")
    cmd(ch, "list", cmd_channel_list, "list channels")

    pg = group("pairing", "pending pairing requests")
    sp = cmd(pg, "list", cmd_pairing_list, "list pairing requests")
    sp.add_argument("channel", nargs="?")
    sp.add_argument(
        "--status", default="pending", choices=["pending", "approved", "denied", "blocked", "expired"]
    )
    for name, action in (("approve", cm.APPROVAL_ACTION_APPROVE), ("deny", cm.APPROVAL_ACTION_DENY),
                         ("block", cm.APPROVAL_ACTION_BLOCK)):  # fmt: skip
        sp = cmd(pg, name, functools.partial(_resolve, action=action), f"{name} the request with this code")
        sp.add_argument("channel")
        sp.add_argument("code")
        sp.add_argument("--reason")

    ap = group("approvals", "tool-call approvals and standing grants")
    sp = cmd(ap, "list", cmd_approvals_list, "list approvals, newest first")
    sp.add_argument("--status", default="pending", choices=[*STATUSES, "all"])
    sp.add_argument("--kind", default="tool", choices=KINDS)
    sp.add_argument("--agent", help="only this agent's tool calls")
    sp.add_argument("--limit", type=int, default=100, help="at most this many (1..1000, default 100)")
    sp = cmd(ap, "show", cmd_approvals_show, "show every field of one approval")
    sp.add_argument("approval_id")
    for name, action in (("approve", cm.APPROVAL_ACTION_APPROVE), ("deny", cm.APPROVAL_ACTION_DENY)):
        fn = functools.partial(cmd_approvals_resolve, action=action)
        sp = cmd(ap, name, fn, f"{name} a pending approval")
        sp.add_argument("approval_id")
        sp.add_argument("--reason")
        if name == "approve":
            sp.add_argument("--always", action="store_true",
                            help="approve and allow this exact tool call for this agent from now on")  # fmt: skip
    sp = cmd(ap, "watch", cmd_approvals_watch, "print approvals as they are requested and resolved")
    sp.add_argument("--kind", default="tool", choices=KINDS)
    sp = cmd(ap, "grants", cmd_approvals_grants, "list standing 'always allow' grants")
    sp.add_argument("--agent", help="only this agent's grants")
    sp.add_argument("--all", action="store_true", help="include revoked grants")
    sp = cmd(ap, "revoke-grant", cmd_approvals_revoke_grant, "revoke a standing grant")
    sp.add_argument("grant_id")

    u = group("users", "users of a channel")
    sp = cmd(u, "list", cmd_users_list, "list allowlisted, paired and blocked users")
    sp.add_argument("channel")
    which = sp.add_mutually_exclusive_group()
    which.add_argument("--paired", action="store_true")
    which.add_argument("--blocked", action="store_true")
    which.add_argument("--allowlisted", action="store_true")
    sp = cmd(u, "allow", cmd_users_allow, "add a user to the channel's DM allowlist")
    sp.add_argument("channel")
    sp.add_argument("user")
    sp.add_argument("--name")
    sp.add_argument("--permission", action="append", help="permission returned with ALLOW (repeatable)")
    sp = cmd(u, "block", cmd_users_block, "block a user (cancels their pending pairing)")
    sp.add_argument("channel")
    sp.add_argument("user")
    sp.add_argument("--reason")
    for name, method, verb, help in (
        ("unblock", "UnblockUser", "unblocked", "unblock a user (they start again as unknown)"),
        ("unpair", "UnpairUser", "unpaired", "revoke a pairing"),
        ("remove", "RemoveUser", "removed", "remove a user from the allowlist (paired or not)"),
    ):
        sp = cmd(u, name, _removal(method, verb), help)
        sp.add_argument("channel")
        sp.add_argument("user")

    sp = cmd(u, "export", cmd_users_export, "print everything held about one user on a channel, as JSON")
    sp.add_argument("channel")
    sp.add_argument("user")
    sp.add_argument("-o", "--output", help="file to write (created readable by you only; default: stdout)")
    sp = cmd(u, "delete", cmd_users_delete,
             "erase a user from every table on a channel; audit events kept under a pseudonym")  # fmt: skip
    sp.add_argument("channel")
    sp.add_argument("user")
    sp.add_argument(
        "--purge", action="store_true", help="required: confirms the erasure (it cannot be undone)"
    )
    sp = cmd(u, "anonymize", cmd_users_anonymize,
             "drop a user's personal data (names, message texts, arguments) but keep their access")  # fmt: skip
    sp.add_argument("channel")
    sp.add_argument("user")

    gr = group("group", "the group sender allowlist (separate from DM pairing)")
    sp = cmd(gr, "allow", cmd_group_allow, "let a user speak to the bot in a group ('*' for every group)")
    for a in ("channel", "group", "user"):
        sp.add_argument(a)
    sp = cmd(gr, "remove", cmd_group_remove, "remove a group sender")
    for a in ("channel", "group", "user"):
        sp.add_argument(a)
    sp = cmd(gr, "list", cmd_group_list, "list group senders")
    sp.add_argument("channel")
    sp.add_argument("group", nargs="?")

    invites.register(group("invites", "invite codes: a user who sends one to the bot is allowed"), cmd,
                     sys.modules[__name__])  # fmt: skip

    sp = cmd(sub, "approvers", cmd_approvers,
             "show or set tenant-level and per-agent approvers ('<platform>:<user id>')")  # fmt: skip
    sp.add_argument("--agent", help="show or set this agent's own tool-call approvers")
    change = sp.add_mutually_exclusive_group()
    change.add_argument("--set", nargs="*", metavar="ACTOR", help="replace the list (none: empty it)")
    change.add_argument("--unset", action="store_true",
                        help="with --agent: drop the agent's own list (the tenant approvers apply)")  # fmt: skip
    sp = cmd(sub, "timezone", cmd_timezone,
             "show or set the tenant's time zone (IANA), in which send-policy time windows are judged")  # fmt: skip
    sp.add_argument("zone", nargs="?", help="e.g. Europe/Berlin; '' or UTC for UTC")

    au = sub.add_parser(
        "audit", parents=[common], help="query the audit trail", description="query the audit trail"
    )
    au.set_defaults(fn=cmd_audit)

    def audit_filters(sp: argparse.ArgumentParser, default: Any) -> None:
        sp.add_argument("--since", default=default, help="2026-11-01, an ISO time, or 30m/24h/7d")
        sp.add_argument("--until", default=default)
        sp.add_argument("--user", default=default)
        sp.add_argument("--channel", default=default)
        sp.add_argument("--event", default=default, help="event name, or prefix like 'pairing.'")

    audit_filters(au, None)
    ausub = au.add_subparsers(dest="sub", metavar="SUBCOMMAND")
    help_ = "export the audit trail as CSV or JSON"
    sp = ausub.add_parser("export", parents=[common_options(True)], help=help_, description=help_)
    sp.set_defaults(fn=cmd_audit_export)
    sp.add_argument("--format", choices=["csv", "json"], default="csv")
    sp.add_argument("--output", "-o", help="file to write (default: stdout)")
    audit_filters(sp, argparse.SUPPRESS)

    sim = group("simulate", "act as a connector, from the terminal")
    sp = cmd(sim, "message", cmd_simulate, "send one inbound message through CheckUser (and pairing)")
    sp.add_argument("channel")
    sp.add_argument("user")
    sp.add_argument("text")
    sp.add_argument("--name", help="display name")
    sp.add_argument("--group", help="group id: simulate a group message")
    sp.add_argument("--mention", action="store_true", help="the message mentions the bot")

    from . import doctor, policyfile  # they import this module: here, not at the top

    policyfile.add_commands(sub, cmd)  # apply, export
    doctor.add_commands(sub, cmd)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except (CliError, ConfigError) as exc:
        print(f"authz: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `authz audit export | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    raise SystemExit(main())
