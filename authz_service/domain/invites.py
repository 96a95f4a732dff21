"""Invite codes: made, shown, parsed, and judged. Pure; no I/O.

A code is 16 characters from the pairing codes' unambiguous alphabet (about
79 bits), shown as ``XXXX-XXXX-XXXX-XXXX`` and accepted in any case, with or
without spaces and dashes. Only its keyed hash is stored
(``Keyring.invite_hash``), bound to the tenant and the channel.

The same parser serves the service (``RedeemInvite``) and the connectors,
which recognise a code in a direct message (optionally after ``/start``, as a
Telegram deep link sends it) before they start pairing.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from .errors import InvalidArgument
from .pairing import CODE_ALPHABET, canonical_code

INVITE_CODE_LENGTH = 16
INVITE_ID = re.compile(r"inv_[A-Za-z0-9_-]{22}")
MAX_USES = 10_000
DEFAULT_TTL_SECONDS = 7 * 86_400
MIN_TTL_SECONDS = 60
MAX_TTL_SECONDS = 90 * 86_400
MAX_NOTE = 200
MAX_PERMISSIONS = 64

# Longest text worth looking at: 16 characters with generous separators.
_MAX_CODE_TEXT = 64
_START = re.compile(r"/start(?:@[A-Za-z0-9_]{1,64})?(?:\s+|$)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Invite:
    invite_id: str
    channel_id: str
    max_uses: int
    uses: int
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None
    created_by: str = ""
    permissions: tuple[str, ...] = ()
    note: str = ""


def new_invite_id() -> str:
    return "inv_" + base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode("ascii")


def new_invite_code() -> str:
    """A fresh code in canonical form (16 characters, no separators)."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(INVITE_CODE_LENGTH))


def format_invite_code(code: str) -> str:
    """``ABCDEFGH...`` -> ``ABCD-EFGH-JKMN-PQRS``, for people."""
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


def parse_invite_code(text: str) -> str | None:
    """The canonical code in ``text``, or None if it is not one. Case, spaces
    and dashes do not matter; nothing else may be there."""
    if len(text) > _MAX_CODE_TEXT:
        return None
    return canonical_code(text, INVITE_CODE_LENGTH)


def invite_code_in_message(text: str) -> str | None:
    """A code a user sent the bot: the whole message, optionally after a leading
    ``/start`` (or ``/start@botname``). None: treat the message as usual."""
    stripped = text.strip()
    m = _START.match(stripped)
    if m:
        stripped = stripped[m.end() :]
    return parse_invite_code(stripped)


def normalize_invite_code(raw: str) -> str:
    code = parse_invite_code(raw)
    if code is None:
        raise InvalidArgument(
            "code", f"must be an invite code: {INVITE_CODE_LENGTH} characters from {CODE_ALPHABET}"
        )
    return code


def invite_status(
    *, revoked: bool, uses: int, max_uses: int, expires_at: datetime | None, now: datetime
) -> str:
    """``active``, or why it no longer admits anyone: ``revoked`` wins, then
    ``used_up``, then ``expired`` (as ``authz invites list`` shows it)."""
    if revoked:
        return "revoked"
    if uses >= max_uses:
        return "used_up"
    if expires_at is not None and expires_at <= now:
        return "expired"
    return "active"


def invite_limits(max_uses: int, ttl_seconds: int) -> tuple[int, int]:
    """Defaults and bounds of CreateInvite: (max uses, ttl seconds)."""
    uses = max_uses or 1
    if not 1 <= uses <= MAX_USES:
        raise InvalidArgument("max_uses", f"must be between 0 (one use) and {MAX_USES}")
    ttl = ttl_seconds or DEFAULT_TTL_SECONDS
    if not MIN_TTL_SECONDS <= ttl <= MAX_TTL_SECONDS:
        raise InvalidArgument(
            "ttl_seconds", f"must be 0 (7 days) or between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS} (90 days)"
        )
    return uses, ttl
