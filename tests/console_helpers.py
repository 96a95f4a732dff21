"""Shared by the web console's tests (test_console_*.py): a signed-in aiohttp
client of the console, and where Debian's Chromium is.

The browser tests need Chromium from Debian's ``chromium`` package: missing, they
skip, except under CI=true, where they fail (`make test` installs it as root:
Makefile, TEST_PACKAGES)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from .conftest import Service

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).parent.parent / "test-output" / "screenshots"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_NONCE = re.compile(r'name="nonce" value="([^"]+)"')


def chromium() -> str:
    """Debian's Chromium, or skip (fail under CI=true) with how to get it."""
    if not os.access(CHROMIUM, os.X_OK):
        why = "Chromium is not installed: `apt-get install chromium` (make test does it as root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    return CHROMIUM


def base_url(service: Service) -> str:
    assert service.running.http is not None
    return f"http://127.0.0.1:{service.running.http.port}"


def find_csrf(html: str) -> str:
    m = _CSRF.search(html)
    assert m is not None, "no anti-forgery token on the page"
    return m.group(1)


@dataclass
class Browser:
    """A console user with aiohttp: a cookie jar, no redirects followed unless asked."""

    session: aiohttp.ClientSession
    base: str

    async def get(self, path: str) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.get(self.base + path, allow_redirects=False) as resp:
            return resp.status, await resp.text(), resp

    async def post(self, path: str, form: dict[str, str]) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.post(self.base + path, data=form, allow_redirects=False) as resp:
            return resp.status, await resp.text(), resp

    async def login(self, key: str) -> tuple[int, str, aiohttp.ClientResponse]:
        _, html, _ = await self.get("/console/login")
        m = _NONCE.search(html)
        assert m is not None
        return await self.post("/console/login", {"nonce": m.group(1), "key": key})

    def cookie(self, name: str) -> str | None:
        found = self.session.cookie_jar.filter_cookies(URL(self.base + "/console/"))
        return found[name].value if name in found else None

    async def csrf(self, path: str = "/console/approvals") -> str:
        status, html, _ = await self.get(path)
        assert status == 200, html
        return find_csrf(html)


async def open_console_session(service: Service, key: str) -> None:
    """Sign in to the console with ``key`` as a browser would (a console_sessions row)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        status, _, _ = await Browser(session, base_url(service)).login(key)
        assert status == 303
