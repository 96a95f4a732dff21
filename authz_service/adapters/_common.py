"""What the adapters share: describing an error without anything secret."""

from __future__ import annotations

import grpc


def describe(exc: BaseException) -> str:
    """The error without anything secret: a gRPC status, or the exception type."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details() or ''}"
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        return f"{exc.code().name}: {exc.details() or ''}"
    return type(exc).__name__
