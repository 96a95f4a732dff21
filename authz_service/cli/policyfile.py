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

Reading it takes three passes, all before the service is asked anything:

1. schema: the YAML node tree is walked along the proto descriptors, so every
   unknown field, wrong type and unknown enum value is reported with its line;
2. domain: each channel goes through the very conversion and validation the
   server runs on SetChannel (``policy_proto.policy_in`` then ``policy.validate``),
   and an InvalidArgument's field path is mapped back to the nearest line;
3. risks: each channel's risky settings (``domain.risks``) must be listed in
   its ``acknowledge:``.

The validated, normalised policy is what gets compared with the tenant's
current state, so a file applied twice changes nothing the second time.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from yaml.nodes import Node, ScalarNode

from .. import policy_proto
from ..domain import ids, risks
from ..domain import policy as policy_codec
from ..domain import send as send_domain
from ..domain.errors import InvalidArgument
from ..domain.model import ChannelPolicy, Platform
from ..gen.authz.v1 import common_pb2 as cm
from .errors import CliError
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

FORMAT_VERSION = 1
PLATFORMS = {p.value: p for p in Platform}
MAX_APPROVERS = 256


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


@dataclass
class FileChannel:
    index: int
    channel_id: str
    platform: Platform
    policy: ChannelPolicy  # validated and normalised, as the server would store it
    acknowledge: tuple[str, ...]
    group_senders: tuple[tuple[str, str], ...] | None  # None: not managed by the file
    line: int

    @property
    def path(self) -> str:
        return f"channels[{self.index}]"


@dataclass
class PolicyFile:
    tenant: FileTenant | None
    channels: list[FileChannel]
    warnings: list[RiskWarning]
    notes: list[str]
    lines: dict[str, int]

    def line_of(self, path: str) -> int:
        p = path
        while p:
            if p in self.lines:
                return self.lines[p]
            p = parent_path(p)
        return 1


@dataclass
class _RawChannel:
    index: int
    node: Node
    channel_id: str | None = None
    platform: Platform | None = None
    policy: cm.ChannelPolicy = field(default_factory=cm.ChannelPolicy)
    acknowledge: list[str] = field(default_factory=list)
    senders: list[tuple[str, str]] | None = None
    clean: bool = True


# --- reading a file ----------------------------------------------------------------

_TOP = ("version", "tenant", "channels")
_TENANT = ("approvers", "agent_approvers", "timezone")
_CHANNEL = ("id", "platform", "acknowledge", "policy", "group_senders")
_SENDER = ("group_id", "user_id")


def read_policy_file(text: str) -> PolicyFile:
    """Parse and validate a policy file; raise PolicyFileInvalid with every error found."""
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

    tenant_raw = _read_tenant(r, top["tenant"][1]) if "tenant" in top else None
    raws: list[_RawChannel] = []
    if "channels" in top and not is_null(top["channels"][1]):
        for i, node in enumerate(r.sequence(top["channels"][1], "channels") or []):
            r.lines[f"channels[{i}]"] = node_line(node)
            before = len(r.errors)
            raw = _read_channel(r, i, node)
            raw.clean = len(r.errors) == before
            raws.append(raw)

    lines = r.lines
    pf = PolicyFile(tenant=None, channels=[], warnings=[], notes=[], lines=lines)
    if tenant_raw is not None:
        pf.tenant = _validate_tenant(r, pf, *tenant_raw)
    seen: dict[str, int] = {}
    for raw in raws:
        if raw.channel_id is not None and raw.channel_id in seen:
            r.error(
                pf.line_of(f"channels[{raw.index}].id"),
                f"channels[{raw.index}].id",
                f"duplicate channel id {raw.channel_id!r} (first at line {seen[raw.channel_id]})",
            )
            continue
        if raw.channel_id is not None:
            seen[raw.channel_id] = pf.line_of(f"channels[{raw.index}].id")
        if raw.clean:
            ch = _validate_channel(r, pf, raw)
            if ch is not None:
                pf.channels.append(ch)
    if r.errors:
        raise PolicyFileInvalid(r.errors)
    return pf


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


def _read_tenant(r: Reader, node: Node) -> tuple[list[str], dict[str, list[str]], str] | None:
    if is_null(node):
        return [], {}, ""
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
    return approvers, per_agent, timezone


def _read_channel(r: Reader, i: int, node: Node) -> _RawChannel:
    raw = _RawChannel(i, node)
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
                if code is not None and code not in risks.RISK_CODES:
                    r.error(item, f"{path}[{j}]",
                            f"unknown risk code {code!r}: expected one of {', '.join(risks.RISK_CODES)}")  # fmt: skip
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
        else:
            r.error(key_node, path, unknown_field(key, list(_CHANNEL)))
    return raw


def _invalid(r: Reader, pf: PolicyFile, base: str, exc: InvalidArgument) -> None:
    path = f"{base}.{exc.field}" if base else exc.field
    problem = exc.message.removeprefix(f"{exc.field}: ")
    r.error(pf.line_of(path), path, problem)


