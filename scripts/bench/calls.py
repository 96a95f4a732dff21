"""The requests of each scenario, pre-serialised once, and the checks of
the first answers before a scenario is measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .dataset import AGENT, CHANNEL, SEND_TARGET
from .load import Call, bearer
from .server import EMPTY

CHECK_USER = "/authz.v1.AuthzService/CheckUser"
EVALUATE_SEND = "/authz.v1.AuthzService/EvaluateSend"


def check_user_calls(
    pairs: Sequence[tuple[str, str]], keys: dict[str, str], consistent: bool
) -> tuple[Call, ...]:
    """One pre-serialised CheckUser per (tenant, user) of ``pairs``."""
    metadata = {t: bearer(k) for t, k in keys.items()}
    return tuple(
        Call(
            CHECK_USER,
            az.CheckUserRequest(
                channel_id=CHANNEL,
                user_id=user,
                chat_kind=cm.CHAT_KIND_DIRECT,
                text="hello",
                consistent=consistent,
            ).SerializeToString(),
            metadata[tenant],
        )
        for tenant, user in pairs
    )


def evaluate_send_calls(key: str) -> tuple[Call, ...]:
    request = az.EvaluateSendRequest(
        channel_id=CHANNEL, agent_id=AGENT, session_id="s1", origin="telegram:1", target=SEND_TARGET
    )
    return (Call(EVALUATE_SEND, request.SerializeToString(), bearer(key)),)


def empty_calls(key: str) -> tuple[Call, ...]:
    return (Call(EMPTY, b"", bearer(key)),)


async def preflight(address: str, calls: Sequence[Call], check: Callable[[bytes], str | None]) -> None:
    """The first calls of a scenario, checked before it is measured."""
    async with grpc.aio.insecure_channel(address) as channel:
        for call in calls[:3]:
            raw = await channel.unary_unary(call.method, None, None)(
                call.request, metadata=call.metadata, timeout=10
            )
            problem = check(raw)
            if problem:
                raise RuntimeError(f"preflight of {call.method} failed: {problem}")


def expect_ok(raw: bytes) -> str | None:
    return None


def expect_allow(raw: bytes) -> str | None:
    resp = az.CheckUserResponse.FromString(raw)
    if resp.decision != az.DECISION_ALLOW:
        return f"decision {az.Decision.Name(resp.decision)} ({resp.reason})"
    return None


def expect_send(raw: bytes) -> str | None:
    resp = az.EvaluateSendResponse.FromString(raw)
    return None if resp.allow else f"denied: {resp.reason}"
