"""A gRPC proxy in front of the real service that a test can make fail.

Every call is forwarded as it came (method, serialized request, the
``authorization`` and ``traceparent`` metadata) to the real service, and the
service's answer or status goes back, so what a client sees through the proxy
is what the service said, except where the test asks for a fault:

* ``fail(method, n, lost_answer=False)``: the next ``n`` attempts of a unary
  method fail with UNAVAILABLE, before reaching the service (it was down), or
  with ``lost_answer=True`` after it answered (the answer was lost on the way
  back: the service acted, the client cannot know).
* ``break_streams()``: every open stream ends at once with UNAVAILABLE, as when
  the service restarts under a watch.

``attempts[method]`` counts the calls that reached the proxy, by full method
path (``/authz.v1.AuthzService/CheckUser``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc

from authz_service.gen.authz.v1 import admin_pb2, authz_pb2

_FORWARDED = ("authorization", "traceparent")
_TIMEOUT = 10.0


def _streaming_methods() -> frozenset[str]:
    return frozenset(
        f"/{service.full_name}/{method.name}"
        for module in (authz_pb2, admin_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if method.server_streaming
    )


class FaultProxy:
    """``async with FaultProxy(upstream) as proxy``; clients connect to ``proxy.address``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.address = ""
        self.attempts: Counter[str] = Counter()
        self._faults: dict[str, tuple[int, bool]] = {}
        self._streaming = _streaming_methods()
        self._streams: set[asyncio.Task[Any]] = set()
        self._channel: grpc.aio.Channel | None = None
        self._server: grpc.aio.Server | None = None

    async def __aenter__(self) -> FaultProxy:
        self._channel = grpc.aio.insecure_channel(self.upstream)
        self._server = grpc.aio.server(handlers=[_Handler(self)])
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
        if self._channel is not None:
            await self._channel.close(None)

    def fail(self, method: str, n: int = 1, *, lost_answer: bool = False) -> None:
        self._faults[method] = (n, lost_answer)

    def break_streams(self) -> None:
        for task in self._streams:
            task.cancel()

    def _fault(self, method: str) -> bool | None:
        """None: no fault for this attempt; else whether the answer is lost (after forwarding)."""
        left, lost_answer = self._faults.get(method, (0, False))
        if left <= 0:
            return None
        self._faults[method] = (left - 1, lost_answer)
        return lost_answer

    @staticmethod
    def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> list[tuple[str, str | bytes]]:
        return [(k, v) for k, v in context.invocation_metadata() or () if k in _FORWARDED]

    async def unary(self, method: str, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self.attempts[method] += 1
        lost_answer = self._fault(method)
        if lost_answer is False:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: service unreachable")
        assert self._channel is not None
        call = self._channel.unary_unary(method, None, None)
        try:
            answer: bytes = await call(request, metadata=self._metadata(context), timeout=_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
        if lost_answer:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: answer lost")
        return answer

    async def stream(
        self, method: str, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        self.attempts[method] += 1
        assert self._channel is not None
        call = self._channel.unary_stream(method, None, None)(request, metadata=self._metadata(context))
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for message in call:
                    queue.put_nowait(message)
                queue.put_nowait(None)
            except BaseException as exc:  # the upstream's error, or break_streams()
                queue.put_nowait(exc)
                raise

        task = asyncio.create_task(pump())
        self._streams.add(task)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, grpc.aio.AioRpcError):
                    await context.abort(item.code(), item.details() or "")
                if isinstance(item, BaseException):
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: stream broken")
                assert isinstance(item, bytes)
                yield item
        finally:
            self._streams.discard(task)
            call.cancel()
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


class _Handler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Raw bytes both ways (no serializers): the proxy never decodes a message."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        # partial keeps the coroutine / async generator function visible to grpc.aio.
        if method in self.proxy._streaming:
            return grpc.unary_stream_rpc_method_handler(functools.partial(self.proxy.stream, method))
        return grpc.unary_unary_rpc_method_handler(functools.partial(self.proxy.unary, method))
