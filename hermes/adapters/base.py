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

Adapters never touch the database, the scheduler or systemd.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from loguru import logger
from pydantic import BaseModel, ConfigDict

from hermes.errors import SendError
from hermes.messages import InboundMessage, OutboundMessage
from watchdog.heartbeat import PlatformHandle
from watchdog.states import DeclaredState


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
        """Where inbound messages go; the gateway points it at its job runner."""

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
