"""Send policy, table-driven: aliases (chains, loops, duplicates) and per-agent rules. Pure."""

from __future__ import annotations

import pytest

from authz_service.domain import policy as policy_codec
from authz_service.domain.errors import InvalidArgument
from authz_service.domain.model import (
    ChannelPolicy,
    Platform,
    SendPolicy,
)
from authz_service.domain.send import EVALUATION_ERROR, denial, evaluate
from tests.domain.send_rows import ALLOW, BERLIN, DENY, FRI_NOON, SL, Row, run

# --- aliases: chains, loops, duplicates ---------------------------------------------------

ALIAS_ROWS = {
    "chain": (
        {"Boss": "exec-room", "EXEC-ROOM": "slack:#Exec", "slack:#exec": "slack:C0EXEC1"},
        "boss",
        False,
        "",
    ),
    "chain-of-eight-hops": (
        {f"x{i}": f"x{i + 1}" for i in range(7)} | {"x7": "slack:#exec"},
        "x0",
        False,
        "",
    ),
    "chain-too-long": (
        {f"x{i}": f"x{i + 1}" for i in range(8)} | {"x8": "slack:#exec"},
        "x0",
        False,
        "error",
    ),
    "loop": ({"a": "b", "b": "A"}, "a", False, "error"),
    "self-alias-after-normalisation": ({"Slack:#Exec": "slack:#exec"}, "slack:#exec", False, ""),
    "duplicates-after-normalisation": ({"Exec": "slack:#a", "exec": "slack:#b"}, "slack:#z", False, "error"),
    "alias-to-origin": ({"reply": "origin"}, "Reply", True, ""),
    "stored-alias-named-origin": ({"Origin": "slack:#ops"}, "origin", False, "error"),
    "duplicates-bare-and-prefixed": (
        {"C0EXEC1": "slack:#a", "slack:C0EXEC1": "slack:#b"},
        "slack:#z",
        False,
        "error",
    ),
}


@pytest.mark.parametrize(("aliases", "target", "allow", "error"), ALIAS_ROWS.values(), ids=ALIAS_ROWS.keys())
def test_aliases(aliases: dict[str, str], target: str, allow: bool, error: str) -> None:
    policy = SendPolicy(DENY, allow=("origin",), deny=("slack:#exec",))
    reason = EVALUATION_ERROR if error else None
    run(Row(policy, target, allow, aliases=aliases, reason=reason))


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        pytest.param({"Exec": "slack:#a", "exec": "slack:#b"}, "same alias", id="duplicate-case"),
        pytest.param({"<#C012345|x>": "a", "slack:C012345": "b"}, "same alias", id="duplicate-mention"),
        pytest.param({"C012345": "a", "slack:C012345": "b"}, "same alias", id="duplicate-bare-and-prefixed"),
        pytest.param({"exec": "a", "#Exec": "b"}, "same alias", id="duplicate-bare-name-and-hash"),
        pytest.param({"#ops": "a", "Slack:#OPS": "b"}, "same alias", id="duplicate-bare-name-and-prefixed"),
        pytest.param({"a": "b", "b": "a"}, "loop", id="loop"),
        pytest.param({f"x{i}": f"x{i + 1}" for i in range(9)}, "loop", id="too-deep"),
        pytest.param({"Origin": "slack:#ops"}, "reserved", id="origin-any-case"),
    ],
)
def test_validation_rejects_ambiguous_aliases(aliases: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        policy_codec.validate(Platform.SLACK, ChannelPolicy(aliases=aliases))
    # A reserved name is one entry; a duplicate or a loop is the map as a whole.
    assert exc.value.field == ("policy.aliases[Origin]" if message == "reserved" else "policy.aliases")
    assert message in str(exc.value)


def test_validation_keeps_aliases_as_written() -> None:
    aliases = {"Boss": "Slack:#Exec", "Slack:#EXEC": "slack:C0EXEC1", "Me": "me"}
    assert policy_codec.validate(Platform.SLACK, ChannelPolicy(aliases=aliases)).aliases == aliases


def test_a_bare_alias_name_is_on_the_channels_platform() -> None:
    """``C012345`` is ``slack:C012345`` on Slack (a duplicate above) but ``telegram:c012345`` on Telegram."""
    aliases = {"C012345": "-100123", "slack:C012345": "telegram:-100123"}
    assert policy_codec.validate(Platform.TELEGRAM, ChannelPolicy(aliases=aliases)).aliases == aliases


# --- per-agent rules (the seed's RBAC example) -----------------------------------------

RBAC = {
    "support-bot": SendPolicy(DENY, allow=("origin", "slack:#support")),
    "ops-bot": SendPolicy(DENY, allow=("origin", "slack:#ops", "slack:#incidents")),
}
AGENT_ROWS = {
    # No channel policy: an agent without its own list may reply to its origin only.
    "support-own-list": (None, "support-bot", "slack:#support", True),
    "support-not-ops": (None, "support-bot", "slack:#ops", False),
    "support-origin": (None, "support-bot", "origin", True),
    "ops-incidents": (None, "ops-bot", "Slack:#Incidents", True),
    "ops-not-support": (None, "ops-bot", "slack:#support", False),
    "unknown-agent-origin": (None, "web-bot", "origin", True),
    "unknown-agent-origin-by-id": (None, "web-bot", "telegram:42", True),
    "unknown-agent-elsewhere": (None, "web-bot", "slack:#support", False),
    # A channel policy: agents without their own list fall back to it.
    "fallback-channel-allows": (SendPolicy(ALLOW, deny=("slack:#exec",)), "web-bot", "slack:#support", True),
    "fallback-channel-denies": (SendPolicy(ALLOW, deny=("slack:#exec",)), "web-bot", "slack:#exec", False),
    "own-list-replaces-channel": (SendPolicy(ALLOW), "support-bot", "slack:#random", False),
    "agent-id-is-exact": (None, "Support-Bot", "slack:#support", False),
}


@pytest.mark.parametrize(
    ("channel_policy", "agent", "target", "allow"), AGENT_ROWS.values(), ids=AGENT_ROWS.keys()
)
def test_per_agent_rules(channel_policy: SendPolicy | None, agent: str, target: str, allow: bool) -> None:
    c = ChannelPolicy(send_policy=channel_policy, agent_send_policies=RBAC)
    d = evaluate(c, agent, target, "telegram:42", platform=SL, listing=False, now=FRI_NOON, zone=BERLIN)
    assert (d.allow, d.reason) == (allow, "" if allow else denial(target))
