"""Every reader that wants all of a channel's users reads past the first page
(authz_service/client/paging.py): ListUsers without a page_size still stops at
MAX_PAGE_BYTES, so `authz export`, `authz users list`, `authz doctor` and the
console's Doctor page must follow next_page_token. The bound is made small here
(it is read on each call) so a handful of users with long names fill several pages."""

from __future__ import annotations

import json

import aiohttp
import pytest
import yaml

from authz_service.api import admin as admin_api
from authz_service.client import paging
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Dsns, Service, Tenant, connect_as_tenant
from .console_helpers import Browser, base_url
from .policy_helpers import Cli, make_cli

ALLOWED = [f"10{i}" for i in range(7)]
PAIRED = [f"20{i}" for i in range(7)]
LONG_NAME = "A display name long enough that a few users fill a page " * 2


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_api, "MAX_PAGE_BYTES", 600)


@pytest.fixture
async def crowded(service: Service, tenant: Tenant, dsns: Dsns, small_pages: None) -> Tenant:
    """Channel tg: seven allowlisted users and seven paired more than 90 days ago
    (the doctor's stale_pairings counts them), all with long names."""
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING, owner_id="1", max_pending=20)
    for user in ALLOWED:
        await tenant.admin.admin.AllowUser(
            adm.AllowUserRequest(channel_id="tg", user_id=user, display_name=LONG_NAME)
        )
    for user in PAIRED:
        started = await tenant.connector.authz.RequestPairing(
            az.RequestPairingRequest(channel_id="tg", user_id=user, display_name=LONG_NAME)
        )
        await tenant.approver.authz.ResolveApproval(
            az.ResolveApprovalRequest(approval_id=started.approval_id, action=cm.APPROVAL_ACTION_APPROVE)
        )
    conn = await connect_as_tenant(dsns.owner, tenant.tenant_id)
    try:
        await conn.execute("UPDATE subjects SET updated_at = now() - interval '100 days' "
                           "WHERE tenant_id = $1 AND user_id LIKE '20%'", tenant.tenant_id)  # fmt: skip
    finally:
        await conn.close()
    return tenant


@pytest.fixture
def cli(service: Service, crowded: Tenant) -> Cli:
    return make_cli(service, crowded)


async def test_one_call_returns_one_page_and_the_helper_reads_them_all(crowded: Tenant) -> None:
    first = await crowded.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))
    assert first.next_page_token and len(first.users) < len(ALLOWED)  # the bound bites

    async def call(method: str, request: object) -> object:
        return await getattr(crowded.admin.admin, method)(request)

    found = await paging.all_users(call, adm.ListUsersRequest(channel_id="tg"))
    assert [u.user_id for u in found] == sorted(ALLOWED + PAIRED)
    paired = await paging.all_users(
        call, adm.ListUsersRequest(channel_id="tg", filter=adm.USER_FILTER_PAIRED)
    )
    assert [u.user_id for u in paired] == PAIRED


async def test_export_and_users_list_see_every_user(cli: Cli) -> None:
    r = await cli("export", "--include-paired")
    assert r.code == 0, r.text
    (channel,) = yaml.safe_load(r.out)["channels"]
    listed = {part: [u["user_id"] for u in found] for part, found in channel["users"].items()}
    assert listed == {"allowlisted": ALLOWED, "blocked": [], "paired": PAIRED}
    r = await cli("users", "list", "tg", "--json")
    assert r.code == 0, r.text
    assert sorted(row["user"] for row in json.loads(r.out)) == sorted(ALLOWED + PAIRED)


async def test_doctor_counts_every_stale_pairing(cli: Cli, service: Service, crowded: Tenant) -> None:
    r = await cli("doctor", "--json", "--fail-on", "never")
    assert r.code == 0, r.text
    (stale,) = [f for f in json.loads(r.out)["findings"] if f["code"] == "stale_pairings"]
    assert stale["message"].startswith(f"{len(PAIRED)} paired users paired more than 90 days ago")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        browser = Browser(session, base_url(service))
        status, _, _ = await browser.login(crowded.keys["admin"])
        assert status == 303
        status, html, _ = await browser.get("/console/doctor")
    assert status == 200 and f"{len(PAIRED)} paired users paired more than 90 days ago" in html
