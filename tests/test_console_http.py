"""The web console over plain HTTP (issue #19, api/console.py): the login and its
errors, the session cookie's flags, the security headers, the anti-forgery token
on every change, and sessions that end (expired, signed out, revoked key) or
belong to another tenant. A real aiohttp client against the session's server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from authz_service.api.console import COOKIE, CSP
from authz_service.config import ConfigError, Settings
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm
from authz_service.server import start_server
from authz_service.store.db import Database

from .conftest import SECRET_KEY, Dsns, Service, Tenant, rpc_error
from .console_helpers import Browser, base_url, find_csrf
from .pairing_helpers import check, pair


@pytest.fixture
async def browser(service: Service) -> AsyncIterator[Browser]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield Browser(session, base_url(service))


async def _signed_in(browser: Browser, key: str) -> None:
    status, _, resp = await browser.login(key)
    assert status == 303, await resp.text()
    assert resp.headers["Location"] == "/console/approvals"


async def test_login_sets_a_strict_httponly_cookie_and_the_key_is_nowhere(
    browser: Browser, tenant: Tenant
) -> None:
    key = tenant.keys["admin"]
    status, _, resp = await browser.login(key)
    assert status == 303
    cookie = next(c for c in resp.headers.getall("Set-Cookie") if c.startswith(COOKIE + "="))
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "path"} <= flags
    assert "samesite=strict" in cookie.lower()
    assert "secure" not in flags  # plain HTTP here; over TLS it is Secure (test_tls.py)
    secret = key.split(".")[3]
    assert secret not in cookie
    for path in ("/console/approvals", "/console/channels", "/console/audit"):
        page_status, html, _ = await browser.get(path)
        assert page_status == 200
        assert secret not in html and key not in html
        assert tenant.tenant_id in html


async def test_every_console_answer_has_the_security_headers(browser: Browser, tenant: Tenant) -> None:
    for path in ("/console/login", "/console/approvals", "/console/static/console.js"):
        _, _, resp = await browser.get(path)
        assert resp.headers["Content-Security-Policy"] == CSP
        assert "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP and "unsafe" not in CSP
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    await _signed_in(browser, tenant.keys["admin"])
    _, html, resp = await browser.get("/console/approvals")
    assert resp.headers["Content-Security-Policy"] == CSP
    assert "<script>" not in html and " style=" not in html and "onclick" not in html


async def test_login_errors_are_clear_and_change_nothing(browser: Browser, tenant: Tenant) -> None:
    status, html, resp = await browser.login(tenant.keys["admin"][:-3] + "xyz")
    assert status == 401 and "invalid API key" in html
    assert browser.cookie(COOKIE) is None
    status, html, _ = await browser.login(tenant.keys["connector"])
    assert status == 403 and "admin or approver key" in html
    status, html, _ = await browser.login("")
    assert status == 400 and "Paste an API key" in html
    # A login form posted from elsewhere (no matching nonce cookie) is refused.
    for nonce in ("forged", "é"):
        status, html, _ = await browser.post("/console/login", {"nonce": nonce, "key": tenant.keys["admin"]})
        assert status == 403 and "expired" in html
    status, _, resp = await browser.get("/console/approvals")
    assert status == 303 and resp.headers["Location"].startswith("/console/login")


async def test_a_change_without_the_csrf_token_is_refused(browser: Browser, tenant: Tenant) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING)
    await _signed_in(browser, tenant.keys["admin"])
    for form in ({"user_id": "555"}, {"user_id": "555", "csrf": "forged"}, {"user_id": "555", "csrf": "é"}):
        status, html, _ = await browser.post("/console/channels/tg/users", form)
        assert status == 403 and "anti-forgery" in html
    users = await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))
    assert list(users.users) == []
    # Another session's token does not fit this one.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        second = Browser(other, browser.base)
        await _signed_in(second, tenant.keys["admin"])
        foreign = await second.csrf()
    status, _, _ = await browser.post("/console/channels/tg/users", {"user_id": "555", "csrf": foreign})
    assert status == 403
    status, _, _ = await browser.post(
        "/console/channels/tg/users", {"user_id": "555", "csrf": await browser.csrf()}
    )
    assert status == 303
    users = await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))
    assert [u.user_id for u in users.users] == ["555"]


async def test_an_expired_session_is_refused(
    browser: Browser, tenant: Tenant, owner: asyncpg.Connection
) -> None:
    await _signed_in(browser, tenant.keys["admin"])
    csrf = await browser.csrf()
    await owner.execute(
        "UPDATE console_sessions SET expires_at = now() - interval '1 second' WHERE tenant_id = $1",
        tenant.tenant_id,
    )
    status, _, resp = await browser.get("/console/approvals")
    assert status == 303 and resp.headers["Location"] == "/console/login?ended=1"
    await tenant.channel("tg")
    status, _, resp = await browser.post("/console/channels/tg/users", {"user_id": "556", "csrf": csrf})
    assert status == 303 and resp.headers["Location"].startswith("/console/login")
    assert list((await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))).users) == []


async def test_signing_out_ends_the_session(browser: Browser, tenant: Tenant) -> None:
    await _signed_in(browser, tenant.keys["admin"])
    cookie = browser.cookie(COOKIE)
    assert cookie is not None
    status, _, _ = await browser.post("/console/logout", {"csrf": await browser.csrf()})
    assert status == 303
    async with (
        aiohttp.ClientSession(cookies={COOKIE: cookie}) as replay,
        replay.get(browser.base + "/console/approvals", allow_redirects=False) as resp,
    ):
        assert resp.status == 303  # the old cookie is dead on the server, not only in the jar


async def test_a_revoked_keys_session_stops_at_once(browser: Browser, tenant: Tenant) -> None:
    made = await tenant.admin.admin.CreateApiKey(adm.CreateApiKeyRequest(role=adm.ROLE_APPROVER, name="temp"))
    await _signed_in(browser, made.secret)
    assert (await browser.get("/console/approvals"))[0] == 200
    await tenant.admin.admin.RevokeApiKey(adm.RevokeApiKeyRequest(key_id=made.key.key_id))
    status, _, resp = await browser.get("/console/approvals")
    assert status == 303 and resp.headers["Location"].startswith("/console/login")
    status, html, _ = await browser.login(made.secret)
    assert status == 401 and "invalid API key" in html


async def test_a_strangers_session_cannot_touch_another_tenant(
    browser: Browser, tenant: Tenant, other_tenant: Tenant
) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING)
    started = await pair(tenant, "42")
    await _signed_in(browser, other_tenant.keys["admin"])
    csrf = await browser.csrf()
    approval_id = started.approval_id
    status, html, _ = await browser.post(
        f"/console/approvals/{approval_id}/resolve", {"action": "approve", "csrf": csrf}
    )
    assert status == 404, html
    status, _, _ = await browser.get("/console/channels/tg")
    assert status == 404
    assert approval_id not in (await browser.get("/console/approvals"))[1]
    assert (await check(tenant, "42", consistent=True)).decision == az.DECISION_PAIRING_REQUIRED
    pending = await tenant.admin.admin.ListApprovals(adm.ListApprovalsRequest(channel_id="tg"))
    assert [a.approval_id for a in pending.approvals] == [approval_id]


async def test_an_approver_sees_and_decides_approvals_but_manages_no_channel(
    browser: Browser, tenant: Tenant
) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING)
    started = await pair(tenant, "43", name="<b>Bob</b>")
    await _signed_in(browser, tenant.keys["approver"])
    status, html, _ = await browser.get("/console/approvals")
    assert status == 200 and started.approval_id in html
    assert "&lt;b&gt;Bob&lt;/b&gt;" in html and "<b>Bob</b>" not in html
    status, html, _ = await browser.get("/console/channels")
    assert status == 403 and "not allowed for the approver role" in html
    csrf = find_csrf((await browser.get("/console/approvals"))[1])
    status, _, _ = await browser.post("/console/channels/tg/users", {"user_id": "9", "csrf": csrf})
    assert status == 403
    status, _, resp = await browser.post(
        f"/console/approvals/{started.approval_id}/resolve", {"action": "approve", "csrf": csrf}
    )
    assert status == 303 and resp.headers["Location"] == "/console/approvals?done=approved"
    assert (await check(tenant, "43", consistent=True)).decision == az.DECISION_ALLOW
    got = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=started.approval_id))
    assert got.status == cm.APPROVAL_STATUS_APPROVED


async def test_list_users_pages_and_searches(tenant: Tenant) -> None:
    await tenant.channel("tg")
    for i in range(7):
        await tenant.admin.admin.AllowUser(
            adm.AllowUserRequest(channel_id="tg", user_id=str(1000 + i), display_name=f"user {i % 2}")
        )
    seen: list[str] = []
    token = ""
    while True:
        page = await tenant.admin.admin.ListUsers(
            adm.ListUsersRequest(channel_id="tg", page_size=3, page_token=token)
        )
        seen += [u.user_id for u in page.users]
        token = page.next_page_token
        if not token:
            break
    assert seen == [str(1000 + i) for i in range(7)]
    named = await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg", query="USER 1"))
    assert [u.user_id for u in named.users] == ["1001", "1003", "1005"]
    prefix = await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg", query="100"))
    assert len(prefix.users) == 7
    bad_query = await rpc_error(
        tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg", query="a\x00b"))
    )
    assert "query" in (bad_query.details() or "")
    literal = await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg", query="%"))
    assert list(literal.users) == []
    everyone = await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))
    assert len(everyone.users) == 7 and not everyone.next_page_token
    bad = await rpc_error(
        tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg", page_token="bogus"))
    )
    assert "page_token" in (bad.details() or "")


async def test_the_doctor_page_shows_the_findings_with_their_fixes(browser: Browser, tenant: Tenant) -> None:
    await tenant.channel("wide", dm_policy=cm.DM_POLICY_OPEN)
    await _signed_in(browser, tenant.keys["admin"])
    status, html, _ = await browser.get("/console/doctor")
    assert status == 200
    # The connector key of the fixture is bound to no channel, and "wide" is open to everyone.
    for code in ("unbound_connector_key", "open_dms"):
        assert f"<code>{code}</code>" in html
    assert "fix" in html.lower()


async def test_quorum_progress_is_shown_and_a_console_vote_counts(browser: Browser, tenant: Tenant) -> None:
    await tenant.channel("tg", owner_id="100", required_approvals=2)
    started = await pair(tenant, "44")
    await tenant.connector.authz.ResolveApproval(
        az.ResolveApprovalRequest(
            approval_id=started.approval_id, action=cm.APPROVAL_ACTION_APPROVE, actor_id="100"
        )
    )
    await _signed_in(browser, tenant.keys["approver"])
    status, html, _ = await browser.get("/console/approvals")
    assert status == 200 and "1 of 2 approvals" in html
    await browser.post(
        f"/console/approvals/{started.approval_id}/resolve", {"action": "approve", "csrf": find_csrf(html)}
    )
    got = await tenant.admin.admin.GetApproval(adm.GetApprovalRequest(approval_id=started.approval_id))
    assert got.status == cm.APPROVAL_STATUS_APPROVED and len(got.approved_by) == 2


async def test_the_user_page_and_purge_with_confirmation(browser: Browser, tenant: Tenant) -> None:
    await tenant.channel(
        "tg", dm_policy=cm.DM_POLICY_ALLOWLIST, agent_id="main",
        bindings=[cm.Binding(user_id="77", agent_id="ops", permissions=["deploy"])],
    )  # fmt: skip
    await tenant.admin.admin.AllowUser(
        adm.AllowUserRequest(channel_id="tg", user_id="77", display_name="Zed")
    )
    await _signed_in(browser, tenant.keys["admin"])
    status, html, _ = await browser.get("/console/channels/tg/users/77")
    assert status == 200
    assert "Zed" in html and "allowed" in html and "<code>ops</code>" in html and "deploy" in html
    assert "<td>user.allowed</td>" in html  # its audit history
    csrf = find_csrf(html)
    status, html, _ = await browser.post(
        "/console/channels/tg/users/-/purge", {"user_id": "77", "confirm": "78", "csrf": csrf}
    )
    assert status == 400 and "confirm" in html
    assert len((await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))).users) == 1
    status, _, resp = await browser.post(
        "/console/channels/tg/users/-/export", {"user_id": "77", "csrf": csrf}
    )
    assert status == 200 and resp.headers["Content-Type"].startswith("application/json")
    status, _, _ = await browser.post(
        "/console/channels/tg/users/-/purge", {"user_id": "77", "confirm": "77", "csrf": csrf}
    )
    assert status == 303
    assert list((await tenant.admin.admin.ListUsers(adm.ListUsersRequest(channel_id="tg"))).users) == []


async def test_audit_filters_and_exports(browser: Browser, tenant: Tenant) -> None:
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_PAIRING)
    await pair(tenant, "601", name="Ann")
    await pair(tenant, "602")
    await _signed_in(browser, tenant.keys["admin"])
    status, html, _ = await browser.get("/console/audit?event=pairing.&user=601")
    assert status == 200 and "<td>601</td>" in html and "<td>602</td>" not in html
    status, text, resp = await browser.get("/console/audit/export?format=csv&event=pairing.&user=601")
    assert status == 200 and resp.headers["Content-Type"].startswith("text/csv")
    lines = text.strip().splitlines()
    assert lines[0].startswith("event_id,at,event,actor") and len(lines) == 2 and ",601," in lines[1]
    status, text, _ = await browser.get("/console/audit/export?format=json&event=pairing.")
    rows = json.loads(text)
    assert {r["subject"] for r in rows} == {"601", "602"}
    status, html, _ = await browser.get("/console/audit?since=yesterday")
    assert status == 400 and "since" in html


def test_console_settings_are_read_and_validated() -> None:
    base = {"AUTHZ_HOME": "/nonexistent", "AUTHZ_SECRET_KEY": "k" * 32, "AUTHZ_OPERATOR_KEY": "o" * 32}
    default = Settings.from_env(base)
    assert (default.console, default.console_session_seconds, default.console_secure_cookies) == (
        True,
        28800,
        False,
    )
    chosen = Settings.from_env(
        {
            **base,
            "AUTHZ_CONSOLE": "off",
            "AUTHZ_CONSOLE_SESSION_SECONDS": "600",
            "AUTHZ_CONSOLE_SECURE_COOKIES": "on",
        }
    )
    assert (chosen.console, chosen.console_session_seconds, chosen.console_secure_cookies) == (
        False,
        600,
        True,
    )
    for name, bad in (("AUTHZ_CONSOLE", "maybe"), ("AUTHZ_CONSOLE_SESSION_SECONDS", "5")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({**base, name: bad})


async def test_console_off_serves_the_api_only(dsns: Dsns, tenant: Tenant) -> None:
    settings = Settings.from_env(
        {"AUTHZ_DATABASE_URL": dsns.service, "AUTHZ_SECRET_KEY": SECRET_KEY, "AUTHZ_HOME": "/nonexistent",
         "AUTHZ_CONSOLE": "off"}
    )  # fmt: skip
    running = await start_server(
        await Database.connect(dsns.service), settings, listen="127.0.0.1:0", http_listen="127.0.0.1:0"
    )
    try:
        assert running.http is not None
        base = f"http://127.0.0.1:{running.http.port}"
        headers = {"Authorization": f"Bearer {tenant.keys['admin']}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/console/login") as resp:
                assert resp.status == 404
            async with session.post(
                f"{base}/authz.v1.AdminService/ListChannels", data=b"{}", headers=headers
            ) as resp:
                assert resp.status == 200
    finally:
        await running.stop(grace=0)


async def test_redirects_encode_the_ids_they_carry(browser: Browser, tenant: Tenant) -> None:
    # A Slack id has a ":", a WhatsApp number a "+" (a space once decoded from a query).
    await _signed_in(browser, tenant.keys["admin"])
    csrf = await browser.csrf()
    for channel, platform, user, encoded in (
        ("sl", cm.PLATFORM_SLACK, "T0123ABC:U0456DEF", "T0123ABC%3AU0456DEF"),
        ("wa", cm.PLATFORM_WHATSAPP, "+84987654321", "%2B84987654321"),
    ):
        await tenant.channel(channel, platform=platform, dm_policy=cm.DM_POLICY_ALLOWLIST)
        status, _, resp = await browser.post(
            f"/console/channels/{channel}/users/-/block", {"user_id": user, "csrf": csrf, "back": "user"}
        )
        assert status == 303
        assert resp.headers["Location"] == f"/console/channels/{channel}/users/{encoded}?done=blocked"
        status, html, _ = await browser.get(resp.headers["Location"])
        assert status == 200 and f"<code>{user}</code>" in html and "blocked (user_blocked)" in html


async def test_the_user_page_finds_its_user_among_many_similar_ones(browser: Browser, tenant: Tenant) -> None:
    # A search for "9" matches these 55 by name before user 9 itself (ids sort as text):
    # the page reads the user with ExplainUser, not from the first page of a search.
    await tenant.channel("tg", dm_policy=cm.DM_POLICY_ALLOWLIST)
    for n in range(10, 65):
        await tenant.admin.admin.AllowUser(
            adm.AllowUserRequest(channel_id="tg", user_id=str(n), display_name="fan of 9")
        )
    await tenant.admin.admin.AllowUser(
        adm.AllowUserRequest(channel_id="tg", user_id="9", display_name="Nine")
    )
    await _signed_in(browser, tenant.keys["admin"])
    status, html, _ = await browser.get("/console/channels/tg/users/9")
    assert status == 200 and "<dd>Nine</dd>" in html and "allow (" in html
