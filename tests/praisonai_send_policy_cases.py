"""PraisonAI's own send-policy unit tests, vendored (not collected by pytest:
``tests/test_praisonai_vendored.py`` runs them with our policy swapped in).

Source: https://github.com/MervinPraison/PraisonAI,
src/praisonai-agents/tests/unit/tools/test_send_message_tool.py at commit
52e3e37b1 (the "Outbound send-policy guard" section, unchanged since it was
added in 2f3174dcc, and ``FakeMessenger``, which it uses). The code below is
verbatim except this docstring, the imports (trimmed to what the section
uses), the lint markers and the formatting ``ruff format`` applies.

Its licence:

    MIT License

    Permission is hereby granted, free of charge, to any person obtaining
    a copy of this software and associated documentation files (the
    "Software"), to deal in the Software without restriction, including
    without limitation the rights to use, copy, modify, merge, publish,
    distribute, sublicense, and/or sell copies of the Software, and to
    permit persons to whom the Software is furnished to do so, subject to
    the following conditions:

    The above copyright notice and this permission notice shall be
    included in all copies or substantial portions of the Software.

    THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND,
    EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
    MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
    NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE
    LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION
    OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION
    WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""
# ruff: noqa
# mypy: ignore-errors

import json

import pytest

from praisonaiagents.tools import send_message
from praisonaiagents.gateway import (
    DeliveryResult,
    ReactionResult,
    ThreadResult,
    TargetInfo,
    SendDecision,
    SendPolicyProtocol,
    SendPolicy,
)
from praisonaiagents.session.context import (
    register_outbound_messenger,
    clear_outbound_messenger,
    register_send_policy,
    get_send_policy,
    clear_send_policy,
)


class FakeMessenger:
    """Minimal OutboundMessengerProtocol implementation for tests."""

    def __init__(self):
        self.sent = []
        self.reactions = []
        self.threads = []

    async def send(self, target, text, *, media=None):
        self.sent.append((target, text, media))
        return DeliveryResult(ok=True, target=target, summary=f"Delivered to {target}")

    def list_targets(self):
        return [
            TargetInfo(
                target="telegram:home",
                platform="telegram",
                kind="home",
                label="Telegram",
            )
        ]

    async def react(self, target, emoji, *, message_id="", remove=False):
        self.reactions.append((target, emoji, message_id, remove))
        return ReactionResult(status="ok", target=target)

    async def create_thread(self, target, name):
        self.threads.append((target, name))
        return ThreadResult(status="ok", target=target, thread_id="T1")


# ---------------------------------------------------------------------------
# Outbound send-policy guard (Issue #2226)
# ---------------------------------------------------------------------------


def test_send_policy_satisfies_protocol():
    assert isinstance(SendPolicy(), SendPolicyProtocol)


def test_send_policy_default_allow_permits_everything():
    policy = SendPolicy()  # default="allow"
    assert policy.evaluate("slack:#exec").allow is True
    assert policy.evaluate("origin").allow is True


def test_send_policy_default_deny_blocks_unlisted():
    policy = SendPolicy(default="deny", allow=["origin", "ops-alerts"])
    assert policy.evaluate("origin").allow is True
    assert policy.evaluate("ops-alerts").allow is True
    decision = policy.evaluate("slack:#exec")
    assert decision.allow is False
    assert "not permitted" in decision.reason


def test_send_policy_deny_list_takes_precedence():
    policy = SendPolicy(default="allow", deny=["slack:#exec"])
    assert policy.evaluate("slack:#ops").allow is True
    decision = policy.evaluate("slack:#exec")
    assert decision.allow is False
    assert "denied" in decision.reason


def test_send_policy_invalid_default_raises():
    with pytest.raises(ValueError):
        SendPolicy(default="maybe")


def test_no_policy_preserves_default_behaviour():
    # Absent a policy, any reachable target is delivered (backward compatible).
    messenger = FakeMessenger()
    token = register_outbound_messenger(messenger)
    try:
        assert get_send_policy() is None
        out = send_message("slack:#exec", "hi")
        assert out == "Delivered to slack:#exec"
        assert messenger.sent == [("slack:#exec", "hi", None)]
    finally:
        clear_outbound_messenger(token)


def test_denied_send_is_not_delivered():
    messenger = FakeMessenger()
    mtoken = register_outbound_messenger(messenger)
    ptoken = register_send_policy(SendPolicy(default="deny", allow=["origin"]))
    try:
        out = send_message("slack:#exec", "<leaked context>")
        assert "Failed to send" in out
        assert "not permitted" in out
        # Crucially, the messenger was never invoked.
        assert messenger.sent == []
    finally:
        clear_send_policy(ptoken)
        clear_outbound_messenger(mtoken)


def test_allowed_send_passes_through_policy():
    messenger = FakeMessenger()
    mtoken = register_outbound_messenger(messenger)
    ptoken = register_send_policy(SendPolicy(default="deny", allow=["origin"]))
    try:
        out = send_message("origin", "all done")
        assert out == "Delivered to origin"
        assert messenger.sent == [("origin", "all done", None)]
    finally:
        clear_send_policy(ptoken)
        clear_outbound_messenger(mtoken)


def test_custom_policy_protocol_is_honoured():
    class DenyAll:
        def evaluate(self, target, *, agent_id="", session_id="", origin=None):
            return SendDecision(allow=False, reason="custom deny")

    messenger = FakeMessenger()
    mtoken = register_outbound_messenger(messenger)
    ptoken = register_send_policy(DenyAll())
    try:
        out = send_message("origin", "hi")
        assert "custom deny" in out
        assert messenger.sent == []
    finally:
        clear_send_policy(ptoken)
        clear_outbound_messenger(mtoken)


def test_policy_evaluation_error_blocks_send():
    class Broken:
        def evaluate(self, target, *, agent_id="", session_id="", origin=None):
            raise RuntimeError("boom")

    messenger = FakeMessenger()
    mtoken = register_outbound_messenger(messenger)
    ptoken = register_send_policy(Broken())
    try:
        out = send_message("origin", "hi")
        assert "Failed to send" in out
        assert messenger.sent == []
    finally:
        clear_send_policy(ptoken)
        clear_outbound_messenger(mtoken)


def test_policy_returning_non_decision_blocks_send():
    # A non-conforming policy that returns None (instead of a SendDecision)
    # must fail closed, not implicitly allow the send.
    class ReturnsNone:
        def evaluate(self, target, *, agent_id="", session_id="", origin=None):
            return None

    messenger = FakeMessenger()
    mtoken = register_outbound_messenger(messenger)
    ptoken = register_send_policy(ReturnsNone())
    try:
        out = send_message("origin", "hi")
        assert "Failed to send" in out
        assert messenger.sent == []
    finally:
        clear_send_policy(ptoken)
        clear_outbound_messenger(mtoken)


def test_policy_does_not_affect_list_action():
    messenger = FakeMessenger()
    mtoken = register_outbound_messenger(messenger)
    ptoken = register_send_policy(SendPolicy(default="deny"))
    try:
        out = send_message(action="list")
        parsed = json.loads(out)
        assert parsed[0]["target"] == "telegram:home"
    finally:
        clear_send_policy(ptoken)
        clear_outbound_messenger(mtoken)
