"""Pairing codes, button payloads and who may resolve an approval.

Where a pairing code is made, checked and hashed:

* made: a 128-bit seed from ``secrets`` is stored with the request; the code is
  HMAC(key, seed) mapped onto an unambiguous alphabet. The plaintext is never
  stored, yet a repeat request can show the requester the same code again.
* checked and stored: rows are found by HMAC(key, tenant, channel, code), so a
  code is bound to its channel: a Telegram code never redeems as Slack.

Button payloads are ``az1`` + action + approval token + a 128-bit MAC over
(tenant, approval, action): 48 ASCII bytes, under Telegram's 64.
"""

from __future__ import annotations

import base64
import enum
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from . import display
from .errors import InvalidArgument
from .model import ApprovalAction, Channel, ChannelPolicy, SubjectSource, SubjectStatus

# No 0/O, 1/I/L: codes are read aloud and typed from screenshots.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 8
_REJECT_AT = 256 - 256 % len(CODE_ALPHABET)  # unbiased: drop bytes >= 248

CALLBACK_PREFIX = "az1"
_ACTION_LETTER = {
    ApprovalAction.APPROVE: "a",
    ApprovalAction.DENY: "d",
    ApprovalAction.BLOCK: "b",
    ApprovalAction.ALWAYS_ALLOW: "g",
}
_LETTER_ACTION = {v: k for k, v in _ACTION_LETTER.items()}
_TOKEN_LEN = 22  # 16 bytes, base64url without padding
CALLBACK_LENGTH = len(CALLBACK_PREFIX) + 1 + _TOKEN_LEN + _TOKEN_LEN


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        return None
    # Reject non-canonical encodings so one MAC has exactly one spelling.
    return raw if _b64(raw) == text else None


def _mac(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256 (the one-shot C implementation)."""
    return hmac.digest(key, msg, "sha256")


def new_approval_id() -> str:
    return "apr_" + _b64(secrets.token_bytes(16))


def new_code_seed() -> bytes:
    return secrets.token_bytes(16)


def invalid_callback() -> InvalidArgument:
    """The one answer to a button payload that is not genuine for the caller."""
    return InvalidArgument("callback_payload", "is not a valid approval button payload")


@dataclass(frozen=True)
class Keyring:
    """Purpose-separated keys derived from the deployment's secret key."""

    secret: bytes
    # Derived once per purpose: every code, lookup and button would otherwise derive its key again.
    _subkeys: dict[str, bytes] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.secret) < 32:
            raise ValueError("the secret key must be at least 32 bytes")

    def _sub(self, purpose: str) -> bytes:
        key = self._subkeys.get(purpose)
        if key is None:
            key = self._subkeys[purpose] = _mac(self.secret, b"authz/v1/" + purpose.encode())
        return key

    def code_from_seed(self, seed: bytes) -> str:
        key = self._sub("pairing-code")
        out: list[str] = []
        counter = 0
        while len(out) < CODE_LENGTH:
            block = _mac(key, seed + counter.to_bytes(4, "big"))
            out.extend(CODE_ALPHABET[b % len(CODE_ALPHABET)] for b in block if b < _REJECT_AT)
            counter += 1
        return "".join(out[:CODE_LENGTH])

    def code_hash(self, tenant_id: str, channel_id: str, code: str) -> bytes:
        msg = f"{tenant_id}\x00{channel_id}\x00{code}".encode()
        return _mac(self._sub("pairing-code-lookup"), msg)

    def api_key_check(self, tenant_id: str, key_id: str) -> str:
        """The check part of an API key (flows/auth.py): 96 bits of MAC over its
        tenant and key id, so a made-up key is refused without a database read."""
        tag = _mac(self._sub("api-key-check"), f"{tenant_id}\x00{key_id}".encode())[:12]
        return base64.urlsafe_b64encode(tag).decode()

    def console_csrf(self, tenant_id: str, session_secret: str) -> str:
        """The web console's anti-forgery token of one session (a synchroniser
        token derived from the session, so nothing more is stored)."""
        return _b64(_mac(self._sub("console-csrf"), f"{tenant_id}\x00{session_secret}".encode()))

    def invite_hash(self, tenant_id: str, channel_id: str, code: str) -> bytes:
        """The stored, searchable form of an invite code (canonical form, see
        domain.invites), bound to its tenant and channel."""
        msg = f"{tenant_id}\x00{channel_id}\x00{code}".encode()
        return _mac(self._sub("invite-code-lookup"), msg)

    def pseudonym(self, tenant_id: str, platform: str, user_id: str) -> str:
        """A purged user's stand-in in the audit trail: ``anon:<16 hex>``.

        Stable (the same user in the same tenant always gets the same one, so
        their events still read as one person's), bound to the tenant (the same
        platform id in another tenant gets another), and not reversible without
        the server key (a platform id space is small enough to enumerate, so a
        plain hash would not do)."""
        msg = f"{tenant_id}\x00{platform}\x00{user_id}".encode()
        return "anon:" + _mac(self._sub("pseudonym"), msg).hex()[:16]

    def _callback_mac(self, tenant_id: str, approval_id: str, action: ApprovalAction) -> bytes:
        msg = f"{tenant_id}\x00{approval_id}\x00{action.value}".encode()
        return _mac(self._sub("callback"), msg)[:16]

    def callback_payload(self, tenant_id: str, approval_id: str, action: ApprovalAction) -> str:
        token = approval_id.removeprefix("apr_")
        mac = _b64(self._callback_mac(tenant_id, approval_id, action))
        return f"{CALLBACK_PREFIX}{_ACTION_LETTER[action]}{token}{mac}"

    def open_callback(self, tenant_id: str, payload: str) -> tuple[str, ApprovalAction]:
        """Return (approval id, action) of a genuine payload for this tenant.

        Every failure (wrong length, tampered, another tenant's) raises the same
        error, so the answer reveals nothing about which approvals exist.
        """
        bad = invalid_callback()
        if (
            len(payload) != CALLBACK_LENGTH
            or not payload.isascii()
            or not payload.startswith(CALLBACK_PREFIX)
        ):
            raise bad
        body = payload[len(CALLBACK_PREFIX) :]
        action = _LETTER_ACTION.get(body[0])
        token, mac_text = body[1 : 1 + _TOKEN_LEN], body[1 + _TOKEN_LEN :]
        mac = _unb64(mac_text)
        if action is None or _unb64(token) is None or mac is None:
            raise bad
        approval_id = "apr_" + token
        if not hmac.compare_digest(mac, self._callback_mac(tenant_id, approval_id, action)):
            raise bad
        return approval_id, action


