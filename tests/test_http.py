"""The HTTP/JSON API (issue #19, api/http.py): every RPC of both services is
served over the Connect protocol by the same servicers as gRPC, with the same
keys, roles, validation and status codes. A real aiohttp client calls the
session's real server over both transports and compares the answers."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import descriptor, json_format

from authz_service.api.http import HTTP_STATUS, connect_code
from authz_service.api.http_openapi import openapi_document
from authz_service.config import ConfigError, Settings
from authz_service.gen.authz.v1 import admin_pb2, authz_pb2
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Service, Tenant, eventually, rpc_error
from .pairing_helpers import OWNER, button, check, pair

SERVICES = (
    authz_pb2.DESCRIPTOR.services_by_name["AuthzService"],
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
)
METHODS: list[descriptor.MethodDescriptor] = [m for s in SERVICES for m in s.methods]
OPENAPI_FILE = Path(__file__).parent.parent / "docs" / "http-api.openapi.json"


class Http:
    """Calls the service's HTTP port as a curl user would: POST, a JSON body, a bearer key."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def call(
        self, rpc: str, body: object, key: str | None = None, content_type: str = "application/json"
    ) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.session.post(
            f"{self.base}/{rpc}", data=data, headers=_headers(key, content_type)
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    async def stream(self, rpc: str, body: object, key: str) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """The enveloped frames of a server stream: (flags, JSON), the end frame last."""
        payload = json.dumps(body).encode()
        async with self.session.post(
            f"{self.base}/{rpc}",
            data=struct.pack(">BI", 0, len(payload)) + payload,
            headers=_headers(key, "application/connect+json"),
        ) as resp:
            assert resp.status == 200, await resp.text()
            while True:
                head = await resp.content.readexactly(5)
                flags, length = struct.unpack(">BI", head)
                yield flags, json.loads(await resp.content.readexactly(length))
                if flags & 0x02:
                    return


def _headers(key: str | None, content_type: str) -> dict[str, str]:
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return headers


@pytest.fixture
async def http(service: Service) -> AsyncIterator[Http]:
    assert service.running.http is not None
    async with aiohttp.ClientSession() as session:
        yield Http(session, f"http://127.0.0.1:{service.running.http.port}")


def _path(method: descriptor.MethodDescriptor) -> str:
    return f"{method.containing_service.full_name}/{method.name}"


def _empty_body(method: descriptor.MethodDescriptor) -> tuple[bytes, str]:
    if method.server_streaming:
        return struct.pack(">BI", 0, 2) + b"{}", "application/connect+json"
    return b"{}", "application/json"


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
async def test_every_rpc_is_served_and_refuses_a_call_without_a_key(
    http: Http, method: descriptor.MethodDescriptor
) -> None:
    body, content_type = _empty_body(method)
    status, answer = await http.call(_path(method), body, content_type=content_type)
    assert (status, answer["code"]) == (401, "unauthenticated"), (method.name, status, answer)
    assert "authorization: Bearer" in answer["message"]


async def test_an_unknown_procedure_is_404(http: Http, tenant: Tenant) -> None:
    async with http.session.post(
        f"{http.base}/authz.v1.AuthzService/NoSuchCall",
        data=b"{}",
        headers=_headers(tenant.keys["connector"], "application/json"),
    ) as resp:
        assert resp.status == 404


async def test_check_user_over_http_answers_as_grpc(http: Http, tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER, dm_policy=cm.DM_POLICY_PAIRING)
    request = az.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=cm.CHAT_KIND_DIRECT, text="hi")
    status, answer = await http.call(
        "authz.v1.AuthzService/CheckUser", json_format.MessageToDict(request), tenant.keys["connector"]
    )
    assert status == 200, answer
    want = json_format.MessageToDict(await tenant.connector.authz.CheckUser(request))
    assert answer.pop("traceId") and want.pop("traceId")
    assert answer == want
    assert answer["decision"] == "DECISION_PAIRING_REQUIRED"


