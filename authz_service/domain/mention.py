"""Mention patterns and commands in group messages.

Patterns run on RE2: matching is linear in the text, so a hostile pattern or
message cannot stall the hot path (no catastrophic backtracking), and
backreferences and lookarounds are rejected when the policy is set.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

import re2

from .errors import InvalidArgument

MAX_PATTERNS = 32
MAX_PATTERN_LEN = 256
# Only this much of a message is searched for a mention.
MAX_SCAN = 4096
_COMMAND = re.compile(r"[a-z0-9_]{1,64}")
_NAME_RUN = re.compile(r"[A-Za-z0-9_]+")
# "@name" (Telegram) or "<@U123>" / "<@!123>" (Slack, Discord), each followed by
# spaces or ",:" - the alternatives start differently, so matching is linear.
_LEADING_MENTIONS = re.compile(r"(?:(?:@[A-Za-z0-9_]+|<@[^<>\s]+>)[\s,:]*)+")


def _options() -> Any:
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    options.max_mem = 1 << 20  # bounds the compiled program, too
    return options


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> Any:
    """Compile (cached); raises ``re2.error`` on syntax RE2 does not accept."""
    return re2.compile(pattern, _options())


def validate_patterns(patterns: Iterable[str], field: str) -> tuple[str, ...]:
    out = tuple(patterns)
    if len(out) > MAX_PATTERNS:
        raise InvalidArgument(field, f"at most {MAX_PATTERNS} patterns")
    for p in out:
        if not p or len(p) > MAX_PATTERN_LEN:
            raise InvalidArgument(field, f"patterns must be 1-{MAX_PATTERN_LEN} characters")
        try:
            compile_pattern(p)
        except re2.error as exc:
            detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            raise InvalidArgument(field, f"{p!r} is not a valid RE2 pattern: {detail}") from None
    return out


def mentions(patterns: tuple[str, ...], text: str) -> bool:
    """Whether any pattern matches (case-insensitively) in the first ``MAX_SCAN``
    characters of ``text``.

    A longer text is searched up to ``MAX_SCAN`` with the next character as
    context, so ``$`` and ``\\b`` see that the text goes on: the cut is not
    mistaken for the end of the message.
    """
    if not patterns:
        return False
    if len(text) <= MAX_SCAN:
        return any(compile_pattern(p).search(text) is not None for p in patterns)
    head = text[: MAX_SCAN + 1]
    return any(compile_pattern(p).search(head, 0, MAX_SCAN) is not None for p in patterns)


def normalise_command(value: str, field: str) -> str:
    """'/Deploy' and 'deploy' are the same command: 'deploy'."""
    name = value.strip().removeprefix("/").lower()
    if not _COMMAND.fullmatch(name):
        raise InvalidArgument(field, f"{value!r} must be a command name [a-z0-9_], 1-64 characters")
    return name


def command_of(text: str) -> str | None:
    """The command a message starts with, if any: None for plain text, "" for
    a malformed command (a "/" not followed by a name of 1-64 [a-z0-9_]).

    As on Telegram, the name is the run of [A-Za-z0-9_] after the "/", lowercased,
    so '/deploy@MyBot now', '/Deploy' and '/deploy-now' are all 'deploy' (a deny
    list cannot be dodged by punctuation). Leading mentions are skipped:
    '@MyBot /deploy' and '<@U123> /deploy' are 'deploy' too.
    """
    head = text[:MAX_SCAN].lstrip()
    lead = _LEADING_MENTIONS.match(head)
    if lead is not None:
        head = head[lead.end() :]
    if not head.startswith("/"):
        return None
    name = _NAME_RUN.match(head, 1)
    word = name.group(0).lower() if name is not None else ""
    return word if _COMMAND.fullmatch(word) else ""
