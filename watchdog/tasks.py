"""The one way background tasks are created: named, referenced, and their death logged.

``asyncio.create_task`` whose result nobody reads is how a receive loop dies
unseen. :class:`TaskRegistry` keeps a strong reference to every task it spawns,
logs how each one ended, and calls the owner's callback so the owner can act.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from loguru import logger


def describe_exception(exc: BaseException) -> str:
    """``"ValueError: boom"``, one line, for reason messages."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], grace: float) -> list[str]:
    """Cancel the tasks not yet done and wait up to ``grace`` seconds for them; return the
    names of those still running (they swallowed the cancellation, or are slow to end)."""
    pending = [t for t in tasks if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=grace)
    return sorted(t.get_name() for t in pending if not t.done())


class TaskRegistry:
    """Owns a set of named tasks; see :meth:`spawn`."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(
        self,
        coro: Coroutine[Any, Any, Any],
        *,
        name: str,
        on_done: Callable[[asyncio.Task[Any]], None] | None = None,
        expected_to_end: bool = True,
    ) -> asyncio.Task[Any]:
        """Start ``coro`` as a task called ``name``.

        When it ends, its outcome is logged (an exception always at ERROR with the
        traceback; a return at DEBUG, or at ERROR when ``expected_to_end`` is false,
        for tasks meant to run forever) and ``on_done`` is called.
        """
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)

        def _finished(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if t.cancelled():
                logger.debug("task {} cancelled", name)
            elif (exc := t.exception()) is not None:
                logger.opt(exception=exc).error("task {} died: {}", name, describe_exception(exc))
            elif expected_to_end:
                logger.debug("task {} finished", name)
            else:
                logger.error("task {} returned although it should run until stopped", name)
            if on_done is not None:
                on_done(t)

        task.add_done_callback(_finished)
        return task

    def pending(self) -> list[asyncio.Task[Any]]:
        return [t for t in self._tasks if not t.done()]

    async def cancel_all(self, grace: float) -> list[str]:
        """Cancel every task and wait up to ``grace`` seconds; return the names of those still running."""
        return await cancel_and_wait(self._tasks, grace)
