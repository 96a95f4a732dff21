"""The data set, loaded as the schema owner with COPY: one tenant with
1,000 allowlisted users and the pairing channels (the small run), later 999
more tenants with 1,000 users each (1,000,000 subjects, the scale run).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from authz_service.domain import policy as policy_codec
from authz_service.domain.model import ChannelPolicy, DmPolicy, Platform, SendDefault, SendPolicy
from authz_service.domain.pairing import Keyring
from authz_service.flows.auth import new_key

MAIN_TENANT = "bench-0000"
CHANNEL = "tg"
AGENT = "default"
SEND_TARGET = "telegram:100"
OWNER = "1000"
USER_BASE = 10_000_000
# Decided pairing requests already on the pairing channels when the bench starts:
# a database in service has history, and its statistics (ANALYZE) show it. On
# empty tables PostgreSQL plans every lookup as if any index would do, and the
# plans it caches then stay until autovacuum's first ANALYZE (a minute or more).
PAIRING_HISTORY = 20_000
HISTORY_USER_BASE = 90_000_000


def tenant_name(i: int) -> str:
    return f"bench-{i:04d}"


def user_name(i: int) -> str:
    return str(USER_BASE + i)


def new_api_key(tenant_id: str, secret_key: str) -> tuple[str, str, bytes]:
    """(key id, full key, stored hash), made by the service's own code under the
    bench server's secret key (so the key's check holds)."""
    return new_key(tenant_id, Keyring(secret_key.encode()))


def _policy_json(**kwargs: Any) -> str:
    policy = policy_codec.validate(Platform.TELEGRAM, ChannelPolicy(**kwargs))
    return json.dumps(policy_codec.to_json(policy))


@dataclass
class DataSet:
    connector_keys: dict[str, str] = field(default_factory=dict)  # tenant -> connector key
    approver_key: str = ""
    pair_channels: list[str] = field(default_factory=list)
    tenants: int = 0
    users_per_tenant: int = 0

    @property
    def subjects(self) -> int:
        return self.tenants * self.users_per_tenant


async def load_tenants(
    owner_dsn: str,
    secret_key: str,
    data: DataSet,
    first: int,
    count: int,
    users_per_tenant: int,
    pair_channels: int = 0,
) -> None:
    """Tenants ``first``..``first+count-1``, each with a connector key, channel
    ``tg`` and ``users_per_tenant`` allowlisted subjects, loaded with COPY as
    the owner (a superuser: row-level security does not apply to it)."""
    channel_policy = _policy_json(
        dm_policy=DmPolicy.PAIRING,
        owner_id=OWNER,
        send_policy=SendPolicy(default=SendDefault.DENY, allow=(SEND_TARGET,)),
    )
    pairing_policy = _policy_json(dm_policy=DmPolicy.PAIRING, owner_id=OWNER, max_pending=10_000)
    tenants = [tenant_name(i) for i in range(first, first + count)]
    keys: list[tuple[str, str, str, str, bytes]] = []
    for t in tenants:
        key_id, key, digest = new_api_key(t, secret_key)
        keys.append((t, key_id, "connector", "bench", digest))
        data.connector_keys[t] = key
    channels = [(t, CHANNEL, "telegram", channel_policy) for t in tenants]
    if pair_channels:
        key_id, key, digest = new_api_key(tenants[0], secret_key)
        keys.append((tenants[0], key_id, "approver", "bench", digest))
        data.approver_key = key
        data.pair_channels = [f"pair-{j:03d}" for j in range(pair_channels)]
        channels += [(tenants[0], c, "telegram", pairing_policy) for c in data.pair_channels]

    def subjects() -> Iterator[tuple[str, str, str, str, str]]:
        for t in tenants:
            for u in range(users_per_tenant):
                yield (t, CHANNEL, user_name(u), "allowed", "admin")

    def history() -> Iterator[tuple[object, ...]]:
        """Decided (approved) pairing requests, spread over the pairing channels."""
        at = datetime.now(UTC) - timedelta(days=1)
        for j in range(PAIRING_HISTORY if pair_channels else 0):
            user = str(HISTORY_USER_BASE + j)
            yield (
                tenants[0], f"apr_bench{j:08d}", "pairing", data.pair_channels[j % pair_channels], user, "Bench",
                secrets.token_bytes(32), "approved", at, at + timedelta(minutes=5), at, f"telegram:{OWNER}",
                [f"telegram:{OWNER}"],
            )  # fmt: skip

    conn = await asyncpg.connect(owner_dsn)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "tenants", records=[(t, "bench") for t in tenants], columns=["tenant_id", "display_name"]
            )
            await conn.copy_records_to_table(
                "api_keys", records=keys, columns=["tenant_id", "key_id", "role", "name", "secret_hash"]
            )
            await conn.copy_records_to_table(
                "channels", records=channels, columns=["tenant_id", "channel_id", "platform", "policy"]
            )
            await conn.copy_records_to_table(
                "subjects",
                records=subjects(),
                columns=["tenant_id", "channel_id", "user_id", "status", "source"],
            )
            await conn.copy_records_to_table(
                "approvals",
                records=history(),
                columns=[
                    "tenant_id", "approval_id", "kind", "channel_id", "user_id", "display_name", "code_hash",
                    "status", "created_at", "expires_at", "resolved_at", "resolved_by", "approved_by",
                ],
            )  # fmt: skip
    finally:
        await conn.close()
    data.tenants = max(data.tenants, first + count)
    data.users_per_tenant = users_per_tenant


async def settle(owner_dsn: str) -> None:
    """After a bulk load: statistics, hint bits and a checkpoint now, not
    during a measurement."""
    conn = await asyncpg.connect(owner_dsn)
    try:
        for table in ("tenants", "api_keys", "channels", "subjects", "approvals"):
            await conn.execute(f"VACUUM (ANALYZE) {table}")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
