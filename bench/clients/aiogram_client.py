"""aiogram 3 as a client for the Telegram receive benchmark; runs in its own venv.

    python aiogram_client.py API_BASE TOKEN COUNT

A ``Dispatcher`` with one message handler that only counts, pointed at the simulator
through the documented ``TelegramAPIServer.from_base`` setting. Prints ``DONE COUNT
MONOTONIC`` once COUNT messages reached the handler.
"""

from __future__ import annotations

import asyncio
import sys
import time

from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import Message

api_base, token, count = sys.argv[1:4]
EXPECTED = int(count)
seen = 0
dp = Dispatcher()


@dp.message()
async def handle(message: Message) -> None:
    global seen
    seen += 1
    if seen == EXPECTED:
        print(f"DONE {seen} {time.monotonic()}", flush=True)
        await dp.stop_polling()


async def main() -> None:
    session = AiohttpSession(api=TelegramAPIServer.from_base(api_base))
    bot = Bot(token, session=session)
    print("READY", flush=True)
    await dp.start_polling(bot, polling_timeout=10, handle_signals=False)


asyncio.run(main())
