"""Web console sessions: an API key, presented once at login, becomes a session.

The browser holds ``azs.<tenant>.<secret>`` in an HttpOnly cookie; the database
holds SHA-256 of the secret, the key id and an expiry (store.sessions). Each
console request finds the live session and then the key again, so a session is
exactly its key's principal (role, bound channels), never more, and stops
working when the key is revoked or the session expires, on every replica. The
anti-forgery token is derived from the session secret (``Keyring.console_csrf``)
and compared in constant time. docs/security.md, "Console sessions", says why
sessions are rows rather than signed cookies.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from ..cache import StateCache
from ..domain import ids
from ..domain.errors import PermissionDenied, Unauthenticated
from ..domain.model import Principal, Role
from ..domain.pairing import Keyring
from ..store import sessions
from ..store.db import Database
from .auth import Credentials, authenticate, key_record

PREFIX = "azs"
CONSOLE_ROLES = frozenset({Role.ADMIN, Role.APPROVER})
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
_ENDED = "console session expired or signed out: log in again"


@dataclass(frozen=True)
class Session:
    """An open session: the cookie value, its anti-forgery token and who it is."""

    token: str
    csrf: str
    principal: Principal


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _parse(token: str) -> tuple[str, str] | None:
    prefix, _, rest = token.partition(".")
    tenant_id, _, secret = rest.partition(".")
    if prefix != PREFIX or not ids.TENANT_ID.fullmatch(tenant_id) or not _SECRET.fullmatch(secret):
        return None
    return tenant_id, secret


async def open_session(
    db: Database, creds: Credentials, cache: StateCache | None, ttl_seconds: int
) -> Session:
    """Check the key as any call would (throttle included), then open a session for it.
    Only admin and approver keys have a console: connector and agent keys belong to
    programs, and the operator key manages tenants, which the console does not show."""
    principal = await authenticate(db, creds, cache)
    if principal.role not in CONSOLE_ROLES:
        raise PermissionDenied(
            f"the console takes an admin or approver key, not a {principal.role.value} key"
        )
    secret = secrets.token_urlsafe(32)
    async with db.tenant(principal.tenant_id) as conn:
        await sessions.insert(conn, principal.tenant_id, _hash(secret), principal.key_id, ttl_seconds)
    return Session(
        f"{PREFIX}.{principal.tenant_id}.{secret}",
        creds.keyring.console_csrf(principal.tenant_id, secret),
        principal,
    )


async def session_principal(db: Database, cache: StateCache | None, token: str) -> Principal:
    """The key behind a live session; Unauthenticated when the session is unknown or
    expired (database clock) or its key is revoked or gone."""
    parsed = _parse(token)
    if parsed is None:
        raise Unauthenticated(_ENDED)
    tenant_id, secret = parsed
    async with db.tenant(tenant_id) as conn:
        row = await sessions.get_live(conn, tenant_id, _hash(secret))
    if row is None:
        raise Unauthenticated(_ENDED)
    record = await key_record(db, cache, tenant_id, row.key_id)
    if record is None or record.revoked or record.role not in CONSOLE_ROLES:
        raise Unauthenticated(_ENDED)
    return Principal(tenant_id, record.role, row.key_id, record.channels, record.agents)


def csrf_matches(keyring: Keyring, token: str, presented: str) -> bool:
    """Whether ``presented`` is the anti-forgery token of the session ``token``."""
    parsed = _parse(token)
    if parsed is None or not presented:
        return False
    expected = keyring.console_csrf(*parsed)
    return hmac.compare_digest(expected.encode(), presented.encode())


def csrf_token(keyring: Keyring, token: str) -> str:
    parsed = _parse(token)
    return "" if parsed is None else keyring.console_csrf(*parsed)


async def close_session(db: Database, token: str) -> None:
    parsed = _parse(token)
    if parsed is not None:
        async with db.tenant(parsed[0]) as conn:
            await sessions.delete(conn, parsed[0], _hash(parsed[1]))
