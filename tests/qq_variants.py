"""QQ adapters with one of their own safety nets removed, to prove the watchdog is enough."""

from __future__ import annotations

import time

from hermes.adapters.base import AdapterSettings
from hermes.adapters.qqbot import QQBotAdapter
from watchdog.heartbeat import PlatformHandle

RETURNED_AT: dict[str, float] = {}


class SilentGiveUpQQ(QQBotAdapter):
    """Does not report when it gives up: its loop just returns, as in the incident."""

    def give_up(self, code: str, message: str, *, retryable: bool) -> None:
        self.log.warning("(test) not reporting {}: returning silently", code)
        RETURNED_AT[self.name] = time.monotonic()


class NoZombieDetectionQQ(QQBotAdapter):
    """Keeps heartbeating a connection that never answers: only the watchdog's TTL can tell."""

    def __init__(self, name: str, settings: AdapterSettings, handle: PlatformHandle) -> None:
        super().__init__(name, settings, handle)
        self.zombie_detection = False
