"""Assemble and run the gRPC server: services, health, reflection, lifecycle."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .api.admin import AdminServicer
from .api.authz import AuthzServicer
from .api.rpc import Runtime
from .config import Settings
from .domain.pairing import Keyring
from .flows.auth import hash_secret
from .gen.authz.v1 import admin_pb2, admin_pb2_grpc, authz_pb2, authz_pb2_grpc
from .store import embedded
from .store.db import Database
from .store.migrate import migrate
from .store.notify import ApprovalNotifier

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    authz_pb2.DESCRIPTOR.services_by_name["AuthzService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
MAX_MESSAGE_BYTES = 256 * 1024


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped)
    db: Database
    notifier: ApprovalNotifier

    async def stop(self, grace: float = 5.0) -> None:
        """NOT_SERVING first, so load balancers drain us; then finish in-flight calls."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.notifier.close()
        await self.db.close()


async def start_server(db: Database, settings: Settings, listen: str | None = None) -> RunningServer:
    notifier = ApprovalNotifier(db.dsn, fallback_interval=settings.watch_fallback_seconds)
    await notifier.start()
    runtime = Runtime(
        db=db,
        keyring=Keyring(settings.secret_key.encode()),
        operator_key_hash=hash_secret(settings.operator_key) if settings.operator_key else None,
        notifier=notifier,
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    authz_pb2_grpc.add_AuthzServiceServicer_to_server(AuthzServicer(runtime), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(runtime), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = listen or settings.listen
    if settings.tls is None:
        port = server.add_insecure_port(address)
    else:
        credentials = grpc.ssl_server_credentials(
            [(settings.tls.private_key, settings.tls.certificate_chain)],
            root_certificates=settings.tls.client_ca,
            require_client_auth=settings.tls.client_ca is not None,
        )
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}")
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, health_servicer, db, notifier)


async def prepare_database(settings: Settings, *, announce: Callable[[str], None] = print) -> str:
    """Return the service role's DSN, starting and migrating the embedded
    database when no AUTHZ_DATABASE_URL is set. With a URL, never starts one."""
    if settings.database_url is not None:
        return settings.database_url
    announce(f"starting embedded PostgreSQL in {settings.home / 'pgdata'} ...")
    emb = await asyncio.to_thread(embedded.start, settings.home)
    await embedded.ensure_database(emb)
    applied = await migrate(emb.owner_dsn)
    if applied:
        announce(f"applied migrations: {', '.join(f'{m.version:04d}_{m.name}' for m in applied)}")
    return emb.service_dsn


async def serve(
    settings: Settings, *, on_ready: Callable[[RunningServer], Awaitable[None]] | None = None
) -> None:
    dsn = await prepare_database(settings)
    db = await Database.connect(
        dsn, min_size=settings.pool_min, max_size=settings.pool_max, timeout=settings.db_timeout
    )
    running = await start_server(db, settings)
    log.info("authz service listening", extra={"port": running.port, "embedded": settings.embedded})
    print(f"authz service listening on {settings.listen.rsplit(':', 1)[0]}:{running.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        await on_ready(running)
    await stop.wait()
    print("shutting down: health NOT_SERVING, draining in-flight calls ...", flush=True)
    await running.stop()
