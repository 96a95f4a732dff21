"""``authz serve``, ``authz dev`` and ``authz migrate``: the commands that run
the service or touch its database, on this machine.

They are the only commands that need the server's code (asyncpg, ``store``,
``flows``, ``api``): it is imported inside each command, so the client
commands never load it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator

import click

from ..config import Settings
from .errors import CliError
from .session import session_options


@contextlib.contextmanager
def _server_code(command: str) -> Iterator[None]:
    """Import the service inside this block: on the plain (client) install its
    dependencies are absent, and the operator is told which extra to add."""
    try:
        yield
    except ModuleNotFoundError as exc:
        raise CliError(
            f"authz {command} runs the service, whose dependencies are not installed"
            f" ({exc.name} is missing): pip install 'authz-service[server]'"
        ) from None


@click.command(help="run the gRPC service (embedded PostgreSQL when AUTHZ_DATABASE_URL is unset)")
@click.option("--workers", type=click.IntRange(1, 64), metavar="N",
              help="processes sharing the port with SO_REUSEPORT, 1-64 (default: AUTHZ_WORKERS or 1)")  # fmt: skip
@click.option("--address", metavar="HOST:PORT", help="listen here (default: AUTHZ_LISTEN, 127.0.0.1:50051)")
def serve(workers: int | None, address: str | None) -> int:
    with _server_code("serve"):
        from ..logs import setup_logging
        from ..server import serve as run_server

    setup_logging()
    if address:
        # Through the environment, so `--workers` hands it to every worker.
        os.environ["AUTHZ_LISTEN"] = address
    settings = Settings.from_env()
    workers = workers or settings.workers
    if workers > 1 and not settings.reuseport:
        from ..workers import run

        return run(settings, workers)
    asyncio.run(run_server(settings))
    return 0


@click.command(help="serve with a demo tenant and channel, and print how to try it (make run)")
@session_options
def dev() -> int:
    with _server_code("dev"):
        from .dev import run_dev

    return run_dev()


@click.command(help="apply database migrations (AUTHZ_MIGRATE_DATABASE_URL or AUTHZ_DATABASE_URL)")
@click.option(
    "--service-role",
    envvar="AUTHZ_SERVICE_ROLE",
    default="authz_service",
    show_default=True,
    help="the role the service connects as, created if missing and granted what it needs "
    "(env AUTHZ_SERVICE_ROLE); choose it before the first migration",
)
@session_options
def migrate(service_role: str) -> int:
    with _server_code("migrate"):
        from ..store import embedded
        from ..store.migrate import MigrationError
        from ..store.migrate import migrate as apply_migrations

    explicit = os.environ.get("AUTHZ_MIGRATE_DATABASE_URL") or os.environ.get("AUTHZ_DATABASE_URL")
    settings = None if explicit else Settings.from_env()
    if settings is not None and service_role != embedded.SERVICE_ROLE:
        raise click.UsageError(
            "--service-role (AUTHZ_SERVICE_ROLE) is for your own PostgreSQL, not the embedded one"
        )

    async def run() -> None:
        if settings is not None:
            emb = await asyncio.to_thread(embedded.start, settings.home)
            await embedded.ensure_database(emb)
            dsn = emb.owner_dsn
        else:
            dsn = explicit or ""
        applied = await apply_migrations(dsn, service_role)
        if applied:
            for m in applied:
                click.echo(f"applied {m.version:04d}_{m.name}")
        else:
            click.echo("schema is up to date")

    try:
        asyncio.run(run())
    except MigrationError as exc:
        raise click.ClickException(str(exc)) from None
    return 0
