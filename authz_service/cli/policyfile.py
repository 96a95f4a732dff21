"""The policy file (``authz apply -f FILE``): a tenant's settings and channels as versioned YAML.

The format (``version: 1``, see docs/policies.md "Policy files")::

    version: 1
    tenant: {approvers: [...], agent_approvers: {...}, timezone: ...}   # optional
    channels:
      - id: support-tg
        platform: telegram
        acknowledge: [open_dms]
        policy: {...}            # the ChannelPolicy proto, field names as in common.proto
        group_senders: [...]     # optional; when present, the exact set
        users:                   # optional; each list present is the exact set
          allowlisted: [{user_id: "42", name: Alice, permissions: [read]}]
          blocked: [{user_id: "66"}]
          paired: [{user_id: "77"}]   # only removals: pairing is not written from a file

Reading it takes three passes:

1. shape, here (:func:`read_policy_file`): the YAML node tree is walked along
   the proto descriptors, so every unknown field, wrong type, unknown enum
   value and duplicate is reported with its line, before the service is asked
   anything;
2. the service (:func:`check`): the tenant settings and each channel are sent
   with ``validate_only``, so the service validates and normalises them exactly
   as it would store them, and writes nothing; an INVALID_ARGUMENT's field path
   (``policy.groups[g1].allowed_commands[2]``) is mapped back to its line;
3. risks: each channel's risky settings (``domain.risks``) must be listed in
   its ``acknowledge:``.

The normalised policy the service returns is what gets compared with the
tenant's current state, so a file applied twice changes nothing the second time.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from yaml.nodes import Node, ScalarNode

from .. import names, policy_proto
from ..client import SyncClient
from ..domain import ids, risks
from ..domain.errors import InvalidArgument
from ..domain.model import ChannelPolicy, Platform
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import common_pb2 as cm
from .errors import CliError, RpcFailed
from .schema import (
    INT_TAG,
    FileError,
    PolicyFileInvalid,
    Reader,
    compose,
    is_null,
    node_line,
    parent_path,
    unknown_field,
)
from .session import TIMEOUT

FORMAT_VERSION = 1
MAX_PERMISSIONS = 64  # as AllowUser
PLATFORMS = {p.value: p for p in Platform}


@dataclass(frozen=True)
class RiskWarning:
    line: int
    channel_id: str
    risk: risks.ChannelRisk

    def format(self, filename: str) -> str:
        return (
            f"WARNING: {filename}:{self.line}: channel {self.channel_id}: {self.risk.code} "
            f"(acknowledged): {self.risk.message}"
        )


# --- the parsed file -------------------------------------------------------------


@dataclass(frozen=True)
class FileTenant:
    approvers: tuple[str, ...]
    agent_approvers: dict[str, tuple[str, ...]]
    timezone: str


USER_SETS = ("allowlisted", "blocked", "paired")
# Not a risk of the stored policy but of one apply: removing this many users (or
# more) from a channel at once needs the channel to acknowledge it.
USER_REMOVALS = "user_removals"
MASS_REMOVAL = 5
ACK_CODES = (*risks.RISK_CODES, USER_REMOVALS)
MAX_NAME = 256


@dataclass(frozen=True)
class FileUser:
    user_id: str
    name: str = ""
    permissions: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileUsers:
    """A channel's users as the file lists them; a set that is None is not managed."""

    allowlisted: tuple[FileUser, ...] | None = None
    blocked: tuple[FileUser, ...] | None = None
    paired: tuple[FileUser, ...] | None = None

    def managed(self) -> dict[str, tuple[FileUser, ...]]:
        return {k: v for k in USER_SETS if (v := getattr(self, k)) is not None}


@dataclass
class FileChannel:
    index: int
    channel_id: str
    platform: Platform
    policy: ChannelPolicy  # validated and normalised, as the server would store it
    acknowledge: tuple[str, ...]
    group_senders: tuple[tuple[str, str], ...] | None  # None: not managed by the file
    line: int
    users: FileUsers | None = None  # None: not managed by the file

    @property
    def path(self) -> str:
        return f"channels[{self.index}]"


