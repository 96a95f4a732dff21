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

from ..domain import ids
from ..domain.errors import Unauthenticated
from ..domain.model import Principal, Role
from ..store import queries as q
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


async def authenticate(db: Database, token: str, operator_key_hash: bytes | None) -> Principal:
    if token.startswith(PREFIX + "."):
        parts = token.split(".")
        if len(parts) != 4 or not ids.TENANT_ID.fullmatch(parts[1]) or not ids.KEY_ID.fullmatch(parts[2]):
            raise Unauthenticated(_INVALID)
        _, tenant_id, key_id, secret = parts
        presented = hash_secret(secret)
        async with db.tenant(tenant_id) as conn:
            row = await q.get_key(conn, tenant_id, key_id)
        stored = row["secret_hash"] if row is not None else _DUMMY
        genuine = hmac.compare_digest(presented, bytes(stored))
        if row is None or not genuine or row["revoked_at"] is not None:
            raise Unauthenticated(_INVALID)
        return Principal(tenant_id=tenant_id, role=Role(row["role"]), key_id=key_id)
    if operator_key_hash is not None and hmac.compare_digest(hash_secret(token), operator_key_hash):
        return Principal(tenant_id="", role=Role.OPERATOR, key_id="operator")
    raise Unauthenticated(_INVALID)
