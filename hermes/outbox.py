"""Delivery of the durable outbox: every outgoing message is a row before it is a request.

Rows go ``pending`` -> ``sending`` -> ``delivered``, or back to ``pending`` with a later
``next_attempt_at`` after a failure, ``failed`` after ``max_attempts``, ``expired`` past
the platform's reply window. Only platforms that are connected right now get their rows
claimed: messages for a platform that is reconnecting or fatal wait and go out when it is
back. Within one chat, rows go out in order; different chats go concurrently.

Delivery is at least once: a row being sent when the process died is sent again. A reply
keeps the ``reply_seq`` it got when enqueued, so the platform (QQ: ``msg_id`` +
``msg_seq``) recognises the repeat and drops it; that answer counts as delivered.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated, Any, Protocol

from loguru import logger
from pydantic import Field

from hermes.adapters.base import Adapter
from hermes.errors import AlreadyDelivered, SendError
from hermes.ledger import DB_ERRORS, Delivery, Ledger, Outage, now_utc
from hermes.messages import OutboundMessage
from watchdog.settings import Duration, Section
from watchdog.tasks import describe_exception
from watchdog.threads import DaemonWorker


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
    """The delivery loop; :meth:`run` until cancelled, :meth:`wake` after enqueueing."""

    def __init__(
        self, ledger: Ledger, db: DaemonWorker, platforms: Platforms, settings: OutboxSettings
    ) -> None:
        self.ledger = ledger
        self.db = db
        self.platforms = platforms
        self.settings = settings
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def backoff(self, attempts: int) -> float:
        s = self.settings
        return float(min(s.retry_backoff * 2 ** max(0, attempts - 1), s.retry_backoff_max))

    async def run(self) -> None:
        outage = Outage("outbox")
        while True:
            try:
                full = await self.deliver_once()
            except DB_ERRORS as exc:
                await asyncio.sleep(outage.failed(exc))
                continue
            outage.ok()
            if full:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)
            except TimeoutError:
                pass

    async def deliver_once(self) -> bool:
        """One pass: expire, claim, send. True if the batch was full (more may be due)."""
        for row in await self.db.call(self.ledger.expire_due):
            logger.bind(platform=row["platform"]).warning(
                "outbox: message {} expired undelivered (reply window passed)", row["id"]
            )
        batch = await self.db.call(
            self.ledger.claim, self.platforms.deliverable(), self.settings.batch
        )
        if not batch:
            return False
        chats: dict[tuple[str, str, str], list[Delivery]] = {}
        for d in batch:
            chats.setdefault((d.platform, d.chat_kind, d.chat_id), []).append(d)
        limit = asyncio.Semaphore(self.settings.chats_in_parallel)

        async def in_order(rows: list[Delivery]) -> None:
            async with limit:
                for d in rows:
                    await self._send(d)

        await asyncio.gather(*(in_order(rows) for rows in chats.values()))
        return len(batch) >= self.settings.batch

    async def _send(self, d: Delivery) -> None:
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
            await self.db.call(
                self.ledger.delivered, d.id, None, f"the platform already had it: {exc}"
            )
            log.info(
                "outbox: message {} was already delivered (a retry the platform recognised)", d.id
            )
            return
        except SendError as exc:
            error = describe_exception(exc)
        except Exception as exc:  # a bug in the adapter must not stop the outbox
            log.opt(exception=exc).error(
                "outbox: adapter failed unexpectedly sending message {}", d.id
            )
            error = describe_exception(exc)
        else:
            pid = result.get("id") if isinstance(result, dict) else None
            await self.db.call(self.ledger.delivered, d.id, str(pid) if pid is not None else None)
            return
        if d.attempts >= self.settings.max_attempts:
            log.error("outbox: message {} failed after {} attempts: {}", d.id, d.attempts, error)
            await self.db.call(self.ledger.failed, d.id, error)
            return
        delay = self.backoff(d.attempts)
        log.warning(
            "outbox: message {} attempt {} failed ({}); retry in {:.0f} s",
            d.id,
            d.attempts,
            error,
            delay,
        )
        await self.db.call(
            self.ledger.retry_later, d.id, error, now_utc() + timedelta(seconds=delay)
        )
