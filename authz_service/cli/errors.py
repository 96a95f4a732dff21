"""The one place a failure becomes a message and an exit code.

Every command raises (or lets through) the same few errors: ``CliError`` for
what the operator can fix (bad input, a missing key), ``ConfigError`` for the
``AUTHZ_*`` settings, and the ``grpc.RpcError`` of a refused call. The root
command (``main.Authz``) hands whatever escapes a command to :func:`outcome`
and prints ``authz: <message>`` on stderr, like ``api/rpc.py`` turns domain
errors into status codes in one place.
"""

from __future__ import annotations

import os

import grpc

from ..client import DEFAULT_ADDRESS
from ..config import ConfigError

OK = 0
NOT_DONE = 1  # nothing to do, not applied, `apply` stopped midway, `doctor` failing
FAILED = 2  # usage, configuration or RPC errors
INTERRUPTED = 130  # Ctrl-C


class CliError(Exception):
    """A failure the operator can act on, printed as ``authz: <message>``."""

    def __init__(self, message: str, exit_code: int = FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def unreachable(exc: grpc.RpcError) -> bool:
    """No connection at all (nothing listens, wrong host), as opposed to a
    service that answered UNAVAILABLE itself (database down, draining)."""
    return exc.code() is grpc.StatusCode.UNAVAILABLE and "failed to connect" in (exc.details() or "")


def status_message(exc: grpc.RpcError, what: str = "", address: str = "") -> str:
    """``<STATUS>: [what: ]<details>``: how every refused call reads; a service
    that cannot be reached is named, with how to start one."""
    if unreachable(exc):
        return (
            f"no authz service answers at {address or os.environ.get('AUTHZ_ADDRESS') or DEFAULT_ADDRESS}:"
            " start one with"
            " `authz serve` (or `make run`), or point AUTHZ_ADDRESS / --address at a running one"
        )
    code = exc.code()
    name = code.name if code is not None else "UNKNOWN"
    return f"{name}: {what + ': ' if what else ''}{exc.details()}"


class RpcFailed(CliError):
    """A refused call, with what the command was doing (``cannot approve apr_...``)
    and the address it went to."""

    def __init__(self, exc: grpc.RpcError, what: str = "", address: str = "") -> None:
        super().__init__(status_message(exc, what, address))
        self.status = exc.code()


# What a command may let escape, for the root command to report.
HANDLED = (CliError, ConfigError, grpc.RpcError, KeyboardInterrupt)


def outcome(exc: BaseException) -> tuple[str, int]:
    """The message (empty: print nothing) and exit code for an error of ``HANDLED``."""
    if isinstance(exc, CliError):
        return str(exc), exc.exit_code
    if isinstance(exc, grpc.RpcError):
        return status_message(exc), FAILED
    if isinstance(exc, KeyboardInterrupt):
        return "", INTERRUPTED
    return str(exc), FAILED
