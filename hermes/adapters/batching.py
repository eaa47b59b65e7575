"""A WebSocket client connection that hands received messages on a batch at a time.

websockets' :class:`~websockets.asyncio.client.ClientConnection` delivers one message per
``recv()``: a coroutine call, a hand-off through its queue, a UTF-8 decoding and, whenever
the queue runs empty, a future to wait on. A platform that sends tens of thousands of small
events a second pays all of that for every event, and the official SDK's reader (aiohttp's,
with its parser in C) does not. :class:`BatchingConnection` keeps everything else of
websockets' connection: the opening handshake (TLS, proxies, redirects), the sans-I/O
protocol that parses and checks the frames, pings and pongs, the closing handshake and its
timeout, flow control for writes. It replaces only the hand-off: every message that one
read from the socket completed is appended to a list as the protocol parses it, and
:meth:`BatchingConnection.recv_batch` returns the whole list with one wake-up of its reader.

Messages are handed on undecoded (bytes, text and binary alike): a JSON parser checks the
encoding as it parses, so decoding first would only do that work twice. A text message
whose UTF-8 is broken is the parser's to refuse, as it refuses broken JSON.

Use it through ``connect(..., create_connection=BatchingConnection)``; read with
:meth:`~BatchingConnection.recv_batch` only (``recv()`` and ``async for`` would wait for
messages that never reach websockets' own queue).
"""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.frames import CONT, DATA_OPCODES, Frame
from websockets.protocol import CLOSED, Event

Message = bytes | bytearray | memoryview
"""One received message, undecoded."""


class BatchingConnection(ClientConnection):
    """A :class:`~websockets.asyncio.client.ClientConnection` read a batch at a time."""

    max_waiting = 1000
    """Messages received and not yet taken above which reading from the socket pauses (the
    reader is behind); it resumes when the reader takes them. A read completes many messages
    at once, so this bounds memory by about this many messages plus one read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting: list[Message] = []
        """Messages received and not yet taken by :meth:`recv_batch`, oldest first."""
        self._fragments: bytearray | None = None
        """The fragments so far of a message that came in several frames."""
        self._wakeup: asyncio.Future[None] | None = None
        """What :meth:`recv_batch` waits on when nothing is waiting."""
        self._reading_paused = False

    async def recv_batch(self, limit: int | None = None) -> list[Message]:
        """The messages received and not yet taken (at most ``limit``), oldest first; waits
        for at least one.

        When messages were waiting already (the reader is behind), the event loop's other
        tasks run first: a reader taking a long burst in slices does not hold them up for
        all of it. Messages that arrived before the connection closed are returned first;
        after them, :exc:`~websockets.exceptions.ConnectionClosed` is raised as ``recv()``
        raises it."""
        if self._waiting:
            await asyncio.sleep(0)
        while not self._waiting:
            if self.protocol.state is CLOSED:
                raise self.close_exc
            self._wakeup = self.loop.create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        if limit is None or len(self._waiting) <= limit:
            batch, self._waiting = self._waiting, []
        else:
            batch = self._waiting[:limit]
            del self._waiting[:limit]
        if self._reading_paused and len(self._waiting) <= self.max_waiting:
            self._reading_paused = False
            self.transport.resume_reading()
        return batch

    # -- websockets' connection callbacks

    def process_event(self, event: Event) -> None:
        """A parsed frame (or, first, the handshake's response): data frames are assembled
        into messages here; everything else goes to websockets."""
        if type(event) is not Frame or event.opcode not in DATA_OPCODES or self.response is None:
            super().process_event(event)  # the response; pings, pongs, the close frame
            return
        if event.opcode is CONT:
            if self._fragments is None:  # the protocol lets no stray continuation through
                return
            self._fragments += event.data
            if not event.fin:
                return
            data: Message = self._fragments
            self._fragments = None
        elif not event.fin:
            self._fragments = bytearray(event.data)
            return
        else:
            data = event.data
        self._waiting.append(data)
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)
        if len(self._waiting) > self.max_waiting and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)
