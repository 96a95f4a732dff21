"""What the adapters share: describing an error without anything secret,
paging through approvals, and the model-readable reason of a refusal."""

from __future__ import annotations

import grpc

from ..client import Client
from ..client.results import ApprovalInfo
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import common_pb2 as cm


def describe(exc: BaseException) -> str:
    """The error without anything secret: a gRPC status, or the exception type."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details() or ''}"
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        return f"{exc.code().name}: {exc.details() or ''}"
    return type(exc).__name__


async def list_approvals(
    client: Client, request: adm.ListApprovalsRequest, *, timeout: float | None = None
) -> list[cm.Approval]:
    """Every approval ``request`` matches, page after page (ListApprovals)."""
    found: list[cm.Approval] = []
    page = adm.ListApprovalsRequest()
    page.CopyFrom(request)
    while True:
        resp = await client.admin.ListApprovals(page, timeout=timeout)
        found.extend(resp.approvals)
        if not resp.next_page_token:
            return found
        page.page_token = resp.next_page_token


def refusal(tool_name: str, info: ApprovalInfo) -> str:
    """Why a tool call does not run, as the model reads it."""
    if info.status in ("denied", "blocked"):
        reason = f"tool call '{tool_name}' was denied by {info.resolved_by or 'an approver'}"
        return f"{reason}: {info.reason}" if info.reason else reason
    if info.status in ("pending", "expired"):
        return f"tool call '{tool_name}' was not approved in time"
    return f"tool call '{tool_name}' was not approved ({info.status})"
