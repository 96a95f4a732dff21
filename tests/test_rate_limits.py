"""Rate limits on CheckUser over real gRPC and PostgreSQL: per-user and
per-group token buckets, counted in the database so that two service
processes draw on the same buckets.

Every limit here refills one token an hour, and the assertions only count
tokens a test takes within seconds: no assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from authz_service.client import Client, connect
from authz_service.config import Settings
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.server import start_server
from authz_service.store.db import Database

from .conftest import SECRET_KEY, Dsns, Service, Tenant, connect_as_tenant, eventually, rpc_error
from .replicas import Replica, two_replicas

LIMITED = az.DECISION_RATE_LIMITED
ALLOW = az.DECISION_ALLOW


def open_policy(**policy: Any) -> cm.ChannelPolicy:
    """Direct and group messages allowed (no mention needed), and ``policy``."""
    return cm.ChannelPolicy(
        dm_policy=cm.DM_POLICY_OPEN, group_policy=cm.GROUP_POLICY_OPEN, require_mention=False, **policy
    )


async def configure(t: Tenant, **policy: Any) -> None:
    """Channel "tg" with ``open_policy(**policy)``."""
    await t.admin.admin.SetChannel(
        adm.SetChannelRequest(channel_id="tg", platform=cm.PLATFORM_TELEGRAM, policy=open_policy(**policy))
    )


def hourly(burst: int) -> cm.RateLimit:
    """``burst`` at once, then one an hour: nothing refills while a test runs."""
    return cm.RateLimit(max_messages_per_hour=1, burst=burst)


async def dm(client: Client, user: str = "42", channel: str = "tg") -> az.CheckUserResponse:
    return await client.authz.CheckUser(
        az.CheckUserRequest(channel_id=channel, user_id=user, chat_kind=cm.CHAT_KIND_DIRECT, text="hi")
    )


async def grp(client: Client, user: str = "42", group: str = "-100") -> az.CheckUserResponse:
    return await client.authz.CheckUser(
        az.CheckUserRequest(
            channel_id="tg", user_id=user, chat_kind=cm.CHAT_KIND_GROUP, group_id=group, mentioned=True
        )
    )


def outcome(resp: az.CheckUserResponse) -> tuple[int, str]:
    return resp.decision, resp.reason


async def test_burst_then_rate_limited_with_retry_after(service: Service, tenant: Tenant) -> None:
    await configure(tenant, rate_limit=hourly(3), agent_id="support")
    cache = service.running.cache
    hits = cache.hits
    for _ in range(3):
        assert outcome(await dm(tenant.connector)) == (ALLOW, "dm_open")
    refused = await dm(tenant.connector)
    assert outcome(refused) == (LIMITED, "user_rate_limited")
    # One token an hour: the next one is at most an hour away, and more than a minute.
    assert 60 < refused.retry_after_seconds <= 3600
    assert (refused.text, refused.agent_id) == ("", "")  # silent, routed nowhere
    assert cache.hits > hits  # answers from the cache still went through the buckets
    # Each user has a bucket of their own.
    assert outcome(await dm(tenant.connector, user="43")) == (ALLOW, "dm_open")
    assert (await dm(tenant.connector)).decision == LIMITED


async def test_group_limit_is_shared_by_the_groups_senders_only(tenant: Tenant) -> None:
    await configure(tenant, groups={"-100": cm.GroupRule(rate_limit=hourly(2))})
    assert (await grp(tenant.connector, user="1")).decision == ALLOW
    assert (await grp(tenant.connector, user="2")).decision == ALLOW
    refused = await grp(tenant.connector, user="3")
    assert outcome(refused) == (LIMITED, "group_rate_limited")
    assert 60 < refused.retry_after_seconds <= 3600
    # Another group, and direct messages, are not limited by that rule.
    for _ in range(4):
        assert (await grp(tenant.connector, user="3", group="-200")).decision == ALLOW
        assert (await dm(tenant.connector, user="1")).decision == ALLOW


async def test_star_rule_gives_each_group_a_bucket_of_its_own(tenant: Tenant) -> None:
    await configure(tenant, groups={"*": cm.GroupRule(rate_limit=hourly(1))})
    for group in ("-100", "-200", "-300"):
        assert (await grp(tenant.connector, user="1", group=group)).decision == ALLOW
        assert outcome(await grp(tenant.connector, user="2", group=group)) == (LIMITED, "group_rate_limited")


async def test_user_limit_spans_direct_and_group_messages(tenant: Tenant) -> None:
    await configure(tenant, rate_limit=hourly(3))
    assert (await dm(tenant.connector)).decision == ALLOW
    assert (await grp(tenant.connector, group="-100")).decision == ALLOW
    assert (await grp(tenant.connector, group="-200")).decision == ALLOW
    assert outcome(await dm(tenant.connector)) == (LIMITED, "user_rate_limited")
    assert outcome(await grp(tenant.connector, group="-300")) == (LIMITED, "user_rate_limited")
    assert (await grp(tenant.connector, user="7", group="-100")).decision == ALLOW


async def test_denied_and_refused_messages_take_no_token(tenant: Tenant) -> None:
    # Denied: never reaches the buckets.
    await tenant.channel(dm_policy=cm.DM_POLICY_ALLOWLIST, rate_limit=hourly(1))
    for _ in range(3):
        assert outcome(await dm(tenant.connector)) == (az.DECISION_DENY, "not_allowlisted")
    await tenant.admin.admin.AllowUser(adm.AllowUserRequest(channel_id="tg", user_id="42"))
    assert (await dm(tenant.connector)).decision == ALLOW
    assert (await dm(tenant.connector)).decision == LIMITED

    # Refused by the user's bucket: the group's bucket keeps its token.
    await configure(tenant, rate_limit=hourly(1), groups={"-100": cm.GroupRule(rate_limit=hourly(2))})
    assert (await grp(tenant.connector, user="1")).decision == ALLOW
    for _ in range(3):
        assert outcome(await grp(tenant.connector, user="1")) == (LIMITED, "user_rate_limited")
    assert (await grp(tenant.connector, user="2")).decision == ALLOW
    # Refused by the group's bucket: user 3's bucket keeps its token.
    assert outcome(await grp(tenant.connector, user="3")) == (LIMITED, "group_rate_limited")
    assert (await dm(tenant.connector, user="3")).decision == ALLOW
    assert (await dm(tenant.connector, user="3")).decision == LIMITED


async def test_removing_the_limit_lifts_it(tenant: Tenant) -> None:
    await configure(tenant, rate_limit=hourly(1))
    assert (await dm(tenant.connector)).decision == ALLOW
    assert (await dm(tenant.connector)).decision == LIMITED
    await configure(tenant)
    for _ in range(5):
        assert (await dm(tenant.connector)).decision == ALLOW
    # A zero rate is no limit too (validation turns it into none).
    await configure(tenant, rate_limit=cm.RateLimit(max_messages_per_hour=0, burst=1))
    for _ in range(5):
        assert (await dm(tenant.connector)).decision == ALLOW
    # A larger burst tops the bucket up from where it was, not from full.
    await configure(tenant, rate_limit=hourly(3))
    assert (await dm(tenant.connector)).decision == LIMITED


async def test_buckets_are_per_tenant_and_go_with_their_channel(
    dsns: Dsns, tenant: Tenant, other_tenant: Tenant
) -> None:
    for t in (tenant, other_tenant):
        await configure(t, rate_limit=hourly(1))
    assert (await dm(tenant.connector)).decision == ALLOW
    assert (await dm(tenant.connector)).decision == LIMITED
    assert (await dm(other_tenant.connector)).decision == ALLOW  # same channel and user id, other tenant

    owner = await connect_as_tenant(dsns.owner, tenant.tenant_id)
    try:

        async def buckets() -> int:
            n: int = await owner.fetchval(
                "SELECT count(*) FROM rate_buckets WHERE tenant_id = $1", tenant.tenant_id
            )
            return n

        assert await buckets() == 1
        await tenant.admin.admin.DeleteChannel(adm.DeleteChannelRequest(channel_id="tg"))
        assert await buckets() == 0
    finally:
        await owner.close()
    # A new channel under the old id starts with full buckets.
    await configure(tenant, rate_limit=hourly(1))
    assert (await dm(tenant.connector)).decision == ALLOW


async def test_full_buckets_are_pruned_when_a_bucket_is_created(dsns: Dsns, tenant: Tenant) -> None:
    await configure(tenant, rate_limit=hourly(2))
    assert (await dm(tenant.connector, user="1")).decision == ALLOW
    owner = await connect_as_tenant(dsns.owner, tenant.tenant_id)
    try:
        # Pretend user 1's bucket filled up long ago: it is as good as no row.
        await owner.execute(
            "UPDATE rate_buckets SET full_at = now() - interval '1 second' WHERE tenant_id = $1",
            tenant.tenant_id,
        )
        assert (await dm(tenant.connector, user="2")).decision == ALLOW  # creates user 2's bucket
        scopes = await owner.fetch("SELECT scope FROM rate_buckets WHERE tenant_id = $1", tenant.tenant_id)
        assert [r["scope"] for r in scopes] == ["user:2"]
    finally:
        await owner.close()


async def test_a_database_failure_fails_closed_even_for_a_cached_verdict(dsns: Dsns, tenant: Tenant) -> None:
    """A server of its own whose queries time out after a second: with the
    bucket table locked, a verdict the cache holds still gets no answer."""
    settings = Settings.from_env(
        {"AUTHZ_DATABASE_URL": dsns.service, "AUTHZ_SECRET_KEY": SECRET_KEY, "AUTHZ_HOME": "/nonexistent"}
    )
    running = await start_server(
        await Database.connect(dsns.service, timeout=1), settings, listen="127.0.0.1:0"
    )
    client = connect(f"127.0.0.1:{running.port}", tenant.keys["connector"])
    owner = await connect_as_tenant(dsns.owner, tenant.tenant_id)
    try:
        await configure(tenant, rate_limit=cm.RateLimit(max_messages_per_hour=3600, burst=100))

        async def served_from_cache() -> bool:
            hits = running.cache.hits
            assert (await dm(client)).decision == ALLOW
            return running.cache.hits > hits

        await eventually(served_from_cache)
        hits = running.cache.hits
        async with owner.transaction():
            await owner.execute("LOCK TABLE rate_buckets IN ACCESS EXCLUSIVE MODE")
            err = await rpc_error(dm(client))
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert running.cache.hits > hits  # the decision itself came from the cache
        assert (await dm(client)).decision == ALLOW
    finally:
        await owner.close()
        await client.close()
        await running.stop(grace=0)


# --- two service processes, one database ---------------------------------------------


@pytest.fixture
async def replicas(dsns: Dsns) -> AsyncIterator[tuple[Replica, Replica, str]]:
    """Two `authz serve` processes on one database (as in test_replicas)."""
    async with two_replicas(dsns) as pair:
        yield pair.a, pair.b, pair.operator_key


async def test_two_processes_admit_exactly_the_burst_between_them(
    replicas: tuple[Replica, Replica, str],
) -> None:
    a, b, operator_key = replicas
    op = connect(a.address, operator_key)
    created = await op.admin.CreateTenant(adm.CreateTenantRequest(tenant_id="rl" + secrets.token_hex(5)))
    await op.close()
    admin = connect(a.address, created.secret)
    key = (await admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="c"))).secret
    on_a, on_b = connect(a.address, key), connect(b.address, key)
    try:
        burst, group_burst = 5, 4
        # One token an hour: nothing refills while the test runs.
        await admin.admin.SetChannel(
            adm.SetChannelRequest(
                channel_id="tg",
                platform=cm.PLATFORM_TELEGRAM,
                policy=open_policy(
                    rate_limit=cm.RateLimit(max_messages_per_hour=1, burst=burst),
                    groups={
                        "-100": cm.GroupRule(
                            rate_limit=cm.RateLimit(max_messages_per_hour=1, burst=group_burst)
                        )
                    },
                ),
            )
        )
        # One user, direct and group messages (another group), half through each process.
        calls = [
            (dm(c, user="42") if i % 3 else grp(c, user="42", group="-200"))
            for i, c in enumerate([on_a, on_b] * 30)
        ]
        results = await asyncio.gather(*calls)
        assert sum(r.decision == ALLOW for r in results) == burst
        refused = [r for r in results if r.decision != ALLOW]
        assert {outcome(r) for r in refused} == {(LIMITED, "user_rate_limited")}
        assert all(r.retry_after_seconds > 0 for r in refused)

        # Six users in one group: two buckets a message, across both processes.
        # The group admits exactly its burst, and a message the group refused
        # took nothing from its sender's bucket.
        users = [str(100 + u) for u in range(6)]
        results = await asyncio.gather(
            *(grp([on_a, on_b][i % 2], user=u, group="-100") for i in range(8) for u in users)
        )
        assert sum(r.decision == ALLOW for r in results) == group_burst
        # No user's bucket ran dry (4 tokens taken at most): only the group refused.
        assert {outcome(r) for r in results if r.decision != ALLOW} == {(LIMITED, "group_rate_limited")}
        results = await asyncio.gather(
            *(dm([on_a, on_b][i % 2], user=u) for i in range(burst + 1) for u in users)
        )
        assert sum(r.decision == ALLOW for r in results) == len(users) * burst - group_burst
    finally:
        for c in (admin, on_a, on_b):
            await c.close()


async def test_sdk_reports_retry_after_and_purge_forgets_the_bucket(dsns: Dsns, tenant: Tenant) -> None:
    """The typed client carries retry_after_seconds; PurgeUser deletes the
    user's bucket (it holds their id), which also refills it."""
    await configure(tenant, rate_limit=hourly(1))
    first = await tenant.connector.check_user("tg", "42", text="hi")
    second = await tenant.connector.check_user("tg", "42", text="hi")
    assert first.allowed and (second.decision, second.reason) == ("rate_limited", "user_rate_limited")
    assert second.retry_after_seconds > 0 and first.retry_after_seconds == 0
    owner = await connect_as_tenant(dsns.owner, tenant.tenant_id)
    try:
        count = "SELECT count(*) FROM rate_buckets WHERE tenant_id = $1 AND scope = 'user:42'"
        assert await owner.fetchval(count, tenant.tenant_id) == 1
        await tenant.admin.admin.PurgeUser(adm.UserRef(channel_id="tg", user_id="42"))
        assert await owner.fetchval(count, tenant.tenant_id) == 0
    finally:
        await owner.close()
    assert (await tenant.connector.check_user("tg", "42", text="hi")).allowed
