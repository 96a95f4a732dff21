"""API keys: made, checked, hashed, verified.

A tenant key reads ``azk.<tenant>.<key id>.<secret>.<check>``. The tenant part
lets the lookup run inside that tenant's row-level-security scope, so even key
verification never reads across tenants. Only SHA-256 of the 256-bit secret is
stored (a slow KDF adds nothing for random keys) and compared in constant time.

The check is a MAC over tenant and key id under a key derived from
AUTHZ_SECRET_KEY (``Keyring.api_key_check``): a made-up or mistyped key fails
it in memory, without a database read. Keys made before the check existed have
four parts instead of five; they take the database path (unless
AUTHZ_LEGACY_API_KEYS=off), where an unknown key id is remembered in a small
negative cache of its own (cache.py) so a flood cannot evict real entries.
Failures are counted per peer (``FailureThrottle``): once a peer's allowance is
spent, its calls that would need the database are answered RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..cache import KeyRecord, StateCache
from ..domain import ids
from ..domain.errors import ResourceExhausted, Unauthenticated
from ..domain.model import Principal, Role
from ..domain.pairing import Keyring
from ..store import keys
from ..store.db import Database

PREFIX = "azk"
_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_INVALID = "invalid API key"


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_key(tenant_id: str, keyring: Keyring) -> tuple[str, str, bytes]:
    """Return (key id, full key text, hash of the secret part)."""
    key_id = "".join(secrets.choice(_ALNUM) for _ in range(12))
    secret = secrets.token_urlsafe(32)
    check = keyring.api_key_check(tenant_id, key_id)
    return key_id, f"{PREFIX}.{tenant_id}.{key_id}.{secret}.{check}", hash_secret(secret)


@dataclass
class _Bucket:
    tokens: float
    at: float


class FailureThrottle:
    """Failed authentications per peer, in memory: a token bucket each, holding
    ``burst`` failures and refilled at ``per_minute``. A peer whose bucket is
    empty is refused at once for anything that would read the database (a cache
    hit on a genuine key still passes, so a client behind the same address
    keeps working while its keys are cached). At most ``max_peers`` buckets,
    least recently failed dropped first (a dropped peer starts full again)."""

    def __init__(
        self,
        burst: int = 30,
        per_minute: int = 60,
        max_peers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self.max_peers = max_peers
        self.clock = clock
        self._peers: OrderedDict[str, _Bucket] = OrderedDict()

    def _refilled(self, peer: str) -> _Bucket | None:
        bucket = self._peers.get(peer)
        if bucket is not None:
            now = self.clock()
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        return bucket

    def retry_after(self, peer: str) -> int:
        """Whole seconds until ``peer`` may fail again; 0: it may now."""
        bucket = self._refilled(peer)
        if bucket is None or bucket.tokens >= 1.0:
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / self.rate))

    def failed(self, peer: str) -> None:
        bucket = self._refilled(peer)
        if bucket is None:
            bucket = self._peers[peer] = _Bucket(self.burst, self.clock())
            if len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)
        self._peers.move_to_end(peer)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)


@dataclass(frozen=True)
class Credentials:
    """What one call presents, and what judges it."""

    token: str
    keyring: Keyring
    operator_key_hash: bytes | None
    peer: str = ""
    """The caller's address without its port (api/rpc.py ``peer_of``)."""
    throttle: FailureThrottle | None = None
    legacy_keys: bool = True
    """AUTHZ_LEGACY_API_KEYS: accept four-part keys made before the check existed."""


_DUMMY = hash_secret("no such key")


async def _key(
    db: Database, cache: StateCache | None, tenant_id: str, key_id: str, before_read: Callable[[], None]
) -> KeyRecord | None:
    if cache is not None:
        found, record = cache.key(tenant_id, key_id)
        if found:
            return record
        generation = cache.generation
    before_read()
    async with db.tenant(tenant_id) as conn:
        row = await keys.get(conn, tenant_id, key_id)
    record = None
    if row is not None:
        bound = frozenset(row.channels), frozenset(row.agents)
        record = KeyRecord(row.secret_hash, row.role, row.revoked_at is not None, *bound)
    if cache is not None:
        cache.fill_key(generation, tenant_id, key_id, record)
    return record


def _parse(creds: Credentials) -> tuple[str, str, str] | None:
    """(tenant, key id, secret) of a well-formed tenant key whose check holds."""
    parts = creds.token.split(".")
    if len(parts) == 5:
        _, tenant_id, key_id, secret, check = parts
    elif len(parts) == 4 and creds.legacy_keys:
        _, tenant_id, key_id, secret = parts
        check = None
    else:
        return None
    if not ids.TENANT_ID.fullmatch(tenant_id) or not ids.KEY_ID.fullmatch(key_id):
        return None
    if check is not None and not hmac.compare_digest(
        check.encode(), creds.keyring.api_key_check(tenant_id, key_id).encode()
    ):
        return None
    return tenant_id, key_id, secret


async def authenticate(db: Database, creds: Credentials, cache: StateCache | None = None) -> Principal:
    """The caller behind ``creds.token``. Key records may come from the cache,
    which a revocation on any replica clears through NOTIFY (see
    authz_service.cache). Every refusal counts against the peer."""
    try:
        return await _authenticate(db, creds, cache)
    except Unauthenticated:
        if creds.throttle is not None:
            creds.throttle.failed(creds.peer)
        raise


async def _authenticate(db: Database, creds: Credentials, cache: StateCache | None) -> Principal:
    token = creds.token
    if token.startswith(PREFIX + "."):
        parsed = _parse(creds)
        if parsed is None:
            raise Unauthenticated(_INVALID)
        tenant_id, key_id, secret = parsed

        def before_read() -> None:
            wait = 0 if creds.throttle is None else creds.throttle.retry_after(creds.peer)
            if wait:
                raise ResourceExhausted(
                    f"too many failed authentications from this address; retry in {wait}s"
                )

        presented = hash_secret(secret)
        record = await _key(db, cache, tenant_id, key_id, before_read)
        stored = record.secret_hash if record is not None else _DUMMY
        genuine = hmac.compare_digest(presented, stored)
        if record is None or not genuine or record.revoked:
            raise Unauthenticated(_INVALID)
        return Principal(tenant_id, record.role, key_id, record.channels, record.agents)
    if creds.operator_key_hash is not None and hmac.compare_digest(
        hash_secret(token), creds.operator_key_hash
    ):
        return Principal(tenant_id="", role=Role.OPERATOR, key_id="operator")
    raise Unauthenticated(_INVALID)


async def key_record(db: Database, cache: StateCache | None, tenant_id: str, key_id: str) -> KeyRecord | None:
    """The stored key ``key_id`` (from the cache when it holds it), for a caller
    already identified another way: a web console session (flows.sessions)."""
    return await _key(db, cache, tenant_id, key_id, lambda: None)
