"""Approvers' chat commands (``/approve 7KQ4XH2M``, ``/pending`` …) as typed in
a DM with the bot: what the text asks for, without deciding who may ask.

The connector uses :func:`parse` only to decide whether a message is worth
asking the service about; the service parses it again and acts only for an
approver of the channel (``flows.commands``). For anyone else the text is an
ordinary message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CommandName = Literal["approve", "deny", "block", "unblock", "unpair", "pending", "users", "help"]
# Which commands name a pairing code or a user, and which a user only.
TARGETED: frozenset[str] = frozenset({"approve", "deny", "block"})
USER_ONLY: frozenset[str] = frozenset({"unblock", "unpair"})
NO_ARGUMENT: frozenset[str] = frozenset({"pending", "users", "help"})
NAMES: tuple[CommandName, ...] = ("approve", "deny", "block", "unblock", "unpair", "pending", "users", "help")

HELP = "\n".join(
    [
        "Approver commands:",
        "/approve <code|user> – approve a pairing request",
        "/deny <code|user> – deny a pairing request",
        "/block <user> – block a user (and their pending request)",
        "/unblock <user> – lift a block",
        "/unpair <user> – remove a paired user",
        "/pending – pending pairing requests",
        "/users – who is allowed or blocked",
        "/help – this list",
    ]
)


@dataclass(frozen=True, slots=True)
class Command:
    name: CommandName
    argument: str = ""  # a pairing code or a platform user id, as typed ("" for none)


def parse(text: str) -> Command | None:
    """The command in ``text``, or None when it is not one (an unknown command,
    a missing or extra argument): such a text is an ordinary message.

    A Telegram ``@botname`` suffix is ignored; a leading ``@`` or ``<@…>``
    around a user id (Slack and Discord mentions) is stripped."""
    words = text.strip().split()
    if not words or not words[0].startswith("/"):
        return None
    head = words[0][1:].split("@", 1)[0].lower()
    name = next((n for n in NAMES if n == head), None)
    if name is None:
        return None
    args = words[1:]
    if name in NO_ARGUMENT:
        return Command(name) if not args else None
    if name in TARGETED and len(args) == 2 and args[0].lower() == "code":
        args = args[1:]
    if len(args) != 1:
        # A code typed with spaces ("7KQ4 XH2M") is still one code.
        if name in TARGETED and len(args) == 2 and all(len(a) == 4 for a in args):
            return Command(name, "".join(args))
        return None
    return Command(name, _bare_user(args[0]))


def _bare_user(arg: str) -> str:
    """``<@U123>`` / ``<@!123>`` (Slack, Discord mentions) or ``@123`` → the id."""
    if arg.startswith("<@") and arg.endswith(">"):
        arg = arg[2:-1].lstrip("!").split("|", 1)[0]
    return arg.removeprefix("@")
