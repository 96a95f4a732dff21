"""Shared by the flood and retention tests (test_floods.py, test_denied_sends.py,
test_audit_retention.py): an in-process server with its own limits, and a
tenant's audit events of one kind."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass

from authz_service.client import Client, connect
from authz_service.config import Settings
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.server import RunningServer, start_server
from authz_service.store.db import Database

from .conftest import Dsns, Service, Tenant


@dataclass(frozen=True)
class Limited:
    """An in-process server with its own limits, on the session's database."""

    address: str
    running: RunningServer

    def client(self, key: str) -> Client:
        return connect(self.address, key)


async def limited(dsns: Dsns, service: Service, **limits: int) -> Limited:
    env = {
        "AUTHZ_DATABASE_URL": dsns.service,
        "AUTHZ_SECRET_KEY": service.settings.secret_key,
        "AUTHZ_HOME": tempfile.gettempdir(),
    }
    env.update({f"AUTHZ_{name.upper()}": str(value) for name, value in limits.items()})
    db = await Database.connect(dsns.service, max_size=5)
    running = await start_server(db, Settings.from_env(env), listen="127.0.0.1:0")
    return Limited(f"127.0.0.1:{running.port}", running)


async def audit_of(t: Tenant, event: str) -> list[tuple[str, dict[str, object]]]:
    found = await t.admin.admin.QueryAudit(adm.QueryAuditRequest(event=event, limit=1000))
    return [(e.subject, json.loads(e.details_json)) for e in found.events]
