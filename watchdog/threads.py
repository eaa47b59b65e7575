"""Blocking calls off the event loop, on daemon threads.

``asyncio.to_thread`` uses the loop's default executor, whose threads are joined
when the interpreter exits: one database call hung on a dead network would keep
the process from ever exiting. A daemon thread per call cannot do that.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
Post = Callable[[Any, BaseException | None], None]
"""Hands a call's result (or its exception) back to the waiting event loop."""


def _poster(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> Post:
    """A function any thread may call to settle ``future`` on ``loop`` with a result or an
    exception; it does nothing once the future is done or the loop has closed."""

    def settle(result: Any, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    def post(result: Any, exc: BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(settle, result, exc)
        except RuntimeError:  # the loop closed while we worked; nobody is waiting
            pass

    return post


def _call(fn: Callable[..., Any], args: tuple[Any, ...], post: Post) -> None:
    try:
        result = fn(*args)
    except BaseException as exc:
        post(None, exc)
    else:
        post(result, None)


async def in_thread(fn: Callable[..., T], *args: Any, name: str) -> T:
    """Run ``fn(*args)`` on a new daemon thread called ``name`` and await its result."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    post = _poster(loop, future)
    threading.Thread(target=_call, args=(fn, args, post), name=name, daemon=True).start()
    return await future


class DaemonWorker:
    """One daemon thread running submitted calls in order; :meth:`call` awaits the result.

    For the many small database calls of the job runner and the outbox: one thread keeps
    them serialized (no lock contention with itself) without a thread per call, and a call
    hung on a dead database can never keep the process from exiting.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Post] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            _call(*item)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        self._queue.put((fn, args, _poster(loop, future)))
        return await future

    def stop(self) -> None:
        """Ask the thread to end after the calls already queued."""
        self._queue.put(None)
