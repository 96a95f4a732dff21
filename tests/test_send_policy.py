"""Send policy over real gRPC and PostgreSQL: time windows judged in the
tenant's time zone (set with SetTenantSettings), target normalisation and
aliases end to end, the zone's validation and audit, the zone reaching another
replica's cache, and `authz timezone`.

Windows are built around the database's current time in the zone under test,
an hour either side, so no assertion depends on the wall clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from zoneinfo import ZoneInfo

import asyncpg
import grpc
import pytest

from authz_service.cache import StateCache
from authz_service.client import Client, connect
from authz_service.config import Settings
from authz_service.domain.model import Channel, ChannelPolicy, Platform
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.server import RunningServer, start_server
from authz_service.store.db import Database

from .conftest import SECRET_KEY, Dsns, Service, Tenant, eventually, rpc_error
from .policy_helpers import run_authz

EXEC = "slack:#exec"
# No DST in either, 14 hours apart: an hour-wide window around "now" in one is
# far from "now" in the other.
TOKYO, SEOUL, NEW_YORK = "Asia/Tokyo", "Asia/Seoul", "America/New_York"


def denial(target: str) -> str:
    return f"Failed to send to {target}: target '{target}' is not permitted by send_policy"


async def db_now(dsns: Dsns) -> datetime:
    conn = await asyncpg.connect(dsns.owner)
    try:
        value: datetime = await conn.fetchval("SELECT now()")
        return value
    finally:
        await conn.close()


def hhmm(minute: int) -> str:
    minute %= 1440
    return f"{minute // 60:02d}:{minute % 60:02d}"


async def window_around_now(dsns: Dsns, zone: str) -> cm.TimeWindow:
    """Every day, from an hour before to an hour after the current time in ``zone``
    (wrapping past midnight when it must)."""
    local = (await db_now(dsns)).astimezone(ZoneInfo(zone))
    m = local.hour * 60 + local.minute
    return cm.TimeWindow(start=hhmm(m - 60), end=hhmm(m + 60))


async def restricted_channel(
    t: Tenant, w: cm.TimeWindow, default: cm.SendDefault.ValueType = cm.SEND_DEFAULT_ALLOW
) -> None:
    await t.channel(
        "sl",
        cm.PLATFORM_SLACK,
        send_policy=cm.SendPolicy(
            default=default, time_restrictions=[cm.TimeRestriction(targets=[EXEC], windows=[w])]
        ),
    )


async def send(
    client: Client, target: str, agent: str = "support", channel: str = "sl"
) -> az.EvaluateSendResponse:
    return await client.authz.EvaluateSend(
        az.EvaluateSendRequest(
            channel_id=channel, agent_id=agent, session_id="s1", origin="slack:C0HOME1", target=target
        )
    )


async def set_zone(t: Tenant, zone: str) -> adm.TenantSettings:
    settings = await t.admin.admin.GetTenantSettings(adm.GetTenantSettingsRequest())
    settings.timezone = zone
    return await t.admin.admin.SetTenantSettings(settings)


async def test_windows_are_judged_in_the_tenant_zone(tenant: Tenant, dsns: Dsns) -> None:
    await restricted_channel(tenant, await window_around_now(dsns, TOKYO))
    assert (await tenant.admin.admin.GetTenantSettings(adm.GetTenantSettingsRequest())).timezone == "UTC"
    # UTC: Tokyo's "now" is nine hours away, outside the window.
    outside = await send(tenant.connector, "Slack:#Exec")
    assert (outside.allow, outside.reason) == (False, denial("Slack:#Exec"))
    assert outside.resolved_target == "#exec"  # on the Slack channel: Slack's own spelling
    assert (await send(tenant.connector, "slack:#random")).allow  # not restricted

    assert (await set_zone(tenant, TOKYO)).timezone == TOKYO
    inside = await send(tenant.connector, "Slack:#Exec")
    assert (inside.allow, inside.reason, inside.resolved_target) == (True, "", "#exec")

    await set_zone(tenant, NEW_YORK)
    assert not (await send(tenant.connector, EXEC)).allow
    await set_zone(tenant, "")  # empty: UTC
    assert (await tenant.admin.admin.GetTenantSettings(adm.GetTenantSettingsRequest())).timezone == "UTC"

    events = (
        await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="tenant.timezone_updated"))
    ).events
    assert [json.loads(e.details_json) for e in events] == [
        {"from": "UTC", "to": TOKYO},
        {"from": TOKYO, "to": NEW_YORK},
        {"from": NEW_YORK, "to": "UTC"},
    ]
    denied = (await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="send.denied"))).events
    assert [e.subject for e in denied] == ["Slack:#Exec", EXEC]


async def test_a_window_never_allows_by_itself(tenant: Tenant, dsns: Dsns) -> None:
    await restricted_channel(tenant, await window_around_now(dsns, "UTC"), default=cm.SEND_DEFAULT_DENY)
    resp = await send(tenant.connector, EXEC)
    assert (resp.allow, resp.reason) == (False, denial(EXEC))


async def test_the_zone_is_preserved_by_other_settings_changes(tenant: Tenant) -> None:
    await set_zone(tenant, "Europe/Berlin")
    settings = await tenant.admin.admin.GetTenantSettings(adm.GetTenantSettingsRequest())
    del settings.approvers[:]
    settings.approvers.append("telegram:42")
    stored = await tenant.admin.admin.SetTenantSettings(settings)
    assert (list(stored.approvers), stored.timezone) == (["telegram:42"], "Europe/Berlin")
    details = json.loads(
        (await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="tenant.approvers_updated")))
        .events[-1]
        .details_json
    )
    assert details["timezone"] == "Europe/Berlin"


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus", "europe/berlin", "Europe", "../../etc/passwd", "UTC\x00", "x" * 100]
)
async def test_an_invalid_zone_is_rejected(tenant: Tenant, zone: str) -> None:
    await set_zone(tenant, "Europe/Berlin")
    err = await rpc_error(set_zone(tenant, zone))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "timezone" in (err.details() or "")
    assert (
        await tenant.admin.admin.GetTenantSettings(adm.GetTenantSettingsRequest())
    ).timezone == "Europe/Berlin"


async def test_zones_are_per_tenant(tenant: Tenant, other_tenant: Tenant) -> None:
    await set_zone(tenant, TOKYO)
    assert (
        await other_tenant.admin.admin.GetTenantSettings(adm.GetTenantSettingsRequest())
    ).timezone == "UTC"


# --- normalisation and aliases ------------------------------------------------------------


async def test_spellings_and_aliases_are_one_target(tenant: Tenant) -> None:
    await tenant.channel(
        "sl",
        cm.PLATFORM_SLACK,
        send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW, deny=[EXEC]),
        agent_send_policies={
            "ops": cm.SendPolicy(default=cm.SEND_DEFAULT_DENY, allow=["Ops-Alerts", "origin"])
        },
        aliases={"slack:#exec": "slack:C0EXEC1", "Boss": "Slack:#Exec", "ops-alerts": "slack:<#C0OPS01|ops>"},
    )
    for spelling in (
        "slack:#exec",
        "Slack:#EXEC",
        "slack:exec",  # not id-shaped: a channel name
        "EXEC",
        "<#C0EXEC1|exec>",
        "slack:<#C0EXEC1>",
        "BOSS",
        "C0EXEC1",  # bare: on this Slack channel, slack:C0EXEC1
        "#exec",
    ):
        resp = await send(tenant.connector, spelling)
        assert (resp.allow, resp.reason, resp.resolved_target) == (False, denial(spelling), "C0EXEC1")
    ok = await send(tenant.connector, "Slack:#Random")
    assert (ok.allow, ok.resolved_target) == (True, "#random")
    lower = await send(tenant.connector, "c0exec1")  # Slack ids are upper-case: this is a name
    assert (lower.allow, lower.resolved_target) == (True, "#c0exec1")
    # Per-agent list, written with an alias in another case.
    for target in (
        "ops-alerts",
        "slack:C0OPS01",
        "C0OPS01",
        "<#C0OPS01>",
        "origin",
        "slack:C0HOME1",
        "C0HOME1",
    ):
        assert (await send(tenant.connector, target, agent="ops")).allow, target
    for target in ("slack:#random", "c0ops01", "slack:c0home1"):
        assert not (await send(tenant.connector, target, agent="ops")).allow, target
    origin = await send(tenant.connector, "Origin", agent="ops")
    assert origin.resolved_target == "C0HOME1"
    audit = (await tenant.admin.admin.QueryAudit(adm.QueryAuditRequest(event="send.denied"))).events
    assert [e.subject for e in audit][:2] == ["slack:#exec", "Slack:#EXEC"]  # as the agent wrote it


# Review findings: "origin" skipped a deny or window naming the conversation by id, and a
# bare id skipped a deny written with the platform prefix (while still being delivered).
ONE_CONVERSATION = [
    # (platform, send policy, origin, target, allowed, resolved_target)
    pytest.param(
        cm.PLATFORM_SLACK, cm.SendPolicy(default=cm.SEND_DEFAULT_DENY, allow=["origin"], deny=[EXEC]),
        "Slack:#Exec", "origin", False, "#exec", id="origin-vs-deny-by-name",
    ),
    pytest.param(
        cm.PLATFORM_SLACK, cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW, deny=["slack:C0EXEC1"]),
        "C0EXEC1", "origin", False, "C0EXEC1", id="origin-vs-deny-by-id",
    ),
    pytest.param(
        cm.PLATFORM_SLACK, cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW, deny=["slack:C0EXEC1"]),
        "DU0ALICE01", "C0EXEC1", False, "C0EXEC1", id="slack-bare-vs-prefixed",
    ),
    pytest.param(
        cm.PLATFORM_SLACK, cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW, deny=["C0EXEC1"]),
        "DU0ALICE01", "slack:C0EXEC1", False, "C0EXEC1", id="slack-prefixed-vs-bare",
    ),
    # Second review: Slack names written bare, numbers spelled another way, no origin.
    pytest.param(
        cm.PLATFORM_SLACK, cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW, deny=[EXEC]),
        "DU0ALICE01", "exec", False, "#exec", id="slack-bare-name-vs-deny-by-name",
    ),
    pytest.param(
        cm.PLATFORM_SLACK, cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW, deny=[EXEC]),
        "DU0ALICE01", "slack:EXEC", False, "#exec", id="slack-upper-name-vs-deny-by-name",
    ),
    pytest.param(
        cm.PLATFORM_TELEGRAM, cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW, deny=["telegram:-100123"]),
        "42", "-0100123", False, "-100123", id="telegram-leading-zero",
    ),
    pytest.param(
        cm.PLATFORM_DISCORD, cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW, deny=["discord:123456789"]),
        "223456789", "<#0123456789>", False, "123456789", id="discord-leading-zero",
    ),
    pytest.param(
        cm.PLATFORM_TELEGRAM, cm.SendPolicy(default=cm.SEND_DEFAULT_DENY, allow=["origin"]),
        "", "origin", False, "", id="no-origin-nothing-to-deliver",
    ),
    pytest.param(
        cm.PLATFORM_TELEGRAM, cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW, deny=["telegram:@Board"]),
        "42", "@board", False, "@board", id="telegram-username-bare-vs-prefixed",
    ),
    pytest.param(
        cm.PLATFORM_TELEGRAM, cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW, deny=["telegram:-100123"]),
        "42", "-100123", False, "-100123", id="telegram-chat-bare-vs-prefixed",
    ),
    pytest.param(
        cm.PLATFORM_TELEGRAM, cm.SendPolicy(default=cm.SEND_DEFAULT_DENY, allow=["telegram:-100123"]),
        "42", "-100123", True, "-100123", id="telegram-allow-prefixed-delivered-bare",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("platform", "target"),
    [
        pytest.param(cm.PLATFORM_TELEGRAM, "-١٠٠١٢٣", id="telegram-arabic-indic"),
        pytest.param(cm.PLATFORM_TELEGRAM, "telegram:-١٠٠١٢٣", id="telegram-prefixed-arabic-indic"),
        pytest.param(cm.PLATFORM_DISCORD, "１２３", id="discord-full-width"),
        pytest.param(cm.PLATFORM_DISCORD, "<#１２３>", id="discord-full-width-mention"),
    ],
)
async def test_a_non_ascii_digit_fails_closed(
    tenant: Tenant, platform: cm.Platform.ValueType, target: str
) -> None:
    """Second review: int() reads these as 100123 / 123, past a deny on the number."""
    deny = "telegram:-100123" if platform == cm.PLATFORM_TELEGRAM else "discord:123"
    await tenant.channel(
        "ch", platform, send_policy=cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW, deny=[deny])
    )
    resp = await tenant.connector.authz.EvaluateSend(
        az.EvaluateSendRequest(channel_id="ch", agent_id="a", session_id="s", origin="42", target=target)
    )
    assert (resp.allow, resp.reason, resp.resolved_target) == (False, "send_policy evaluation error", "")


@pytest.mark.parametrize(("platform", "policy", "origin", "target", "allow", "resolved"), ONE_CONVERSATION)
async def test_one_conversation_has_one_name(
    tenant: Tenant,
    platform: cm.Platform.ValueType,
    policy: cm.SendPolicy,
    origin: str,
    target: str,
    allow: bool,
    resolved: str,
) -> None:
    await tenant.channel("ch", platform, send_policy=policy)
    resp = await tenant.connector.authz.EvaluateSend(
        az.EvaluateSendRequest(channel_id="ch", agent_id="a", session_id="s", origin=origin, target=target)
    )
    assert (resp.allow, resp.reason, resp.resolved_target) == (
        allow,
        "" if allow else denial(target),
        resolved,
    )


async def test_a_window_by_id_restricts_replies_to_origin(tenant: Tenant, dsns: Dsns) -> None:
    """A restriction on the group's id, outside its window: replying to ``origin`` is denied."""
    w = await window_around_now(dsns, TOKYO)  # UTC tenant: outside
    await tenant.channel(
        "tg",
        cm.PLATFORM_TELEGRAM,
        send_policy=cm.SendPolicy(
            default=cm.SEND_DEFAULT_ALLOW,
            time_restrictions=[cm.TimeRestriction(targets=["telegram:-100123"], windows=[w])],
        ),
    )

    async def reply(target: str) -> az.EvaluateSendResponse:
        return await tenant.connector.authz.EvaluateSend(
            az.EvaluateSendRequest(channel_id="tg", agent_id="a", origin="-100123", target=target)
        )

    for target in ("origin", "-100123", "telegram:-100123"):
        assert not (await reply(target)).allow, target
    await set_zone(tenant, TOKYO)
    for target in ("origin", "-100123", "telegram:-100123"):
        resp = await reply(target)
        assert (resp.allow, resp.resolved_target) == (True, "-100123"), target


