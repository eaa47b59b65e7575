"""hermes-gateway: a chat-platform gateway that can never be silently dead."""

from __future__ import annotations

__version__ = "0.1.0"
