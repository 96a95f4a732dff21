"""PraisonAI with this service's send policy and tool approvals, no LLM.

Needs ``pip install 'authz-service[praisonai]'`` (praisonaiagents 1.7.17) and
``make run`` in another terminal; docs/agent-runtimes.md#praisonai walks
through it. PraisonAI's own code runs the tools: its ``send_message`` asks
``ServiceSendPolicy`` (registered with ``register_send_policy``), and
``Agent(approval=...)`` asks ``ApprovalBackend`` before ``deploy`` runs. The
"model" is this script calling ``agent.execute_tool`` as a model's tool
calls would.

Environment: AUTHZ_ADDRESS, AUTHZ_AGENT_KEY (an agent key bound to agent
``ops``: ``authz key create agent --agent ops``), AUTHZ_CHANNEL (default
``demo``), AUTHZ_APPROVAL_TIMEOUT (default 120 seconds).
"""

from __future__ import annotations

import os

from praisonaiagents import Agent
from praisonaiagents.approval import ApprovalConfig
from praisonaiagents.gateway import DeliveryResult, TargetInfo
from praisonaiagents.session.context import (
    Origin,
    register_outbound_messenger,
    register_send_policy,
    set_session_context,
)
from praisonaiagents.tools import send_message

from authz_service.adapters import ApprovalBackend, PendingApproval, ServiceSendPolicy
from authz_service.client import connect, connect_sync

AGENT_ID = "ops"  # the id the agent key is bound to


class PrintingMessenger:
    """Stands in for the bot's transport: PraisonAI's OutboundMessengerProtocol."""

    async def send(self, target: str, text: str, *, media: list[str] | None = None) -> DeliveryResult:
        print(f"  (delivered to {target}: {text!r})")
        return DeliveryResult(ok=True, target=target, summary=f"Sent to {target}.")

    def list_targets(self) -> list[TargetInfo]:
        return [TargetInfo(target="origin", platform="telegram", kind="home", label="this chat")]


def announce(pending: PendingApproval) -> None:
    print(f"  approval {pending.approval_id} is waiting for a human; in another terminal:")
    print(f"    authz approvals approve {pending.approval_id}   (or: deny ... --reason ...)")


def deploy(env: str) -> str:
    """Deploy the current build to an environment."""
    return f"deployed to {env}"


def main() -> None:
    address = os.environ.get("AUTHZ_ADDRESS", "127.0.0.1:50051")
    key = os.environ["AUTHZ_AGENT_KEY"]
    channel = os.environ.get("AUTHZ_CHANNEL", "demo")
    timeout = float(os.environ.get("AUTHZ_APPROVAL_TIMEOUT", "120"))

    # What PraisonAI's bot does for each inbound message: the turn's chat...
    set_session_context(
        platform="telegram", chat_id="4242", user_id="4242", origin=Origin(platform="telegram")
    )
    register_outbound_messenger(PrintingMessenger())
    # ...and the policy, ours in place of praisonaiagents.gateway.SendPolicy.
    with connect_sync(address, key) as sync_client:
        register_send_policy(ServiceSendPolicy(sync_client, channel, agent_id=AGENT_ID))
        # One client: it opens a channel per event loop PraisonAI runs the approval on.
        approvals = ApprovalBackend(
            connect(address, key), agent_id=AGENT_ID, channel_id=channel, timeout=timeout, on_request=announce
        )
        deployer = Agent(
            name=AGENT_ID, tools=[deploy], approval=ApprovalConfig(backend=approvals, all_tools=True)
        )

        for target in ("slack:#exec", "telegram", "origin"):
            print(f"model> send_message(target={target!r})")
            # A new agent per call, as per turn (PraisonAI remarks on repeated sends in one).
            sender = Agent(name=AGENT_ID, tools=[send_message])
            print(f"tool<  {sender.execute_tool('send_message', {'target': target, 'message': 'status'})}")
        print("model> deploy(env='prod')")
        print(f"tool<  {deployer.execute_tool('deploy', {'env': 'prod'})}")


if __name__ == "__main__":
    main()
