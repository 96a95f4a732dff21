"""Running `authz ...` in-process against the test service (click's ``CliRunner``
in a worker thread: the service runs on the test's event loop), and reading the audit trail."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from click.testing import CliRunner

from authz_service.cli.main import cli
from authz_service.gen.authz.v1 import admin_pb2 as adm

from .conftest import Service, Tenant


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


Cli = Callable[..., Awaitable[Result]]


async def run_authz(*argv: str, stdin: str | None = None) -> Result:
    """`authz ARGV...` as the console script runs it: exit code, stdout and stderr.
    An exception the CLI does not report itself fails the test."""
    result = await asyncio.to_thread(CliRunner().invoke, cli, list(argv), stdin, catch_exceptions=False)
    return Result(result.exit_code, result.stdout, result.stderr)


def make_cli(service: Service, tenant: Tenant) -> Cli:
    """`authz ARGV... --address A --api-key K` with the tenant's admin key (or ``key=``)."""

    async def run(*argv: str, key: str | None = None, stdin: str | None = None) -> Result:
        args = [*argv, "--address", service.address, "--api-key", key or tenant.keys["admin"]]
        return await run_authz(*args, stdin=stdin)

    return run


async def last_event_id(t: Tenant) -> int:
    """The newest audit event's id (0 if none)."""
    after, last = 0, 0
    while True:
        resp = await t.admin.admin.QueryAudit(adm.QueryAuditRequest(after_event_id=after, limit=1000))
        if resp.events:
            last = resp.events[-1].event_id
        if not resp.next_after_event_id:
            return last
        after = resp.next_after_event_id


async def events_after(t: Tenant, event_id: int) -> list[adm.AuditEvent]:
    resp = await t.admin.admin.QueryAudit(adm.QueryAuditRequest(after_event_id=event_id, limit=1000))
    return list(resp.events)