@dataclass
class _Lines:
    lines: dict[str, int]  # path -> line, for every node read

    def line_of(self, path: str) -> int:
        """The line of ``path``, else of its nearest parent that has one."""
        p = path
        while p:
            if p in self.lines:
                return self.lines[p]
            p = parent_path(p)
        return 1


@dataclass
class PolicyFile(_Lines):
    """A policy file as the service would store it (the result of :func:`check`)."""

    tenant: FileTenant | None = None
    channels: list[FileChannel] = field(default_factory=list)
    warnings: list[RiskWarning] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class RawChannel:
    index: int
    node: Node
    channel_id: str | None = None
    platform: Platform | None = None
    policy: cm.ChannelPolicy = field(default_factory=cm.ChannelPolicy)
    acknowledge: list[str] = field(default_factory=list)
    senders: list[tuple[str, str]] | None = None
    users: dict[str, list[FileUser]] | None = None

    @property
    def path(self) -> str:
        return f"channels[{self.index}]"


@dataclass
class ParsedFile(_Lines):
    """A policy file as written: its shape checked, the service not yet asked."""

    tenant: adm.TenantSettings | None = None
    channels: list[RawChannel] = field(default_factory=list)


# --- reading a file ----------------------------------------------------------------

_TOP = ("version", "tenant", "channels")
_TENANT = ("approvers", "agent_approvers", "timezone")
_CHANNEL = ("id", "platform", "acknowledge", "policy", "group_senders", "users")
_SENDER = ("group_id", "user_id")
_USER = ("user_id", "name", "permissions")


def read_policy_file(text: str) -> ParsedFile:
    """Parse a policy file and check its shape; raise PolicyFileInvalid with every error found."""
    root = compose(text)
    r = Reader()
    if root is None:
        raise PolicyFileInvalid(
            [FileError(1, "", "the file is empty: expected 'version: 1' and 'channels:'")]
        )
    entries = r.mapping(root, "")
    if entries is None:
        raise PolicyFileInvalid(r.errors)
    top = {k: (kn, v) for k, kn, v in entries}
    for key, key_node, _ in entries:
        r.lines[key] = node_line(key_node)
        if key not in _TOP:
            r.error(key_node, key, unknown_field(key, list(_TOP)))
    if "version" not in top:
        r.error(root, "version", f"missing: the first line should be 'version: {FORMAT_VERSION}'")
        raise PolicyFileInvalid(r.errors)
    version = top["version"][1]
    if not (
        isinstance(version, ScalarNode) and version.tag == INT_TAG and version.value == str(FORMAT_VERSION)
    ):
        shown = version.value if isinstance(version, ScalarNode) else "?"
        r.error(version, "version", f"unsupported version {shown}: this authz reads version {FORMAT_VERSION}")
        raise PolicyFileInvalid(r.errors)

    parsed = ParsedFile(r.lines)
    if "tenant" in top:
        parsed.tenant = _read_tenant(r, top["tenant"][1])
    if "channels" in top and not is_null(top["channels"][1]):
        for i, node in enumerate(r.sequence(top["channels"][1], "channels") or []):
            r.lines[f"channels[{i}]"] = node_line(node)
            parsed.channels.append(_read_channel(r, i, node))
    seen: dict[str, int] = {}
    for raw in parsed.channels:
        if raw.channel_id is not None and raw.channel_id in seen:
            r.error(parsed.line_of(f"{raw.path}.id"), f"{raw.path}.id",
                    f"duplicate channel id {raw.channel_id!r} (first at line {seen[raw.channel_id]})")  # fmt: skip
        elif raw.channel_id is not None:
            seen[raw.channel_id] = parsed.line_of(f"{raw.path}.id")
        senders: dict[tuple[str, str], int] = {}
        for j, sender in enumerate(raw.senders or []):
            p = f"{raw.path}.group_senders[{j}]"
            if sender in senders:
                r.error(parsed.line_of(p), p, f"duplicate group sender (first at line {senders[sender]})")
            senders.setdefault(sender, parsed.line_of(p))
    if r.errors:
        raise PolicyFileInvalid(r.errors)
    return parsed


