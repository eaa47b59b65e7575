"""The intake: inbound events on their way into the inbox, with group commit and backpressure.

Adapters hand every inbound event to :meth:`Intake.offer` (through their
:class:`~hermes.adapters.base.Inbound` view) together with their cursor, the
position that covers it. A committer task writes what has arrived in batches, one
transaction per batch (flushed once ``batch`` rows wait, or ``flush_after``
after the first), on a database thread of its own, never on the event loop. Only
after the commit are the new rows handed to the routes (``on_stored``), so nothing
reaches a handler before its row is stored, and the cursor stored with a batch
never runs ahead of the rows it covers.

Backpressure, never a drop: at most ``max_pending`` events wait for their commit.
When the store cannot keep up or is down, :meth:`Intake.offer` refuses the next
event; the adapter then stops reading and leaves it with the platform (which
replays it after the cursor), and waits for :meth:`Intake.room`, which comes once
half of ``max_pending`` has been stored. Meanwhile the platform
is held on the watchdog's board (``inbox_full``): its silence is the gateway's doing, so
it is reported as degraded, never restarted or escalated for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Annotated, Any

from loguru import logger
from pydantic import Field

from hermes.inbox.store import Arrival, Committed, Gap, InboxStore, SavedCursor, Stored
from hermes.jobrunner.ledger import DB_ERRORS, Outage, now_utc
from hermes.messages import InboundMessage
from watchdog.heartbeat import HeartbeatBoard, Reason, clip_message
from watchdog.settings import Duration, Section
from watchdog.store import is_row_error
from watchdog.tasks import describe_exception
from watchdog.threads import DaemonWorker

INBOX_FULL = "inbox_full"
"""Reason code of a platform the gateway keeps from reading: the inbox is full."""
PACE_AHEAD = 4
"""Batches waiting for the store above which adapters are held back a little (see pace)."""
PACE_BEHIND = 3
"""Batches waiting for the store at which held-back adapters read on: one commit after
they were held, so that the store always has the next batches ready."""


class InboxSettings(Section):
    """The ``[inbox]`` table."""

    batch: Annotated[int, Field(ge=1, le=100_000)] = 500
    """Rows per group commit at most."""
    flush_after: Duration = 0.005
    """A batch is committed at the latest this long after its first row arrived."""
    max_pending: Annotated[int, Field(ge=1, le=10_000_000)] = 20_000
    """Events waiting for their commit before adapters are told to stop reading."""
    backlog_poll: Duration = 1.0
    """How often rows the runner could not take at once are looked for."""
    retention: Duration = 7 * 86400.0
    """Handled, skipped and dead rows are deleted after this long."""


_Waiting = tuple[str, Arrival | None, dict[str, Any] | None]
"""An event or cursor waiting for its commit: ``(platform, arrival, cursor)``; the arrival is
None for a cursor moved without an event (a new session). A tuple: one is built per event."""


class Intake:
    """Owns the path from ``offer`` to a committed inbox row; one per gateway."""

    def __init__(
        self,
        store: InboxStore,
        settings: InboxSettings,
        *,
        on_stored: Callable[[list[Stored]], None],
        saved: Mapping[str, SavedCursor] | None = None,
        board: HeartbeatBoard | None = None,
    ) -> None:
        self.store = store
        self.board = board
        """Where a platform whose events are refused is held (and released with room):
        its adapter stops reading then, which must not make it look dead."""
        self._holding: set[str] = set()
        self._store_error: str | None = None
        self.settings = settings
        self.on_stored = on_stored
        self.db = DaemonWorker("hermes-inbox")
        self._pending: deque[_Waiting] = deque()
        self._stamp = now_utc()
        self._stamped_ns = time.monotonic_ns()
        self._gaps: list[Gap] = []
        self._dropped: dict[str, list[str]] = {}
        """Events lost before they could be offered (see :meth:`lose`), per platform."""
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._taken = 0
        """Events offered and taken so far (numbering for :meth:`committed`)."""
        self._stored_upto = 0
        self._commit_done = asyncio.Event()
        self._caught_up = asyncio.Event()
        """Set when at most ``PACE_BEHIND`` batches wait (see :meth:`pace`)."""
        self._saved: dict[str, SavedCursor] = dict(saved or {})
        self._latest: dict[str, dict[str, Any]] = {}
        """The newest cursor taken per platform in this process (stored or on its way)."""
        self.stored = 0
        self.replayed = 0
        self.lost = 0
        self.refused = 0
        """Offers refused for want of room (left with the platform)."""
        self.outage = Outage("inbox")

    # -- what adapters call (through Inbound)

    def offer(
        self, message: InboundMessage, cursor: dict[str, Any] | None, event_id: str | None = None
    ) -> bool:
        """Take one event for the inbox; False (nothing taken) when no room is left."""
        if not self._room.is_set() or len(self._pending) >= self.settings.max_pending:
            # Full, or not yet drained to half since it was: see ``_commit_once``.
            self._room.clear()
            self.refused += 1
            self._hold(message.platform)
            return False
        arrival = Arrival(message, event_id or message.message_id, self._received_at())
        self._pending.append((message.platform, arrival, cursor))
        self._taken += 1
        if cursor is not None:
            self._latest[message.platform] = cursor
        self._arrived.set()
        if len(self._pending) >= self.settings.batch:
            self._full.set()
        return True

    def _received_at(self) -> datetime:
        """Now, to the millisecond: the events that arrive within one share one time, which
        the database thread then converts once for all of them (a burst brings dozens)."""
        ns = time.monotonic_ns()
        if ns - self._stamped_ns >= 1_000_000:
            self._stamped_ns = ns
            self._stamp = now_utc()
        return self._stamp

    async def room(self) -> None:
        """Wait until :meth:`offer` takes events again."""
        await self._room.wait()

    async def pace(self, limit: float) -> None:
        """Hold an adapter's next read back while the store works but falls behind: more than
        ``PACE_AHEAD`` batches wait for it. Returns once it is down to ``PACE_BEHIND``
        batches, or after ``limit``. The adapter then reads on; the transport's flow control
        holds the platform meanwhile, so a burst is taken at the store's pace instead of
        filling the inbox and costing a reconnect and a replay (see :meth:`offer`). A store
        that is failing is not waited for: that is what ``max_pending`` is for."""
        if self._store_error is not None or len(self._pending) < PACE_AHEAD * self.settings.batch:
            return
        self._caught_up.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._caught_up.wait(), limit)

    async def committed(self) -> None:
        """Wait until every event taken so far is stored (for adapters that acknowledge
        the platform, such as a long poll's offset: only after this)."""
        target = self._taken
        while self._stored_upto < target:
            self._commit_done.clear()
            await self._commit_done.wait()

    def cursor(self, platform: str) -> tuple[dict[str, Any], datetime | None] | None:
        """Where the platform's events should resume: the newest cursor taken in this
        process (``saved_at`` None), else the one stored by an earlier process."""
        latest = self._latest.get(platform)
        if latest is not None:
            return latest, None
        saved = self._saved.get(platform)
        return (saved.cursor, saved.saved_at) if saved is not None else None

    def gap(self, platform: str, detail: str, size: int | None = None) -> None:
        """Record events the platform will not send again; stored with the next commit as a
        transition with reason ``inbound_gap`` and counted in ``inbound_cursors.gaps``."""
        logger.bind(platform=platform).error("inbound gap: {}", detail)
        self._gaps.append(Gap(platform, detail, size))
        self._latest.pop(platform, None)
        self._saved.pop(platform, None)
        self._arrived.set()

    def lose(self, platform: str, detail: str) -> None:
        """Count an event received but impossible to store (``inbound_cursors.lost``, with
        the next commit); the cursor goes on past it."""
        logger.bind(platform=platform).error("inbound event lost: {}", detail)
        self._dropped.setdefault(platform, []).append(detail)
        self._arrived.set()

    def note_cursor(self, platform: str, cursor: dict[str, Any]) -> None:
        """A new position without an event (a new session): stored in order with the events,
        so that a later start resumes the new session, not the old one."""
        self._pending.append((platform, None, cursor))
        self._taken += 1
        self._latest[platform] = cursor
        self._arrived.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- the committer task

    async def run(self) -> None:
        """Commit what arrives, batch by batch, until cancelled."""
        s = self.settings
        while True:
            await self._arrived.wait()
            if len(self._pending) < s.batch and not self._gaps and not self._dropped:
                # Let a batch gather: until it is full, or flush_after after the first row.
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), s.flush_after)
            await self._commit_once()
            if not self._pending and not self._gaps and not self._dropped:
                self._arrived.clear()

    async def flush(self, batches: int | None = None) -> None:
        """Commit everything waiting now (at stop), or at most ``batches`` batches; an outage
        leaves it unstored, and the platform's replay after the stored cursor brings it back."""
        done = 0
        while (self._pending or self._gaps or self._dropped) and (
            batches is None or done < batches
        ):
            if not await self._commit_once(retry=False):
                return
            done += 1

    async def _commit_once(self, *, retry: bool = True) -> bool:
        n = min(len(self._pending), self.settings.batch)
        gaps = list(self._gaps)
        dropped = {p: list(d) for p, d in self._dropped.items()}
        cursors: dict[str, dict[str, Any]] = {}
        arrivals = []
        for platform, arrival, cursor in itertools.islice(self._pending, n):
            if cursor is not None:
                cursors[platform] = cursor
            if arrival is not None:
                arrivals.append(arrival)
        try:
            done: Committed = await self.db.call(
                self.store.commit, arrivals, cursors, gaps, dropped
            )
        except DB_ERRORS as exc:
            if is_row_error(exc):
                raise  # commit() handles row errors itself; this is a bug
            if not retry:
                logger.error(
                    "inbox: {} events not stored at stop ({}); the platform replays them",
                    len(self._pending),
                    describe_exception(exc),
                )
                return False
            self._store_error = describe_exception(exc)
            self._caught_up.set()  # nobody waits for a failing store (see pace)
            await asyncio.sleep(self.outage.failed(exc))
            return False
        self.outage.ok()
        self._store_error = None
        for _ in range(n):
            self._pending.popleft()
        del self._gaps[: len(gaps)]
        for platform, details in dropped.items():
            left = self._dropped[platform][len(details) :]
            if left:
                self._dropped[platform] = left
            else:
                del self._dropped[platform]
            self.lost += len(details)
        self._stored_upto += n
        self.stored += len(done.stored)
        self.replayed += done.replayed
        self.lost += done.lost
        self._commit_done.set()
        if len(self._pending) <= PACE_BEHIND * self.settings.batch:
            self._caught_up.set()
        if len(self._pending) <= self.settings.max_pending // 2:
            # Room again only once half has drained: every reopening costs the platform a
            # replay of everything after the cursor, so reopening after each batch would
            # make a long backlog's traffic grow with its square.
            self._room.set()
            self._release()
        if done.stored:
            try:
                self.on_stored(done.stored)
            except Exception as exc:  # the rows are stored: the backlog poll takes them
                logger.opt(exception=exc).error(
                    "inbox: handing stored rows to the runner failed: {}", describe_exception(exc)
                )
        return True

    def close(self) -> None:
        self.db.stop()

    # -- holds: a platform told to stop reading is the gateway's doing, not the platform's

    def _hold(self, platform: str) -> None:
        if self.board is None:
            return
        # Every time, not once: a platform replaced by a reload meanwhile is a new record.
        self._holding.add(platform)
        store = f"unavailable: {self._store_error}" if self._store_error else "not keeping up"
        self.board.hold(
            platform,
            Reason(
                INBOX_FULL,
                clip_message(
                    f"the gateway's inbox is full ({self.settings.max_pending} events wait "
                    f"for the state store, {store}): reading paused, the platform holds the rest"
                ),
                True,
            ),
        )

    def _release(self) -> None:
        if self.board is None:
            return
        for platform in sorted(self._holding):
            self.board.release(platform)
        self._holding.clear()


class PlatformInbound:
    """One platform's view of the intake: what its adapter gets as ``adapter.inbound``
    (:class:`hermes.adapters.base.Inbound`)."""

    __slots__ = ("intake", "platform")

    def __init__(self, intake: Intake, platform: str) -> None:
        self.intake = intake
        self.platform = platform

    def offer(
        self, message: InboundMessage, cursor: dict[str, Any] | None, event_id: str | None = None
    ) -> bool:
        return self.intake.offer(message, cursor, event_id)

    async def room(self) -> None:
        await self.intake.room()

    async def committed(self) -> None:
        await self.intake.committed()

    async def pace(self, limit: float) -> None:
        await self.intake.pace(limit)

    def cursor(self) -> tuple[dict[str, Any], datetime | None] | None:
        return self.intake.cursor(self.platform)

    def note_cursor(self, cursor: dict[str, Any]) -> None:
        self.intake.note_cursor(self.platform, cursor)

    def gap(self, detail: str, size: int | None = None) -> None:
        self.intake.gap(self.platform, detail, size)

    def lose(self, detail: str) -> None:
        self.intake.lose(self.platform, detail)
