"""Reading a paged admin list to its end.

``ListUsers`` answers at most one page: ``page_size`` users, and never more
than a few MiB even without ``page_size``, with a ``next_page_token`` when more
remain. ``QueryAudit`` pages by ``next_after_event_id``. A caller that wants
*every* user (``authz export``, ``authz doctor``, the console's Doctor page, the
PraisonAI adapter) or every matching event goes through these helpers, so none
of them stops at the first page.

Each helper takes ``call(method, request)``: the RPC's name on ``AdminService``
and its request, returning (awaitable) the response. The SDK's async client,
the console's in-process servicers and the CLI's blocking stub (wrapped) all
fit it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from google.protobuf.message import Message

from ..gen.authz.v1 import admin_pb2 as adm

Call = Callable[[str, Message], Awaitable[Any]]
"""``call("ListUsers", request)``: one unary AdminService call."""


async def all_users(call: Call, request: adm.ListUsersRequest) -> list[adm.Subject]:
    """Every user ``request`` matches (its filter and query), page after page."""
    req = adm.ListUsersRequest()
    req.CopyFrom(request)
    users: list[adm.Subject] = []
    while True:
        resp: adm.ListUsersResponse = await call("ListUsers", req)
        users.extend(resp.users)
        if not resp.next_page_token or not resp.users:
            return users
        req.page_token = resp.next_page_token


async def audit_events(
    call: Call, request: adm.QueryAuditRequest, *, max_pages: int | None = None
) -> AsyncGenerator[adm.AuditEvent, None]:
    """The events ``request`` matches, oldest first, until the trail ends
    (``next_after_event_id`` empty) or after ``max_pages`` pages."""
    req = adm.QueryAuditRequest()
    req.CopyFrom(request)
    pages = 0
    while max_pages is None or pages < max_pages:
        resp: adm.QueryAuditResponse = await call("QueryAudit", req)
        pages += 1
        for event in resp.events:
            yield event
        if not resp.next_after_event_id:
            return
        req.after_event_id = resp.next_after_event_id
