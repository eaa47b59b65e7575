"""python-telegram-bot as a client for the Telegram receive benchmark; runs in its own venv.

    python ptb_client.py API_BASE TOKEN COUNT

An ``Application`` with one ``MessageHandler`` that only counts, pointed at the simulator
through the documented ``base_url`` setting. Prints ``DONE COUNT MONOTONIC`` once COUNT
messages reached the handler.
"""

from __future__ import annotations

import sys
import time

from telegram import Update
from telegram.ext import Application, ContextTypes, MessageHandler, filters

api_base, token, count = sys.argv[1:4]
EXPECTED = int(count)
seen = 0


async def handle(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    global seen
    seen += 1
    if seen == EXPECTED:
        print(f"DONE {seen} {time.monotonic()}", flush=True)
        context.application.stop_running()


app = Application.builder().token(token).base_url(f"{api_base}/bot").build()
app.add_handler(MessageHandler(filters.ALL, handle))
print("READY", flush=True)
app.run_polling(poll_interval=0.0, timeout=10, allowed_updates=["message"], stop_signals=None)
