"""Group commit: many small writes from many tasks, one transaction per batch.

Tasks :meth:`GroupCommit.submit` an item and await its outcome. A committer task
takes what has gathered (at most ``batch`` items) and hands it to one call on the
store's writer thread (a :class:`~watchdog.threads.DaemonWorker`), never on the
event loop. A batch goes as soon as the writer is free: while one transaction
runs, the next batch gathers, so batches grow with the load and an idle gateway
waits for nothing. ``flush_after`` (0 by default) lets a batch gather that much
longer when it is not full: fewer, larger transactions for more latency.

The commit function answers for each item: its result, or the exception that item
alone met (a row the database refused). An exception it raises (an outage) is each
item's answer, so every caller sees what it would have seen writing alone, and
retries or waits as it did before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from loguru import logger

from hermes.jobrunner.ledger import DB_ERRORS
from watchdog.tasks import describe_exception
from watchdog.threads import DaemonWorker

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Batches items for ``commit`` on ``db``; :meth:`run` until cancelled."""

    def __init__(
        self,
        db: DaemonWorker,
        commit: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        batch: int = 500,
        flush_after: float = 0.0,
        name: str = "group commit",
    ) -> None:
        self.db = db
        self.commit = commit
        """Runs on the writer thread: one transaction for the items, an outcome for each."""
        self.batch = batch
        self.flush_after = flush_after
        self.name = name
        self._items: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self.commits = 0
        """Transactions so far (for tests and benchmarks: items per commit)."""
        self.committed = 0

    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue ``item`` for the next batch; the future gets its outcome."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._items.append((item, future))
        self._arrived.set()
        if len(self._items) >= self.batch:
            self._full.set()
        return future

    async def write(self, item: T) -> R:
        """:meth:`submit` and await the outcome."""
        return await self.submit(item)

    @property
    def waiting(self) -> int:
        return len(self._items)

    async def run(self) -> None:
        """Commit what is submitted, batch by batch, until cancelled."""
        while True:
            await self._arrived.wait()
            if len(self._items) < self.batch:
                if self.flush_after > 0:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self.flush_after)
                else:
                    # What the tasks woken with the last batch's outcomes submit joins this one.
                    await asyncio.sleep(0)
            await self.commit_once()
            if not self._items:
                self._arrived.clear()

    async def commit_once(self) -> None:
        """Commit one batch of what waits now."""
        n = min(len(self._items), self.batch)
        if n == 0:
            return
        taken = [self._items.popleft() for _ in range(n)]
        try:
            outcomes = await self.db.call(self.commit, [item for item, _ in taken])
        except asyncio.CancelledError:
            for _, future in taken:
                future.cancel()
            raise
        except BaseException as exc:  # an outage (or a bug): every item's answer
            if not isinstance(exc, Exception):
                raise
            if not isinstance(exc, DB_ERRORS):
                logger.opt(exception=exc).error(
                    "{}: commit failed unexpectedly: {}", self.name, describe_exception(exc)
                )
            for _, future in taken:
                if not future.done():
                    future.set_exception(exc)
            return
        self.commits += 1
        self.committed += n
        for (_, future), outcome in zip(taken, outcomes, strict=True):
            if future.done():  # its waiter was cancelled (a stop); the write stands
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