def _validate_tenant(
    r: Reader, pf: PolicyFile, approvers: list[str], per_agent: dict[str, list[str]], timezone: str
) -> FileTenant | None:
    before = len(r.errors)
    if len(approvers) > MAX_APPROVERS:
        r.error(pf.line_of("tenant.approvers"), "tenant.approvers", f"at most {MAX_APPROVERS} entries")
    for i, a in enumerate(approvers):
        try:
            ids.qualified_actor(a, f"approvers[{i}]")
        except InvalidArgument as exc:
            _invalid(r, pf, "tenant", exc)
    if len(per_agent) > MAX_APPROVERS:
        r.error(
            pf.line_of("tenant.agent_approvers"), "tenant.agent_approvers", f"at most {MAX_APPROVERS} agents"
        )
    for agent, actors in per_agent.items():
        try:
            ids.agent_id(agent, f"agent_approvers[{agent}]")
            if len(actors) > MAX_APPROVERS:
                raise InvalidArgument(f"agent_approvers[{agent}]", f"at most {MAX_APPROVERS} entries")
            for j, a in enumerate(actors):
                ids.qualified_actor(a, f"agent_approvers[{agent}][{j}]")
        except InvalidArgument as exc:
            _invalid(r, pf, "tenant", exc)
    try:
        timezone = send_domain.validate_timezone(timezone)
    except InvalidArgument as exc:
        _invalid(r, pf, "tenant", exc)
    if len(r.errors) > before:
        return None
    # As the server stores them: sorted, without duplicates.
    return FileTenant(
        approvers=tuple(sorted(set(approvers))),
        agent_approvers={a: tuple(sorted(set(v))) for a, v in sorted(per_agent.items())},
        timezone=timezone,
    )


def normalise_policy(platform: Platform, msg: cm.ChannelPolicy) -> ChannelPolicy:
    """What SetChannel stores for this proto (raises InvalidArgument like the server)."""
    return policy_codec.validate(platform, policy_proto.policy_in(msg))


def _bad_entry(r: Reader, platform: Platform, msg: cm.ChannelPolicy, path: str, fld: str) -> str:
    """For an error on a list or map field (the server names only the field),
    the path of the one entry that causes it: the entry that fails alone."""
    found = r.containers.get(path)
    if found is None:
        return path
    parent, name = found
    container = getattr(parent, name)
    is_map = hasattr(container, "keys")
    if is_map:
        keys = list(container.keys())
        saved: dict[str, Any] = {}
        for k in keys:
            v = container[k]
            if isinstance(v, Message):
                saved[k] = type(v)()
                saved[k].CopyFrom(v)
            else:
                saved[k] = v
    else:
        keys = list(range(len(container)))
        values = list(container)

    def keep(only: list[Any]) -> None:
        if is_map:
            container.clear()
            for k in only:
                if isinstance(saved[k], Message):
                    container[k].CopyFrom(saved[k])
                else:
                    container[k] = saved[k]
        else:
            del container[:]
            container.extend(values[i] for i in only)

    if len(keys) < 2:
        return f"{path}[{keys[0]}]" if keys else path
    try:
        for k in keys:
            keep([k])
            try:
                normalise_policy(platform, msg)
            except InvalidArgument as exc:
                if exc.field == fld:
                    return f"{path}[{k}]"
    finally:
        keep(keys)
    return path


def _validate_channel(r: Reader, pf: PolicyFile, raw: _RawChannel) -> FileChannel | None:
    base = f"channels[{raw.index}]"
    assert raw.channel_id is not None and raw.platform is not None  # clean: both were read
    before = len(r.errors)
    try:
        ids.channel_id(raw.channel_id, "id")
    except InvalidArgument as exc:
        _invalid(r, pf, base, exc)
    try:
        policy = normalise_policy(raw.platform, raw.policy)
    except InvalidArgument as exc:
        path = _bad_entry(r, raw.platform, raw.policy, f"{base}.{exc.field}", exc.field)
        r.error(pf.line_of(path), path, exc.message.removeprefix(f"{exc.field}: "))
        return None
    seen: dict[tuple[str, str], int] = {}
    for j, (group_id, user_id) in enumerate(raw.senders or []):
        p = f"{base}.group_senders[{j}]"
        try:
            ids.group_id(group_id, f"group_senders[{j}].group_id")
            ids.user_id(raw.platform, user_id, f"group_senders[{j}].user_id")
        except InvalidArgument as exc:
            _invalid(r, pf, base, exc)
        if (group_id, user_id) in seen:
            r.error(pf.line_of(p), p, f"duplicate group sender (first at line {seen[group_id, user_id]})")
        seen.setdefault((group_id, user_id), pf.line_of(p))
    if len(r.errors) > before:
        return None
    senders = tuple(raw.senders) if raw.senders is not None else None
    found = risks.channel_risks(policy, senders or ())
    for risk in found:
        line = pf.line_of(f"{base}.{risk.field}")
        if risk.code in raw.acknowledge:
            pf.warnings.append(RiskWarning(line, raw.channel_id, risk))
        else:
            r.error(line, f"{base}.{risk.field}",
                    f"risk {risk.code} is not acknowledged: {risk.message}. If this is intended, add "
                    f"{risk.code} to the channel's acknowledge list")  # fmt: skip
    present = {risk.code for risk in found}
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
