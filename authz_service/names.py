"""Enum names derived from the proto descriptors, and their domain twins.

Every proto enum value ``PREFIX_SOME_VALUE`` has the label ``some_value`` (its
enum's common prefix removed, lower case): that is what the CLI prints and
reads, what the SDK's results carry and what telemetry records. Where the
domain has a ``StrEnum`` for the same idea, its members' values are the same
labels; an import-time check refuses a proto value without its domain twin
(or the reverse), so a value added to the contract cannot be half-wired.

Nothing here is written out by hand per value: a new enum value gets its label
from the proto.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from google.protobuf.descriptor import EnumDescriptor

from .domain import model
from .gen.authz.v1 import admin_pb2, authz_pb2
from .gen.authz.v1 import common_pb2 as cm

D = TypeVar("D", bound=enum.StrEnum)


def _prefix(descriptor: EnumDescriptor) -> str:
    """The prefix every value of the enum shares: ``DM_POLICY_`` for ``DM_POLICY_UNSPECIFIED``."""
    unspecified = [v.name for v in descriptor.values if v.number == 0]
    if len(unspecified) != 1 or not unspecified[0].endswith("_UNSPECIFIED"):
        raise TypeError(f"{descriptor.full_name}: value 0 must be <PREFIX>_UNSPECIFIED")
    prefix = unspecified[0].removesuffix("UNSPECIFIED")
    for v in descriptor.values:
        if not v.name.startswith(prefix):
            raise TypeError(f"{descriptor.full_name}.{v.name}: does not start with {prefix}")
    return prefix


@dataclass(frozen=True)
class EnumNames(Generic[D]):
    """One proto enum's labels, numbers and (optionally) domain twins."""

    descriptor: EnumDescriptor
    domain: type[D] | None = None
    _label: Mapping[int, str] = field(init=False, repr=False)
    _number: Mapping[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        prefix = _prefix(self.descriptor)
        label = {v.number: v.name.removeprefix(prefix).lower() for v in self.descriptor.values if v.number}
        object.__setattr__(self, "_label", label)
        object.__setattr__(self, "_number", {name: number for number, name in label.items()})
        if self.domain is not None:
            ours = {m.value for m in self.domain}
            theirs = set(label.values())
            if ours != theirs:
                raise TypeError(
                    f"{self.descriptor.full_name} and {self.domain.__name__} differ: "
                    f"proto only {sorted(theirs - ours)}, domain only {sorted(ours - theirs)}"
                )

    @property
    def labels(self) -> tuple[str, ...]:
        """Every label in proto order, UNSPECIFIED excluded."""
        return tuple(self._label.values())

    def label(self, number: int, unspecified: str = "") -> str:
        """The label of a number; ``unspecified`` for 0 and for a number this build does not know."""
        return self._label.get(number, unspecified)

    def number(self, label: str) -> int:
        """The number of a label (case-insensitive); KeyError for an unknown label."""
        return self._number[label.lower()]

    def to_domain(self, number: int) -> D:
        """The domain twin of a number; KeyError for 0 or an unknown number."""
        assert self.domain is not None, f"{self.descriptor.full_name} has no domain twin"
        return self.domain(self._label[number])

    def from_domain(self, member: D) -> int:
        return self._number[member.value]

    def label_map(self) -> dict[int, str]:
        """Number → label, UNSPECIFIED excluded."""
        return dict(self._label)

    def domain_map(self) -> dict[int, D]:
        """Number → domain twin, UNSPECIFIED excluded."""
        return {number: self.to_domain(number) for number in self._label}


def _names(enum_type: Any, domain: type[D] | None = None) -> EnumNames[D]:
    return EnumNames(enum_type.DESCRIPTOR, domain)


PLATFORM = _names(cm.Platform, model.Platform)
CHAT_KIND = _names(cm.ChatKind, model.ChatKind)
DM_POLICY = _names(cm.DmPolicy, model.DmPolicy)
GROUP_POLICY = _names(cm.GroupPolicy, model.GroupPolicy)
SEND_DEFAULT = _names(cm.SendDefault, model.SendDefault)
APPROVAL_STATUS = _names(cm.ApprovalStatus, model.ApprovalStatus)
APPROVAL_ACTION = _names(cm.ApprovalAction, model.ApprovalAction)
RISK = _names(cm.Risk, model.Risk)
APPROVAL_KIND: EnumNames[Any] = _names(cm.ApprovalKind)
DECISION = _names(authz_pb2.Decision, model.Decision)
PAIRING_OUTCOME = _names(authz_pb2.PairingOutcome, model.PairingOutcome)
INVITE_OUTCOME = _names(authz_pb2.InviteOutcome, model.RedeemOutcome)
SEND_ACTION: EnumNames[Any] = _names(authz_pb2.SendAction)
SUBJECT_STATUS = _names(admin_pb2.SubjectStatus, model.SubjectStatus)
SUBJECT_SOURCE = _names(admin_pb2.SubjectSource, model.SubjectSource)
USER_FILTER: EnumNames[Any] = _names(admin_pb2.UserFilter)
# The operator role is a credential, not a stored key: the proto has no value for it.
ROLE: EnumNames[Any] = _names(admin_pb2.Role)
if {*ROLE.labels} != {r.value for r in model.Role} - {model.Role.OPERATOR}:
    raise TypeError("authz.v1.Role and domain Role differ (operator aside)")
