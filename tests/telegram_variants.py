"""Telegram adapters with one of their own safety nets removed, to prove the watchdog is enough."""

from __future__ import annotations

import httpx

from hermes.adapters.base import AdapterSettings
from hermes.adapters.telegram import TelegramAdapter
from watchdog.heartbeat import PlatformHandle


class NoReadTimeoutTelegram(TelegramAdapter):
    """Waits for a getUpdates answer forever: only the watchdog's TTL can tell it hung."""

    def __init__(self, name: str, settings: AdapterSettings, handle: PlatformHandle) -> None:
        super().__init__(name, settings, handle)
        self._poll_timeout = httpx.Timeout(self.s.request_timeout, read=None)
