"""What an adapter says about itself and what the watchdog concludes about it."""

from __future__ import annotations

from enum import StrEnum


class DeclaredState(StrEnum):
    """The state an adapter declares through its handle.

    Stored as text in ``platform_state.declared_state`` and in the history.
    """

    STARTING = "starting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"
    FATAL = "fatal"


class Health(StrEnum):
    """The watchdog's verdict on a platform, ordered from best to worst.

    ``ok``: connected and beating. ``degraded``: starting or reconnecting within
    its allowance, or restarting within its budget. ``failing``: a fault was
    found and a restart is pending. ``fatal``: the restart budget is spent or
    the error is not retryable; a required platform in this state escalates.
    """

    OK = "ok"
    DEGRADED = "degraded"
    FAILING = "failing"
    FATAL = "fatal"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Health.OK: 0, Health.DEGRADED: 1, Health.FAILING: 2, Health.FATAL: 3}

FAILED_RUNS = ("error", "timeout", "missed")
"""The ``job_runs.status`` values that count as a failed run (in status and ``hermes jobs``)."""
