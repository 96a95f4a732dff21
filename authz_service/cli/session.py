"""The connection a client command uses: address, API key, TLS and ``--json``.

The options belong to each command (``authz channel list --json``), so every
client command is decorated with :func:`session_options`; their values land
in one :class:`Session`, click's context object. A nested command (``audit
export``) shares its group's session, and what it is given itself wins.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
import grpc
from google.protobuf.message import Message

from ..client import DEFAULT_ADDRESS, SyncClient, TlsConfig, connect_sync, is_loopback, plaintext_warning
from ..client.paging import Call
from . import output
from .context import in_use
from .errors import CliError, RpcFailed

TIMEOUT = 15  # seconds, for every unary call
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _read_key(env_name: str, fallback: Path | None) -> str | None:
    if os.environ.get(env_name):
        return os.environ[env_name].strip()
    file_name = os.environ.get(f"{env_name}_FILE")
    for path in (Path(file_name) if file_name else None, fallback):
        if path is not None and path.exists():
            return path.read_text().strip()
    return None


@dataclass
class Session:
    address: str | None = None
    api_key: str | None = None
    json: bool = False
    warned_plaintext: bool = False
    tls: dict[str, str] = field(default_factory=dict)
    """The TLS flags, as the AUTHZ_* variables they stand for (they win over the environment)."""

    def context(self) -> dict[str, Any]:
        """The named context in use (``authz context``); flags and AUTHZ_* win over it."""
        return in_use()

    def key(self, *, operator: bool = False) -> str:
        """The tenant key (``--api-key``, ``AUTHZ_API_KEY[_FILE]``) or the operator key."""
        if operator:
            home = Path(os.environ.get("AUTHZ_HOME") or Path.home() / ".authz")
            key = _read_key("AUTHZ_OPERATOR_KEY", home / "operator.key")
            missing = "set AUTHZ_OPERATOR_KEY (or AUTHZ_OPERATOR_KEY_FILE)"
        else:
            key = self.api_key or _read_key("AUTHZ_API_KEY", None) or self.context().get("api_key")
            missing = (
                "set AUTHZ_API_KEY (or pass --api-key, or save a context: `authz context add`);"
                " `make run` prints one for the demo tenant"
            )
        if not key:
            raise CliError(missing)
        return key

    def client(self, *, operator: bool = False) -> SyncClient:
        try:
            tls = TlsConfig.from_env({**self.context().get("tls", {}), **os.environ, **self.tls})
        except (ValueError, OSError) as exc:
            raise CliError(f"TLS settings: {exc}") from None
        address = self.address = (
            self.address
            or os.environ.get("AUTHZ_ADDRESS")
            or self.context().get("address")
            or DEFAULT_ADDRESS
        )
        key = self.key(operator=operator)
        if tls is None and not is_loopback(address) and not self.warned_plaintext:
            # Once per command, on stderr: --json output on stdout stays parseable.
            click.echo(f"authz: warning: {plaintext_warning(address)}", err=True)
            self.warned_plaintext = True
        return connect_sync(address, key, tls=tls, warn_plaintext=False)

    def emit(self, rows: list[dict[str, Any]], columns: list[str]) -> None:
        output.emit(self.json, rows, columns)


def call(fn: Callable[..., Any], request: Message, *, what: str = "") -> Any:
    """One unary call; a refusal becomes ``<STATUS>: [what: ]<details>``."""
    try:
        return fn(request, timeout=TIMEOUT)
    except grpc.RpcError as exc:
        session = click.get_current_context(silent=True)
        address = getattr(session and session.find_object(Session), "address", None) or ""
        raise RpcFailed(exc, what, address) from None


def admin_call(c: SyncClient, rpc: Callable[[Callable[..., Any], Message], Any] = call) -> Call:
    """``c``'s blocking AdminService stub as the ``call(method, request)`` the
    shared readers take (client.paging, doctor_proto); ``rpc`` makes each call."""

    async def run(method: str, request: Message) -> Any:
        return rpc(getattr(c.admin, method), request)

    return run


def wait(coro: Coroutine[Any, Any, T]) -> T:
    """Run a shared reader to its end (a command is synchronous; its calls block)."""
    return asyncio.run(coro)


def each(items: AsyncGenerator[T, None]) -> Iterator[T]:
    """A shared async reader as a plain iterator, one page fetched at a time."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(anext(items))
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(items.aclose())
        loop.close()


def _keep(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value:  # given here: wins over what an enclosing group was given
            setattr(ctx.ensure_object(Session), name, value)

    return store


def _tls(variable: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value:
            ctx.ensure_object(Session).tls[variable] = "on" if value is True else str(value)

    return store


def session_options(f: F) -> F:
    """``--address``, ``--api-key``, ``--json`` and the TLS flags, stored in the
    context's Session. The root command has them too: ``authz --json channel list``
    and ``authz channel list --json`` are the same."""
    for option in (
        click.option("--client-key", metavar="FILE", expose_value=False, callback=_tls("AUTHZ_CLIENT_KEY_FILE"),
                     help="client key for mutual TLS (AUTHZ_CLIENT_KEY_FILE)"),
        click.option("--client-cert", metavar="FILE", expose_value=False, callback=_tls("AUTHZ_CLIENT_CERT_FILE"),
                     help="client certificate for mutual TLS (AUTHZ_CLIENT_CERT_FILE)"),
        click.option("--ca-file", metavar="FILE", expose_value=False, callback=_tls("AUTHZ_CA_FILE"),
                     help="CA that signed the service's certificate; implies --tls (AUTHZ_CA_FILE)"),
        click.option("--tls", is_flag=True, expose_value=False, callback=_tls("AUTHZ_TLS"),
                     help="connect with TLS, system CAs (AUTHZ_TLS=on)"),
        click.option("--json", is_flag=True, expose_value=False, callback=_keep("json"),
                     help="machine-readable output"),
        click.option("--api-key", metavar="KEY", expose_value=False, callback=_keep("api_key"),
                     help="API key (default: AUTHZ_API_KEY)"),
        click.option("--address", expose_value=False, callback=_keep("address"),
                     help="service address (AUTHZ_ADDRESS, default 127.0.0.1:50051)"),
    ):  # fmt: skip
        f = option(f)
    return f


pass_session = click.make_pass_decorator(Session, ensure=True)
