"""A QQ client for the throughput benchmark: hermes' QQ adapter, counting inbound messages.

    python hermes_client.py API_BASE TOKEN_URL APP_ID SECRET COUNT [reply|durable [STORE_URL]]

Prints ``DONE <count> <monotonic>`` when COUNT
messages were received and parsed (and, with ``reply``, each answered directly; with
``durable``, each committed to the inbox of a new store, as in the gateway: SQLite in a new
directory, or the empty PostgreSQL schema of STORE_URL). The process is tuned as
``hermes run`` tunes the gateway's once it is ready (:func:`hermes.runtime.settle`).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from loguru import logger

from hermes.adapters.qqbot import QQBotAdapter, QQBotSettings
from hermes.inbox.intake import InboxSettings, Intake, PlatformInbound
from hermes.inbox.store import InboxStore, Stored
from hermes.messages import InboundMessage, OutboundMessage
from hermes.runtime import settle
from watchdog.heartbeat import HeartbeatBoard, PlatformPolicy
from watchdog.store import StateStore, default_sqlite_url


async def main() -> None:
    api_base, token_url, app_id, secret, count = sys.argv[1:6]
    mode = sys.argv[6] if len(sys.argv) > 6 else ""
    reply = mode == "reply"
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
    intake = None
    if mode == "durable":
        url = sys.argv[7] if len(sys.argv) > 7 else None
        intake, store = await durable_inbox(url)

        def stored(rows: list[Stored]) -> None:
            nonlocal received
            received += len(rows)
            if received >= expected:
                print(f"DONE {received} {time.monotonic():.6f}", flush=True)
                done.set()

        intake.on_stored = stored
        adapter.inbound = PlatformInbound(intake, "qq")
        committer = asyncio.get_running_loop().create_task(intake.run(), name="bench:inbox")
    settle()
    task = asyncio.get_running_loop().create_task(adapter.run(), name="bench:qq-adapter")
    await done.wait()
    await adapter.close()
    await asyncio.wait_for(task, 10)
    if intake is not None:
        committer.cancel()
        intake.close()
        store.close()


async def durable_inbox(url: str | None) -> tuple[Intake, StateStore]:
    """The gateway's inbox on a new store: group commit on a thread of its own."""
    store = StateStore(url or default_sqlite_url(tempfile.mkdtemp(prefix="hermes-bench-")))
    store.migrate()
    intake = Intake(InboxStore(store.engine, "bench"), InboxSettings(), on_stored=lambda rows: None)
    return intake, store


if __name__ == "__main__":
    asyncio.run(main())
