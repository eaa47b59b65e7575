"""A demonstration adapter: healthy for a while, then its receive loop just returns.

It reproduces the silent-death incident for ``make demo``: ``connected`` is
declared, beats come from (simulated) dispatched events, and after ``die_after``
seconds the loop returns without a word, still ``connected``. The watchdog
catches it within one tick.
"""

from __future__ import annotations

from pydantic import Field

from hermes.adapters.base import Adapter, AdapterSettings
from watchdog.settings import Duration, NonNegativeDuration
from watchdog.states import DeclaredState


class DemoSettings(AdapterSettings):
    connect_after: NonNegativeDuration = Field(0.3)
    """Simulated connection set-up time."""
    event_interval: Duration = 0.5
    """One simulated event dispatched (and a beat) this often."""
    die_after: NonNegativeDuration = 0.0
    """Return silently after this long connected; 0 means never."""


class DemoAdapter(Adapter):
    kind = "demo"
    Settings = DemoSettings

    async def run(self) -> None:
        s = self.settings
        assert isinstance(s, DemoSettings)
        if await self.pause(s.connect_after):
            self.stopped()
            return
        self.handle.declare(DeclaredState.CONNECTED)
        self.log.info("demo connected; receiving events every {:g} s", s.event_interval)
        alive = 0.0
        while not self.closing():
            if s.die_after and alive >= s.die_after:
                # The incident: the receive loop gives up and returns. No log, no fatal, no state.
                return
            if await self.pause(s.event_interval):
                break
            alive += s.event_interval
            self.handle.beat()  # an event was dispatched: proof of life
        self.stopped()
