"""What every simulator shares: an observer told of each event, and waiting for the bot."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import h11


class Observed:
    """Announces what the bot did (to ``observer``, a line each) and wakes :meth:`wait_until`."""

    def __init__(self) -> None:
        self.observer: Callable[[str], None] | None = None
        """Told of each event in a line (``hermes simulate`` prints them)."""
        self._changed = asyncio.Condition()

    async def _notify(self, event: str | None = None) -> None:
        if event is not None and self.observer is not None:
            self.observer(event)
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        """Wait until ``condition()`` holds (re-checked whenever the bot does something)."""

        async def waiter() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(condition()))

        try:
            await asyncio.wait_for(waiter(), timeout)
        except TimeoutError:
            raise AssertionError(f"simulator: {what} not seen within {timeout:g} s") from None


async def read_request(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[h11.Request | None, bytes]:
    """The next HTTP request on a connection and its body; ``(None, b"")`` once it closes."""
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
            if not data and request is None:
                return None, b""
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            return None, b""


def sigkill(pid: int, pid_file: str = "") -> str:
    """SIGKILL ``pid``, or the process whose pid ``pid_file`` holds now (a bot started after
    the simulator); what happened, as a phrase for the simulator's output."""
    if pid_file:
        try:
            pid = int(Path(pid_file).read_text().strip())
        except (OSError, ValueError) as exc:
            return f"no pid in {pid_file}: {exc}"
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return f"pid {pid} does not exist, nothing killed"
    except PermissionError:
        return f"not allowed to kill pid {pid}"
    return f"killed pid {pid} with SIGKILL"
