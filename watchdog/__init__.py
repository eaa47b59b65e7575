"""Supervision for long-running platform adapters; knows nothing about any platform.

States and verdicts (:mod:`watchdog.states`), reason codes (:mod:`watchdog.reasons`),
the heartbeat board and the adapters' handle (:mod:`watchdog.heartbeat`), pure
verdict rules (:mod:`watchdog.rules`), the restart budget (:mod:`watchdog.restart`),
the tick engine (:mod:`watchdog.engine`) and its I/O shell (:mod:`watchdog.job`),
the systemd notifier (:mod:`watchdog.notify`), the SQL state store
(:mod:`watchdog.store`) and the ``hermes-watchdog`` CLI (:mod:`watchdog.cli`).

This package shares its import name with the unrelated file-events library
``watchdog`` on PyPI; ``__hermes_watchdog__`` lets the console scripts tell the two
apart (see ``hermes.entry``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from watchdog.heartbeat import PlatformHandle, PlatformPolicy, Reason
    from watchdog.restart import RestartPolicy
    from watchdog.states import DeclaredState, Health

__hermes_watchdog__ = True

# Imported on first use: the status CLI must start fast and needs none of these.
_LAZY = {
    "DeclaredState": "watchdog.states",
    "Health": "watchdog.states",
    "PlatformHandle": "watchdog.heartbeat",
    "PlatformPolicy": "watchdog.heartbeat",
    "Reason": "watchdog.heartbeat",
    "RestartPolicy": "watchdog.restart",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'watchdog' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "DeclaredState",
    "Health",
    "PlatformHandle",
    "PlatformPolicy",
    "Reason",
    "RestartPolicy",
]
