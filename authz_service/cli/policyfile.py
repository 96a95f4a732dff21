"""`authz apply -f FILE` and `authz export`: a tenant's policy as a versioned YAML file.

The file (format ``version: 1``, see docs/policies.md "Policy files")::

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
   server runs on SetChannel (``convert.policy_in`` then ``policy.validate``),
   and an InvalidArgument's field path is mapped back to the nearest line;
3. risks: each channel's risky settings (``domain.risks``) must be listed in
   its ``acknowledge:``.

The validated, normalised policy is what gets compared with the tenant's
current state, so a file applied twice changes nothing the second time.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..api import convert
from ..config import ConfigError
from ..domain import ids, risks
from ..domain import policy as policy_codec
from ..domain import send as send_domain
from ..domain.errors import InvalidArgument
from ..domain.model import ChannelPolicy, Platform
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import common_pb2 as cm
from .main import CliError, client

FORMAT_VERSION = 1
PLATFORMS = {p.value: p for p in Platform}
MAX_APPROVERS = 256

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_FLOAT = "tag:yaml.org,2002:float"
_CONSTRUCTOR = yaml.constructor.SafeConstructor()

_INT_RANGES = {
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
}


# --- errors ------------------------------------------------------------------------


@dataclass(frozen=True)
class FileError:
    line: int  # 1-based
    path: str  # "channels[0].policy.dm_policy"; empty for the document itself
    message: str

    def format(self, filename: str) -> str:
        return f"{filename}:{self.line}: {self.path + ': ' if self.path else ''}{self.message}"


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


class PolicyFileInvalid(Exception):
    def __init__(self, errors: list[FileError]) -> None:
        super().__init__(f"{len(errors)} errors")
        self.errors = sorted(errors, key=lambda e: e.line)


def _parent(path: str) -> str:
    """'a.b[c].d' -> 'a.b[c]' -> 'a.b' -> 'a' -> ''."""
    if path.endswith("]"):
        return path[: path.rindex("[")]
    cut = path.rfind(".")
    return path[:cut] if cut > path.rfind("]") else ""


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


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
            p = _parent(p)
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


def _enum_prefix(enum_type: Any) -> str:
    return str(enum_type.values_by_number[0].name).removesuffix("UNSPECIFIED")


def enum_names(enum_type: Any) -> list[str]:
    """The file's spelling of an enum's values: DM_POLICY_OPEN -> 'open' (UNSPECIFIED excluded)."""
    prefix = _enum_prefix(enum_type)
    return [v.name.removeprefix(prefix).lower() for v in enum_type.values if v.number != 0]


class _Reader:
    """Walks YAML nodes along proto descriptors, collecting errors and lines."""

    def __init__(self) -> None:
        self.errors: list[FileError] = []
        self.lines: dict[str, int] = {}
        # Repeated scalar and map fields by path, to find the one bad entry of a list or map.
        self.containers: dict[str, tuple[Message, str]] = {}

    def error(self, node: Node | int, path: str, message: str) -> None:
        line = node if isinstance(node, int) else _line(node)
        self.errors.append(FileError(line, path, message))

    # shapes

    def mapping(self, node: Node, path: str) -> list[tuple[str, Node, Node]] | None:
        if not isinstance(node, MappingNode):
            self.error(node, path, "expected a mapping")
            return None
        seen: dict[str, int] = {}
        out: list[tuple[str, Node, Node]] = []
        for key, value in node.value:
            if not isinstance(key, ScalarNode):
                self.error(key, path, "keys must be plain strings")
                continue
            if key.value in seen:
                self.error(key, path, f"duplicate key {key.value!r} (first at line {seen[key.value]})")
                continue
            seen[key.value] = _line(key)
            out.append((key.value, key, value))
        return out

    def sequence(self, node: Node, path: str) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.error(node, path, "expected a list")
            return None
        return list(node.value)

    def string(self, node: Node, path: str) -> str | None:
        # A string field takes the text as written: `end: 18:00` stays "18:00"
        # (YAML 1.1 would read 1080) and `user_id: 0123` stays "0123".
        if not isinstance(node, ScalarNode) or node.tag == _NULL:
            self.error(node, path, "expected a string")
            return None
        return str(node.value)

    def strings(self, node: Node, path: str) -> list[str]:
        items = self.sequence(node, path)
        out = []
        for i, item in enumerate(items or []):
            self.lines[f"{path}[{i}]"] = _line(item)
            value = self.string(item, f"{path}[{i}]")
            if value is not None:
                out.append(value)
        return out

    def scalar(self, fd: Any, node: Node, path: str) -> Any:
        kind = fd.type
        if kind == FieldDescriptor.TYPE_STRING:
            return self.string(node, path)
        if not isinstance(node, ScalarNode) or node.tag == _NULL:
            self.error(node, path, f"expected {self.expected(fd)}")
            return None
        if kind == FieldDescriptor.TYPE_ENUM:
            names = enum_names(fd.enum_type)
            if node.value not in names:
                self.error(node, path, f"unknown value {node.value!r}: expected one of {', '.join(names)}")
                return None
            return fd.enum_type.values_by_name[_enum_prefix(fd.enum_type) + node.value.upper()].number
        if kind == FieldDescriptor.TYPE_BOOL:
            if node.tag != _BOOL:
                self.error(node, path, "expected a boolean (true or false)")
                return None
            return bool(_CONSTRUCTOR.construct_yaml_bool(node))
        if kind in _INT_RANGES:
            if node.tag != _INT:
                self.error(node, path, f"expected {self.expected(fd)}")
                return None
            value = int(_CONSTRUCTOR.construct_yaml_int(node))
            low, high = _INT_RANGES[kind]
            if not low <= value <= high:
                self.error(node, path, f"{value} is out of range ({low}..{high})")
                return None
            return value
        if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            if node.tag not in (_INT, _FLOAT):
                self.error(node, path, "expected a number")
                return None
            return float(_CONSTRUCTOR.construct_yaml_float(node))
        self.error(node, path, "this field cannot be set from a policy file")  # pragma: no cover
        return None

    @staticmethod
    def expected(fd: Any) -> str:
        if fd.type == FieldDescriptor.TYPE_ENUM:
            return "one of " + ", ".join(enum_names(fd.enum_type))
        if fd.type == FieldDescriptor.TYPE_BOOL:
            return "a boolean (true or false)"
        if fd.type in _INT_RANGES:
            return "a non-negative integer" if _INT_RANGES[fd.type][0] == 0 else "an integer"
        return "a string"

    # messages

    def message(self, node: Node, msg: Message, path: str) -> None:
        entries = self.mapping(node, path)
        if entries is None:
            return
        fields = msg.DESCRIPTOR.fields_by_name
        for key, key_node, value in entries:
            fpath = f"{path}.{key}"
            self.lines[fpath] = _line(key_node)
            fd = fields.get(key)
            if fd is None:
                self.error(key_node, fpath, _unknown(key, list(fields)))
                continue
            self.field(fd, value, msg, fpath)

    def field(self, fd: Any, node: Node, msg: Message, path: str) -> None:
        if _is_null(node):  # `key:` or `key: null`: unset
            return
        container = getattr(msg, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            self.containers[path] = (msg, fd.name)
            for key, key_node, value in self.mapping(node, path) or []:
                p = f"{path}[{key}]"
                self.lines[p] = _line(key_node)
                if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    self.message(value, container[key], p)
                else:
                    v = self.scalar(value_fd, value, p)
                    if v is not None:
                        container[key] = v
        elif fd.is_repeated:
            if fd.type != FieldDescriptor.TYPE_MESSAGE:
                self.containers[path] = (msg, fd.name)
            for i, item in enumerate(self.sequence(node, path) or []):
                p = f"{path}[{i}]"
                self.lines[p] = _line(item)
                if fd.type == FieldDescriptor.TYPE_MESSAGE:
                    self.message(item, container.add(), p)
                else:
                    v = self.scalar(fd, item, p)
                    if v is not None:
                        container.append(v)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            container.SetInParent()
            self.message(node, container, path)
        else:
            v = self.scalar(fd, node, path)
            if v is not None:
                setattr(msg, fd.name, v)


def _unknown(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"unknown field {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


# --- reading a file ----------------------------------------------------------------

_TOP = ("version", "tenant", "channels")
_TENANT = ("approvers", "agent_approvers", "timezone")
_CHANNEL = ("id", "platform", "acknowledge", "policy", "group_senders")
_SENDER = ("group_id", "user_id")


def _compose(text: str) -> Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else 1
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise PolicyFileInvalid([FileError(line, "", f"invalid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyFileInvalid([FileError(1, "", f"invalid YAML: {exc}")]) from None


def read_policy_file(text: str) -> PolicyFile:
    """Parse and validate a policy file; raise PolicyFileInvalid with every error found."""
    root = _compose(text)
    r = _Reader()
    if root is None:
        raise PolicyFileInvalid(
            [FileError(1, "", "the file is empty: expected 'version: 1' and 'channels:'")]
        )
    entries = r.mapping(root, "")
    if entries is None:
        raise PolicyFileInvalid(r.errors)
    top = {k: (kn, v) for k, kn, v in entries}
    for key, key_node, _ in entries:
        r.lines[key] = _line(key_node)
        if key not in _TOP:
            r.error(key_node, key, _unknown(key, list(_TOP)))
    if "version" not in top:
        r.error(root, "version", f"missing: the first line should be 'version: {FORMAT_VERSION}'")
        raise PolicyFileInvalid(r.errors)
    version = top["version"][1]
    if not (isinstance(version, ScalarNode) and version.tag == _INT and version.value == str(FORMAT_VERSION)):
        shown = version.value if isinstance(version, ScalarNode) else "?"
        r.error(version, "version", f"unsupported version {shown}: this authz reads version {FORMAT_VERSION}")
        raise PolicyFileInvalid(r.errors)

    tenant_raw = _read_tenant(r, top["tenant"][1]) if "tenant" in top else None
    raws: list[_RawChannel] = []
    if "channels" in top and not _is_null(top["channels"][1]):
        for i, node in enumerate(r.sequence(top["channels"][1], "channels") or []):
            r.lines[f"channels[{i}]"] = _line(node)
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
    root = _compose(text)
    if root is None:
        raise PolicyFileInvalid([FileError(1, "", "the file is empty: expected policy keys")])
    r = _Reader()
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
            r.error(key_node, key, _unknown(key, ["platform", *fields]))
    if r.errors:
        raise PolicyFileInvalid(r.errors)
    return platform, msg, keys


def _read_tenant(r: _Reader, node: Node) -> tuple[list[str], dict[str, list[str]], str] | None:
    if _is_null(node):
        return [], {}, ""
    entries = r.mapping(node, "tenant")
    if entries is None:
        return None
    approvers: list[str] = []
    per_agent: dict[str, list[str]] = {}
    timezone = ""
    for key, key_node, value in entries:
        path = f"tenant.{key}"
        r.lines[path] = _line(key_node)
        if _is_null(value):
            continue
        if key == "approvers":
            approvers = r.strings(value, path)
        elif key == "agent_approvers":
            for agent, agent_node, actors in r.mapping(value, path) or []:
                r.lines[f"{path}[{agent}]"] = _line(agent_node)
                per_agent[agent] = r.strings(actors, f"{path}[{agent}]")
        elif key == "timezone":
            timezone = r.string(value, path) or ""
        else:
            r.error(key_node, path, _unknown(key, list(_TENANT)))
    return approvers, per_agent, timezone


def _read_channel(r: _Reader, i: int, node: Node) -> _RawChannel:
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
        r.lines[path] = _line(key_node)
        if key == "id":
            raw.channel_id = r.string(value, path)
        elif key == "platform":
            name = r.string(value, path)
            if name is not None and name not in PLATFORMS:
                r.error(value, path, f"unknown platform {name!r}: expected one of {', '.join(PLATFORMS)}")
            elif name is not None:
                raw.platform = PLATFORMS[name]
        elif key == "acknowledge":
            if _is_null(value):
                continue
            for j, item in enumerate(r.sequence(value, path) or []):
                code = r.string(item, f"{path}[{j}]")
                r.lines[f"{path}[{j}]"] = _line(item)
                if code is not None and code not in risks.RISK_CODES:
                    r.error(item, f"{path}[{j}]",
                            f"unknown risk code {code!r}: expected one of {', '.join(risks.RISK_CODES)}")  # fmt: skip
                elif code is not None:
                    raw.acknowledge.append(code)
        elif key == "policy":
            if not _is_null(value):
                r.message(value, raw.policy, path)
        elif key == "group_senders":
            raw.senders = []
            if _is_null(value):
                continue
            for j, item in enumerate(r.sequence(value, path) or []):
                p = f"{path}[{j}]"
                r.lines[p] = _line(item)
                fields = r.mapping(item, p)
                sender: dict[str, str] = {}
                for k, kn, v in fields or []:
                    r.lines[f"{p}.{k}"] = _line(kn)
                    if k not in _SENDER:
                        r.error(kn, f"{p}.{k}", _unknown(k, list(_SENDER)))
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
            r.error(key_node, path, _unknown(key, list(_CHANNEL)))
    return raw


def _invalid(r: _Reader, pf: PolicyFile, base: str, exc: InvalidArgument) -> None:
    path = f"{base}.{exc.field}" if base else exc.field
    problem = exc.message.removeprefix(f"{exc.field}: ")
    r.error(pf.line_of(path), path, problem)


def _validate_tenant(
    r: _Reader, pf: PolicyFile, approvers: list[str], per_agent: dict[str, list[str]], timezone: str
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
    return policy_codec.validate(platform, convert.policy_in(msg))


def _bad_entry(r: _Reader, platform: Platform, msg: cm.ChannelPolicy, path: str, fld: str) -> str:
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


def _validate_channel(r: _Reader, pf: PolicyFile, raw: _RawChannel) -> FileChannel | None:
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
        line=_line(raw.node),
    )


# --- the normalised document form (export, diff) --------------------------------------


class _Map(dict[str, Any]):
    """A proto map in document form: flattened as ``field[key]``, not ``field.key``."""


def _doc_value(fd: Any, value: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return str(fd.enum_type.values_by_number[value].name).removeprefix(_enum_prefix(fd.enum_type)).lower()
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
                out[fd.name] = _Map({k: _doc_value(value_fd, value[k]) for k in sorted(value)})
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
    return message_doc(convert.policy_out(policy), top=True)


def tenant_doc(t: FileTenant) -> dict[str, Any]:
    return {
        "approvers": list(t.approvers),
        "agent_approvers": _Map({a: list(v) for a, v in sorted(t.agent_approvers.items())}),
        "timezone": t.timezone,
    }


def flatten(doc: Any, prefix: str) -> dict[str, Any]:
    """Leaves by path: ``policy.groups[*].require_mention``; lists of scalars stay whole."""
    out: dict[str, Any] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.update(flatten(v, f"{prefix}[{k}]" if isinstance(doc, _Map) else f"{prefix}.{k}"))
        if not doc and isinstance(doc, _Map):
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


@dataclass
class Current:
    tenant: FileTenant
    channels: dict[str, tuple[Platform, ChannelPolicy]]
    senders: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)


def _stored_policy(platform: Platform, msg: cm.ChannelPolicy) -> ChannelPolicy:
    try:
        return normalise_policy(platform, msg)
    except InvalidArgument:  # stored under older rules: compare as stored
        return convert.policy_in(msg)


def tenant_from_proto(s: adm.TenantSettings) -> FileTenant:
    return FileTenant(
        approvers=tuple(sorted(set(s.approvers))),
        agent_approvers={a: tuple(sorted(set(v.actors))) for a, v in sorted(s.agent_approvers.items())},
        timezone=s.timezone,
    )


def rpc_call(fn: Callable[..., Any], request: Message) -> Any:
    return fn(request, timeout=15)


def fetch_current(c: Any, sender_channels: list[str]) -> Current:
    settings = rpc_call(c.admin.GetTenantSettings, adm.GetTenantSettingsRequest())
    channels = {}
    for ch in rpc_call(c.admin.ListChannels, adm.ListChannelsRequest()).channels:
        platform = convert.PLATFORM[ch.platform]
        channels[ch.channel_id] = (platform, _stored_policy(platform, ch.policy))
    cur = Current(tenant_from_proto(settings), channels)
    for cid in sender_channels:
        if cid in channels:
            cur.senders[cid] = list_senders(c, cid)
    return cur


def list_senders(c: Any, channel_id: str) -> tuple[tuple[str, str], ...]:
    resp = rpc_call(c.admin.ListGroupSenders, adm.ListGroupSendersRequest(channel_id=channel_id))
    return tuple(sorted({(s.group_id, s.user_id) for s in resp.senders}))


# --- the plan ------------------------------------------------------------------------


@dataclass
class ChannelPlan:
    channel_id: str
    action: str  # create, change, same, keep, delete
    platform: Platform
    file: FileChannel | None = None
    fields: list[tuple[str, Any, Any]] = field(default_factory=list)
    add: list[tuple[str, str]] = field(default_factory=list)
    remove: list[tuple[str, str]] = field(default_factory=list)

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
        if existing is not None and (p.fields or p.add or p.remove):
            p.action = "change"
        plans.append(p)
    in_file = {ch.channel_id for ch in pf.channels}
    for cid in sorted(set(cur.channels) - in_file):
        plans.append(ChannelPlan(cid, "delete" if prune else "keep", cur.channels[cid][0]))
    return Plan(pf.tenant if tenant_fields else None, tenant_fields, plans)


def _sender(s: tuple[str, str]) -> str:
    return f"group {s[0]} user {s[1]}"


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


class ApplyFailed(Exception):
    pass


def _server_error_line(pf: PolicyFile, ch: FileChannel | None, details: str) -> str:
    """'policy.x: problem' from the server -> 'FILE:LINE: channels[i].policy.x: problem'."""
    m = re.match(r"(policy(?:\.[A-Za-z_]+|\[[^\]]*\])*): (.*)", details, re.S)
    if ch is None or m is None:
        return ""
    path = f"{ch.path}.{m[1]}"
    return f"{pf.line_of(path)}: {path}: {m[2]}"


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
                    channel_id=p.channel_id, platform=convert.enum_out(convert.PLATFORM, p.platform),
                    policy=convert.policy_out(p.file.policy)))  # fmt: skip
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
        except grpc.RpcError as exc:
            if parts:
                done.append(f"channel {p.channel_id} ({', '.join(parts)})")
            raise fail(step, exc, p.file) from None
        done.append(f"channel {p.channel_id} ({', '.join(parts)})")
        pending.pop(0)
    return done


def _confirm(question: str) -> bool:
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def read_text(filename: str) -> str:
    try:
        return sys.stdin.read() if filename == "-" else Path(filename).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{filename}: {getattr(exc, 'strerror', None) or exc}") from None


def guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Errors print as `authz: ...` with exit code 2, whichever module runs main()."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (CliError, ConfigError) as exc:
            print(f"authz: {exc}", file=sys.stderr)
            return 2
        except grpc.RpcError as exc:
            code = exc.code()
            print(f"authz: {code.name if code else 'UNKNOWN'}: {exc.details()}", file=sys.stderr)
            return 2

    return run


def load(filename: str) -> PolicyFile | None:
    """Read and validate; print every error (and return None) or the warnings."""
    try:
        pf = read_policy_file(read_text(filename))
    except PolicyFileInvalid as exc:
        for e in exc.errors:
            print(e.format(filename), file=sys.stderr)
        print(f"authz: {filename}: {len(exc.errors)} error{'s' if len(exc.errors) != 1 else ''}; "
              "nothing was applied", file=sys.stderr)  # fmt: skip
        return None
    for w in pf.warnings:
        print(w.format(filename))
    for note in pf.notes:
        print(note)
    return pf


def cmd_apply(args: argparse.Namespace) -> int:
    pf = load(args.file)
    if pf is None:
        return 2
    c = client(args)
    cur = fetch_current(c, [ch.channel_id for ch in pf.channels if ch.group_senders is not None])
    plan = make_plan(pf, cur, args.prune)
    for line in render_plan(plan):
        print(line)
    if not plan.has_changes:
        return 0
    if args.dry_run:
        print("dry run: nothing was changed")
        return 0
    if not args.yes:
        if not sys.stdin.isatty() or args.file == "-":
            raise CliError(
                "not applied: pass --yes to apply without a prompt (or --dry-run to only show the plan)"
            )
        if not _confirm("apply these changes?"):
            print("not applied")
            return 1
    try:
        done = execute(c, pf, plan, args.file)
    except ApplyFailed as exc:
        print(f"authz: {exc}", file=sys.stderr)
        return 1
    print("applied: " + "; ".join(done))
    return 0


# --- export --------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style, lists indented under their key, proto maps as plain mappings."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


_Dumper.add_representer(_Map, yaml.SafeDumper.represent_dict)


HEADER = (
    "# authz policy file (format version 1), written by `authz export`.\n"
    '# Apply with `authz apply -f FILE` (see docs/policies.md, "Policy files").\n'
)


def export_doc(
    tenant: FileTenant,
    channels: dict[str, tuple[Platform, ChannelPolicy]],
    senders: dict[str, tuple[tuple[str, str], ...]],
) -> dict[str, Any]:
    out: dict[str, Any] = {"version": FORMAT_VERSION, "tenant": tenant_doc(tenant), "channels": []}
    for cid in sorted(channels):
        platform, policy = channels[cid]
        found = senders.get(cid, ())
        codes = {r.code for r in risks.channel_risks(policy, found)}
        entry: dict[str, Any] = {"id": cid, "platform": platform.value}
        if codes:
            entry["acknowledge"] = [code for code in risks.RISK_CODES if code in codes]
        entry["policy"] = policy_doc(policy)
        entry["group_senders"] = [{"group_id": g, "user_id": u} for g, u in sorted(found)]
        out["channels"].append(entry)
    return out


def dump(doc: dict[str, Any]) -> str:
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def cmd_export(args: argparse.Namespace) -> int:
    c = client(args)
    cur = fetch_current(c, [])
    for cid in cur.channels:
        cur.senders[cid] = list_senders(c, cid)
    text = dump(export_doc(cur.tenant, cur.channels, cur.senders))
    if not args.output:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{args.output}: {exc.strerror or exc}") from None
    n = len(cur.channels)
    print(
        f"wrote the tenant settings and {n} channel{'s' if n != 1 else ''} to {args.output}", file=sys.stderr
    )
    return 0


# --- registration --------------------------------------------------------------------

Cmd = Callable[[Any, str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def add_commands(sub: Any, cmd: Cmd) -> None:
    sp = cmd(sub, "apply", guarded(cmd_apply),
             "make the tenant match a policy file: show the changes, then write only what differs")  # fmt: skip
    sp.add_argument("-f", "--file", required=True, help="policy file (version 1; '-' reads stdin)")
    sp.add_argument("--dry-run", action="store_true", help="show the changes and change nothing")
    sp.add_argument("--prune", action="store_true", help="delete channels that are not in the file")
    sp.add_argument("--yes", action="store_true", help="apply without asking")
    sp = cmd(sub, "export", guarded(cmd_export),
             "write the tenant's settings, channels and group senders as a policy file")  # fmt: skip
    sp.add_argument("-o", "--output", help="file to write (default: stdout)")
