"""``authz dev`` (``make run``): the service on the embedded database, plus a
demo tenant and channel, and the commands to try next."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from pathlib import Path

import grpc

from .. import names
from ..client import TlsConfig, connect
from ..config import Settings, write_private
from ..gen.authz.v1 import admin_pb2 as adm
from ..gen.authz.v1 import common_pb2 as cm
from ..logs import setup_logging
from ..server import RunningServer, http_url, serve
from .output import safe

DEMO_TENANT = "demo"
DEMO_CHANNEL = "demo"
DEV_HTTP_LISTEN = "127.0.0.1:8080"
"""``make run`` serves the HTTP/JSON API here unless AUTHZ_HTTP_LISTEN says otherwise."""


async def _bootstrap(settings: Settings, running: RunningServer) -> None:
    address = f"127.0.0.1:{running.port}"
    key_file = settings.home / "demo-admin.key"
    assert settings.operator_key is not None
    tls = TlsConfig.from_env(os.environ)  # AUTHZ_CA_FILE when the dev server speaks TLS
    op = connect(address, settings.operator_key, tls=tls)
    try:
        try:
            resp = await op.admin.CreateTenant(
                adm.CreateTenantRequest(tenant_id=DEMO_TENANT, display_name="Demo")
            )
            write_private(key_file, resp.secret + "\n", replace=True)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
    finally:
        await op.close()
    if not key_file.exists():
        print(
            f"demo tenant exists but {key_file} is gone; delete {settings.home} to start over",
            file=sys.stderr,
        )
        return
    admin_key = key_file.read_text().strip()
    admin = connect(address, admin_key, tls=tls)
    try:
        try:
            channel = await admin.admin.GetChannel(adm.GetChannelRequest(channel_id=DEMO_CHANNEL))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            channel = await admin.admin.SetChannel(
                adm.SetChannelRequest(
                    channel_id=DEMO_CHANNEL,
                    platform=cm.PLATFORM_TELEGRAM,
                    policy=cm.ChannelPolicy(dm_policy=cm.DM_POLICY_PAIRING),
                )
            )
    finally:
        await admin.close()

    venv_bin = Path(sys.executable).parent
    env_file = settings.home / "env"
    http = ""
    if running.http is not None:
        url = http_url(settings, running.http.port)
        http = f"""
 HTTP/JSON API (docs/http-api.md) on {url}, reference at {url}/openapi.json:

   curl -s {url}/authz.v1.AuthzService/CheckUser \\
     -H "Authorization: Bearer $AUTHZ_API_KEY" -H 'Content-Type: application/json' \\
     -d '{{"channelId": "{DEMO_CHANNEL}", "userId": "4242", "chatKind": "CHAT_KIND_DIRECT"}}'
"""
        if settings.console:
            http += f"""
 Web console (docs/console.md): {url}/console/
 Sign in with the demo admin key, which this prints:  cat {shlex.quote(str(key_file))}
 The request `authz simulate message` starts waits there under Approvals.
"""
    write_private(
        env_file,
        f"export AUTHZ_ADDRESS={address}\n"
        f"export AUTHZ_API_KEY={shlex.quote(admin_key)}\n"
        f"export AUTHZ_HOME={shlex.quote(str(settings.home))}\n"
        f"export PATH={shlex.quote(str(venv_bin))}:$PATH\n",
        replace=True,
    )
    print(
        f"""
────────────────────────────────────────────────────────────────────────
 Ready. {describe(channel)}

 In another terminal:

   source {env_file}
   authz simulate message demo 4242 "hello"        # → pairing required, prints a code
   authz pairing list demo                          # the pending request
   authz pairing approve demo <CODE>               # the owner approves
   authz simulate message demo 4242 "hello again"  # → allowed, routed to the agent
   authz users list demo --paired
   authz audit
   authz doctor                                     # security audit of the tenant
   authz apply -f examples/policies/public-demo-admin.yaml --dry-run
                                                    # policies as a file (docs/policies.md)
{http}
 Stop with Ctrl-C. Data lives in {settings.home} (delete it to start over).
────────────────────────────────────────────────────────────────────────""",
        flush=True,
    )


def describe(channel: adm.Channel) -> str:
    """The demo channel as it is now (an earlier run, or the operator, may have changed it)."""
    platform = names.PLATFORM.label(channel.platform).capitalize()
    policy = channel.policy
    text = (
        f"Tenant '{DEMO_TENANT}' has a {platform} channel '{channel.channel_id}' with DM policy"
        f" '{names.DM_POLICY.label(policy.dm_policy)}'"
    )
    if policy.owner_id:
        return f"{text}\n and owner {safe(policy.owner_id)}, who approves requests in the chat."
    return f"{text}\n and no owner, so requesters are told the CLI command to approve them."


def run_dev() -> int:
    setup_logging()
    env = dict(os.environ)
    env.setdefault("AUTHZ_HTTP_LISTEN", DEV_HTTP_LISTEN)
    settings = Settings.from_env(env)

    async def on_ready(running: RunningServer) -> None:
        await _bootstrap(settings, running)

    asyncio.run(serve(settings, on_ready=on_ready))
    return 0