async def test_binary_protobuf_bodies_are_served_too(http: Http, tenant: Tenant) -> None:
    await tenant.channel()
    request = az.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=cm.CHAT_KIND_DIRECT)
    async with http.session.post(
        f"{http.base}/authz.v1.AuthzService/CheckUser",
        data=request.SerializeToString(),
        headers=_headers(tenant.keys["connector"], "application/proto"),
    ) as resp:
        assert (resp.status, resp.content_type) == (200, "application/proto")
        answer = az.CheckUserResponse.FromString(await resp.read())
    want = await tenant.connector.authz.CheckUser(request)
    assert (answer.decision, answer.reason) == (want.decision, want.reason)


async def test_pairing_requested_and_approved_over_http_lets_the_user_through(
    http: Http, tenant: Tenant
) -> None:
    await tenant.channel(owner_id=OWNER, dm_policy=cm.DM_POLICY_PAIRING)
    status, requested = await http.call(
        "authz.v1.AuthzService/RequestPairing",
        {"channelId": "tg", "userId": "42", "displayName": "Alice", "firstMessage": "hi"},
        tenant.keys["connector"],
    )
    assert status == 200, requested
    # gRPC sees the very request HTTP made (RequestPairing returns the live one).
    again = await pair(tenant)
    assert not again.created and requested["created"] is True
    assert (requested["code"], requested["approvalId"]) == (again.code, again.approval_id)
    payload = next(
        b["callbackPayload"]
        for b in requested["notification"]["buttons"]
        if b["action"] == "APPROVAL_ACTION_APPROVE"
    )

    status, resolved = await http.call(
        "authz.v1.AuthzService/ResolveApproval",
        {"callbackPayload": payload, "actorId": OWNER},
        tenant.keys["connector"],
    )
    assert status == 200, resolved
    assert resolved["approval"]["status"] == "APPROVAL_STATUS_APPROVED"
    assert (await check(tenant)).decision == az.DECISION_ALLOW
    # A second press is refused over both transports alike.
    status, repeat = await http.call(
        "authz.v1.AuthzService/ResolveApproval",
        {"callbackPayload": payload, "actorId": OWNER},
        tenant.keys["connector"],
    )
    err = await rpc_error(
        tenant.connector.authz.ResolveApproval(
            az.ResolveApprovalRequest(callback_payload=payload, actor_id=OWNER)
        )
    )
    assert (status, repeat) == (
        HTTP_STATUS[err.code()],
        {"code": connect_code(err.code()), "message": err.details()},
    )


async def test_a_bad_field_is_400_naming_the_field(http: Http, tenant: Tenant) -> None:
    await tenant.channel()
    key = tenant.keys["connector"]
    status, answer = await http.call(
        "authz.v1.AuthzService/CheckUser",
        {"channelId": "tg", "userId": "42", "chatKind": "CHAT_KIND_DIRECT", "groupId": "g1"},
        key,
    )
    assert (status, answer["code"]) == (400, "invalid_argument")
    assert "group_id" in answer["message"]
    # The same validation as gRPC, word for word.
    err = await rpc_error(
        tenant.connector.authz.CheckUser(
            az.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=cm.CHAT_KIND_DIRECT, group_id="g1")
        )
    )
    assert answer["message"] == err.details()
    # A field the proto does not have is refused, not dropped.
    status, answer = await http.call("authz.v1.AuthzService/CheckUser", {"chanelId": "tg"}, key)
    assert (status, answer["code"]) == (400, "invalid_argument")
    assert "chanelId" in answer["message"]
    # So is a wrong type or an unknown enum name.
    status, answer = await http.call(
        "authz.v1.AuthzService/CheckUser", {"channelId": "tg", "chatKind": "CHAT_KIND_NOPE"}, key
    )
    assert (status, answer["code"]) == (400, "invalid_argument")
    assert "chatKind" in answer["message"] or "CHAT_KIND_NOPE" in answer["message"]
    # Bodies that are not one JSON object are refused as such, never a 500.
    for body in (b"[]", b'"x"', b"nul", b"\xff", b"[" * 100_000):
        status, answer = await http.call("authz.v1.AuthzService/CheckUser", body, key)
        assert (status, answer["code"]) == (400, "invalid_argument"), body[:10]