def read_policy_overlay(text: str) -> tuple[str | None, cm.ChannelPolicy, list[str]]:
    """The flat form of `authz channel set -f`: ChannelPolicy fields plus an
    optional ``platform``. Returns the platform, the fields as read and which
    keys the file gives (a ``null`` key clears that field)."""
    root = compose(text)
    if root is None:
        raise PolicyFileInvalid([FileError(1, "", "the file is empty: expected policy keys")])
    r = Reader()
    msg = cm.ChannelPolicy()
    fields = cm.ChannelPolicy.DESCRIPTOR.fields_by_name
    platform: str | None = None
    keys: list[str] = []
    for key, key_node, value in r.mapping(root, "") or []:
        if key == "platform":
            platform = r.string(value, key)
            if platform is not None and platform not in PLATFORMS:
                r.error(value, key, f"unknown platform {platform!r}: expected one of {', '.join(PLATFORMS)}")
        elif key in fields:
            keys.append(key)
            r.field(fields[key], value, msg, key)
        else:
            r.error(key_node, key, unknown_field(key, ["platform", *fields]))
    if r.errors:
        raise PolicyFileInvalid(r.errors)
    return platform, msg, keys


def _read_tenant(r: Reader, node: Node) -> adm.TenantSettings | None:
    if is_null(node):
        return adm.TenantSettings()
    entries = r.mapping(node, "tenant")
    if entries is None:
        return None
    approvers: list[str] = []
    per_agent: dict[str, list[str]] = {}
    timezone = ""
    for key, key_node, value in entries:
        path = f"tenant.{key}"
        r.lines[path] = node_line(key_node)
        if is_null(value):
            continue
        if key == "approvers":
            approvers = r.strings(value, path)
        elif key == "agent_approvers":
            for agent, agent_node, actors in r.mapping(value, path) or []:
                r.lines[f"{path}[{agent}]"] = node_line(agent_node)
                per_agent[agent] = r.strings(actors, f"{path}[{agent}]")
        elif key == "timezone":
            timezone = r.string(value, path) or ""
        else:
            r.error(key_node, path, unknown_field(key, list(_TENANT)))
    return adm.TenantSettings(
        approvers=approvers,
        agent_approvers={a: adm.ActorList(actors=v) for a, v in per_agent.items()},
        timezone=timezone,
    )


def _read_channel(r: Reader, i: int, node: Node) -> RawChannel:
    raw = RawChannel(i, node)
    base = f"channels[{i}]"
    entries = r.mapping(node, base)
    if entries is None:
        return raw
    keys = {k for k, _, _ in entries}
    for key in ("id", "platform"):
        if key not in keys:
            r.error(node, f"{base}.{key}", "is required")
    for key, key_node, value in entries:
        path = f"{base}.{key}"
        r.lines[path] = node_line(key_node)
        if key == "id":
            raw.channel_id = r.string(value, path)
        elif key == "platform":
            name = r.string(value, path)
            if name is not None and name not in PLATFORMS:
                r.error(value, path, f"unknown platform {name!r}: expected one of {', '.join(PLATFORMS)}")
            elif name is not None:
                raw.platform = PLATFORMS[name]
        elif key == "acknowledge":
            if is_null(value):
                continue
            for j, item in enumerate(r.sequence(value, path) or []):
                code = r.string(item, f"{path}[{j}]")
                r.lines[f"{path}[{j}]"] = node_line(item)
                if code is not None and code not in ACK_CODES:
                    r.error(item, f"{path}[{j}]",
                            f"unknown risk code {code!r}: expected one of {', '.join(ACK_CODES)}")  # fmt: skip
                elif code is not None:
                    raw.acknowledge.append(code)
        elif key == "policy":
            if not is_null(value):
                r.message(value, raw.policy, path)
        elif key == "group_senders":
            raw.senders = []
            if is_null(value):
                continue
            for j, item in enumerate(r.sequence(value, path) or []):
                p = f"{path}[{j}]"
                r.lines[p] = node_line(item)
                fields = r.mapping(item, p)
                sender: dict[str, str] = {}
                for k, kn, v in fields or []:
                    r.lines[f"{p}.{k}"] = node_line(kn)
                    if k not in _SENDER:
                        r.error(kn, f"{p}.{k}", unknown_field(k, list(_SENDER)))
                        continue
                    s = r.string(v, f"{p}.{k}")
                    if s is not None:
                        sender[k] = s
                for k in _SENDER:
                    if fields is not None and k not in {f[0] for f in fields}:
                        r.error(item, f"{p}.{k}", "is required")
                if len(sender) == 2:
                    raw.senders.append((sender["group_id"], sender["user_id"]))
        elif key == "users":
            raw.users = _read_users(r, value, path)
        else:
            r.error(key_node, path, unknown_field(key, list(_CHANNEL)))
    return raw


