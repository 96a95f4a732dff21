"""The web console in a real browser (issue #19): Debian's Chromium driven by
Playwright against the session's real server. A newcomer's path (log in, approve
the pending request, the user is let through), the allowlist, the audit filter,
and the refusals (a stranger's key, a change without the anti-forgery token, an
expired session). Screenshots of the main pages go to test-output/screenshots/."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator

import asyncpg
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Service, Tenant
from .console_helpers import SCREENSHOTS, base_url, chromium
from .pairing_helpers import check, pair

WAIT_MS = 15_000  # how long Playwright waits for an element; never a measured duration


@pytest.fixture(scope="module")
async def chrome() -> AsyncIterator[Browser]:
    executable = chromium()
    async with async_playwright() as p:
        # Chromium's sandbox needs user namespaces, which root in a container often lacks.
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = await p.chromium.launch(executable_path=executable, args=args)
        yield browser
        await browser.close()


@pytest.fixture
async def page(chrome: Browser, service: Service) -> AsyncIterator[Page]:
    context = await chrome.new_context(base_url=base_url(service))
    context.set_default_timeout(WAIT_MS)
    p = await context.new_page()
    yield p
    await context.close()


async def _login(page: Page, key: str) -> None:
    await page.goto("/console/login")
    await page.fill("#key", key)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(re.compile(r"/console/approvals$"))


async def _shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def test_log_in_approve_the_pending_request_and_the_user_is_let_through(
    page: Page, tenant: Tenant
) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING)
    await pair(tenant, "42", name="Alice")
    assert (await check(tenant, "42", consistent=True)).decision == az.DECISION_PAIRING_REQUIRED
    await _shot_login(page)
    await _login(page, tenant.keys["admin"])
    card = page.locator("article.approval", has_text="Alice")
    await expect(card).to_be_visible()
    await expect(card).to_contain_text("telegram")
    await _shot(page, "approvals")
    await card.get_by_role("button", name="Approve").click()
    await expect(page.locator(".notice")).to_have_text("Approved.")
    await expect(page.locator("article.approval")).to_have_count(0)
    assert (await check(tenant, "42", consistent=True)).decision == az.DECISION_ALLOW


async def _shot_login(page: Page) -> None:
    await page.goto("/console/login")
    await _shot(page, "login")


async def test_a_new_request_appears_without_reloading(page: Page, tenant: Tenant) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING)
    await _login(page, tenant.keys["approver"])
    await expect(page.locator(".empty")).to_have_text("No pending requests.")
    await pair(tenant, "77", name="Late Larry")
    await expect(page.locator("article.approval", has_text="Late Larry")).to_be_visible()


async def test_a_tool_call_shows_its_full_arguments_and_can_be_denied(page: Page, tenant: Tenant) -> None:
    arguments = '{"cmd":"rm -rf /tmp/cache \u202e hs","force":true}'
    made = await tenant.connector.authz.RequestApproval(
        az.RequestApprovalRequest(
            tool_name="shell", arguments_json=arguments, agent_id="ops", timeout_seconds=300
        )
    )
    await _login(page, tenant.keys["admin"])
    card = page.locator(f"article[data-approval='{made.approval.approval_id}']")
    args = card.locator("pre.args")
    await expect(args).to_contain_text('"cmd": "rm -rf /tmp/cache \\u202e hs"')
    await expect(args).to_contain_text('"force": true')
    await expect(card.get_by_role("button", name="Block")).to_have_count(0)
    await card.get_by_role("button", name="Deny").click()
    await expect(page.locator(".notice")).to_have_text("Denied.")
    got = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=made.approval.approval_id))
    assert got.status == cm.APPROVAL_STATUS_DENIED


async def test_add_and_remove_an_allowlist_entry(page: Page, tenant: Tenant) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_ALLOWLIST)
    await _login(page, tenant.keys["admin"])
    await page.goto("/console/channels/tg")
    await page.fill("input[name=user_id]", "31337")
    await page.fill("input[name=display_name]", "Eve <script>")
    await page.get_by_role("button", name="Allow").click()
    row = page.locator("#users tr[data-user='31337']")
    await expect(row).to_contain_text("Eve <script>")
    await _shot(page, "channel")
    assert (await check(tenant, "31337", consistent=True)).decision == az.DECISION_ALLOW
    await row.get_by_role("button", name="Remove").click()
    await expect(page.locator(".notice")).to_have_text("User removed.")
    await expect(row).to_have_count(0)
    users = await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))
    assert list(users.users) == []


async def test_filter_the_audit(page: Page, tenant: Tenant) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING)
    await pair(tenant, "501", name="Ann")
    await pair(tenant, "502", name="Ben")
    await _login(page, tenant.keys["admin"])
    await page.goto("/console/audit")
    rows = page.locator("#events tbody tr")
    await expect(rows.filter(has_text="502")).not_to_have_count(0)
    await page.fill("input[name=user]", "501")
    await page.fill("input[name=event]", "pairing.")
    await page.get_by_role("button", name="Filter").click()
    await expect(rows.filter(has_text="pairing.requested")).to_have_count(1)
    await expect(rows.filter(has_text="502")).to_have_count(0)
    await _shot(page, "audit")
    await page.goto("/console/channels/tg/users/501")
    await expect(page.locator("h1")).to_contain_text("501")
    await expect(page.locator("article.approval")).to_have_count(1)
    await _shot(page, "user")


async def test_a_strangers_key_sees_nothing_of_the_tenant(
    page: Page, tenant: Tenant, other_tenant: Tenant
) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING)
    await pair(tenant, "42", name="Alice")
    await _login(page, other_tenant.keys["admin"])
    await expect(page.locator(".empty")).to_have_text("No pending requests.")
    await page.goto("/console/channels/tg")
    await expect(page.locator(".error")).to_contain_text("not_found")
    # A revoked key cannot log in.
    made = await tenant.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_ADMIN, name="old"))
    await tenant.admin.admin.RevokeApiKey(adm.RevokeApiKeyRequest(key_id=made.key.key_id))
    await page.goto("/console/login")
    await page.fill("#key", made.secret)
    await page.click("button[type=submit]")
    await expect(page.locator(".error")).to_contain_text("invalid API key")


async def test_a_change_without_the_token_and_an_expired_session_are_refused(
    page: Page, tenant: Tenant, owner: asyncpg.Connection
) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_ALLOWLIST)
    await _login(page, tenant.keys["admin"])
    # The browser's own cookie, without the form's token: refused.
    answer = await page.request.post("/console/channels/tg/users", form={"user_id": "999"}, max_redirects=0)
    assert answer.status == 403
    assert "anti-forgery" in await answer.text()
    assert list((await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))).users) == []
    await page.goto("/console/channels/tg")
    await owner.execute(
        "UPDATE console_sessions SET expires_at = now() - interval '1 second' WHERE tenant_id = $1",
        tenant.tenant_id,
    )
    await page.fill("input[name=user_id]", "999")
    await page.get_by_role("button", name="Allow").click()
    await expect(page).to_have_url(re.compile(r"/console/login"))
    await expect(page.locator(".notice")).to_contain_text("session ended")
    assert list((await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))).users) == []


async def test_the_doctor_page(page: Page, tenant: Tenant) -> None:
    await tenant.channel("wide", dm_policy=cm.DM_POLICY_OPEN)
    await _login(page, tenant.keys["admin"])
    await page.get_by_role("link", name="Doctor").click()
    await expect(page.locator("#findings")).to_contain_text("open_dms")
    await _shot(page, "doctor")


async def test_create_and_revoke_an_invite(page: Page, tenant: Tenant) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING)
    await _login(page, tenant.keys["admin"])
    await page.goto("/console/channels/tg")
    await page.fill("input[name=max_uses]", "3")
    await page.fill("input[name=note]", "for the team")
    await page.get_by_role("button", name="Create invite").click()
    code = (await page.inner_text("#invite-code")).strip()
    assert len(code) == 19 and code.count("-") == 3
    redeemed = await tenant.connector.authz.RedeemInvite(
        az.RedeemInviteRequest(channel_id="tg", user_id="808", code=code)
    )
    assert redeemed.outcome == az.INVITE_OUTCOME_ACCEPTED
    await page.get_by_role("link", name="Back to the channel").click()
    row = page.locator("tr", has_text="for the team")
    await expect(row).to_contain_text("1 of 3")
    await row.get_by_role("button", name="Revoke").click()
    await expect(page.locator(".notice")).to_have_text("Invite revoked.")
    await expect(page.locator("tr", has_text="for the team")).to_have_count(0)