def canonical_code(text: str, length: int) -> str | None:
    """What people type, as a code of ``length`` characters from CODE_ALPHABET:
    case, whitespace and dashes do not matter; None if it is not one."""
    code = "".join(text.split()).replace("-", "").upper()
    if len(code) != length or any(c not in CODE_ALPHABET for c in code):
        return None
    return code


def normalize_code(raw: str) -> str:
    """A pairing code as typed, or INVALID_ARGUMENT."""
    code = canonical_code(raw, CODE_LENGTH)
    if code is None:
        raise InvalidArgument("code", f"must be {CODE_LENGTH} characters from {CODE_ALPHABET}")
    return code


def chat_approvers(channel: Channel, tenant_approvers: Iterable[str]) -> set[str]:
    """Who may resolve the channel's pairing requests from chat, as qualified
    actors ("telegram:42"): the owner, the channel's approvers, and the tenant's
    approvers on the channel's platform."""
    prefix = f"{channel.platform.value}:"
    policy = channel.policy
    out = {prefix + a for a in policy.approvers}
    if policy.owner_id:
        out.add(prefix + policy.owner_id)
    out.update(a for a in tenant_approvers if a.startswith(prefix))
    return out


def may_resolve(channel: Channel, tenant_approvers: tuple[str, ...], actor_id: str) -> bool:
    """An actor (platform user id on the channel's platform) may resolve if they
    are one of the channel's chat approvers."""
    return bool(actor_id) and f"{channel.platform.value}:{actor_id}" in chat_approvers(
        channel, tenant_approvers
    )


class Vote(enum.StrEnum):
    """What one approver's APPROVE does to a pairing request under quorum."""

    REPEAT = "repeat"  # this approver already voted: nothing changes
    RECORDED = "recorded"  # counted; more distinct approvers are needed
    FINAL = "final"  # the last vote needed: the request is approved


def approve_vote(required: int, approved_by: tuple[str, ...], actor: str) -> Vote:
    """Quorum: ``required`` distinct approvers (actors as the service names
    them, e.g. ``telegram:42`` or ``key:abc``). One approver counts once."""
    if actor in approved_by:
        return Vote.REPEAT
    return Vote.FINAL if len(approved_by) + 1 >= required else Vote.RECORDED


# A requester's first message as stored with their pairing request and shown
# to approvers: enough to decide on, in one notification on every platform.
FIRST_MESSAGE_STORED = 300
MAX_HANDLE = 64


def stored_first_message(text: str) -> str:
    """The first message as stored: hidden characters made visible, cut to
    ``FIRST_MESSAGE_STORED`` UTF-16 units with "…" (display.visible_prefix)."""
    return display.visible_prefix(text.strip(), FIRST_MESSAGE_STORED)


def request_details(
    display_name: str, expires_at: datetime, required: int, *, renewal: bool
) -> dict[str, object]:
    """The ``pairing.requested`` audit event's details."""
    details: dict[str, object] = {"display_name": display_name, "expires_at": expires_at.isoformat()}
    if renewal:
        details["renewal"] = True
    if required > 1:
        details["required_approvals"] = required
    return details


def standing(
    action: ApprovalAction, policy: ChannelPolicy
) -> tuple[SubjectStatus, SubjectSource, int] | None:
    """The requester's subject row a decision writes (status, source, TTL in
    seconds; 0: none). DENY writes none: the code is consumed and no record is
    invented."""
    if action is ApprovalAction.APPROVE:
        return SubjectStatus.ALLOWED, SubjectSource.PAIRING, policy.pairing_ttl_seconds
    if action is ApprovalAction.BLOCK:
        return SubjectStatus.BLOCKED, SubjectSource.ADMIN, 0
    return None
