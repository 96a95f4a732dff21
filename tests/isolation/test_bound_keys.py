"""A connector key bound to channels (issue #15): on every channel-scoped RPC,
another channel of its own tenant answers exactly as a made-up one."""

from __future__ import annotations

import secrets
from typing import Any

import asyncpg
import pytest

from authz_service.client import connect
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from tests.conftest import Service, Tenant

from . import admin_cases  # noqa: F401  (registers the AdminService cases)
from .sweep import CASES, Run, World, _digits, _tenant_b, snapshot


def _names_a_channel_or_approval(message: Any, seen: frozenset[str] = frozenset()) -> bool:
    for fd in message.fields:
        if fd.name in ("channel_id", "approval_id", "callback_payload"):
            return True
        nested = fd.message_type
        if (
            nested is not None
            and nested.full_name not in seen
            and _names_a_channel_or_approval(nested, seen | {message.full_name})
        ):
            return True
    return False


# Every AuthzService RPC whose request names a channel or an approval (from the
# descriptors, so a new one is swept): all of them are channel-scoped.
CHANNEL_SCOPED = [
    f"AuthzService.{m.name}"
    for m in az.DESCRIPTOR.services_by_name["AuthzService"].methods
    if _names_a_channel_or_approval(m.input_type)
]


def _outside_its_channels(
    before: dict[str, list[tuple[str, ...]]], after: dict[str, list[tuple[str, ...]]], channel: str
) -> list[str]:
    """Tables where the bound key changed what it must not. It may add audit
    events (a denied send is audited, as on a made-up channel) and count failed
    code guesses against itself and the tenant, never against A's channel."""
    changed = []
    for table, rows in before.items():
        if table == "audit_events":
            ok = set(rows) <= set(after[table])
        elif table == "attempt_limits":
            ok = [r for r in rows if f"code:channel:{channel}" in r] == [
                r for r in after[table] if f"code:channel:{channel}" in r
            ]
        else:
            ok = rows == after[table]
        if not ok:
            changed.append(table)
    return changed


def test_the_bound_key_sweep_covers_every_channel_scoped_rpc() -> None:
    assert {
        "AuthzService.RequestPairing",
        "AuthzService.ResolveApproval",
        "AuthzService.RedeemApproval",
    } <= set(CHANNEL_SCOPED)
    assert set(CHANNEL_SCOPED) <= set(CASES)


@pytest.mark.parametrize("rpc", CHANNEL_SCOPED)
async def test_a_bound_connector_key_sees_other_channels_as_made_up(
    rpc: str, world: World, service: Service, owner: asyncpg.Connection
) -> None:
    """A connector key of tenant A bound to another channel of A, in place of
    B's connector: A's channel and its approvals answer as made-up ones, and
    nothing of A's changes (B's other roles run alongside, as in the sweep)."""
    a = world.tenant
    own_channel = "bound" + secrets.token_hex(4)
    await a.channel(own_channel, owner_id=_digits())
    made = await a.admin.admin.CreateApiKey(
        adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="bound", channels=[own_channel])
    )
    a_before = await snapshot(owner, world.ids.tenant)
    b = await _tenant_b(service, world, "bound", owner)
    await b.tenant.connector.close()
    b.tenant = Tenant(b.tenant.tenant_id, b.tenant.admin, connect(service.address, made.secret),
                      b.tenant.approver, b.tenant.keys)  # fmt: skip
    made_up = world.ids.made_up(channel="ch" + secrets.token_hex(4))
    real, fake = Run(world.ids, world.private), Run(made_up, world.private)
    try:
        for run in (real, fake):
            await CASES[rpc](run, b)
    finally:
        await b.close()
    bound_calls = [(label, got) for label, got in real.outcomes if label == "connector"]
    assert bound_calls, "the case made no call with the connector key"
    for (label, got), (_, expected) in zip(real.outcomes, fake.outcomes, strict=True):
        assert got == expected, (
            f"{rpc} as {label}: A's objects answer the bound key differently from made-up ones"
        )
    changed = _outside_its_channels(a_before, await snapshot(owner, world.ids.tenant), world.ids.channel)
    await a.admin.admin.RevokeApiKey(adm.RevokeApiKeyRequest(key_id=made.key.key_id))
    assert not changed, f"{rpc}: the bound key changed {changed} of tenant A"
