"""Verdict rules: pure functions from a platform record and ``now`` to a health verdict.

No I/O, no clock reads: every rule is testable by passing ``now``. A condition
that becomes true at time *t* is reported by the first tick at or after *t*.
"""

from __future__ import annotations

from dataclasses import dataclass

from watchdog import reasons
from watchdog.heartbeat import PlatformPolicy, PlatformRecord, Reason
from watchdog.states import DeclaredState, Health


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the rules conclude; ``reason`` is ``None`` when there is nothing to explain."""

    health: Health
    reason: Reason | None = None


OK = Verdict(Health.OK)
DEGRADED = Verdict(Health.DEGRADED)


def _failing(code: str, message: str) -> Verdict:
    """A retryable fault: restart within the budget."""
    return Verdict(Health.FAILING, Reason(code, message, True))


def judge(record: PlatformRecord, now: float, policy: PlatformPolicy) -> Verdict:
    """Judge one platform. Order matters: the most specific evidence wins.

    1. an explicit fatal error from the adapter;
    2. the task ended although nobody asked it to stop (crashed, or returned silently);
    3. ``stopped`` declared although nobody asked it to stop;
    4. ``connected`` but the last heartbeat (or the connect itself) is older than the TTL;
    5. ``reconnecting`` or ``starting`` for longer than allowed.
    """
    if record.stop_requested:
        return Verdict(record.health, record.reason)

    error = record.fatal_error
    if error is not None:
        return Verdict(Health.FAILING if error.retryable else Health.FATAL, error)

    exit = record.exit
    if exit is not None:
        if exit.crashed:
            return _failing(reasons.ADAPTER_CRASHED, exit.summary)
        return _failing(
            reasons.ADAPTER_EXITED, f"adapter task returned while declared {record.declared.value}"
        )

    state = record.declared
    held = now - record.declared_since
    if state is DeclaredState.CONNECTED:
        # A fresh connection gets one TTL of grace; beats from before it do not count.
        beat = record.last_beat
        silent = now - (record.declared_since if beat is None else max(beat, record.declared_since))
        if silent > record.ttl:
            return _failing(
                reasons.HEARTBEAT_TIMEOUT,
                f"no heartbeat for {silent:.1f} s while connected (TTL {record.ttl:g} s)",
            )
        return OK
    if state is DeclaredState.RECONNECTING:
        if held > policy.reconnect_timeout:
            return _failing(
                reasons.RECONNECT_STALLED,
                f"reconnecting for {held:.1f} s (allowed {policy.reconnect_timeout:g} s)",
            )
        return DEGRADED
    if state is DeclaredState.STARTING:
        if held > policy.start_timeout:
            return _failing(
                reasons.START_TIMEOUT,
                f"starting for {held:.1f} s (allowed {policy.start_timeout:g} s)",
            )
        return DEGRADED
    if state is DeclaredState.STOPPED:
        return _failing(reasons.ADAPTER_STOPPED, "adapter declared stopped without being asked to")
    # FATAL is only reachable through handle.fatal(), which also sets fatal_error.
    return Verdict(Health.FATAL, Reason(reasons.ADAPTER_FATAL, "adapter declared fatal", False))
