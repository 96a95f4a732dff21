"""Send policy, by the seed's behaviour table. Pure."""

from __future__ import annotations

import pytest

from authz_service.domain.errors import InvalidArgument
from authz_service.domain.model import ChannelPolicy, Platform, SendDefault, SendPolicy
from authz_service.domain.policy import validate
from authz_service.domain.send import EVALUATION_ERROR, denial, evaluate

TG = Platform.TELEGRAM


def ch(policy: SendPolicy | None = None, **kw: object) -> ChannelPolicy:
    return ChannelPolicy(send_policy=policy, **kw)  # type: ignore[arg-type]


def allowed(channel: ChannelPolicy, target: str, origin: str = "telegram:42", agent: str = "a") -> bool:
    return evaluate(channel, agent, target, origin, platform=TG, listing=False).allow


def test_denial_string_is_exactly_the_seeds() -> None:
    d = evaluate(ch(SendPolicy(SendDefault.DENY)), "a", "slack:#exec", "", platform=TG, listing=False)
    assert not d.allow
    assert d.reason == "Failed to send to slack:#exec: target 'slack:#exec' is not permitted by send_policy"
    assert d.reason == denial("slack:#exec")


def test_default_deny_with_allowlist() -> None:
    c = ch(SendPolicy(SendDefault.DENY, allow=("origin", "ops-alerts")))
    assert allowed(c, "origin")
    assert allowed(c, "ops-alerts")
    assert not allowed(c, "slack:#exec")


def test_default_allow_with_denylist() -> None:
    c = ch(SendPolicy(SendDefault.ALLOW, deny=("slack:#exec", "slack:#board")))
    assert allowed(c, "slack:#random")
    assert not allowed(c, "slack:#exec")


def test_deny_wins_over_allow() -> None:
    c = ch(SendPolicy(SendDefault.ALLOW, allow=("slack:#exec",), deny=("slack:#exec",)))
    assert not allowed(c, "slack:#exec")


def test_origin_token_matches_the_conversation_itself() -> None:
    c = ch(SendPolicy(SendDefault.DENY, allow=("origin",)))
    assert allowed(c, "telegram:42", origin="telegram:42")
    assert not allowed(c, "telegram:43", origin="telegram:42")


@pytest.mark.parametrize(
    ("policy", "aliases"),
    [
        pytest.param(None, {}, id="no-policy"),
        pytest.param(SendPolicy(SendDefault.DENY, allow=("origin",)), {}, id="allow-origin"),
        pytest.param(SendPolicy(SendDefault.ALLOW), {}, id="default-allow"),
        pytest.param(
            SendPolicy(SendDefault.DENY, allow=("reply",)), {"reply": "origin"}, id="alias-to-origin"
        ),
    ],
)
def test_origin_without_an_origin_is_denied(policy: SendPolicy | None, aliases: dict[str, str]) -> None:
    """Review finding: allowed with nothing to deliver to, the connector delivered to the text."""
    target = "reply" if aliases else "origin"
    d = evaluate(ch(policy, aliases=aliases), "a", target, "", platform=TG, listing=False)
    assert (d.allow, d.reason, d.resolved_target) == (False, denial(target), "")


def test_origin_in_deny_blocks_replies() -> None:
    c = ch(SendPolicy(SendDefault.ALLOW, deny=("origin",)))
    assert not allowed(c, "telegram:42", origin="telegram:42")


def test_aliases_cannot_bypass_a_deny() -> None:
    c = ch(
        SendPolicy(SendDefault.ALLOW, deny=("slack:C0EXEC1",)),
        aliases={"exec": "slack:C0EXEC1", "boss": "exec"},
    )
    assert not allowed(c, "exec")
    assert not allowed(c, "boss")  # alias of an alias
    assert not allowed(c, "slack:C0EXEC1")
    d = evaluate(c, "a", "boss", "", platform=TG, listing=False)
    assert d.reason == denial("boss") and d.resolved_target == "slack:C0EXEC1"


def test_deny_entry_written_as_alias_covers_raw_target() -> None:
    c = ch(SendPolicy(SendDefault.ALLOW, deny=("exec",)), aliases={"exec": "slack:C0EXEC1"})
    assert not allowed(c, "slack:C0EXEC1")