@pytest.mark.parametrize(
    "aliases",
    [
        pytest.param({"Exec": "slack:#a", "exec": "slack:#b"}, id="case"),
        pytest.param({"C0EXEC1": "slack:#a", "slack:C0EXEC1": "slack:#b"}, id="bare-and-prefixed"),
        pytest.param({"<#C012345|x>": "a", "slack:C012345": "b"}, id="mention"),
        pytest.param({"exec": "slack:#a", "slack:#Exec": "slack:#b"}, id="bare-name-and-hash"),
        pytest.param({"a": "B", "b": "a"}, id="loop"),
        pytest.param({"ORIGIN": "slack:#a"}, id="origin"),
    ],
)
async def test_ambiguous_aliases_are_rejected(tenant: Tenant, aliases: dict[str, str]) -> None:
    err = await rpc_error(tenant.channel("sl", cm.PLATFORM_SLACK, aliases=aliases))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "policy.aliases" in (err.details() or "")


async def test_per_agent_rules_like_the_seeds_rbac(tenant: Tenant) -> None:
    await tenant.channel(
        "sl",
        cm.PLATFORM_SLACK,
        agent_send_policies={
            "support-bot": cm.SendPolicy(default=cm.SEND_DEFAULT_DENY, allow=["origin", "slack:#support"]),
            "ops-bot": cm.SendPolicy(
                default=cm.SEND_DEFAULT_DENY, allow=["origin", "slack:#ops", "slack:#incidents"]
            ),
        },
    )
    table = [
        ("support-bot", "slack:#support", True),
        ("support-bot", "slack:#ops", False),
        ("ops-bot", "slack:#incidents", True),
        ("ops-bot", "slack:#support", False),
        ("web-bot", "origin", True),  # unknown agent, no channel policy: origin only
        ("web-bot", "slack:#support", False),
    ]
    got = [(a, t, (await send(tenant.connector, t, agent=a)).allow) for a, t, _ in table]
    assert got == table


