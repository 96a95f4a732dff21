"""``authz invites``: create, list and revoke invite codes (admin key).

Registered by ``cli.main.build_parser``, which passes itself in (``cli``) for
the shared helpers (client, call, emit, ...): this module does not import
``cli.main``, which also runs as ``python -m authz_service.cli.main``.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..domain.invites import invite_status
from ..gen.authz.v1 import admin_pb2 as adm

_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}
COLUMNS = ["invite_id", "channel", "uses", "status", "expires", "permissions", "note", "created_by"]


def parse_ttl(text: str) -> int:
    """``90``, ``90s``, ``30m``, ``12h`` or ``7d`` -> seconds."""
    m = _DURATION.fullmatch(text.strip().lower())
    if not m or len(m.group(1)) > 9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 3600, 30m, 12h or 7d")
    return int(m.group(1)) * _UNIT[m.group(2)]


def parse_uses(text: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of uses")
    return int(text)


def _row(cli: Any, i: adm.Invite, now: datetime) -> dict[str, Any]:
    return {
        "invite_id": i.invite_id,
        "channel": i.channel_id,
        "uses": f"{i.uses}/{i.max_uses}",
        "status": invite_status(
            revoked=i.HasField("revoked_at"),
            uses=i.uses,
            max_uses=i.max_uses,
            expires_at=cli.ts(i, "expires_at"),
            now=now,
        ),
        "created": cli.ts(i, "created_at"),
        "expires": cli.ts(i, "expires_at"),
        "revoked": cli.ts(i, "revoked_at"),
        "permissions": list(i.permissions),
        "note": i.note,
        "created_by": i.created_by,
    }


def cmd_create(args: argparse.Namespace, cli: Any) -> int:
    req = adm.CreateInviteRequest(
        channel_id=args.channel,
        max_uses=args.max_uses,
        ttl_seconds=args.ttl,
        permissions=args.permission or [],
        note=args.note or "",
    )
    resp = cli.call(
        cli.client(args).admin.CreateInvite, req, what=f"cannot create an invite on {args.channel}"
    )
    i = resp.invite
    if args.json:
        print(json.dumps({**_row(cli, i, datetime.now(UTC)), "code": resp.code}, indent=2, default=cli._fmt))
        return 0
    uses = "1 use" if i.max_uses == 1 else f"{i.max_uses} uses"
    print(
        f"invite {i.invite_id} for channel {i.channel_id}: {uses}, expires {cli._fmt(cli.ts(i, 'expires_at'))} UTC"
    )
    print("\nThe code is shown only this once (only its hash is stored):\n")
    print(f"    {resp.code}\n")
    print("The user sends it to the bot in a direct message (or opens the bot's /start link with it).")
    return 0


def cmd_list(args: argparse.Namespace, cli: Any) -> int:
    req = adm.ListInvitesRequest(channel_id=args.channel or "", include_inactive=args.all)
    resp = cli.call(cli.client(args).admin.ListInvites, req)
    now = datetime.now(UTC)
    cli.emit(args, [_row(cli, i, now) for i in resp.invites], COLUMNS)
    return 0


def cmd_revoke(args: argparse.Namespace, cli: Any) -> int:
    i = cli.call(
        cli.client(args).admin.RevokeInvite,
        adm.RevokeInviteRequest(invite_id=args.invite_id),
        what=f"cannot revoke {args.invite_id}",
    )
    print(f"revoked invite {i.invite_id} on {i.channel_id} (used {i.uses}/{i.max_uses})")
    return 0


def register(sub: Any, cmd: Callable[..., argparse.ArgumentParser], cli: Any) -> None:
    """Add ``create``, ``list`` and ``revoke`` to the ``invites`` group ``sub``."""

    def bind(fn: Callable[[argparse.Namespace, Any], int]) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            return fn(args, cli)

        return run

    sp = cmd(sub, "create", bind(cmd_create), "create an invite code for a channel and print it (once)")
    sp.add_argument("channel")
    sp.add_argument(
        "--max-uses", type=parse_uses, default=0, metavar="N", help="users it admits, 1-10000 (default 1)"
    )
    sp.add_argument(
        "--ttl", type=parse_ttl, default=0, help="lifetime: 3600, 30m, 12h, 7d (default 7d; 60s..90d)"
    )
    sp.add_argument("--permission", action="append", help="permission given to who redeems it (repeatable)")
    sp.add_argument("--note", help="who it is for (admins only; at most 200 characters)")
    sp = cmd(sub, "list", bind(cmd_list), "list invites, newest first (active ones unless --all)")
    sp.add_argument("channel", nargs="?")
    sp.add_argument("--all", action="store_true", help="include used-up, expired and revoked invites")
    sp = cmd(sub, "revoke", bind(cmd_revoke), "revoke an invite (its code stops working at once)")
    sp.add_argument("invite_id")
