"""What a person is shown: text from agents and strangers with every invisible
or reordering character made visible.

An approver decides on what they read. Control characters (Unicode ``Cc``, C0,
DEL and C1), format characters (``Cf``: the bidirectional embeddings,
overrides and isolates U+202A-202E and U+2066-2069, zero-width characters,
tags), line and paragraph separators (``Zl``, ``Zp``) and lone surrogates
(``Cs``) can hide text, reorder it (``curl … | sh`` shown backwards) or start
a fake line. Each is shown as a JSON-style escape (``\\u202e``; characters
outside the BMP as a surrogate pair), so canonical JSON arguments stay valid
JSON for the same value after escaping: what is shown parses to what runs.
"""

from __future__ import annotations

import unicodedata

HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_SHORT = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    if code > 0xFFFF:
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def is_hidden(ch: str) -> bool:
    return unicodedata.category(ch) in HIDDEN_CATEGORIES


def visible(text: str) -> str:
    """``text`` with every hidden character replaced by its escape."""
    if text.isprintable():  # fast path; isprintable() is False for every hidden category
        return text
    return "".join(_escape(c) if is_hidden(c) else c for c in text)


def utf16_length(text: str) -> int:
    """Length as the platforms count it (Telegram and Discord: UTF-16 code units)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def visible_prefix(text: str, limit: int) -> str:
    """``visible(text)``, cut to at most ``limit`` UTF-16 units with "…" if it
    is longer; an escape is never cut in half."""
    shown = visible(text)
    if utf16_length(shown) <= limit:
        return shown
    out: list[str] = []
    used = 1  # the ellipsis
    for c in text:
        piece = _escape(c) if is_hidden(c) else c
        size = utf16_length(piece)
        if used + size > limit:
            break
        out.append(piece)
        used += size
    return "".join(out) + "…"


# Spreadsheets run a cell that starts with one of these as a formula (OWASP, CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: str) -> str:
    """A CSV cell a spreadsheet shows as text: one starting with ``= + - @``, a tab
    or a carriage return gets a leading ``'`` (OWASP's rule); the rest is exact.
    Used by the CLI's and the web console's CSV exports."""
    return "'" + value if value.startswith(_FORMULA_START) else value
