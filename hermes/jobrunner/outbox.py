"""Delivery of the durable outbox: every outgoing message is a row before it is a request.

Rows go ``pending`` -> ``sending`` -> ``delivered``, or back to ``pending`` with a later
``next_attempt_at`` after a failure, ``failed`` after ``max_attempts``, ``expired`` past
the platform's reply window. Only platforms that are connected right now get their rows
claimed: messages for a platform that is reconnecting or fatal wait and go out when it is
back.

Within one chat, rows go out in order, failures included: a row is claimed only when no
earlier row of its chat is being sent or waits for a retry (:meth:`Ledger.claim`), and
rows claimed behind one that fails are given back unsent. The chat's head holds the rest
until it is delivered, ``failed`` or ``expired``; then the next goes. Each chat's rows are
sent by a task of its own (its lane), so a chat that waits holds no other chat.

A reply does not wait for this loop: the group commit that stores it also claims it when
its chat has nothing pending before it, and hands it straight to its chat's lane
(:meth:`Outbox.hand`). The loop is for retries, for platforms that were not connected,
and for what a crash left behind. Both claim on the one writer thread, and only
``pending`` rows, so no row is claimed twice. Delivered marks are group-committed too:
the lane sends its next row without waiting for the mark (until the mark is stored the
row stays ``sending``: after a crash it is sent again, and its fixed ``reply_seq`` makes
the platform drop the repeat).

Delivery is at least once: a row being sent when the process died is sent again. A reply
keeps the ``reply_seq`` it got when enqueued, so the platform (QQ: ``msg_id`` +
``msg_seq``) recognises the repeat and drops it; that answer counts as delivered.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from datetime import timedelta
from typing import Annotated, Any, Literal, Protocol

from loguru import logger
from pydantic import Field

from hermes.adapters.base import Adapter
from hermes.errors import AlreadyDelivered, MessageRejected, SendError
from hermes.jobrunner.groupcommit import GroupCommit
from hermes.jobrunner.ledger import (
    DB_ERRORS,
    Delivery,
    Ledger,
    MarkDelivered,
    Outage,
    Write,
    now_utc,
)
from hermes.messages import OutboundMessage
from watchdog.settings import Duration, Section
from watchdog.store import is_row_error
from watchdog.tasks import TaskRegistry, describe_exception
from watchdog.threads import DaemonWorker

Outcome = Literal["delivered", "failed", "retry"]
Chat = tuple[str, str, str]
Mark = tuple[Delivery, str | None, str | None, "asyncio.Future[Any] | None"]
"""A delivered row, its platform id and note, and its mark's group commit (None: not yet)."""


class OutboxSettings(Section):
    """The ``[outbox]`` table."""

    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 8
    retry_backoff: Duration = 2.0
    retry_backoff_max: Duration = 300.0
    max_age: Duration = 86_400.0
    """Messages that are not replies (scheduled jobs) expire after this long undelivered."""
    retention: Duration = 7 * 86_400.0
    """Delivered, failed and expired rows are deleted after this long."""
    poll_interval: Duration = 1.0
    batch: Annotated[int, Field(ge=1, le=10_000)] = 100
    chats_in_parallel: Annotated[int, Field(ge=1, le=1000)] = 16


class Platforms(Protocol):
    """What the outbox needs from the gateway."""

    def deliverable(self) -> list[str]:
        """Platforms connected now."""

    def adapter(self, platform: str) -> Adapter | None: ...


