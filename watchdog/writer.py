"""The store writer: a thread of its own between the watchdog tick and the database.

The tick hands over a :class:`~watchdog.store.Batch` with :meth:`StoreWriter.submit`,
which only merges it into the pending batch under a lock held for microseconds:
a slow or failing database can never delay the tick, hence never a ping. While
the database fails, batches merge (latest row per platform, every transition in
order, bounded) and are retried with backoff. Its condition is reported through
:meth:`StoreWriter.status` (``STATUS=`` and logs) and, once writes succeed again,
in the instance row.

A write that fails because of a row's data (:func:`~watchdog.store.is_row_error`) is no
outage and is not retried as one: the batch is written row by row, a refused row is
left out, and that is counted in the instance row (``store_failures``,
``store_last_error``) where ``status`` shows it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from loguru import logger

from watchdog.store import Batch, StateStore, is_row_error
from watchdog.tasks import describe_exception


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """The writer's condition as seen from the tick."""

    state: str
    """``ok``, ``slow`` (a write has been running for long) or ``failing``."""
    since: float | None
    """Monotonic time the current slow or failing condition began."""
    last_error: str | None
    pending_transitions: int
    dropped_transitions: int
    failures: int

    def describe(self, now: float) -> str:
        if self.state == "ok":
            return "store ok"
        age = f" for {now - self.since:.0f} s" if self.since is not None else ""
        text = f"store {self.state}{age}"
        if self.state == "failing" and self.last_error:
            text += f" ({self.last_error})"
        if self.pending_transitions:
            text += f", {self.pending_transitions} transitions queued"
        if self.dropped_transitions:
            text += f", {self.dropped_transitions} dropped"
        return text


class StoreWriter:
    """Writes batches to a :class:`StateStore` on a daemon thread; see the module docstring."""

    def __init__(
        self,
        store: StateStore,
        instance_id: str,
        *,
        slow_after: float = 5.0,
        retry_initial: float = 0.5,
        retry_max: float = 15.0,
        max_transitions: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.instance_id = instance_id
        self.slow_after = slow_after
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.max_transitions = max_transitions
        self._mono = monotonic
        self._cond = threading.Condition()
        self._pending: Batch | None = None
        self._writing_since: float | None = None
        self._stop = False
        self._retry_at = 0.0
        self._thread: threading.Thread | None = None
        # Guarded by _cond:
        self._failing_since: float | None = None
        self._last_error: str | None = None
        self._failures = 0
        self._last_error_at: datetime | None = None
        self._dropped = 0
        self.writes = 0
        self.last_write_seconds = 0.0

    # -- lifecycle

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("store writer already started")
        self._thread = threading.Thread(target=self._run, name="hermes-store-writer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def restart_if_dead(self) -> bool:
        """Owner's check: start a new thread if the old one died (it should not). True if it did."""
        if self._thread is None or self._thread.is_alive() or self._stop:
            return False
        logger.error("store writer thread died; starting a new one")
        self._thread = None
        self.start()
        return True

    def flush(self, timeout: float) -> bool:
        """Block until everything submitted is written or ``timeout`` passes. Not on the loop thread."""
        deadline = self._mono() + timeout
        with self._cond:
            self._retry_at = 0.0  # retry a failed write now rather than after its backoff
            self._cond.notify_all()
            while self._pending is not None or self._writing_since is not None:
                left = deadline - self._mono()
                if left <= 0 or not self.alive:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def stop(self, timeout: float) -> bool:
        """Flush within ``timeout`` and end the thread; False if something was left unwritten."""
        flushed = self.flush(timeout)
        with self._cond:
            self._stop = True
            left = self._pending
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if not flushed and left is not None:
            logger.error(
                "state store: {} platform rows and {} transitions could not be written before exit",
                len(left.rows),
                len(left.transitions),
            )
        return flushed

    # -- the tick's side

    def submit(self, batch: Batch) -> None:
        """Queue ``batch``; never blocks on the database."""
        if not batch:
            return
        with self._cond:
            if self._pending is None:
                self._pending = batch
            else:
                self._pending.merge(batch)
            self._bound(self._pending)
            self._cond.notify()

    def status(self) -> StoreStatus:
        now = self._mono()
        with self._cond:
            pending = len(self._pending.transitions) if self._pending is not None else 0
            if self._failing_since is not None:
                state, since = "failing", self._failing_since
            elif self._writing_since is not None and now - self._writing_since > self.slow_after:
                state, since = "slow", self._writing_since
            else:
                state, since = "ok", None
            return StoreStatus(
                state, since, self._last_error, pending, self._dropped, self._failures
            )

    def _bound(self, batch: Batch) -> None:
        excess = len(batch.transitions) - self.max_transitions
        if excess > 0:
            del batch.transitions[:excess]
            if not self._dropped:
                logger.error(
                    "state store unavailable too long: dropping the oldest queued transitions "
                    "(keeping {})",
                    self.max_transitions,
                )
            self._dropped += excess

    # -- the thread

    def _write(self, batch: Batch) -> None:
        try:
            self.store.write(batch, self.instance_id)
            return
        except Exception as exc:
            if not is_row_error(exc):
                raise
            logger.warning(
                "state store refused a row ({}); writing the batch row by row",
                describe_exception(exc),
            )
        refused = self.store.write_each(batch, self.instance_id)  # an outage here raises
        if refused:
            with self._cond:
                self._failures += len(refused)
                self._last_error_at = datetime.now(UTC)
                self._last_error = f"refused and left out: {refused[-1]}"
            for what in refused:
                logger.error("state store refused and left out {}", what)

    def _take(self) -> Batch | None:
        """Detach the pending batch (caller holds the lock; the tick may refill it meanwhile)."""
        batch, self._pending = self._pending, None
        return batch

    def _run(self) -> None:
        delay = self.retry_initial
        while True:
            with self._cond:
                while not self._stop:
                    if self._pending is None:
                        self._cond.wait()
                        continue
                    wait = self._retry_at - self._mono()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stop:
                    return
                batch = self._take()
                assert batch is not None
                self._writing_since = started = self._mono()
                if self._failures:
                    batch.instance.update(
                        store_failures=self._failures,
                        store_last_error=self._last_error,
                        store_last_error_at=self._last_error_at,
                    )
            try:
                self._write(batch)
            except Exception as exc:
                error = describe_exception(exc)
                with self._cond:
                    newer = self._take()
                    if newer is not None:
                        batch.merge(newer)
                    self._pending = batch
                    self._bound(batch)
                    self._writing_since = None
                    self._failures += 1
                    self._last_error_at = datetime.now(UTC)
                    self._last_error = error
                    self._retry_at = self._mono() + delay
                    if self._failing_since is None:
                        self._failing_since = started
                        logger.error("state store write failed, will retry: {}", error)
                    self._cond.notify_all()
                delay = min(delay * 2, self.retry_max)
                continue
            with self._cond:
                self.writes += 1
                self.last_write_seconds = self._mono() - started
                self._writing_since = None
                if self._failing_since is not None:
                    logger.info(
                        "state store writes work again after {:.0f} s",
                        self._mono() - self._failing_since,
                    )
                    self._failing_since = None
                delay = self.retry_initial
                self._cond.notify_all()