async def test_roles_are_checked_as_for_grpc(http: Http, tenant: Tenant) -> None:
    status, answer = await http.call("authz.v1.AdminService/ListChannels", {}, tenant.keys["connector"])
    err = await rpc_error(tenant.connector.admin.ListChannels(admin_pb2.ListChannelsRequest()))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (status, answer) == (403, {"code": "permission_denied", "message": err.details()})
    status, answer = await http.call("authz.v1.AdminService/ListChannels", {}, "authz_not_a_real_key")
    assert (status, answer["code"]) == (401, "unauthenticated")


async def test_content_type_and_size_are_checked(http: Http, tenant: Tenant) -> None:
    key = tenant.keys["connector"]
    status, _ = await http.call("authz.v1.AuthzService/CheckUser", b"{}", key, content_type="text/plain")
    assert status == 415
    async with http.session.post(
        f"{http.base}/authz.v1.AuthzService/CheckUser",
        data=b'{"text": "' + b"x" * (300 * 1024) + b'"}',
        headers=_headers(key, "application/json"),
    ) as resp:
        assert resp.status == 413


async def test_a_watch_stream_delivers_the_decision(http: Http, tenant: Tenant, service: Service) -> None:
    streams = service.running.streams
    assert streams is not None
    before = streams.open_count
    await tenant.channel(owner_id=OWNER, dm_policy=cm.DM_POLICY_PAIRING)
    requested = await pair(tenant)
    seen: list[dict[str, Any]] = []
    pending = asyncio.Event()

    async def read() -> None:
        async for flags, approval in http.stream(
            "authz.v1.AdminService/WatchApprovals", {}, tenant.keys["approver"]
        ):
            assert flags == 0, approval  # no end frame: the watch runs until we hang up
            seen.append(approval)
            assert streams.open_count == before + 1  # this watch holds a slot
            pending.set()
            if approval["status"] != "APPROVAL_STATUS_PENDING":
                return  # hanging up ends the stream on the server

    reader = asyncio.create_task(read())
    async with asyncio.timeout(10):
        await asyncio.wait([reader, asyncio.create_task(pending.wait())], return_when=asyncio.FIRST_COMPLETED)
        assert seen and seen[0]["approvalId"] == requested.approval_id, seen
        assert seen[0]["status"] == "APPROVAL_STATUS_PENDING"
        await tenant.connector.authz.ResolveApproval(
            az.ResolveApprovalRequest(
                callback_payload=button(requested, cm.APPROVAL_ACTION_APPROVE), actor_id=OWNER
            )
        )
        await reader
    assert seen[-1]["approvalId"] == requested.approval_id
    assert seen[-1]["status"] == "APPROVAL_STATUS_APPROVED"
    assert seen[-1]["resolvedBy"] == f"telegram:{OWNER}"

    async def slot_freed() -> bool:
        return streams.open_count == before

    await eventually(slot_freed)  # the hang-up ended the watch on the server


async def test_revoking_the_key_ends_an_http_stream_with_an_error_frame(http: Http, tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER, dm_policy=cm.DM_POLICY_PAIRING)
    await pair(tenant)
    created = await tenant.admin.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(role=admin_pb2.ROLE_APPROVER, name="watcher")
    )
    frames: list[tuple[int, dict[str, Any]]] = []
    async with asyncio.timeout(10):
        async for flags, body in http.stream("authz.v1.AdminService/WatchApprovals", {}, created.secret):
            frames.append((flags, body))
            if len(frames) == 1:
                await tenant.admin.admin.RevokeApiKey(
                    admin_pb2.RevokeApiKeyRequest(key_id=created.key.key_id)
                )
    assert [f for f, _ in frames] == [0, 2]
    assert frames[-1][1]["error"]["code"] == "unauthenticated"


