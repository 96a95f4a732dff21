"""Tenant isolation sweep (issue #8): every RPC, called by tenant B against tenant A's objects.

The world, the harness and the cases live in ``sweep.py`` and ``admin_cases.py``.
"""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import pytest

from authz_service.gen.authz.v1 import admin_pb2 as adm
from tests.conftest import Service

from . import admin_cases  # noqa: F401  (registers the AdminService cases)
from .sweep import CASES, METHODS, VARIANTS, Run, World, _tenant_b, snapshot


def test_every_rpc_of_both_services_has_a_sweep_case() -> None:
    assert len(METHODS) > 30
    missing = sorted(set(METHODS) - set(CASES))
    stale = sorted(set(CASES) - set(METHODS))
    assert not missing, f"RPCs without a tenant isolation case: {missing}"
    assert not stale, f"cases for RPCs that do not exist: {stale}"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rpc", METHODS)
async def test_other_tenant_learns_nothing_and_changes_nothing(
    rpc: str, variant: str, world: World, service: Service, owner: asyncpg.Connection
) -> None:
    sweep = CASES.get(rpc)
    assert sweep is not None, f"no tenant isolation case for {rpc}: add one to CASES"
    a_before = await snapshot(owner, world.ids.tenant)
    b = await _tenant_b(service, world, variant, owner)
    # In the shared variant B owns a channel of that name: it is B's to see, not a leak.
    private = world.private - {world.ids.channel} if variant == "shared" else world.private
    made_up = world.ids.made_up(
        channel=world.ids.channel if variant == "shared" else "ch" + secrets.token_hex(4)
    )
    real, fake = Run(world.ids, private), Run(made_up, private)
    try:
        for run in (real, fake):
            await b.prepare()
            await sweep(run, b)
    finally:
        await b.close()
    assert real.outcomes, "the case made no call"
    assert len(real.outcomes) == len(fake.outcomes)
    for (label, got), (_, expected) in zip(real.outcomes, fake.outcomes, strict=True):
        assert got == expected, f"{rpc} as {label}: A's objects answer differently from made-up ones"
    assert await snapshot(owner, world.ids.tenant) == a_before, f"{rpc} ({variant}) changed tenant A's rows"


async def test_injected_notifications_do_reach_the_owning_tenant(
    world: World, owner: asyncpg.Connection
) -> None:
    """The control for the WatchApprovals case: the notification it injects for
    A's approval does wake A's own watcher, so B's silence is isolation."""
    call = world.tenant.approver.admin.WatchApprovals(adm.WatchApprovalsRequest())
    try:
        async with asyncio.timeout(10):
            stream = call.__aiter__()
            pending = {(await anext(stream)).approval_id for _ in range(2)}
            assert pending == {world.ids.pairing, world.ids.tool}
            await owner.execute(
                "SELECT pg_notify('authz_approvals', $1)", f"{world.ids.tenant} {world.ids.tool}"
            )
            assert (await anext(stream)).approval_id == world.ids.tool
    finally:
        call.cancel()


# --- row-level security ---------------------------------------------------------------------
