"""Identifier formats, validated at the edge.

Identities are the platforms' stable ids, never names: a username can be
changed or spoofed, a numeric Telegram id cannot.
"""

from __future__ import annotations

import re

from .errors import InvalidArgument
from .model import Platform

TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{1,39}")
CHANNEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
KEY_ID = re.compile(r"[a-z0-9]{12}")
APPROVAL_ID = re.compile(r"apr_[A-Za-z0-9_-]{22}")
GROUP_ID = re.compile(r"\*|[A-Za-z0-9_:.@+-]{1,128}")
# Permission names, wherever they are given: bindings, AllowUser, CreateInvite.
PERMISSION = re.compile(r"[A-Za-z0-9_.:*-]{1,64}")

_USER_ID = {
    # Telegram user ids are positive integers (bots and users alike).
    Platform.TELEGRAM: (re.compile(r"[1-9][0-9]{0,19}"), "a Telegram numeric user id"),
    # Discord snowflakes: 64-bit integers.
    Platform.DISCORD: (re.compile(r"[1-9][0-9]{5,19}"), "a Discord snowflake"),
    # Slack user ids are only unique within a workspace: "T0123ABC:U0456DEF".
    Platform.SLACK: (re.compile(r"[TE][A-Z0-9]{2,20}:[UWB][A-Z0-9]{2,20}"), "'<team id>:<user id>'"),
    # WhatsApp: E.164.
    Platform.WHATSAPP: (re.compile(r"\+[1-9][0-9]{6,14}"), "an E.164 phone number"),
}

_ANY_USER_ID = re.compile(r"[A-Za-z0-9+:_-]{1,64}")


def require(pattern: re.Pattern[str], value: str, field: str, what: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > 128 or not pattern.fullmatch(value):
        raise InvalidArgument(field, f"must be {what}")
    return value


def tenant_id(value: str, field: str = "tenant_id") -> str:
    return require(TENANT_ID, value, field, "a lowercase slug of 2-40 characters [a-z0-9-]")


def channel_id(value: str, field: str = "channel_id") -> str:
    return require(CHANNEL_ID, value, field, "1-64 characters [A-Za-z0-9_.-], starting alphanumeric")


def agent_id(value: str, field: str = "agent_id") -> str:
    return require(AGENT_ID, value, field, "1-64 characters [A-Za-z0-9_.:-], starting alphanumeric")


def approval_id(value: str, field: str = "approval_id") -> str:
    return require(APPROVAL_ID, value, field, "an approval id (apr_...)")


def group_id(value: str, field: str = "group_id") -> str:
    return require(GROUP_ID, value, field, "'*' or 1-128 characters [A-Za-z0-9_:.@+-]")


def permission(value: str, field: str = "permissions") -> str:
    if not PERMISSION.fullmatch(value):
        raise InvalidArgument(field, f"{value[:80]!r} must be 1-64 characters [A-Za-z0-9_.:*-]")
    return value


def user_id_shape(value: str, field: str = "user_id") -> str:
    """Platform-independent check, for requests before the channel is known."""
    return require(_ANY_USER_ID, value, field, "a platform user id (1-64 characters [A-Za-z0-9+:_-])")


def user_id(platform: Platform, value: str, field: str = "user_id") -> str:
    pattern, what = _USER_ID[platform]
    return require(pattern, value, field, what)


def token_pattern(value: str) -> str:
    """A regular expression (Python's and PostgreSQL's alike) that finds ``value``
    as a whole token of a composite id an agent chose, such as the session id
    ``agent:main:telegram:dm:734918265``: not inside a longer run of letters and
    digits, so user 42 is not found in session 1425."""
    return rf"(^|[^A-Za-z0-9]){re.escape(value)}($|[^A-Za-z0-9])"


def qualified_actor(value: str, field: str = "approvers") -> str:
    """A tenant-level approver: '<platform>:<user id>'."""
    head, sep, rest = value.partition(":")
    try:
        platform = Platform(head)
    except ValueError:
        raise InvalidArgument(field, f"{value!r} must be '<platform>:<user id>'") from None
    if not sep:
        raise InvalidArgument(field, f"{value!r} must be '<platform>:<user id>'")
    user_id(platform, rest, field)
    return value


def bounded_text(value: str, field: str, max_len: int) -> str:
    if len(value) > max_len:
        raise InvalidArgument(field, f"must be at most {max_len} characters")
    if any(ord(c) < 32 and c not in "\n\t" for c in value) or "\x7f" in value:
        raise InvalidArgument(field, "must not contain control characters")
    return value


# Line breaks beyond C0's: NEL (C1), the line and paragraph separators.
_BREAKS = frozenset("\x85\u2028\u2029")


def one_line(value: str, field: str, max_len: int) -> str:
    """Text that names one thing and is shown on one line: a send target, an
    origin, a session id, a display name. Like ``bounded_text``, but a line
    break (LF, CR, NEL, U+2028, U+2029), a tab or any C1 control is refused
    too: in a log, a table or a chat message it would start a forged line."""
    bounded_text(value, field, max_len)
    if any(c in "\n\t" or "\x80" <= c <= "\x9f" or c in _BREAKS for c in value):
        raise InvalidArgument(field, "must be one line: no line breaks, tabs or control characters")
    return value
