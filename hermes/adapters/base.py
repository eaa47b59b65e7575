"""The adapter base class: the lifecycle contract every platform adapter follows.

An adapter instance lives for one connection attempt sequence: the supervisor
builds it with a :class:`~watchdog.heartbeat.PlatformHandle`, runs :meth:`Adapter.run`
as a named task, and on shutdown or restart calls :meth:`Adapter.close`. A restart
always builds a *new* instance. The contract:

1. ``run()`` starts in ``starting`` (declared by the watchdog before the call).
2. Declare ``connected`` once the platform has proved the session usable (a READY,
   a successful poll), ``reconnecting`` while between connections.
3. Call ``handle.beat()`` from the code path that proves the platform alive: a
   heartbeat ACK received, a long poll returned, an event dispatched. Never from a
   timer of your own: a timer keeps beating for a dead connection.
4. On an error you cannot recover from, call ``handle.fatal(code, message,
   retryable=...)`` and return. Bad credentials or a ban: ``retryable=False``.
5. Return from ``run()`` only after ``close()`` was called (declare ``stopped``
   first). Any other return is caught as ``adapter_exited``, an exception as
   ``adapter_crashed``; a ``connected`` adapter that stops beating is caught by
   its TTL. The watchdog does not trust the adapter to get this right.
6. ``close()`` is idempotent and makes ``run()`` return within the supervisor's
   ``close_timeout``; after that the task is cancelled.

7. Hand every inbound event to ``self.inbound`` with the cursor that covers it, and
   follow :class:`Inbound`'s durability contract: nothing taken is lost, nothing refused
   is dropped (it stays with the platform), and a resume the platform refuses is reported
   as a gap.

Adapters never touch the database, the scheduler or systemd.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, ClassVar, Protocol

from loguru import logger
from pydantic import BaseModel, ConfigDict

from hermes.errors import SendError
from hermes.messages import InboundMessage, OutboundMessage
from watchdog.heartbeat import PlatformHandle
from watchdog.states import DeclaredState
from watchdog.tasks import TaskRegistry


class AdapterSettings(BaseModel):
    """Base for an adapter's own keys in its ``[platforms.NAME]`` table. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Adapter(ABC):
    """One platform connection; see the module docstring for the lifecycle contract."""

    kind: ClassVar[str] = ""
    """The ``adapter = "..."`` name, stored in ``platform_state.adapter``."""
    Settings: ClassVar[type[AdapterSettings]] = AdapterSettings

    def __init__(self, name: str, settings: AdapterSettings, handle: PlatformHandle) -> None:
        self.name = name
        self.settings = settings
        self.handle = handle
        self.log = logger.bind(platform=name)
        self._closing = asyncio.Event()
        self.on_message: Callable[[InboundMessage], Awaitable[None]] = self._log_message
        """Where :class:`LocalInbound` delivers messages when the adapter runs on its own."""
        self.inbound: Inbound = LocalInbound(self)
        """Where inbound events go (see :class:`Inbound`); the gateway gives its inbox."""

    @abstractmethod
    async def run(self) -> None:
        """Connect and serve until :meth:`close` is called."""

    async def close(self) -> None:
        """Ask :meth:`run` to finish. Subclasses also close their connections here."""
        self._closing.set()

    # -- messages

    async def send(self, message: OutboundMessage) -> dict[str, Any]:
        """Deliver one message now; raise :class:`~hermes.errors.SendError` (or a subclass)
        if it was not delivered. The outbox calls this; handlers never do."""
        raise SendError(
            f"{self.name}: adapter {self.kind or type(self).__name__} cannot send messages"
        )

    def reply_window(self, chat_kind: str) -> float | None:
        """Seconds after an inbound message during which it can be replied to (None: no limit)."""
        return None

    async def _log_message(self, message: InboundMessage) -> None:
        self.log.info(
            "message {} in {} {} ({} chars)",
            message.message_id,
            message.chat_kind,
            message.chat_id,
            len(message.text),
        )

    def closing(self) -> bool:
        """True once :meth:`close` was called. A method, not a property: type checkers would
        otherwise assume it cannot change inside a ``while not self.closing()`` loop."""
        return self._closing.is_set()

    async def pause(self, seconds: float) -> bool:
        """Wait ``seconds`` or until :meth:`close` is called, whichever is first; True if closing."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def stopped(self) -> None:
        """Declare ``stopped``; call it right before ``run()`` returns after ``close()``."""
        self.handle.declare(DeclaredState.STOPPED)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


# -- inbound events: the contract between an adapter and the gateway's inbox


class Inbound(Protocol):
    """Where an adapter hands inbound events. In the gateway this is the inbox (see
    :mod:`hermes.inbox.intake`); an adapter run on its own gets a :class:`LocalInbound`.

    The durability contract every adapter follows:

    1. Hand each event to :meth:`offer` with the *cursor* that covers it: the position
       from which the platform would send the events after it again (QQ: session id and
       seq; a long poll: the next offset). The cursor is stored in the same transaction as
       the event's inbox row, never ahead of it.
    2. When :meth:`offer` returns False, nothing was taken: stop reading, leave the event
       with the platform (do not advance your position past it), wait for :meth:`room`,
       then continue from the last event that was taken. Never drop it. Meanwhile the
       gateway holds the platform (degraded, ``inbox_full``): the silence is not counted
       against it. Once room returns, the usual allowances to prove life run from then.
    3. A platform that needs an acknowledgement (a long poll's offset) is acknowledged only
       after :meth:`committed`.
    4. At start, resume from :meth:`cursor` if the platform still allows it. When it
       refuses, or the cursor is too old, report the events lost with :meth:`gap`.
    5. A position the platform names only after it starts sending (QQ: the session id in
       READY) leaves a window before it is stored. Store a marker with :meth:`note_cursor`
       and wait for :meth:`committed` *before* asking for it; a start that finds the marker
       reports a gap; withdraw it when leaving without the new position. Once the position
       is named, note it and wait for :meth:`committed` before reading on: the window is
       then one small commit, not a batch of events.
    6. Between reads, await :meth:`pace`: when the platform sends faster than the store
       commits, it holds the next read back a little, so that the transport's flow control
       slows the platform down before the inbox fills (and 2. would cost a reconnect).
    """

    def offer(
        self, message: InboundMessage, cursor: dict[str, Any] | None, event_id: str | None = None
    ) -> bool:
        """Take one event (``event_id``: the platform's id for it, default the message id)."""

    async def room(self) -> None:
        """Return once :meth:`offer` takes events again."""

    async def committed(self) -> None:
        """Return once every event taken so far is stored."""

    async def pace(self, limit: float) -> None:
        """Return when the adapter may read on: at once, unless events arrive faster than the
        store takes them; then once it has caught up, or after ``limit`` seconds at most (keep
        it well below anything that must be read in time, such as a heartbeat's ACK)."""

    def cursor(self) -> tuple[dict[str, Any], datetime | None] | None:
        """The position to resume from, and when it was stored (None: in this process)."""

    def note_cursor(self, cursor: dict[str, Any]) -> None:
        """A new position without an event (a new session started): stored with the next
        commit, so that a later start does not try to resume the old one."""

    def gap(self, detail: str, size: int | None = None) -> None:
        """Events the platform will not send again: recorded (``inbound_gap``) and counted."""

    def lose(self, detail: str) -> None:
        """An event received but impossible to store (it cannot be decoded): counted in
        ``inbound_cursors.lost`` with the next commit and shown by status, never dropped with
        a log line alone. The cursor goes on past it."""


class LocalInbound:
    """Inbound for an adapter run on its own (tests, embedding): events go to the adapter's
    ``on_message`` one at a time, in order, with at most ``capacity`` waiting. Nothing is
    stored; the cursor lives in memory."""

    def __init__(self, adapter: Adapter, capacity: int = 1000) -> None:
        self.adapter = adapter
        self.capacity = capacity
        self.queue: deque[InboundMessage] = deque()
        self._cursor: dict[str, Any] | None = None
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker: asyncio.Task[Any] | None = None
        self._tasks = TaskRegistry()
        self.gaps: list[tuple[str, int | None]] = []
        self.lost: list[str] = []

    def offer(
        self, message: InboundMessage, cursor: dict[str, Any] | None, event_id: str | None = None
    ) -> bool:
        if len(self.queue) >= self.capacity:
            self._room.clear()
            return False
        self.queue.append(message)
        if cursor is not None:
            self._cursor = cursor
        self._idle.clear()
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = self._tasks.spawn(self._deliver(), name=f"inbound:{self.adapter.name}")
        return True

    async def _deliver(self) -> None:
        while self.queue:
            message = self.queue.popleft()
            if len(self.queue) < self.capacity:
                self._room.set()
            try:
                await self.adapter.on_message(message)
            except Exception as exc:
                self.adapter.log.opt(exception=exc).error(
                    "handler failed for message {}: {}", message.message_id, exc
                )
        self._idle.set()

    async def room(self) -> None:
        await self._room.wait()

    async def committed(self) -> None:
        await self._idle.wait()

    async def pace(self, limit: float) -> None:
        return  # nothing is stored: the queue's capacity is the only limit

    def cursor(self) -> tuple[dict[str, Any], datetime | None] | None:
        return (self._cursor, None) if self._cursor is not None else None

    def note_cursor(self, cursor: dict[str, Any]) -> None:
        self._cursor = cursor

    def gap(self, detail: str, size: int | None = None) -> None:
        self.adapter.log.error("inbound gap: {}", detail)
        self.gaps.append((detail, size))
        self._cursor = None

    def lose(self, detail: str) -> None:
        self.adapter.log.error("inbound event lost: {}", detail)
        self.lost.append(detail)
