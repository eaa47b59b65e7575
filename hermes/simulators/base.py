"""What every simulator shares: an observer told of each event, and waiting for the bot."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


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
