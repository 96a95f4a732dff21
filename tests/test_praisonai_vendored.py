"""PraisonAI's own send-policy unit tests (vendored in
``tests/praisonai_send_policy_cases.py``, MIT) run with its ``SendPolicy``
swapped for ours: each ``SendPolicy(default=..., allow=..., deny=...)`` the
tests make becomes a service channel with that send policy and a
``ServiceSendPolicy`` on it. Each test runs as a bot turn would: in a session
context (a Telegram chat), off the event loop the service runs on.

Where our policy is deliberately different (``DIFFERENT``), the case must
fail its assertion, so a change of behaviour there is seen too."""

from __future__ import annotations

import asyncio
import contextvars
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from praisonaiagents.session import context as session

from authz_service.adapters import ServiceSendPolicy
from authz_service.client import SyncClient, connect_sync
from authz_service.gen.authz.v1 import admin_pb2 as adm
from authz_service.gen.authz.v1 import common_pb2 as cm

from . import praisonai_send_policy_cases as cases
from .conftest import Service, Tenant

CASES = sorted(name for name in vars(cases) if name.startswith("test_"))

# name -> (why, the assertion of the case that fails)
DIFFERENT = {
    # The model reads the seed's one string for every refusal (issue #16): the
    # deny list's refusal is "... is not permitted by send_policy", not "denied".
    "test_send_policy_deny_list_takes_precedence": (
        "the refusal is the seed's text",
        'assert "denied" in decision.reason',
    ),
}

_channels = itertools.count()


@pytest.fixture
async def policy_factory(service: Service, tenant: Tenant) -> AsyncIterator[Callable[..., ServiceSendPolicy]]:
    made = await tenant.admin.admin.CreateApiKey(
        adm.CreateApiKeyRequest(role=adm.ROLE_AGENT, name="praisonai", agents=["support"])
    )
    # Blocking clients: the cases run off the loop, as PraisonAI's tools do.
    admin = connect_sync(service.address, tenant.keys["admin"])
    agent: SyncClient = connect_sync(service.address, made.secret)

    def send_policy(default: str = "allow", allow: Any = None, deny: Any = None) -> ServiceSendPolicy:
        """PraisonAI's ``SendPolicy`` signature, answered by the service."""
        defaults = {"allow": cm.SEND_DEFAULT_ALLOW, "deny": cm.SEND_DEFAULT_DENY}
        if (default or "allow").lower() not in defaults:
            raise ValueError(f"send_policy default must be 'allow' or 'deny', got {default!r}")
        channel = f"vendored-{next(_channels)}"
        admin.admin.SetChannel(
            adm.SetChannelRequest(
                channel_id=channel,
                platform=cm.PLATFORM_TELEGRAM,
                policy=cm.ChannelPolicy(
                    send_policy=cm.SendPolicy(
                        default=defaults[(default or "allow").lower()],
                        allow=list(allow or []),
                        deny=list(deny or []),
                    )
                ),
            )
        )
        return ServiceSendPolicy(agent, channel, agent_id="support")

    yield send_policy
    agent.close()
    admin.close()


@pytest.mark.parametrize("name", CASES)
async def test_praisonais_send_policy_case(
    name: str, policy_factory: Callable[..., ServiceSendPolicy], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cases, "SendPolicy", policy_factory)
    ctx = contextvars.Context()
    ctx.run(session.set_session_context, platform="telegram", chat_id="100", user_id="7")
    case = getattr(cases, name)
    if name in DIFFERENT:
        with pytest.raises(AssertionError) as failed:
            await asyncio.to_thread(ctx.run, case)
        assert str(failed.traceback[-1].statement).strip() == DIFFERENT[name][1]
        return
    await asyncio.to_thread(ctx.run, case)


def test_every_case_of_the_section_runs() -> None:
    # The vendored section's tests, all of them: a case added there runs here.
    assert len(CASES) == 12
    assert set(DIFFERENT) <= set(CASES)
