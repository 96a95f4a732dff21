"""Property-based fuzzing of every RPC of both services (hypothesis).

Requests are generated from the protobuf descriptors: random and adversarial
strings (huge, control characters, confusables, right-to-left marks), out of
range numbers, unknown enum values, nested garbage. Every answer must be a
well-defined status code (never INTERNAL or UNKNOWN), and the service must be
healthy afterwards. Examples are derandomised so CI runs the same cases.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz_service.client import NO_RETRY, connect_sync
from authz_service.gen.authz.v1 import admin_pb2, authz_pb2, common_pb2

from .conftest import Service, Tenant

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # over the message size limit
}
EXAMPLES = 20

# Strings an attacker would try: real ids, ids with tricks, and garbage.
_TRICKY = st.sampled_from(
    [
        "",
        "*",
        "origin",
        "42",
        "0",
        "-1",
        "9" * 40,
        "T012:U034",
        "+15551234567",
        "apr_" + "A" * 22,
        "apr_" + "A" * 21 + "=",
        "az1a" + "A" * 44,
        "az1g" + "B" * 44,
        "grt_" + "C" * 22,
        "tg",
        "tg\x00",
        "tg\u202e",  # right-to-left override
        "tg\u200b",  # zero-width space
        "ｔｇ",  # fullwidth confusable
        "tеlegram",  # Cyrillic е
        "../../etc/passwd",
        "'; DROP TABLE subjects; --",
        "%s%s%n",
        "\ud7ff\ue000\U0010ffff",
        "{" * 50,
        '{"a": NaN}',
        "x" * 300,
    ]
)
_TEXT = st.one_of(
    _TRICKY,
    st.text(max_size=80),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=20),
    st.builds(lambda n: "A" * n, st.integers(min_value=1000, max_value=70_000)),
)
_INT32 = st.one_of(
    st.integers(min_value=-(2**31), max_value=2**31 - 1), st.sampled_from([0, 1, 2, 3, 4, 5, 99])
)
_UINT32 = st.one_of(st.integers(min_value=0, max_value=2**32 - 1), st.sampled_from([0, 1, 60, 86401]))
_INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

_SCALAR: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_STRING: _TEXT,
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=64),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_ENUM: _INT32,
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_UINT64: st.integers(min_value=0, max_value=2**64 - 1),
}


def _field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        if field.message_type.full_name == "google.protobuf.Timestamp":
            return st.fixed_dictionaries(
                {"seconds": st.integers(min_value=-62135596800, max_value=253402300799), "nanos": st.just(0)}
            )
        return _dicts(field.message_type, depth + 1)
    return _SCALAR[field.type]


def _dicts(descriptor: Any, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Field values as a dict, each field present or absent; recursion bounded."""
    if depth > 3:
        return st.just({})
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key = _field_values(field.message_type.fields_by_name["key"], depth)
            value = _field_values(field.message_type.fields_by_name["value"], depth)
            parts[field.name] = st.dictionaries(key, value, max_size=3)
        elif field.is_repeated:
            parts[field.name] = st.lists(_field_values(field, depth), max_size=4)
        else:
            parts[field.name] = _field_values(field, depth)
    return st.fixed_dictionaries({}, optional=parts)


