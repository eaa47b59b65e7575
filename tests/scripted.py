"""A test adapter that follows a script: it behaves, or dies in each way the watchdog must catch.

Use it from a configuration as ``adapter = "tests.scripted:ScriptedAdapter"`` with
``runs = [["connect", "behave 1", "return"], ["connect", "behave"]]``: run *i* (the
i-th start of the platform, restarts included) follows ``runs[i]``, the last one
repeating. Steps:

``connect``          declare connected and beat once
``behave [SECS]``    beat every ``beat_interval`` for SECS seconds (forever if omitted)
``return``           return silently, whatever is declared (the incident)
``raise [MSG]``      raise RuntimeError(MSG)
``silent``           stop beating, keep the declared state, wait until closed
``reconnecting``     declare reconnecting and wait until closed
``hang``             do nothing (stays in whatever state) until closed
``stopped``          declare stopped (without being asked to) and wait until closed
``fatal CODE retryable|final [MSG]``  report a fatal error and return
``block SECS``       block the whole event loop with time.sleep (prints markers)
``ttl SECS``         change the heartbeat TTL
``ignore-close``     from now on, ignore close() and cancellation until the step list ends

The setting ``close_blocks = SECS`` makes close() freeze the event loop (a stop that hangs).

Markers on stderr: ``SCRIPT <platform> <event> <time.monotonic()>``.
"""

from __future__ import annotations

import asyncio
import sys
import time

from pydantic import Field

from hermes.adapters.base import Adapter, AdapterSettings
from watchdog.heartbeat import PlatformHandle
from watchdog.settings import Duration, NonNegativeDuration
from watchdog.states import DeclaredState


class ScriptedSettings(AdapterSettings):
    runs: list[list[str]] = Field(default_factory=lambda: [["connect", "behave"]])
    beat_interval: Duration = 0.05
    fail_init: bool = False
    """Raise from the constructor (a bug or bad settings found late)."""
    close_blocks: NonNegativeDuration = 0.0
    """close() blocks the whole event loop this long with time.sleep: a stop that hangs."""


def marker(platform: str, event: str) -> None:
    print(f"SCRIPT {platform} {event} {time.monotonic():.6f}", file=sys.stderr, flush=True)


class ScriptedAdapter(Adapter):
    kind = "scripted"
    Settings = ScriptedSettings

    def __init__(self, name: str, settings: AdapterSettings, handle: PlatformHandle) -> None:
        super().__init__(name, settings, handle)
        assert isinstance(settings, ScriptedSettings)
        if settings.fail_init:
            raise ValueError("scripted constructor failure")

    async def close(self) -> None:
        s = self.settings
        assert isinstance(s, ScriptedSettings)
        if s.close_blocks:
            marker(self.name, "close-block-start")
            time.sleep(s.close_blocks)  # deliberately freezes the event loop mid-stop
            marker(self.name, "close-block-end")
        await super().close()

    async def run(self) -> None:
        s = self.settings
        assert isinstance(s, ScriptedSettings)
        steps = s.runs[min(self.handle.attempt, len(s.runs) - 1)]
        marker(self.name, f"run{self.handle.attempt}")
        for step in steps:
            op, _, arg = step.partition(" ")
            if op == "connect":
                self.handle.declare(DeclaredState.CONNECTED)
                self.handle.beat()
            elif op == "behave":
                deadline = time.monotonic() + float(arg) if arg else None
                while deadline is None or time.monotonic() < deadline:
                    if await self.pause(s.beat_interval):
                        self.stopped()
                        return
                    self.handle.beat()
            elif op == "return":
                marker(self.name, "return")
                return
            elif op == "raise":
                marker(self.name, "raise")
                raise RuntimeError(arg or "scripted crash")
            elif op in ("silent", "hang"):
                marker(self.name, op)
                await self._closing.wait()
                self.stopped()
                return
            elif op in ("reconnecting", "stopped"):
                self.handle.declare(DeclaredState(op))
                await self._closing.wait()
                self.stopped()
                return
            elif op == "fatal":
                code, _, rest = arg.partition(" ")
                kind, _, message = rest.partition(" ")
                marker(self.name, f"fatal-{code}")
                self.handle.fatal(
                    code, message or "scripted fatal", retryable=(kind == "retryable")
                )
                return
            elif op == "block":
                marker(self.name, "block-start")
                time.sleep(float(arg))  # deliberately freezes the event loop
                marker(self.name, "block-end")
            elif op == "ttl":
                self.handle.set_heartbeat_ttl(float(arg))
            elif op == "ignore-close":
                while True:
                    try:
                        await asyncio.sleep(3600)
                    except asyncio.CancelledError:
                        marker(self.name, "ignored-cancel")
            else:
                raise ValueError(f"unknown script step {step!r}")
        await self._closing.wait()
        self.stopped()
