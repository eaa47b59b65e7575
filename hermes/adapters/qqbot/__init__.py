"""QQ Bot (QQ open platform) over the WebSocket gateway, and a local simulator of the platform."""

from __future__ import annotations

from hermes.adapters.qqbot.adapter import QQBotAdapter, QQBotSettings

__all__ = ["QQBotAdapter", "QQBotSettings"]
