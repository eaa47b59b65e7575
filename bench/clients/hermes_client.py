"""A QQ client for the throughput benchmark: hermes' QQ adapter, counting inbound messages.

    python hermes_client.py API_BASE TOKEN_URL APP_ID SECRET COUNT [reply]

Prints ``DONE <count> <monotonic>`` when COUNT
messages were received and parsed (and, with ``reply``, each answered directly).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from loguru import logger

from hermes.adapters.qqbot import QQBotAdapter, QQBotSettings
from hermes.messages import InboundMessage, OutboundMessage
from watchdog.heartbeat import HeartbeatBoard, PlatformPolicy


async def main() -> None:
    api_base, token_url, app_id, secret, count = sys.argv[1:6]
    reply = len(sys.argv) > 6 and sys.argv[6] == "reply"
    expected = int(count)
    logger.remove()
    board = HeartbeatBoard()
    record = board.register("qq", "qqbot", required=True, policy=PlatformPolicy())
    handle = board.begin_attempt(record, restart=False)
    settings = QQBotSettings.model_validate(
        {
            "app_id": app_id,
            "client_secret": "env:S",
            "api_base": api_base,
            "token_url": token_url,
            "handler_queue": 1_000_000,
        },
        context={"environ": {"S": secret}, "base_dir": Path.cwd()},
    )
    adapter = QQBotAdapter("qq", settings, handle)
    received = 0
    done = asyncio.Event()

    async def count_message(message: InboundMessage) -> None:
        nonlocal received
        if reply:
            await adapter.send(
                OutboundMessage(
                    message.chat_kind, message.chat_id, message.text, reply_to=message.message_id
                )
            )
        received += 1
        if received == expected:
            print(f"DONE {received} {time.monotonic():.6f}", flush=True)
            done.set()

    adapter.on_message = count_message
    task = asyncio.get_running_loop().create_task(adapter.run(), name="bench:qq-adapter")
    await done.wait()
    await adapter.close()
    await asyncio.wait_for(task, 10)


if __name__ == "__main__":
    asyncio.run(main())
