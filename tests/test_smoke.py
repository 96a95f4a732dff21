from __future__ import annotations

from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Tenant


async def test_pairing_required_for_unknown_user(tenant: Tenant) -> None:
    await tenant.channel()
    resp = await tenant.connector.authz.CheckUser(
        az.CheckUserRequest(channel_id="tg", user_id="42", chat_kind=cm.CHAT_KIND_DIRECT)
    )
    assert resp.decision == az.DECISION_PAIRING_REQUIRED
    assert resp.reason == "pairing_required"