# --- the zone on another replica's cache ---------------------------------------------------


@pytest.fixture
async def replica(dsns: Dsns, tenant: Tenant) -> AsyncIterator[tuple[RunningServer, Client]]:
    """A second server with its own cache and change listener, on the same database."""
    settings = Settings.from_env(
        {"AUTHZ_DATABASE_URL": dsns.service, "AUTHZ_SECRET_KEY": SECRET_KEY, "AUTHZ_HOME": "/nonexistent"}
    )
    running = await start_server(await Database.connect(dsns.service), settings, listen="127.0.0.1:0")
    client = connect(f"127.0.0.1:{running.port}", tenant.keys["connector"])
    yield running, client
    await client.close()
    await running.stop(grace=0)


async def test_a_zone_change_reaches_another_replicas_cache(
    replica: tuple[RunningServer, Client], tenant: Tenant, dsns: Dsns
) -> None:
    running, client = replica
    cache = running.cache
    await restricted_channel(tenant, await window_around_now(dsns, TOKYO))
    await set_zone(tenant, TOKYO)

    async def listening() -> bool:
        return cache.usable

    await eventually(listening, timeout=20)
    # CheckUser fills the replica's channel entry (with the zone); EvaluateSend then uses it.
    await client.authz.CheckUser(
        az.CheckUserRequest(channel_id="sl", user_id="T0A:U0B", chat_kind=cm.CHAT_KIND_DIRECT)
    )
    hits = cache.hits
    assert (await send(client, EXEC)).allow
    assert cache.hits == hits + 1  # from the cache, and the cached channel carries Tokyo

    owner = await asyncpg.connect(dsns.owner)
    try:  # change the zone behind the cache's back, unannounced
        async with owner.transaction():
            await owner.execute("ALTER TABLE tenants DISABLE TRIGGER tenants_timezone_changes")
            await owner.execute("UPDATE tenants SET timezone = 'UTC' WHERE tenant_id = $1", tenant.tenant_id)
            await owner.execute("ALTER TABLE tenants ENABLE TRIGGER tenants_timezone_changes")
    finally:
        await owner.close()
    assert (await send(client, EXEC)).allow  # still Tokyo: the cache is really used

    # Through the API on the other server: only the tenants trigger's NOTIFY can tell the replica.
    await set_zone(tenant, NEW_YORK)

    async def denied() -> bool:
        return not (await send(client, EXEC)).allow

    await eventually(denied)
    # ...and back, so the entry was forgotten, not merely missed once.
    await set_zone(tenant, SEOUL)

    async def allowed() -> bool:
        return (await send(client, EXEC)).allow

    await eventually(allowed)


