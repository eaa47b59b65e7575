"""Time sources, injectable so that every timeout rule is testable without sleeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Monotonic time for every duration, wall time only to label what is stored."""

    def monotonic(self) -> float: ...

    def wall(self) -> datetime: ...


class SystemClock:
    """The real clocks."""

    monotonic = staticmethod(time.monotonic)

    @staticmethod
    def wall() -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that moves only when told to; for tests and simulations."""

    def __init__(self, start: float = 1000.0, wall: datetime | None = None) -> None:
        self._mono = start
        self._wall0 = wall or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono0 = start

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> datetime:
        return self._wall0 + timedelta(seconds=self._mono - self._mono0)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._mono += seconds


def wall_at(clock: Clock, mono: float) -> datetime:
    """The wall-clock time at which ``clock.monotonic()`` read ``mono``."""
    return clock.wall() - timedelta(seconds=clock.monotonic() - mono)