def test_per_agent_policy_overrides_the_channels() -> None:
    c = ch(
        SendPolicy(SendDefault.DENY, allow=("origin",)),
        agent_send_policies={"ops-bot": SendPolicy(SendDefault.DENY, allow=("origin", "slack:#incidents"))},
    )
    assert allowed(c, "slack:#incidents", agent="ops-bot")
    assert not allowed(c, "slack:#incidents", agent="support-bot")


def test_no_policy_allows_only_origin() -> None:
    """The seed allows everything without a policy; we fail closed."""
    c = ch(None)
    assert allowed(c, "origin")
    assert allowed(c, "telegram:42", origin="telegram:42")
    assert not allowed(c, "slack:#exec")
    assert not evaluate(None, "a", "origin", "", platform=None, listing=False).allow  # unknown channel


def test_list_actions_are_not_gated() -> None:
    assert evaluate(ch(SendPolicy(SendDefault.DENY)), "a", "slack:#exec", "", platform=TG, listing=True).allow


@pytest.mark.parametrize("aliases", [{"a": "b", "b": "a"}, {f"x{i}": f"x{i + 1}" for i in range(20)}])
def test_alias_loops_fail_closed(aliases: dict[str, str]) -> None:
    c = ch(SendPolicy(SendDefault.ALLOW), aliases=aliases)
    d = evaluate(c, "a", next(iter(aliases)), "", platform=TG, listing=False)
    assert (d.allow, d.reason) == (False, EVALUATION_ERROR)


def test_origin_is_denied_like_the_conversation_it_names() -> None:
    """Review finding: ``origin`` skipped a deny naming the same conversation."""
    c = ch(SendPolicy(SendDefault.DENY, allow=("origin",), deny=("slack:#exec",)))
    for target in ("origin", "slack:#exec"):
        d = evaluate(c, "a", target, "Slack:#Exec", platform=Platform.SLACK, listing=False)
        assert (d.allow, d.reason, d.resolved_target) == (False, denial(target), "#exec")


@pytest.mark.parametrize(
    ("platform", "deny", "target"),
    [
        pytest.param(Platform.SLACK, "slack:C0EXEC1", "C0EXEC1", id="slack-bare"),
        pytest.param(Platform.SLACK, "C0EXEC1", "slack:C0EXEC1", id="slack-prefixed"),
        pytest.param(Platform.SLACK, "slack:#exec", "exec", id="slack-bare-name"),
        pytest.param(Platform.TELEGRAM, "telegram:@Board", "@board", id="telegram-username-bare"),
        pytest.param(Platform.TELEGRAM, "telegram:-100123", "-100123", id="telegram-chat-bare"),
        pytest.param(Platform.TELEGRAM, "-100123", "telegram:-100123", id="telegram-chat-prefixed"),
        pytest.param(Platform.TELEGRAM, "telegram:-100123", "-0100123", id="telegram-chat-leading-zero"),
        pytest.param(Platform.DISCORD, "discord:123", "<#0123>", id="discord-leading-zero"),
    ],
)
def test_a_bare_id_is_the_prefixed_id(platform: Platform, deny: str, target: str) -> None:
    """Review finding: a bare id bypassed a deny written with the platform prefix."""
    c = ch(SendPolicy(SendDefault.ALLOW, deny=(deny,)))
    assert not evaluate(c, "a", target, "", platform=platform, listing=False).allow


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (ChannelPolicy(send_policy=SendPolicy(deny=("telegram:-١٠٠١٢٣",))), "policy.send_policy.deny[0]"),
        (ChannelPolicy(send_policy=SendPolicy(allow=("discord:１２３",))), "policy.send_policy.allow[0]"),
        (ChannelPolicy(aliases={"ops": "telegram:-１٠٠"}), "policy.aliases[ops]"),
    ],
    ids=["deny-arabic-indic", "allow-fullwidth", "alias-target"],
)
def test_targets_with_foreign_digits_are_refused_on_save(policy: ChannelPolicy, field: str) -> None:
    """int() would read them as the ASCII number, so they are refused as
    INVALID_ARGUMENT naming the field (never stored, never an internal error)."""
    with pytest.raises(InvalidArgument) as exc:
        validate(Platform.TELEGRAM, policy)
    assert exc.value.field == field
