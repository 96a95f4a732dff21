"""A plain-Python agent loop guarded by the authorization service.

No LLM: the "model" is a script of steps that reads each tool result, the way
a model would. It has two tools:

* ``shell``: runs a command, gated by ``ApprovalBackend``: a human must
  approve each call (``authz approvals approve <id>``) before it runs;
* ``send_message``: delivers a message, checked by ``ServiceSendPolicy``
  first; a denial is returned to the model as text.

Run it against ``make run`` (see docs/agent-runtimes.md):

    source .authz/env
    export AUTHZ_AGENT_KEY=$(authz key create agent --name demo-runtime --agent ops | tail -n 1)
    python examples/agent_loop.py

Environment: AUTHZ_ADDRESS (default 127.0.0.1:50051), AUTHZ_AGENT_KEY (an
agent key, required), AUTHZ_CHANNEL (default "demo"), AUTHZ_AGENT_ID
(default "ops"), AUTHZ_APPROVAL_TIMEOUT (seconds, default 120).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from authz_service.adapters import ApprovalBackend, ApprovalRefused, PendingApproval, ServiceSendPolicy, gated
from authz_service.client import DEFAULT_ADDRESS, connect, connect_sync

USER_ID = "4242"  # the Telegram user the agent is working for
ORIGIN = f"telegram:{USER_ID}"  # the conversation this turn came from
SESSION = "demo-session-1"


@dataclass(frozen=True)
class Action:
    tool: str
    arguments: dict[str, Any]


# The "model": each `yield` is a tool call; the value sent back is the tool's result.
Script = Generator[Action, str, None]


def scripted_model() -> Script:
    yield Action("send_message", {"target": "origin", "text": "On it: checking the disk first."})
    usage = yield Action("shell", {"cmd": "df -h /tmp"})
    cleanup = yield Action("shell", {"cmd": "rm -rf /tmp/agent-loop-demo-cache"})
    disk = " ".join(usage.splitlines()[-1].split()) if usage.startswith("exit 0") else "unknown"
    report = f"disk: {disk}; cleanup: {'done' if cleanup.startswith('exit 0') else cleanup}"
    sent = yield Action("send_message", {"target": "slack:#exec", "text": report})
    if sent.startswith("Failed to send"):
        # The policy said no; a well-behaved model reports back where it may.
        yield Action("send_message", {"target": "origin", "text": f"I may not post to #exec. {report}"})


def announce(pending: PendingApproval) -> None:
    """ApprovalBackend's on_request: tell the operator how to decide."""
    print(f"   ⏳ approval {pending.approval_id} pending: {pending.tool_name} {pending.arguments_json}")
    print(f"      approve: authz approvals approve {pending.approval_id}")
    print(f"      deny:    authz approvals deny {pending.approval_id} --reason '...'", flush=True)


async def run() -> int:
    key = os.environ.get("AUTHZ_AGENT_KEY")
    if not key:
        print("set AUTHZ_AGENT_KEY to an agent key: authz key create agent", file=sys.stderr)
        return 2
    address = os.environ.get("AUTHZ_ADDRESS", DEFAULT_ADDRESS)
    channel = os.environ.get("AUTHZ_CHANNEL", "demo")
    agent_id = os.environ.get("AUTHZ_AGENT_ID", "ops")
    timeout = float(os.environ.get("AUTHZ_APPROVAL_TIMEOUT", "120"))

    async with connect(address, key) as client:
        with connect_sync(address, key) as sync_client:
            approvals = ApprovalBackend(
                client,
                agent_id=agent_id,
                channel_id=channel,
                timeout=timeout,
                on_request=announce,
                session_id=SESSION,
                requester_id=USER_ID,
            )
            policy = ServiceSendPolicy(sync_client, channel, agent_id=agent_id, origin=lambda: ORIGIN)

            @gated(approvals, "shell", summary="the user asked to clean up the disk")
            async def shell(*, cmd: str) -> str:
                proc = await asyncio.create_subprocess_exec(
                    *shlex.split(cmd), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
                )
                out, _ = await asyncio.wait_for(proc.communicate(), 30)
                return f"exit {proc.returncode}: {out.decode().strip()}"

            async def send_message(*, target: str, text: str) -> str:
                # The seed's SendPolicyProtocol: synchronous, never raises, fails closed.
                decision = policy.evaluate(target, session_id=SESSION)
                if not decision.allow:  # as PraisonAI's send_message words it
                    return f"Failed to send to {target}: {decision.reason}"
                return f"delivered to {ORIGIN if target == 'origin' else target}"

            tools: dict[str, Callable[..., Any]] = {"shell": shell, "send_message": send_message}
            print(f"user> the disk is full, please clean up   (agent {agent_id!r}, channel {channel!r})")
            model = scripted_model()
            result: str | None = None
            while True:
                try:
                    action = model.send(result) if result is not None else next(model)
                except StopIteration:
                    break
                print(f"model> {action.tool} {json.dumps(action.arguments)}", flush=True)
                try:
                    result = await tools[action.tool](**action.arguments)
                except ApprovalRefused as refused:
                    result = str(refused)  # model-readable: the model sees why
                print(f"tool> {result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(run()))