def test_a_tenants_notification_forgets_only_that_tenant() -> None:
    cache = StateCache()
    cache.on_listener(True)
    channel = Channel("t1", "sl", Platform.SLACK, ChannelPolicy(), "Asia/Tokyo")
    for t in ("t1", "t2"):
        cache.fill_channel(cache.generation, t, "sl", channel)
    cache.on_change("tenants t1")
    assert cache.channel("t1", "sl") == (False, None)
    assert cache.channel("t2", "sl") == (True, channel)  # not a full clear


# --- `authz timezone` ----------------------------------------------------------------------


async def authz(service: Service, tenant: Tenant, *argv: str) -> tuple[int, str, str]:
    r = await run_authz(*argv, "--address", service.address, "--api-key", tenant.keys["admin"])
    return r.code, r.out, r.err


async def test_cli_timezone(service: Service, tenant: Tenant) -> None:
    assert await authz(service, tenant, "timezone") == (0, "UTC\n", "")
    await tenant.admin.admin.SetTenantSettings(adm.TenantSettings(approvers=["telegram:7"]))
    assert await authz(service, tenant, "timezone", "Europe/Berlin") == (0, "Europe/Berlin\n", "")
    stored = await tenant.admin.admin.GetTenantSettings(adm.GetTenantSettingsRequest())
    assert (stored.timezone, list(stored.approvers)) == ("Europe/Berlin", ["telegram:7"])  # the rest kept
    assert json.loads((await authz(service, tenant, "timezone", "--json"))[1]) == {
        "timezone": "Europe/Berlin"
    }
    code, out, err = await authz(service, tenant, "timezone", "Mars/Olympus")
    assert (code, out) == (2, "")
    assert "INVALID_ARGUMENT" in err and "timezone" in err
    assert await authz(service, tenant, "timezone", "") == (0, "UTC\n", "")
