"""Telegram: the Bot API over long polling (``getUpdates``), and a local simulator of it."""

from __future__ import annotations

from hermes.adapters.telegram.adapter import TelegramAdapter, TelegramSettings

__all__ = ["TelegramAdapter", "TelegramSettings"]
