"""The web console and the HTTP API on the bench server (issue #19).

- ``console_channel_page_10k`` / ``console_channel_search_10k`` /
  ``console_approvals_page``: the median time of a signed-in GET of the
  channel page (first page of a channel with 10,000 users; a search in it) and
  of the approvals page (with ``PENDING`` pending pairing requests on that
  channel), one request at a time from an aiohttp client, in ms. Target: under
  200 ms each.
- ``checkuser_http`` / ``checkuser_grpc_same_client``: CheckUser calls per
  second over the HTTP/JSON API (Connect) and over gRPC, from the same
  single-process asyncio client with ``IN_FLIGHT`` calls in flight, in turns
  of ``TURN`` seconds; ``ratio checkuser_http_cost_vs_grpc`` is gRPC's rate over
  HTTP's, the cost of an HTTP call in gRPC calls (target: at most 1.5).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import statistics
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import psutil

from authz_service.client import connect
from authz_service.domain.model import DmPolicy
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .dataset import MAIN_TENANT, _policy_json, new_api_key, user_name

CHANNEL = "console"
USERS = 10_000
PENDING = 200
SAMPLES = 30
IN_FLIGHT = 16
TURN = 2.0
_NONCE = re.compile(r'name="nonce" value="([^"]+)"')
_ERROR = re.compile(r'class="error"[^>]*>(.*?)</p>', re.S)


async def load_console_channel(owner_dsn: str, secret_key: str) -> str:
    """Channel ``console`` of the main tenant with USERS allowlisted users (with
    display names) and PENDING live pairing requests, and an admin key for it."""
    key_id, key, digest = new_api_key(MAIN_TENANT, secret_key)
    now = datetime.now(UTC)
    conn = await asyncpg.connect(owner_dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO api_keys (tenant_id, key_id, role, name, secret_hash) VALUES ($1, $2, 'admin', 'console', $3)",
                MAIN_TENANT, key_id, digest,
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO channels (tenant_id, channel_id, platform, policy) VALUES ($1, $2, 'telegram', $3)",
                MAIN_TENANT, CHANNEL, _policy_json(dm_policy=DmPolicy.PAIRING, max_pending=10_000),
            )  # fmt: skip
            await conn.copy_records_to_table(
                "subjects",
                records=[
                    (MAIN_TENANT, CHANNEL, user_name(u), f"Console user {u}", "allowed", "admin")
                    for u in range(USERS)
                ],
                columns=["tenant_id", "channel_id", "user_id", "display_name", "status", "source"],
            )
            pending = [
                (MAIN_TENANT, f"apr_console{j:07d}", "pairing", CHANNEL, str(90_000_000 + j), "Waiting",
                 secrets.token_bytes(32), "pending", now, now + timedelta(hours=2))
                for j in range(PENDING)
            ]  # fmt: skip
            columns = ["tenant_id", "approval_id", "kind", "channel_id", "user_id", "display_name",
                       "code_hash", "status", "created_at", "expires_at"]  # fmt: skip
            await conn.copy_records_to_table("approvals", records=pending, columns=columns)
        for table in ("subjects", "approvals"):
            await conn.execute(f"VACUUM (ANALYZE) {table}")
    finally:
        await conn.close()
    return key


async def _login(session: aiohttp.ClientSession, base: str, key: str) -> None:
    async with session.get(f"{base}/console/login") as resp:
        m = _NONCE.search(await resp.text())
    assert m is not None, "no login form"
    async with session.post(
        f"{base}/console/login", data={"nonce": m.group(1), "key": key}, allow_redirects=False
    ) as resp:
        if resp.status != 303:
            raise RuntimeError(f"console login failed: {resp.status}")


async def page_times(base: str, key: str) -> dict[str, float]:
    """Median ms of each page, signed in, one request at a time."""
    pages = {
        "console_channel_page_10k": f"/console/channels/{CHANNEL}",
        "console_channel_search_10k": f"/console/channels/{CHANNEL}?q=user+99",
        "console_approvals_page": "/console/approvals",
    }
    out: dict[str, float] = {}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        await _login(session, base, key)
        for name, path in pages.items():
            times = []
            for i in range(SAMPLES + 3):
                t = time.perf_counter()
                async with session.get(base + path, allow_redirects=False) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        why = _ERROR.search(body.decode(errors="replace"))
                        raise RuntimeError(f"{path}: {resp.status} {why.group(1) if why else ''}")
                if i >= 3:  # the first few warm the caches
                    times.append((time.perf_counter() - t) * 1000)
            out[name] = statistics.median(times)
    return out


async def _turn(call: object, seconds: float, server: psutil.Process | None = None) -> tuple[int, float]:
    """Calls completed in ``seconds``, and the server process's CPU seconds meanwhile."""
    done = 0
    stop = time.monotonic() + seconds
    before = server.cpu_times() if server is not None else None

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await call()  # type: ignore[operator]
            done += 1

    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    cpu = 0.0
    if server is not None and before is not None:
        after = server.cpu_times()
        cpu = (after.user - before.user) + (after.system - before.system)
    return done, cpu


async def checkuser_rates(
    base: str, grpc_address: str, connector_key: str, rounds: int, server_pid: int
) -> dict[str, float]:
    """CheckUser per second over HTTP and over gRPC, turn by turn, best turn of each;
    and the server's CPU per call (µs), the median turn of each."""
    server = psutil.Process(server_pid)
    users = itertools.cycle([user_name(u) for u in range(1000)])
    headers = {"Authorization": f"Bearer {connector_key}", "Content-Type": "application/json"}
    client = connect(grpc_address, connector_key)
    url = f"{base}/authz.v1.AuthzService/CheckUser"
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:

            async def over_http() -> None:
                body = f'{{"channelId":"tg","userId":"{next(users)}","chatKind":"CHAT_KIND_DIRECT"}}'
                async with session.post(url, data=body, headers=headers) as resp:
                    answer = await resp.json()
                    if answer.get("decision") != "DECISION_ALLOW":
                        raise RuntimeError(f"HTTP CheckUser: {answer}")

            async def over_grpc() -> None:
                answer = await client.authz.CheckUser(
                    az.CheckUserRequest(channel_id="tg", user_id=next(users), chat_kind=cm.CHAT_KIND_DIRECT)
                )
                if answer.decision != az.DECISION_ALLOW:
                    raise RuntimeError(f"gRPC CheckUser: {answer}")

            await _turn(over_http, TURN / 2)  # warm-up
            await _turn(over_grpc, TURN / 2)
            http: list[tuple[int, float]] = []
            grpc_: list[tuple[int, float]] = []
            idle: list[float] = []
            for _ in range(rounds):
                http.append(await _turn(over_http, TURN, server))
                grpc_.append(await _turn(over_grpc, TURN, server))
                idle.append((await _turn(_nothing, TURN, server))[1] / TURN)
    finally:
        await client.close()
    # What the server spends without calls (its background tasks, gRPC's pollers) is
    # not a call's cost: the marginal CPU per call, in µs.
    idle_cpu = statistics.median(idle)
    return {
        "checkuser_http": max(n for n, _ in http) / TURN,
        "checkuser_grpc_same_client": max(n for n, _ in grpc_) / TURN,
        "checkuser_http_server_cpu": statistics.median(
            (cpu - idle_cpu * TURN) / n * 1e6 for n, cpu in http if n
        ),
        "checkuser_grpc_server_cpu": statistics.median(
            (cpu - idle_cpu * TURN) / n * 1e6 for n, cpu in grpc_ if n
        ),
    }


async def _nothing() -> None:
    await asyncio.sleep(TURN)