def _read_users(r: Reader, node: Node, path: str) -> dict[str, list[FileUser]]:
    """``users: {allowlisted: [...], blocked: [...], paired: [...]}``; a user in
    two lists, or twice in one, is an error."""
    out: dict[str, list[FileUser]] = {}
    if is_null(node):
        return out
    seen: dict[str, str] = {}
    for which, key_node, value in r.mapping(node, path) or []:
        p = f"{path}.{which}"
        r.lines[p] = node_line(key_node)
        if which not in USER_SETS:
            r.error(key_node, p, unknown_field(which, list(USER_SETS)))
            continue
        found = out.setdefault(which, [])
        for j, item in enumerate([] if is_null(value) else r.sequence(value, p) or []):
            ip = f"{p}[{j}]"
            r.lines[ip] = node_line(item)
            entry: dict[str, Any] = {}
            fields = r.mapping(item, ip)
            for k, kn, v in fields or []:
                r.lines[f"{ip}.{k}"] = node_line(kn)
                if k not in _USER or (which == "blocked" and k != "user_id"):
                    allowed = ["user_id"] if which == "blocked" else list(_USER)
                    r.error(kn, f"{ip}.{k}", unknown_field(k, allowed))
                elif k == "permissions":
                    entry[k] = tuple(r.strings(v, f"{ip}.{k}")) if not is_null(v) else ()
                elif not is_null(v):
                    entry[k] = r.string(v, f"{ip}.{k}")
            if fields is not None and "user_id" not in entry:
                r.error(item, f"{ip}.user_id", "is required")
                continue
            if fields is None or entry["user_id"] is None:
                continue
            user = FileUser(entry["user_id"], entry.get("name") or "", entry.get("permissions", ()))
            if user.user_id in seen:
                r.error(item, ip, f"user {user.user_id!r} is listed twice (first under {seen[user.user_id]})")
                continue
            seen[user.user_id] = which
            found.append(user)
    return out


# How the service names a field -> where it is in the file (below the channel or tenant).
_FILE_PATH = {"channel_id": "id"}


def _validated(method: Any, request: Message, base: str, parsed: ParsedFile, errors: list[FileError]) -> Any:
    """The service's answer to a ``validate_only`` request; None (and an error at
    the line the field path names) when it refuses the content."""
    try:
        return method(request, timeout=TIMEOUT)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise RpcFailed(exc) from None
        details = exc.details() or ""
        name, sep, problem = details.partition(": ")
        if not sep:  # no field named: the part as a whole
            name, problem = "", details
        path = f"{base}.{_FILE_PATH.get(name, name)}" if name else base
        errors.append(FileError(parsed.line_of(path), path, problem))
        return None


