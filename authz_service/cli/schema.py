"""Reading YAML along proto descriptors, with the line of every node.

A policy file (``authz apply``) and a channel overlay (``authz channel set
-f``) are YAML whose leaves are ``ChannelPolicy`` fields. The reader walks the
node tree along the message descriptors, so every unknown field, wrong type,
unknown enum value and duplicate key is reported at its line, and it records
the line of every path for errors found later (by the service).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import yaml
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .. import names

_STR = "tag:yaml.org,2002:str"
INT_TAG = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
NULL_TAG = "tag:yaml.org,2002:null"
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


class PolicyFileInvalid(Exception):
    def __init__(self, errors: list[FileError]) -> None:
        super().__init__(f"{len(errors)} errors")
        self.errors = sorted(errors, key=lambda e: e.line)


def parent_path(path: str) -> str:
    """'a.b[c].d' -> 'a.b[c]' -> 'a.b' -> 'a' -> ''."""
    if path.endswith("]"):
        return path[: path.rindex("[")]
    cut = path.rfind(".")
    return path[:cut] if cut > path.rfind("]") else ""


def node_line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == NULL_TAG


def enum_names(enum_type: Any) -> tuple[str, ...]:
    """The file's spelling of an enum's values: DM_POLICY_OPEN -> 'open' (UNSPECIFIED excluded)."""
    return names.EnumNames(enum_type).labels


class Reader:
    """Walks YAML nodes along proto descriptors, collecting errors and lines."""

    def __init__(self) -> None:
        self.errors: list[FileError] = []
        self.lines: dict[str, int] = {}

    def error(self, node: Node | int, path: str, message: str) -> None:
        line = node if isinstance(node, int) else node_line(node)
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
            seen[key.value] = node_line(key)
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
        if not isinstance(node, ScalarNode) or node.tag == NULL_TAG:
            self.error(node, path, "expected a string")
            return None
        return str(node.value)

    def strings(self, node: Node, path: str) -> list[str]:
        items = self.sequence(node, path)
        out = []
        for i, item in enumerate(items or []):
            self.lines[f"{path}[{i}]"] = node_line(item)
            value = self.string(item, f"{path}[{i}]")
            if value is not None:
                out.append(value)
        return out

    def scalar(self, fd: Any, node: Node, path: str) -> Any:
        kind = fd.type
        if kind == FieldDescriptor.TYPE_STRING:
            return self.string(node, path)
        if not isinstance(node, ScalarNode) or node.tag == NULL_TAG:
            self.error(node, path, f"expected {self.expected(fd)}")
            return None
        if kind == FieldDescriptor.TYPE_ENUM:
            labels = enum_names(fd.enum_type)
            if node.value not in labels:
                self.error(node, path, f"unknown value {node.value!r}: expected one of {', '.join(labels)}")
                return None
            return names.EnumNames(fd.enum_type).number(node.value)
        if kind == FieldDescriptor.TYPE_BOOL:
            if node.tag != _BOOL:
                self.error(node, path, "expected a boolean (true or false)")
                return None
            return bool(_CONSTRUCTOR.construct_yaml_bool(node))
        if kind in _INT_RANGES:
            if node.tag != INT_TAG:
                self.error(node, path, f"expected {self.expected(fd)}")
                return None
            value = int(_CONSTRUCTOR.construct_yaml_int(node))
            low, high = _INT_RANGES[kind]
            if not low <= value <= high:
                self.error(node, path, f"{value} is out of range ({low}..{high})")
                return None
            return value
        if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            if node.tag not in (INT_TAG, _FLOAT):
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
            self.lines[fpath] = node_line(key_node)
            fd = fields.get(key)
            if fd is None:
                self.error(key_node, fpath, unknown_field(key, list(fields)))
                continue
            self.field(fd, value, msg, fpath)

    def field(self, fd: Any, node: Node, msg: Message, path: str) -> None:
        if is_null(node):  # `key:` or `key: null`: unset
            return
        container = getattr(msg, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            for key, key_node, value in self.mapping(node, path) or []:
                p = f"{path}[{key}]"
                self.lines[p] = node_line(key_node)
                if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    self.message(value, container[key], p)
                else:
                    v = self.scalar(value_fd, value, p)
                    if v is not None:
                        container[key] = v
        elif fd.is_repeated:
            for i, item in enumerate(self.sequence(node, path) or []):
                p = f"{path}[{i}]"
                self.lines[p] = node_line(item)
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


def unknown_field(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"unknown field {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


# Far deeper than any policy file; PyYAML's composer recurses once per level,
# so a file nested thousands of levels deep would end in a RecursionError.
MAX_NESTING = 64


class NestedTooDeeply(PolicyFileInvalid):
    """The file nests mappings and sequences deeper than MAX_NESTING."""

    def __init__(self, line: int) -> None:
        super().__init__([FileError(line, "", f"YAML nested too deeply (more than {MAX_NESTING} levels)")])
        self.line = line


def _check_nesting(text: str) -> None:
    """Refuse deep nesting before composing: the parser keeps an explicit stack
    (no recursion), the composer does not."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                mark = event.start_mark
                raise NestedTooDeeply(int(mark.line) + 1 if mark is not None else 1)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def compose(text: str) -> Node | None:
    try:
        _check_nesting(text)
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else 1
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise PolicyFileInvalid([FileError(line, "", f"invalid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyFileInvalid([FileError(1, "", f"invalid YAML: {exc}")]) from None
