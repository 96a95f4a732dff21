"""Client SDK: channels and stubs that carry an API key.

``connect_sync`` serves the CLI; ``connect`` (grpc.aio) serves connectors and
agent runtimes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from ..gen.authz.v1 import admin_pb2_grpc, authz_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"


def _metadata(api_key: str, extra: Any = None) -> list[tuple[str, str]]:
    md = [("authorization", f"Bearer {api_key}")]
    if extra:
        md.extend(extra)
    return md


class _KeyInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        details = details._replace(metadata=_metadata(self._api_key, details.metadata))
        return continuation(details, request)


class _AioKeyInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        details = details._replace(metadata=_metadata(self._api_key, details.metadata))
        return await continuation(details, request)


@dataclass
class SyncClient:
    channel: grpc.Channel
    authz: authz_pb2_grpc.AuthzServiceStub
    admin: admin_pb2_grpc.AdminServiceStub

    def close(self) -> None:
        self.channel.close()


@dataclass
class Client:
    channel: grpc.aio.Channel
    authz: authz_pb2_grpc.AuthzServiceAsyncStub
    admin: admin_pb2_grpc.AdminServiceAsyncStub

    async def close(self) -> None:
        await self.channel.close(None)


def connect_sync(address: str, api_key: str) -> SyncClient:
    channel = grpc.intercept_channel(grpc.insecure_channel(address), _KeyInterceptor(api_key))
    return SyncClient(
        channel, authz_pb2_grpc.AuthzServiceStub(channel), admin_pb2_grpc.AdminServiceStub(channel)
    )


def connect(address: str, api_key: str) -> Client:
    channel = grpc.aio.insecure_channel(address, interceptors=[_AioKeyInterceptor(api_key)])  # type: ignore[list-item]
    return Client(
        channel,
        authz_pb2_grpc.AuthzServiceStub(channel),
        admin_pb2_grpc.AdminServiceStub(channel),
    )