def check(parsed: ParsedFile, c: SyncClient) -> PolicyFile:
    """Have the service validate and normalise every part of the file (nothing is
    written), then check the risks; raise PolicyFileInvalid with every error found."""
    pf = PolicyFile(parsed.lines)
    errors: list[FileError] = []
    if parsed.tenant is not None:
        settings_request = adm.TenantSettings()
        settings_request.CopyFrom(parsed.tenant)
        settings_request.validate_only = True
        settings = _validated(c.admin.SetTenantSettings, settings_request, "tenant", parsed, errors)
        pf.tenant = tenant_from_proto(settings) if settings is not None else None
    for raw in parsed.channels:
        assert raw.channel_id is not None and raw.platform is not None  # read_policy_file requires both
        request = adm.SetChannelRequest(channel_id=raw.channel_id, policy=raw.policy, validate_only=True,
                                        platform=cm.Platform.ValueType(names.PLATFORM.from_domain(raw.platform)))  # fmt: skip
        checked = _validated(c.admin.SetChannel, request, raw.path, parsed, errors)
        if checked is not None:
            ch = _with_risks(pf, raw, policy_proto.policy_in(checked.policy), errors)
            ch.users = _checked_users(pf, raw, errors)
            pf.channels.append(ch)
    if errors:
        raise PolicyFileInvalid(errors)
    return pf


def _checked_users(pf: PolicyFile, raw: RawChannel, errors: list[FileError]) -> FileUsers | None:
    """The channel's users with the checks AllowUser and BlockUser make (the
    platform's id format, permission names, one-line names), done here because
    those calls have no ``validate_only``."""
    if raw.users is None:
        return None
    assert raw.platform is not None
    for which, listed in raw.users.items():
        for j, user in enumerate(listed):
            path = f"{raw.path}.users.{which}[{j}]"
            try:
                ids.user_id(raw.platform, user.user_id)
                ids.one_line(user.name, "name", MAX_NAME)
                if len(user.permissions) > MAX_PERMISSIONS:
                    raise InvalidArgument("permissions", f"at most {MAX_PERMISSIONS} entries")
                for permission in user.permissions:
                    ids.permission(permission)
            except InvalidArgument as exc:
                where = f"{path}.{exc.field}"
                errors.append(FileError(pf.line_of(where), where, str(exc).removeprefix(f"{exc.field}: ")))
    return FileUsers(**{k: tuple(v) for k, v in raw.users.items()})


def tenant_from_proto(s: adm.TenantSettings) -> FileTenant:
    return FileTenant(
        approvers=tuple(sorted(set(s.approvers))),
        agent_approvers={a: tuple(sorted(set(v.actors))) for a, v in sorted(s.agent_approvers.items())},
        timezone=s.timezone,
    )


def _with_risks(
    pf: PolicyFile, raw: RawChannel, policy: ChannelPolicy, errors: list[FileError]
) -> FileChannel:
    """The channel as the service would store it; its unacknowledged risks are errors."""
    assert raw.channel_id is not None and raw.platform is not None
    senders = tuple(raw.senders) if raw.senders is not None else None
    found = risks.channel_risks(policy, senders or ())
    for risk in found:
        path = f"{raw.path}.{risk.field}"
        if risk.code in raw.acknowledge:
            pf.warnings.append(RiskWarning(pf.line_of(path), raw.channel_id, risk))
        else:
            errors.append(FileError(pf.line_of(path), path,
                                    f"risk {risk.code} is not acknowledged: {risk.message}. If this is intended, "
                                    f"add {risk.code} to the channel's acknowledge list"))  # fmt: skip
    present = {risk.code for risk in found} | {USER_REMOVALS}  # the plan judges removals
    for code in dict.fromkeys(raw.acknowledge):
        if code not in present:
            pf.notes.append(
                f"note: channel {raw.channel_id} acknowledges {code}, but has no such risk"
                + (" (its group senders are not in the file)" if code == risks.WILDCARD_GROUP_SENDER and senders is None else "")
            )  # fmt: skip
    return FileChannel(
        index=raw.index,
        channel_id=raw.channel_id,
        platform=raw.platform,
        policy=policy,
        acknowledge=tuple(dict.fromkeys(raw.acknowledge)),
        group_senders=tuple(sorted(set(senders))) if senders is not None else None,
        line=node_line(raw.node),
    )


def read_text(filename: str) -> str:
    try:
        return sys.stdin.read() if filename == "-" else Path(filename).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{filename}: {getattr(exc, 'strerror', None) or exc}") from None
