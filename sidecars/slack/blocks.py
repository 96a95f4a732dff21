"""Block Kit rendering for the owner's approval message, and text escaping.

Kept free of I/O so the exact shape Slack receives can be read in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..runtime import ButtonSpec

ACTION_PREFIX = "authz_"
"""Button ``action_id`` = prefix + action; the listener matches on it."""
ACTION_ID_PATTERN = rf"^{ACTION_PREFIX}(approve|deny|block|always_allow)$"

# Slack's limits: section text 3000 characters, button label 75.
_SECTION_MAX = 3000
_LABEL_MAX = 75
_STYLES = {"approve": "primary", "deny": "danger", "block": "danger", "always_allow": "primary"}

Block = dict[str, Any]


def escape(text: str) -> str:
    """Escape Slack's control characters so text can't mention, ping or link.

    Slack parses ``<@U…>``, ``<!channel>`` and ``<url|label>`` in message text;
    agent replies and the requester's first message are untrusted, so they are
    shown literally (mrkdwn emphasis still renders).
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _section(text: str, block_id: str) -> Block:
    # plain_text: the notification quotes the requester's message verbatim, unformatted.
    return {
        "type": "section",
        "block_id": block_id,
        "text": {"type": "plain_text", "text": _clip(text, _SECTION_MAX), "emoji": True},
    }


def fits_one_section(text: str) -> bool:
    """Whether ``text`` is shown whole in one section: buttons go only under a whole text."""
    return len(text) <= _SECTION_MAX


def approval_blocks(text: str, buttons: Sequence[ButtonSpec]) -> list[Block]:
    """The owner's notification: the service's text, then Approve / Deny / Block.

    Each button carries the service's callback payload verbatim as its
    ``value``; Slack echoes it back in the ``block_actions`` payload.
    """
    return [
        _section(text, "authz_request"),
        {
            "type": "actions",
            "block_id": "authz_buttons",
            "elements": [
                {
                    "type": "button",
                    "action_id": ACTION_PREFIX + b.action,
                    "text": {"type": "plain_text", "text": _clip(b.label, _LABEL_MAX), "emoji": True},
                    "style": _STYLES[b.action],
                    "value": b.payload,
                }
                for b in buttons
            ],
        },
    ]


def notice_blocks(text: str) -> list[Block]:
    """An approval notification without buttons (decided, expired, or too long to decide here)."""
    return [_section(text, "authz_request")]


def outcome_blocks(original: str, outcome: str) -> list[Block]:
    """The owner's message after a decision: the request, the outcome, no buttons."""
    blocks = [_section(original, "authz_request")] if original else []
    return [*blocks, _section(outcome, "authz_outcome")]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
