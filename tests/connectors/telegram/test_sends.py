"""The agent's sends through the Telegram connector: POST /send gated by the send
policy and the agent's session, and only canonical chat ids reaching Telegram.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from authz_service.gen.authz.v1 import common_pb2 as cm
from sidecars import telegram as tg
from sidecars.http import SendEndpoint
from sidecars.runtime import Connector
from tests.connectors.conftest import PostSend
from tests.connectors.telegram.rig import ALICE, SEND_POLICY, MakeBot


async def test_agent_send_is_gated(
    make_bot: MakeBot, send_endpoint: Callable[[Connector], Awaitable[SendEndpoint]], post_send: PostSend
) -> None:
    bot = await make_bot(dm_policy=cm.DM_POLICY_OPEN, send_policy=SEND_POLICY)
    endpoint = await send_endpoint(bot.connector)
    guessed = f"telegram:{ALICE}"  # the chat's name is no session id

    status, body = await post_send(endpoint.url, {"target": "5555", "text": "leak", "origin": str(ALICE)})
    assert status == 403
    assert body["allow"] is False
    assert body["reason"].startswith("Failed to send to 5555")
    # A forged origin is ignored: the target does not become "the origin".
    status, body = await post_send(endpoint.url, {"target": "5555", "text": "leak", "origin": "5555"})
    assert status == 403 and body["reason"].startswith("Failed to send to 5555")
    # No session handed out yet: there is no origin to send to.
    status, body = await post_send(endpoint.url, {"target": "origin", "text": "leak", "session_id": guessed})
    assert status == 403 and body["reason"].startswith("Failed to send to origin")
    assert bot.fake.log.of("sendMessage") == []

    await bot.say(ALICE, "hello")  # allowed and handed to the agent: the session's origin is Alice's chat
    session = bot.agent.turns[-1].session_id
    status, _ = await post_send(endpoint.url, {"target": "origin", "text": "leak", "session_id": guessed})
    assert status == 403  # still: only the id the agent was handed names the session
    status, body = await post_send(
        endpoint.url, {"target": "origin", "text": "hello from the agent", "session_id": session}
    )
    assert (status, body) == (200, {"allow": True, "resolved_target": str(ALICE)})
    assert bot.fake.texts(ALICE) == ["echo: hello", "hello from the agent"]
    assert bot.fake.texts(5555) == []


# Second review: Telegram reads a chat id as a number, and int() takes "-0100123" and
# "-١٠٠١٢٣" (Arabic-Indic digits) for -100123, so another spelling of a denied chat reached it.
DENIED_CHAT = cm.SendPolicy(default=cm.SEND_DEFAULT_ALLOW, deny=["telegram:-100123", "telegram:100123"])
OTHER_SPELLINGS = {
    # (target, status): 403 denied by the service; 502 allowed, but the transport refuses it.
    "leading-zero": ("-0100123", 403),
    "prefixed-leading-zero": ("telegram:-0100123", 403),
    "arabic-indic-digits": ("-١٠٠١٢٣", 403),
    "full-width-digits": ("１００１２３", 403),
    "plus-sign": ("+100123", 502),
    "underscore": ("100_123", 502),
}


@pytest.mark.parametrize(("target", "status"), OTHER_SPELLINGS.values(), ids=OTHER_SPELLINGS.keys())
async def test_other_spellings_of_a_denied_chat_are_not_delivered(
    make_bot: MakeBot,
    send_endpoint: Callable[[Connector], Awaitable[SendEndpoint]],
    post_send: PostSend,
    target: str,
    status: int,
) -> None:
    bot = await make_bot(dm_policy=cm.DM_POLICY_OPEN, send_policy=DENIED_CHAT)
    endpoint = await send_endpoint(bot.connector)
    got, body = await post_send(endpoint.url, {"target": target, "text": "leak"})
    assert got == status, body
    assert body["allow"] is (status == 502)
    assert bot.fake.log.of("sendMessage") == []


NOT_CANONICAL = [
    "-0100123", "0100123", "-١٠٠١٢٣", "１２３", "+100123", "100_123", " 100123", "100123\n", "0", "-0",
    "", "-", "@", "@1board", "@bo ard", "board", "#board", "-100123-",
]  # fmt: skip


@pytest.mark.parametrize("chat_id", NOT_CANONICAL)
async def test_the_transport_sends_only_to_canonical_chat_ids(make_bot: MakeBot, chat_id: str) -> None:
    """Whatever reaches the transport, only the service's spelling of a chat goes to Telegram."""
    bot = await make_bot()
    transport = tg.TelegramTransport(bot.app.bot)
    with pytest.raises(ValueError, match="not a canonical Telegram chat id"):
        await transport.send_text(chat_id, "x")
    with pytest.raises(ValueError, match="not a canonical Telegram chat id"):
        await transport.send_direct(chat_id, "x")
    assert bot.fake.log.of("sendMessage") == []
    await transport.send_text("-100123", "canonical")
    assert bot.fake.texts(-100123) == ["canonical"]
