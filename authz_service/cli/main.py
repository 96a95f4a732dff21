"""``authz``: the operator's command line.

Every command except ``serve``, ``dev`` and ``migrate`` talks to the service
over gRPC (``AUTHZ_ADDRESS``, ``AUTHZ_API_KEY``), so it works the same against
a laptop and a cluster. Each noun has its module; this one assembles them and
is the one place where what a command raises becomes a message and an exit
code (:func:`errors.outcome`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from .. import __version__
from . import apply as policy_commands
from . import (
    approvals,
    approvers,
    audit,
    channel,
    context,
    doctor,
    group,
    invites,
    key,
    pairing,
    server,
    simulate,
    tenant,
    users,
)
from .errors import HANDLED, outcome
from .output import safe
from .session import session_options


class Authz(click.Group):
    """The root command: runs a command and reports whatever it raises."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            code = super().invoke(ctx)
        except HANDLED as exc:
            message, code = outcome(exc)
            if message:
                # A refusal may quote what a request carried: escaped, line by line.
                click.echo("authz: " + "\n".join(map(safe, message.split("\n"))), err=True)
        except BrokenPipeError:  # `authz audit export | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = 0
        if code:
            raise click.exceptions.Exit(code)
        return code


@click.group(cls=Authz, help="Authorization service for chat-bot agents.")
@click.version_option(__version__, "--version", "-V", prog_name="authz", message="%(prog)s %(version)s")
@session_options
def cli() -> None:
    pass


for command in (
    server.serve,
    server.dev,
    server.migrate,
    tenant.tenant,
    key.key,
    channel.channel,
    pairing.pairing,
    approvals.approvals,
    users.users,
    group.group,
    invites.invites,
    approvers.approvers,
    approvers.timezone,
    audit.audit,
    simulate.simulate,
    policy_commands.apply,
    policy_commands.export,
    doctor.doctor_command,
    context.context,
):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``authz`` console script: run one command, return its exit code."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="authz")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
