"""What an approver's chat command asks for (domain.commands): pure parsing."""

from __future__ import annotations

import pytest

from authz_service.domain.commands import Command, parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/approve 7KQ4XH2M", Command("approve", "7KQ4XH2M")),
        ("/approve@my_bot 7kq4-xh2m", Command("approve", "7kq4-xh2m")),
        ("/deny 7KQ4 XH2M", Command("deny", "7KQ4XH2M")),
        ("/block <@U0ALICE01>", Command("block", "U0ALICE01")),
        ("/block <@!210000000000000002>", Command("block", "210000000000000002")),
        ("/unpair @2002", Command("unpair", "2002")),
        ("  /PENDING ", Command("pending")),
        ("/users", Command("users")),
        ("/help", Command("help")),
    ],
)
def test_commands_are_read(text: str, expected: Command) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    "text",
    ["hello", "", "/start", "/approve", "/approve a b c", "/pending now", "/unblock a b", "approve 7KQ4XH2M",
     "/approver 2002"],
)  # fmt: skip
def test_anything_else_is_an_ordinary_message(text: str) -> None:
    assert parse(text) is None
