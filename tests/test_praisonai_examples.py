"""The PraisonAI pairing example runs as docs/agent-runtimes.md shows, against
the real service (the example is a separate process, as it is after `make run`)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import authz_pb2 as az
from authz_service.gen.authz.v1 import common_pb2 as cm

from .conftest import Service, Tenant

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "praisonai_pairing.py"


async def test_the_pairing_example_pairs_through_the_service(
    tenant: Tenant, service: Service, tmp_path: Path
) -> None:
    await tenant.channel("tg")
    key = await tenant.admin.admin.CreateApiKey(
        adm.CreateApiKeyRequest(role=adm.ROLE_CONNECTOR, name="praisonai-bot", channels=["tg"])
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    env.update(
        AUTHZ_ADDRESS=service.address,
        AUTHZ_CONNECTOR_KEY=key.secret,
        AUTHZ_CHANNEL="tg",
        AUTHZ_USER="4242",
        AUTHZ_APPROVAL_TIMEOUT="60",
        HOME=str(tmp_path),  # praisonai-bot writes its own secret under ~/.praisonai
        PYTHONUNBUFFERED="1",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    code = ""
    try:
        while not code:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, "the example ended before giving a code:\n" + "".join(seen)
            seen.append(line)
            found = re.search(r"Your pairing code: ([A-Z0-9]+)\.", line)
            code = found.group(1) if found else ""
        # The owner approves from the CLI (`authz pairing approve tg CODE`).
        await tenant.approver.authz.ResolveApproval(
            az.ResolveApprovalRequest(
                code=az.CodeRef(channel_id="tg", code=code), action=cm.APPROVAL_ACTION_APPROVE
            )
        )
        rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out = "".join(seen) + rest.decode()
    assert proc.returncode == 0, out
    assert seen[0] == "user 4242> hello\n"
    assert out.endswith("user 4242> hello again\n  (paired: passed to the agent)\n"), out
