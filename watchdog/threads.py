"""Blocking calls off the event loop, on daemon threads.

``asyncio.to_thread`` uses the loop's default executor, whose threads are joined
when the interpreter exits: one database call hung on a dead network would keep
the process from ever exiting. A daemon thread per call cannot do that.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any, name: str) -> T:
    """Run ``fn(*args)`` on a new daemon thread called ``name`` and await its result."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: T | None, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:
            try:
                loop.call_soon_threadsafe(deliver, None, exc)
            except RuntimeError:  # the loop closed while we worked; nobody is waiting
                pass
            return
        try:
            loop.call_soon_threadsafe(deliver, result, None)
        except RuntimeError:
            pass

    threading.Thread(target=work, name=name, daemon=True).start()
    return await future