async def test_a_stream_speaks_binary_protobuf_when_asked(http: Http, tenant: Tenant) -> None:
    """``application/connect+proto``: the request and every message in binary, the end frame
    still JSON (Connect). The edge reads WatchChanges so (client.changes_http)."""
    await tenant.channel(owner_id=OWNER, dm_policy=cm.DM_POLICY_PAIRING)
    requested = await pair(tenant)
    request = admin_pb2.WatchApprovalsRequest().SerializeToString()
    async with http.session.post(
        f"{http.base}/authz.v1.AdminService/WatchApprovals",
        data=struct.pack(">BI", 0, len(request)) + request,
        headers=_headers(tenant.keys["approver"], "application/connect+proto"),
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/connect+proto"
        async with asyncio.timeout(10):
            flags, length = struct.unpack(">BI", await resp.content.readexactly(5))
            first = cm.Approval.FromString(await resp.content.readexactly(length))
    assert flags == 0
    assert first.approval_id == requested.approval_id
    status, answer = await http.call(
        "authz.v1.AdminService/WatchApprovals", request, tenant.keys["approver"], content_type="text/plain"
    )
    assert status == 415 and "application/connect+proto" in answer["message"]


async def test_a_stream_refused_before_it_starts_is_an_http_error(http: Http, tenant: Tenant) -> None:
    status, answer = await http.call(
        "authz.v1.AuthzService/WatchApproval",
        struct.pack(">BI", 0, 20) + b'{"approvalId": "x!"}',
        tenant.keys["approver"],
        content_type="application/connect+json",
    )
    assert (status, answer["code"]) == (400, "invalid_argument")
    assert "approval_id" in answer["message"]


async def test_openapi_is_served_derived_from_the_descriptors_and_in_docs(http: Http) -> None:
    async with http.session.get(f"{http.base}/openapi.json") as resp:
        assert resp.status == 200
        served = await resp.json()
    assert served == openapi_document(SERVICES)
    assert {f"/{_path(m)}" for m in METHODS} == set(served["paths"])
    request = served["components"]["schemas"]["authz.v1.CheckUserRequest"]["properties"]
    assert request["channelId"] == {"type": "string"}
    assert request["chatKind"] == {"$ref": "#/components/schemas/authz.v1.ChatKind"}
    assert json.loads(OPENAPI_FILE.read_text()) == served, (
        "docs/http-api.openapi.json is stale: python -m authz_service.api.http_openapi > docs/http-api.openapi.json"
    )


def test_http_listen_is_off_unless_set_and_validated() -> None:
    base = {"AUTHZ_HOME": "/nonexistent", "AUTHZ_SECRET_KEY": "k" * 32, "AUTHZ_OPERATOR_KEY": "o" * 32}
    assert Settings.from_env(base).http_listen is None
    assert Settings.from_env({**base, "AUTHZ_HTTP_LISTEN": "0.0.0.0:8080"}).http_listen == "0.0.0.0:8080"
    with pytest.raises(ConfigError, match="AUTHZ_HTTP_LISTEN"):
        Settings.from_env({**base, "AUTHZ_HTTP_LISTEN": "8080"})


async def test_the_callers_trace_context_is_honoured(http: Http, tenant: Tenant) -> None:
    """The trace id comes from the traceparent header, as from gRPC metadata (api/rpc.py)."""
    await tenant.channel()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with http.session.post(
        f"{http.base}/authz.v1.AuthzService/CheckUser",
        json={"channelId": "tg", "userId": "42", "chatKind": "CHAT_KIND_DIRECT"},
        headers={
            "Authorization": f"Bearer {tenant.keys['connector']}",
            "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
        },
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["traceId"] == trace_id
