"""praisonai-bot's own TelegramBot pairing a user through the service.

No Telegram connection: the bot is made as a user makes it, the service's
pairing store is plugged in with ``ServicePairingStore.install``, and the
script feeds it a private message as Telegram would, through praisonai-bot's
own inbound pipeline (``process_inbound_telegram_message``). What the bot
would send is printed instead. With ``make run`` in one terminal:

    source .authz/env
    export AUTHZ_CONNECTOR_KEY=$(authz key create connector --name praisonai-bot --channel demo | tail -n 1)
    python examples/praisonai_pairing.py

and, when it prints the code, in another terminal: ``authz pairing approve demo CODE``.
Needs the ``praisonai`` extra (``pip install 'authz-service[praisonai]'``).
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime

import telegram
from praisonai_bot.bots.telegram import TelegramBot, process_inbound_telegram_message
from praisonaiagents.bots import BotConfig

from authz_service.adapters import ServicePairingStore
from authz_service.client import EdgeSettings, connect


def message(user_id: int, text: str) -> telegram.Update:
    user = telegram.User(id=user_id, first_name="Eve", is_bot=False)
    chat = telegram.Chat(id=user_id, type="private")
    return telegram.Update(
        update_id=int(time.time()),
        message=telegram.Message(message_id=1, date=datetime.now(UTC), chat=chat, from_user=user, text=text),
    )


async def reply(chat_id: str, text: str) -> None:
    print(f"bot> (to {chat_id}) {text}")


async def main() -> None:
    address = os.environ.get("AUTHZ_ADDRESS", "127.0.0.1:50051")
    channel = os.environ.get("AUTHZ_CHANNEL", "demo")
    user = int(os.environ.get("AUTHZ_USER", "4242"))
    wait = float(os.environ.get("AUTHZ_APPROVAL_TIMEOUT", "120"))

    # What a user writes: the bot as usual, then the store, before bot.start().
    offline = "0:offline"  # no Telegram connection is made before bot.start()
    bot = TelegramBot(token=offline, config=BotConfig(unknown_user_policy="pair"))
    store = ServicePairingStore(
        connect(address, os.environ["AUTHZ_CONNECTOR_KEY"], edge=EdgeSettings()), channel, platform="telegram"
    )
    store.install(bot)
    bot.reply = reply  # type: ignore[method-assign]  # offline: print instead of sending

    try:
        print(f"user {user}> hello")
        if await process_inbound_telegram_message(message(user, "hello"), bot) is None:
            print("  (not paired: dropped, and the user got a code; PraisonAI names its own CLI,")
            print(f"   with the service approve it with: authz pairing approve {channel} <CODE>)")
        deadline = time.monotonic() + wait
        while not await asyncio.to_thread(store.is_paired, str(user), "telegram"):
            if time.monotonic() > deadline:
                print("not approved in time")
                return
            await asyncio.sleep(1)
        print(f"user {user}> hello again")
        passed = await process_inbound_telegram_message(message(user, "hello again"), bot)
        print(f"  (paired: {'passed to the agent' if passed is not None else 'dropped'})")
    finally:
        store.close()


if __name__ == "__main__":
    asyncio.run(main())
