"""Time-limited pairings and their renewal (issue #5, pairing lifecycle).

A channel's ``pairing_ttl_seconds`` gives each approved pairing an expiry.
Once it has passed, the user is asked to pair again: RequestPairing creates a
fresh request (never ALREADY_ALLOWED), the owner is told it is a renewal, and
approving it sets a new expiry from the channel's current policy.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Dsns, Tenant, connect_as_tenant, eventually
from .notice_helpers import ack, watching
from .pairing_helpers import OWNER, button, check, events, pair, press


async def expiry(t: Tenant, user: str = "42") -> datetime | None:
    users = (await t.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))).users
    [subject] = [u for u in users if u.user_id == user]
    return subject.expires_at.ToDatetime().replace(tzinfo=UTC) if subject.HasField("expires_at") else None


async def expire_subject(dsns: Dsns, tenant_id: str, user: str = "42") -> None:
    conn = await connect_as_tenant(dsns.owner, tenant_id)
    try:
        await conn.execute(
            "UPDATE subjects SET expires_at = now() - interval '1 second' WHERE tenant_id = $1 AND user_id = $2",
            tenant_id, user,
        )  # fmt: skip
    finally:
        await conn.close()


async def test_pairing_expires_on_its_own_and_is_renewed(tenant: Tenant) -> None:
    """A one-second pairing lapses on the database clock; the user asks again,
    the owner sees a renewal, and approving sets the new policy's expiry."""
    await tenant.channel(owner_id=OWNER, pairing_ttl_seconds=1)
    first = await pair(tenant)
    await press(tenant, button(first, cm.APPROVAL_ACTION_APPROVE))
    old_expiry = await expiry(tenant)
    assert old_expiry is not None

    async def lapsed() -> bool:
        return (await check(tenant, consistent=True)).decision == az.DECISION_PAIRING_REQUIRED

    await eventually(lapsed)
    await tenant.channel(owner_id=OWNER, pairing_ttl_seconds=3600)

    renewal = await pair(tenant)
    assert renewal.outcome == az.PAIRING_OUTCOME_CREATED and renewal.created
    assert renewal.approval_id != first.approval_id and renewal.code != first.code
    assert renewal.notification.text.startswith("🔁 Pairing renewal on tg")
    assert "previous pairing expired" in renewal.notification.text
    assert renewal.code in renewal.notification.text
    # Still not allowed while the renewal is pending.
    assert (await check(tenant, consistent=True)).decision == az.DECISION_PAIRING_REQUIRED

    done = await press(tenant, button(renewal, cm.APPROVAL_ACTION_APPROVE))
    assert done.approval.status == cm.APPROVAL_STATUS_APPROVED
    assert done.requester_text == "✅ Paired! You can chat now."
    new_expiry = await expiry(tenant)
    assert new_expiry is not None and new_expiry > old_expiry + timedelta(minutes=59)
    allowed = await check(tenant)
    assert (allowed.decision, allowed.reason) == (az.DECISION_ALLOW, "paired")

    requested = await events(tenant, "pairing.requested")
    assert [e.approval_id for e in requested] == [first.approval_id, renewal.approval_id]
    assert '"renewal": true' not in requested[0].details_json
    assert '"renewal": true' in requested[1].details_json


async def test_unexpired_pairing_is_already_allowed(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER, pairing_ttl_seconds=3600)
    first = await pair(tenant)
    await press(tenant, button(first, cm.APPROVAL_ACTION_APPROVE))
    again = await pair(tenant)
    assert again.outcome == az.PAIRING_OUTCOME_ALREADY_ALLOWED and not again.approval_id
    assert len(await events(tenant, "pairing.requested")) == 1


async def test_first_request_is_no_renewal(tenant: Tenant) -> None:
    await tenant.channel(owner_id=OWNER, pairing_ttl_seconds=3600)
    first = await pair(tenant)
    assert first.notification.text.startswith("🔔 Pairing request on tg")
    assert "expired" not in first.notification.text


async def test_expired_allowlisting_is_renewed_by_pairing(tenant: Tenant, dsns: Dsns) -> None:
    """An admin allowlisting that lapsed (e.g. an invite on a time-limited
    channel) is renewed the same way; the renewal's repeat is EXISTING."""
    await tenant.channel(owner_id=OWNER, pairing_ttl_seconds=3600)
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="42"))
    await expire_subject(dsns, tenant.tenant_id)
    renewal = await pair(tenant)
    assert renewal.created and renewal.notification.text.startswith("🔁 Pairing renewal")
    repeat = await pair(tenant)
    assert repeat.outcome == az.PAIRING_OUTCOME_EXISTING and repeat.approval_id == renewal.approval_id

    # Denying the renewal leaves the user out; they may ask again later.
    denied = await press(tenant, button(renewal, cm.APPROVAL_ACTION_DENY))
    assert denied.approval.status == cm.APPROVAL_STATUS_DENIED
    assert (await check(tenant, consistent=True)).decision == az.DECISION_PAIRING_REQUIRED
    assert (await pair(tenant)).created


async def test_renewal_on_a_channel_without_ttl_never_expires_again(tenant: Tenant, dsns: Dsns) -> None:
    await tenant.channel(owner_id=OWNER, pairing_ttl_seconds=3600)
    first = await pair(tenant)
    await press(tenant, button(first, cm.APPROVAL_ACTION_APPROVE))
    await expire_subject(dsns, tenant.tenant_id)
    await tenant.channel(owner_id=OWNER, pairing_ttl_seconds=0)
    renewal = await pair(tenant)
    await press(tenant, button(renewal, cm.APPROVAL_ACTION_APPROVE))
    assert await expiry(tenant) is None
    assert (await check(tenant)).decision == az.DECISION_ALLOW


async def test_every_approvers_copy_says_it_is_a_renewal(tenant: Tenant, dsns: Dsns) -> None:
    """The outbox's copies (every approver, not only the owner's first
    notification) say the request renews a lapsed pairing; a first request's
    do not."""
    await tenant.channel(owner_id=OWNER, approvers=["200"], pairing_ttl_seconds=3600)
    async with watching(tenant.connector) as copies:
        first = await pair(tenant)
        for c in await copies.take(2):
            assert c.text.startswith("🔔 Pairing request on tg") and "previous pairing" not in c.text
            await ack(tenant.connector, c)
        await press(tenant, button(first, cm.APPROVAL_ACTION_APPROVE))
        for c in await copies.take(2):  # the outcome, on both
            await ack(tenant.connector, c)
        await expire_subject(dsns, tenant.tenant_id)

        renewal = await pair(tenant)
        assert renewal.created
        got = await copies.take(2)
        assert [c.approver_id for c in got] == [OWNER, "200"]
        for c in got:
            assert c.approval_id == renewal.approval_id
            assert c.text.startswith("🔁 Pairing renewal on tg") and "previous pairing expired" in c.text
