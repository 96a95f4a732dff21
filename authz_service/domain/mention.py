"""Mention patterns and commands in group messages.

Patterns run on RE2: matching is linear in the text, so a hostile pattern or
message cannot stall the hot path (no catastrophic backtracking), and
backreferences and lookarounds are rejected when the policy is set.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from .errors import InvalidArgument

MAX_PATTERNS = 32
MAX_PATTERN_LEN = 256
# Only this much of a message is searched for a mention or a command.
MAX_SCAN = 4096
_COMMAND = re.compile(r"[a-z0-9_]{1,64}")
_NAME_RUN = re.compile(r"[A-Za-z0-9_]*")
# The name is read from at most this many characters after the "/".
_NAME_WINDOW = 80
# "/" and characters drawn like it: '\u2215deploy' reads as '/deploy'.
_SLASHES = frozenset("/\u1735\u2044\u2215\u2571\u27cb\u29f8\u2afb\u2afd\uff0f")
_LESS_THAN = frozenset("<\ufe64\uff1c")
# What may come before a command, matched on the text as sent (RE2: linear).
# A message's first visible character is a letter, number, punctuation or
# symbol; anything else (spaces, controls, format characters such as U+200B,
# combining marks, private use, unassigned) and the blank Hangul fillers,
# Braille blank and null notehead are skipped, as are mentions, each followed by
# separators: "@name" (Telegram) and "<...>" tokens (Slack "<@U1>", "<!here>",
# "<#C1|eng>", Discord "<@!1>", "<:emoji:1>"); full-width and small forms of
# "@<>,:;." count as these (they are them after NFKC). A token cut off by the
# end of the scanned text counts as a token.
_IGNORABLE = r"(?:[^\p{L}\p{N}\p{P}\p{S}]|[\x{115F}\x{1160}\x{2800}\x{3164}\x{FFA0}\x{1D159}])"
_AT = r"[@\x{FE6B}\x{FF20}]"
_LT = r"[<\x{FE64}\x{FF1C}]"
_GT = r"[>\x{FE65}\x{FF1E}]"
_NAME_CHAR = r"[\p{L}\p{N}\p{M}\p{Cf}_.]"
_ANGLE_START = r"[^/\x{FF0F}<>\x{FE64}\x{FE65}\x{FF1C}\x{FF1E}\s\p{Z}]"  # "</" starts a command
_ANGLE_CHAR = r"[^<>\x{FE64}\x{FE65}\x{FF1C}\x{FF1E}\s\p{Z}]"
_MENTION = (
    "(?:" + _AT + _NAME_CHAR + "*|" + _LT + r"(?:\z|" + _ANGLE_START + _ANGLE_CHAR + "*(?:" + _GT + r"|\z)))"
)
_SEPARATOR = (
    r"[,:;.\p{Pd}\x{037E}\x{2024}\x{3001}\x{3002}\x{FE10}\x{FE13}\x{FE14}"
    r"\x{FE50}\x{FE52}\x{FE54}\x{FE55}\x{FF0C}\x{FF0E}\x{FF1A}\x{FF1B}]"
)
_LEADING = "(?:" + _MENTION + "(?:" + _SEPARATOR + "|" + _IGNORABLE + ")*|" + _IGNORABLE + ")*"
_FORMAT = r"\p{Cf}+"


@functools.cache
def _re2() -> Any:
    """RE2 (google-re2, the server extra), imported on first use: the client
    install reads policies through this package without matching them."""
    import re2

    return re2


@functools.cache
def _compiled(pattern: str) -> Any:
    """One of this module's own patterns."""
    return _re2().compile(pattern)


def _options() -> Any:
    options = _re2().Options()
    options.case_sensitive = False
    options.log_errors = False
    options.max_mem = 1 << 20  # bounds the compiled program, too
    return options


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> Any:
    """Compile (cached); raises ``re2.error`` on syntax RE2 does not accept."""
    return _re2().compile(pattern, _options())


def validate_patterns(patterns: Iterable[str], field: str) -> tuple[str, ...]:
    out = tuple(patterns)
    if len(out) > MAX_PATTERNS:
        raise InvalidArgument(field, f"at most {MAX_PATTERNS} patterns")
    for i, p in enumerate(out):
        if not p or len(p) > MAX_PATTERN_LEN:
            raise InvalidArgument(f"{field}[{i}]", f"patterns must be 1-{MAX_PATTERN_LEN} characters")
        try:
            compile_pattern(p)
        except _re2().error as exc:
            detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            raise InvalidArgument(f"{field}[{i}]", f"{p!r} is not a valid RE2 pattern: {detail}") from None
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
    a malformed command (one that cannot be told apart from a listed one).

    Leading blanks and mentions in the first ``MAX_SCAN`` characters are
    skipped (see ``_LEADING``); a command starts with "/" or a character drawn
    like it, or with "</" (a Discord command mention '</deploy:123>'). As on
    Telegram, the name is the run of [A-Za-z0-9_] after it, lowercased, so
    '/deploy@MyBot now', '/Deploy' and '/deploy-now' are all 'deploy' (a deny
    list cannot be dodged by punctuation). The name is read after removing
    invisible format characters (Unicode Cf, e.g. U+200B) and NFKC, so
    full-width and styled letters are ASCII: '\uff0f\uff44\uff45\uff50\uff4c\uff4f\uff59'
    is '/deploy'.

    Malformed (""): no name or more than 64 characters ('/', '/ deploy'); a
    name glued to a non-ASCII letter, number or mark ('/d\u0435ploy' with a
    Cyrillic e is not 'd'); and what the bounded scan cannot settle: the text
    goes on past ``MAX_SCAN`` before its first word, or past the name window.
    At most ``MAX_SCAN + _NAME_WINDOW`` characters are ever read.
    """
    head = text[:MAX_SCAN]
    lead = _compiled(_LEADING).match(head)
    start = lead.end() if lead is not None else 0
    if start == len(head):
        # Blanks and mentions only: plain text, unless the scan stopped short.
        return "" if len(text) > len(head) else None
    if head[start] in _LESS_THAN and head[start + 1 : start + 2] in _SLASHES:
        start += 1
    if head[start] not in _SLASHES:
        return None
    stop = start + 1 + _NAME_WINDOW
    rest = unicodedata.normalize("NFKC", _compiled(_FORMAT).sub("", text[start + 1 : stop]))
    name = _NAME_RUN.match(rest)
    end = name.end() if name is not None else 0
    if len(text) > stop and end >= len(rest) - 1:
        return ""  # the name, or what follows it, may go on past the window
    if end < len(rest) and _glued(rest[end]):
        return ""
    word = rest[:end].lower()
    return word if _COMMAND.fullmatch(word) else ""


def _glued(char: str) -> bool:
    """Whether ``char`` right after a name makes it a different word: any
    non-ASCII character but punctuation, symbols and separators."""
    return not char.isascii() and unicodedata.category(char)[0] not in "PSZ"
