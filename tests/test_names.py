"""The enum names come from the proto, and every proto enum has its entry."""

from __future__ import annotations

import enum

import pytest
from google.protobuf.descriptor import EnumDescriptor

from authz_service import names
from authz_service.domain import model
from authz_service.gen.authz.v1 import admin_pb2, authz_pb2
from authz_service.gen.authz.v1 import common_pb2 as cm

TABLES = {v.descriptor.full_name: v for v in vars(names).values() if isinstance(v, names.EnumNames)}


def _proto_enums() -> list[EnumDescriptor]:
    found = []
    for module in (cm, authz_pb2, admin_pb2):
        found.extend(module.DESCRIPTOR.enum_types_by_name.values())
        for message in module.DESCRIPTOR.message_types_by_name.values():
            found.extend(message.enum_types)
    return found


def test_every_proto_enum_has_names() -> None:
    missing = sorted(e.full_name for e in _proto_enums() if e.full_name not in TABLES)
    assert missing == []


def test_labels_are_the_proto_names_without_prefix() -> None:
    assert names.DM_POLICY.label(cm.DM_POLICY_OPEN) == "open"
    assert names.APPROVAL_STATUS.label(cm.APPROVAL_STATUS_EXPIRED) == "expired"
    assert names.DECISION.label(authz_pb2.DECISION_PAIRING_REQUIRED) == "pairing_required"
    assert names.PAIRING_OUTCOME.label(authz_pb2.PAIRING_OUTCOME_AUTO_APPROVED) == "auto_approved"
    assert names.ROLE.number("Agent") == admin_pb2.ROLE_AGENT
    assert names.PLATFORM.labels == ("telegram", "slack", "discord", "whatsapp")


def test_unspecified_and_unknown_have_no_label() -> None:
    assert names.DM_POLICY.label(cm.DM_POLICY_UNSPECIFIED) == ""
    assert names.DM_POLICY.label(99, "unknown") == "unknown"
    with pytest.raises(KeyError):
        names.DM_POLICY.number("unspecified")
    with pytest.raises(KeyError):
        names.DM_POLICY.to_domain(cm.DM_POLICY_UNSPECIFIED)


@pytest.mark.parametrize(
    "table", [t for t in TABLES.values() if t.domain is not None], ids=lambda t: t.descriptor.name
)
def test_domain_twins_round_trip(table: names.EnumNames[enum.StrEnum]) -> None:
    assert table.domain is not None
    for member in table.domain:
        assert table.to_domain(table.from_domain(member)) is member


def test_a_proto_value_without_domain_twin_is_refused_at_import() -> None:
    class Short(enum.StrEnum):
        PAIRING = "pairing"
        OPEN = "open"

    with pytest.raises(TypeError, match=r"proto only \['allowlist', 'disabled'\]"):
        names.EnumNames(cm.DmPolicy.DESCRIPTOR, Short)


def test_role_twins_the_domain_except_operator() -> None:
    assert {model.Role(label) for label in names.ROLE.labels} == set(model.Role) - {model.Role.OPERATOR}