def _fill(msg: Message, values: dict[str, Any]) -> Message:
    for name, value in values.items():
        field = msg.DESCRIPTOR.fields_by_name[name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = getattr(msg, name)
            for k, v in value.items():
                if isinstance(v, dict):
                    _fill(target[k], v)
                else:
                    target[k] = v
        elif field.is_repeated and field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value:
                _fill(getattr(msg, name).add(), item)
        elif field.is_repeated:
            getattr(msg, name).extend(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            _fill(getattr(msg, name), value)
            getattr(msg, name).SetInParent()
        else:
            with contextlib.suppress(ValueError):  # e.g. a surrogate protobuf refuses to hold
                setattr(msg, name, value)
    return msg


def _requests(message_class: type[Message]) -> st.SearchStrategy[Message]:
    return _dicts(message_class.DESCRIPTOR).map(lambda values: _fill(message_class(), values))


METHODS = [
    (service, method)
    for module, service in ((authz_pb2, "AuthzService"), (admin_pb2, "AdminService"))
    for method in module.DESCRIPTOR.services_by_name[service].methods
]


def _call(channel: grpc.Channel, service: str, method: Any, request: Message) -> grpc.StatusCode:
    path = f"/authz.v1.{service}/{method.name}"
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path, lambda m: m.SerializeToString(), None)(request, timeout=0.5)
            for _ in stream:
                pass
        else:
            channel.unary_unary(path, lambda m: m.SerializeToString(), None)(request, timeout=10)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        if method.server_streaming and code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return grpc.StatusCode.OK  # a valid watch simply keeps going
        return code
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("api", "method"), METHODS, ids=[f"{s}.{m.name}" for s, m in METHODS])
async def test_every_rpc_answers_garbage_with_a_defined_status(
    api: str, method: Any, tenant: Tenant, service: Service
) -> None:
    await tenant.channel("tg", owner_id="100")
    request_class = _message_class(method.input_type.full_name)
    seen: list[tuple[str, grpc.StatusCode]] = []

    def fuzz(role: str) -> None:
        with connect_sync(service.address, tenant.keys[role], retry=NO_RETRY) as client:

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(_requests(request_class))
            def one(request: Message) -> None:
                code = _call(client.channel, api, method, request)
                seen.append((role, code))
                assert code in ALLOWED, f"{method.name} as {role} answered {code} to {request!r:.500}"

            one()

    for role in ("admin", "connector"):
        await asyncio.to_thread(fuzz, role)
    # The property really ran, as both roles (a message without fields has one example).
    assert {role for role, _ in seen} == {"admin", "connector"}
    assert len(seen) >= (2 * EXAMPLES if request_class.DESCRIPTOR.fields else 2)
    # Healthy afterwards, and still answering correctly.
    async with grpc.aio.insecure_channel(service.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    ok = await tenant.connector.authz.CheckUser(
        authz_pb2.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=common_pb2.CHAT_KIND_DIRECT)
    )
    assert ok.decision == authz_pb2.DECISION_PAIRING_REQUIRED


def _message_class(full_name: str) -> type[Message]:
    for module in (authz_pb2, admin_pb2, common_pb2):
        for name, desc in module.DESCRIPTOR.message_types_by_name.items():
            if desc.full_name == full_name:
                cls: type[Message] = getattr(module, name)
                return cls
    raise LookupError(full_name)


# Invite codes, reported emails and phone numbers: shapes the generator above
# rarely hits, tried against every field of the RPCs that read them.
_LIFECYCLE_VALUES = [
    "ABCD-EFGH-JKMN-PQRS",
    "abcd efgh jkmn pqrs",
    "/start ABCDEFGHJKMNPQRS",
    "ABCD-EFGH-JKMN-PQR0",
    "ＡＢＣＤ-ＥＦＧＨ-ＪＫＭＮ-ＰＱＲＳ",  # fullwidth
    "inv_" + "D" * 22,
    "a@company.com",
    "a@b@company.com",
    "a@" + "b" * 300,
    "+84981234567",
    "+8498*",
    "\u202e+84981234567",
]


@pytest.mark.parametrize(
    ("method", "request_class"),
    [
        ("/authz.v1.AuthzService/RedeemInvite", authz_pb2.RedeemInviteRequest),
        ("/authz.v1.AuthzService/RequestPairing", authz_pb2.RequestPairingRequest),
        ("/authz.v1.AdminService/CreateInvite", admin_pb2.CreateInviteRequest),
        ("/authz.v1.AdminService/RevokeInvite", admin_pb2.RevokeInviteRequest),
        ("/authz.v1.AdminService/ListInvites", admin_pb2.ListInvitesRequest),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_lifecycle_rpcs_answer_tricky_values_with_a_defined_status(
    method: str, request_class: type[Message], tenant: Tenant, service: Service
) -> None:
    await tenant.channel("tg", owner_id="100", auto_approve=common_pb2.AutoApprove(phone_patterns=["+8498*"]))
    string_fields = [f.name for f in request_class.DESCRIPTOR.fields if f.type == FieldDescriptor.TYPE_STRING]

    def run() -> list[grpc.StatusCode]:
        codes = []
        with connect_sync(service.address, tenant.keys["admin"], retry=NO_RETRY) as client:
            for field in string_fields:
                for value in _LIFECYCLE_VALUES:
                    base = {"channel_id": "tg", "user_id": "42"} if "user_id" in string_fields else {}
                    request = request_class(**{**{k: v for k, v in base.items() if k != field}, field: value})
                    try:
                        client.channel.unary_unary(method, lambda m: m.SerializeToString(), None)(
                            request, timeout=10
                        )
                        codes.append(grpc.StatusCode.OK)
                    except grpc.RpcError as exc:
                        codes.append(exc.code())
        return codes

    codes = await asyncio.to_thread(run)
    assert len(codes) == len(string_fields) * len(_LIFECYCLE_VALUES)
    assert set(codes) <= ALLOWED, set(codes) - ALLOWED
