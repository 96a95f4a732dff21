"""Shared by the edge tests (issue #21): checks through a client, and the
service's own count of the decisions it was asked for."""

from __future__ import annotations

from authz_service.client import Client, EdgeCache
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.server import RunningServer

from .conftest import eventually

USER = "4242"


def served(running: RunningServer) -> int:
    """CheckUser and EvaluateSend calls the service answered (each looks its
    state up in the service's cache once, hit or miss)."""
    return running.cache.hits + running.cache.misses


async def check(client: Client, user: str = USER, **fields: object) -> az.CheckUserResponse:
    request = az.CheckUserRequest(channel_id="tg", user_id=user, chat_kind=cm.CHAT_KIND_DIRECT)
    for name, value in fields.items():
        setattr(request, name, value)
    response: az.CheckUserResponse = await client.authz.CheckUser(request)
    return response


async def healthy(client: Client) -> EdgeCache:
    """The client's edge cache, once its change stream is up."""
    cache = client.edge_cache
    assert cache is not None

    async def up() -> bool:
        return cache.healthy

    await eventually(up)
    return cache
