"""The gateway on the test's own event loop, and what it left in its store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from hermes.config import load_config
from hermes.gateway import Gateway
from tests.support.notify import NotifyListener
from tests.support.timing import t
from watchdog.notify import Notifier
from watchdog.store import StateStore

Stored = tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]


@asynccontextmanager
async def gateway(
    config: Path, notify: NotifyListener | None = None, watchdog_sec: float = 10
) -> AsyncIterator[tuple[Gateway, asyncio.Task[int]]]:
    """Start the gateway of ``config`` and hand it over once READY (or once it ended, if it
    never got there); on leaving, stop it if it is still running and wait for its exit."""
    gw = Gateway(
        load_config(config),
        notifier=Notifier(notify.address if notify else None, watchdog_timeout=watchdog_sec),
    )
    task = asyncio.get_running_loop().create_task(gw.run(), name="test:gateway")
    ready = asyncio.ensure_future(gw.ready.wait())
    await asyncio.wait({task, ready}, timeout=t(20), return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    try:
        yield gw, task
    finally:
        if not task.done():
            gw.request_stop(0, "test finished")
        await asyncio.wait_for(task, t(20))


def stored(url: str) -> Stored:
    """The latest instance row, every platform row and the whole history."""
    store = StateStore(url, read_only=True)
    try:
        return store.latest_instance(), store.platforms(), store.transitions(limit=None)
    finally:
        store.close()


def stored_for(config: Path) -> Stored:
    return stored(load_config(config).database_url)
