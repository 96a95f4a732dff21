"""The sessions a connector handed to its agent, and the chat each belongs to.

A session id is what ``POST /send`` names to get an origin, so it is a
capability: 128 random bits, never derived from the chat (``telegram:4242``
could be guessed by anything that reaches the send endpoint). A chat keeps its
session id while the connector remembers it, so the agent runtime sees one
session per conversation; the least recently active session is forgotten first.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict


def _digest(session: str) -> bytes:
    # Looked up by digest: a dict lookup compares keys byte by byte, and timing must
    # not tell a caller how much of a guessed session id was right.
    return hashlib.sha256(session.encode()).digest()


class Sessions:
    """A bounded map of session id -> chat, oldest activity first."""

    def __init__(self, max_sessions: int) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self._max = max_sessions
        self._chats: OrderedDict[bytes, str] = OrderedDict()  # digest -> chat
        self._ids: dict[str, tuple[str, bytes]] = {}  # chat -> (session id, digest)

    def __len__(self) -> int:
        return len(self._chats)

    def open(self, chat_id: str) -> str:
        """The session id of ``chat_id`` (a new random one if it has none), now the most recent."""
        known = self._ids.get(chat_id)
        if known is None:
            session = secrets.token_urlsafe(16)
            known = (session, _digest(session))
            self._ids[chat_id] = known
            self._chats[known[1]] = chat_id
        self._chats.move_to_end(known[1])
        while len(self._chats) > self._max:
            _, oldest = self._chats.popitem(last=False)
            del self._ids[oldest]
        return known[0]

    def chat_of(self, session: str) -> str:
        """The chat of a session this connector handed out; "" if unknown or forgotten."""
        if not session:
            return ""
        return self._chats.get(_digest(session), "")
