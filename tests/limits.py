"""A service of the test's own with small attempt limits."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from authz_service.config import Settings
from authz_service.server import RunningServer, start_server
from authz_service.store.db import Database

from .conftest import Dsns, Service


@dataclass
class Limited:
    """An in-process server with its own attempt limits."""

    address: str
    settings: Settings
    running: RunningServer


async def start_limited(dsns: Dsns, service: Service, **limits: int) -> Limited:
    env = {
        "AUTHZ_DATABASE_URL": dsns.service,
        # The session service's key: codes it issued resolve here.
        "AUTHZ_SECRET_KEY": service.settings.secret_key,
        "AUTHZ_HOME": tempfile.gettempdir(),
    }
    env.update({f"AUTHZ_{name.upper()}": str(value) for name, value in limits.items()})
    settings = Settings.from_env(env)
    db = await Database.connect(dsns.service, max_size=5)
    running = await start_server(db, settings, listen="127.0.0.1:0")
    return Limited(f"127.0.0.1:{running.port}", settings, running)