class Outbox:
    """The delivery loop; :meth:`run` until cancelled, :meth:`wake` after enqueueing,
    :meth:`hand` for rows claimed elsewhere (the group commit that stored them)."""

    def __init__(
        self,
        ledger: Ledger,
        db: DaemonWorker,
        platforms: Platforms,
        settings: OutboxSettings,
        tasks: TaskRegistry | None = None,
        writes: GroupCommit[Write, Any] | None = None,
    ) -> None:
        self.ledger = ledger
        self.db = db
        self.platforms = platforms
        self.settings = settings
        self.tasks = tasks if tasks is not None else TaskRegistry()
        self.writes = writes
        """Where delivered marks are group-committed (None: each written and awaited)."""
        self._wake = asyncio.Event()
        self._chats = asyncio.Semaphore(settings.chats_in_parallel)
        """Chats being sent to at once."""
        self._lanes: dict[Chat, deque[Delivery]] = {}
        """Each chat's claimed rows, in id order, waiting for its sender task."""
        self._senders: set[asyncio.Task[None]] = set()
        """One task per chat whose claimed rows are being sent."""
        self._maybe_held = True
        """Pending rows may wait behind a chat being sent: a lane that ends wakes the loop."""

    def wake(self) -> None:
        """Rows were stored ``pending``: a pass of the loop now, and again when a chat's
        sender ends (they may wait behind it)."""
        self._maybe_held = True
        self._wake.set()

    def backoff(self, attempts: int) -> float:
        s = self.settings
        return float(min(s.retry_backoff * 2 ** max(0, attempts - 1), s.retry_backoff_max))

    async def run(self) -> None:
        outage = Outage("outbox")
        while True:
            self._wake.clear()  # before the pass: a wake during it means "look again"
            try:
                full = await self.dispatch_once()
            except DB_ERRORS as exc:
                await asyncio.sleep(outage.failed(exc))
                continue
            outage.ok()
            if full:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)
            except TimeoutError:
                pass

    async def deliver_once(self) -> bool:
        """One pass that waits for its sends (and any already under way): the last try at
        stop, and tests. True if the batch was full (more may be due)."""
        full = await self.dispatch_once()
        while self._senders:
            await asyncio.wait(set(self._senders))
        return full

    async def dispatch_once(self) -> bool:
        """Expire, claim, and hand each chat's rows to its sender task; returns without
        waiting for them. True if the batch was full (more may be due)."""
        for row in await self.db.call(self.ledger.expire_due):
            logger.bind(platform=row["platform"]).warning(
                "outbox: message {} expired undelivered (reply window passed)", row["id"]
            )
        if not self._lanes:
            self._maybe_held = False  # nothing is being sent: this pass sees every due row
        batch = await self.db.call(
            self.ledger.claim, self.platforms.deliverable(), self.settings.batch
        )
        if batch:
            self._maybe_held = True
        self.hand(batch)
        return len(batch) >= self.settings.batch

    def hand(self, rows: list[Delivery]) -> None:
        """Rows claimed (``sending``) by this process: each joins its chat's lane in id
        order, and the chat's sender task starts if it is not running."""
        for d in rows:
            chat = (d.platform, d.chat_kind, d.chat_id)
            lane = self._lanes.get(chat)
            if lane is None:
                lane = self._lanes[chat] = deque((d,))
                task = self.tasks.spawn(
                    self._deliver_chat(chat, lane),
                    name=f"outbox:{d.platform}:{d.chat_kind}:{d.chat_id[-12:]}",
                    on_done=self._sender_done,
                )
                self._senders.add(task)
            elif not lane or lane[-1].id < d.id:
                lane.append(d)
            else:  # claimed in an earlier transaction but handed later: keep id order
                lane.insert(bisect.bisect([r.id for r in lane], d.id), d)

    def _sender_done(self, task: asyncio.Task[Any]) -> None:
        self._senders.discard(task)
        if self._maybe_held:
            # Rows behind this chat's (beyond the batch, or claimed while it sent) may go now.
            # Not wake(): a pass that finds no chat being sent clears the flag, so a steady
            # flow of replies sent inline costs no pass of the loop per reply.
            self._wake.set()

    async def _deliver_chat(self, chat: Chat, lane: deque[Delivery]) -> None:
        """Send one chat's claimed rows in order, including rows handed to its lane while
        it sends; stop at the first that must be retried and give the rest back unsent, so
        nothing overtakes it. Then wait for the delivered marks to be stored."""
        marks: list[Mark] = []
        try:
            async with self._chats:
                while lane:
                    d = lane.popleft()
                    if await self._send(d, marks) == "retry":
                        self._maybe_held = True
                        rest = [r.id for r in lane]
                        lane.clear()
                        del self._lanes[chat]  # before the await: new rows start a new lane
                        if rest:
                            await self._record(d.platform, self.ledger.release, rest)
                        return
        finally:
            if self._lanes.get(chat) is lane:
                del self._lanes[chat]
                if lane:  # cancelled (a stop): recover_sending at the next start sends them
                    lane.clear()
            await self._settle_marks(marks)

    async def _settle_marks(self, marks: list[Mark]) -> None:
        for d, pid, note, future in marks:
            if future is not None:
                try:
                    await future
                    continue
                except DB_ERRORS:
                    pass  # written alone below, riding out the outage
            await self._record(d.platform, self.ledger.delivered, d.id, pid, note)

    def _mark(
        self,
        d: Delivery,
        pid: str | None,
        note: str | None,
        marks: list[Mark],
    ) -> None:
        future = self.writes.submit(MarkDelivered(d.id, pid, note)) if self.writes else None
        marks.append((d, pid, note, future))

    async def _record(self, platform: str, fn: Any, *args: Any) -> None:
        """Write a delivery outcome, riding out an outage: until it is written the row stays
        ``sending`` and holds its chat, so giving up would hold the chat until a restart."""
        outage = Outage(f"outbox ({platform})")
        while True:
            try:
                await self.db.call(fn, *args)
            except DB_ERRORS as exc:
                if is_row_error(exc):  # the ledger already tried the row clipped to fit
                    logger.bind(platform=platform).error(
                        "outbox: outcome {} not recorded: {}", args, describe_exception(exc)
                    )
                    return
                await asyncio.sleep(outage.failed(exc))
                continue
            outage.ok()
            return

    async def _send(
        self,
        d: Delivery,
        marks: list[Mark],
    ) -> Outcome:
        log = logger.bind(platform=d.platform)
        adapter = self.platforms.adapter(d.platform)
        message = OutboundMessage(
            d.chat_kind, d.chat_id, d.text, reply_to=d.reply_to, reply_seq=d.reply_seq
        )
        error: str
        try:
            if adapter is None:
                raise SendError(f"platform {d.platform} is not running")
            result: dict[str, Any] = await adapter.send(message)
        except AlreadyDelivered as exc:
            self._mark(d, None, f"the platform already had it: {exc}", marks)
            log.info(
                "outbox: message {} was already delivered (a retry the platform recognised)", d.id
            )
            return "delivered"
        except MessageRejected as exc:
            # Refused for good: retrying would only hold the chat's later messages back.
            error = describe_exception(exc)
            log.error("outbox: message {} refused by the platform: {}", d.id, error)
            await self._record(d.platform, self.ledger.failed, d.id, error)
            return "failed"
        except SendError as exc:
            error = describe_exception(exc)
        except Exception as exc:  # a bug in the adapter must not stop the outbox
            log.opt(exception=exc).error(
                "outbox: adapter failed unexpectedly sending message {}", d.id
            )
            error = describe_exception(exc)
        else:
            pid = result.get("id") if isinstance(result, dict) else None
            platform_id = str(pid) if pid is not None else None
            self._mark(d, platform_id, None, marks)
            return "delivered"
        if d.attempts >= self.settings.max_attempts:
            log.error("outbox: message {} failed after {} attempts: {}", d.id, d.attempts, error)
            await self._record(d.platform, self.ledger.failed, d.id, error)
            return "failed"
        delay = self.backoff(d.attempts)
        log.warning(
            "outbox: message {} attempt {} failed ({}); retry in {:.0f} s, its chat waits",
            d.id,
            d.attempts,
            error,
            delay,
        )
        at = now_utc() + timedelta(seconds=delay)
        await self._record(d.platform, self.ledger.retry_later, d.id, error, at)
        return "retry"
