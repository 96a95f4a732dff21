"""API keys: made, hashed, verified.

A tenant key reads ``azk.<tenant>.<key id>.<secret>``. The tenant part lets the
lookup run inside that tenant's row-level-security scope, so even key
verification never reads across tenants. Only SHA-256 of the 256-bit secret is
stored (a slow KDF adds nothing for random keys) and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from ..cache import KeyRecord, StateCache
from ..domain import ids
from ..domain.errors import Unauthenticated
from ..domain.model import Principal, Role
from ..store import keys
from ..store.db import Database

PREFIX = "azk"
_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_INVALID = "invalid API key"


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_key(tenant_id: str) -> tuple[str, str, bytes]:
    """Return (key id, full key text, hash of the secret part)."""
    key_id = "".join(secrets.choice(_ALNUM) for _ in range(12))
    secret = secrets.token_urlsafe(32)
    return key_id, f"{PREFIX}.{tenant_id}.{key_id}.{secret}", hash_secret(secret)


_DUMMY = hash_secret("no such key")


async def _key(db: Database, cache: StateCache | None, tenant_id: str, key_id: str) -> KeyRecord | None:
    if cache is not None:
        found, record = cache.key(tenant_id, key_id)
        if found:
            return record
        generation = cache.generation
    async with db.tenant(tenant_id) as conn:
        row = await keys.get(conn, tenant_id, key_id)
    record = None
    if row is not None:
        bound = frozenset(row.channels), frozenset(row.agents)
        record = KeyRecord(row.secret_hash, row.role, row.revoked_at is not None, *bound)
    if cache is not None:
        cache.fill_key(generation, tenant_id, key_id, record)
    return record


async def authenticate(
    db: Database, token: str, operator_key_hash: bytes | None, cache: StateCache | None = None
) -> Principal:
    """The caller behind ``token``. Key records may come from the cache, which a
    revocation on any replica clears through NOTIFY (see authz_service.cache)."""
    if token.startswith(PREFIX + "."):
        parts = token.split(".")
        if len(parts) != 4 or not ids.TENANT_ID.fullmatch(parts[1]) or not ids.KEY_ID.fullmatch(parts[2]):
            raise Unauthenticated(_INVALID)
        _, tenant_id, key_id, secret = parts
        presented = hash_secret(secret)
        record = await _key(db, cache, tenant_id, key_id)
        stored = record.secret_hash if record is not None else _DUMMY
        genuine = hmac.compare_digest(presented, stored)
        if record is None or not genuine or record.revoked:
            raise Unauthenticated(_INVALID)
        return Principal(tenant_id, record.role, key_id, record.channels, record.agents)
    if operator_key_hash is not None and hmac.compare_digest(hash_secret(token), operator_key_hash):
        return Principal(tenant_id="", role=Role.OPERATOR, key_id="operator")
    raise Unauthenticated(_INVALID)
