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
_LIVE = (DeclaredState.STARTING, DeclaredState.CONNECTED, DeclaredState.RECONNECTING)


def _failing(code: str, message: str) -> Verdict:
    """A retryable fault: restart within the budget."""
    return Verdict(Health.FAILING, Reason(code, message, True))


def judge(record: PlatformRecord, now: float, policy: PlatformPolicy) -> Verdict:
    """Judge one platform. Order matters: the most specific evidence wins.

    1. an explicit fatal error from the adapter;
    2. the task ended although nobody asked it to stop (crashed, or returned silently);
    3. ``stopped`` declared although nobody asked it to stop;
    4. ``connected`` but no proof of life (a beat, or the start of the attempt) within the TTL;
    5. ``reconnecting`` or ``starting`` without proof of life for longer than allowed.

    A platform the gateway holds (:meth:`~watchdog.heartbeat.HeartbeatBoard.hold`) is
    ``degraded`` with the hold's reason instead of 4 and 5; after the hold, its allowances
    run from the release.

    ``ok`` needs a beat within the TTL: a platform that has shown no proof of life for its
    TTL is never ``ok``, however often it reconnects.
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

    # Silence runs from the last proof of life (a beat), across reconnects: declaring
    # ``connected`` or ``reconnecting`` again proves nothing and buys no fresh grace. Only a
    # new attempt (a restart by the watchdog), or the end of a hold, starts a new grace period.
    state = record.declared
    if record.held is not None and state in _LIVE:
        # The gateway keeps it from reading (its inbox is full: the store is down or slow).
        # Silence now says nothing about the platform: reported, never restarted for it.
        return Verdict(Health.DEGRADED, record.held)
    silent = now - record.alive_at
    if state is DeclaredState.CONNECTED:
        if silent > record.ttl:
            return _failing(
                reasons.HEARTBEAT_TIMEOUT,
                f"no proof of life for {silent:.1f} s while connected (TTL {record.ttl:g} s)",
            )
        beat = record.last_beat
        if beat is None or now - beat > record.ttl:
            # Connected, still inside the attempt's grace, but nothing has proved it alive.
            return DEGRADED
        return OK
    if state is DeclaredState.RECONNECTING:
        if silent > policy.reconnect_timeout:
            return _failing(
                reasons.RECONNECT_STALLED,
                f"reconnecting, no proof of life for {silent:.1f} s "
                f"(allowed {policy.reconnect_timeout:g} s)",
            )
        return DEGRADED
    if state is DeclaredState.STARTING:
        if silent > policy.start_timeout:
            return _failing(
                reasons.START_TIMEOUT,
                f"starting, no proof of life for {silent:.1f} s "
                f"(allowed {policy.start_timeout:g} s)",
            )
        return DEGRADED
    if state is DeclaredState.STOPPED:
        return _failing(reasons.ADAPTER_STOPPED, "adapter declared stopped without being asked to")
    # FATAL is only reachable through handle.fatal(), which also sets fatal_error.
    return Verdict(Health.FATAL, Reason(reasons.ADAPTER_FATAL, "adapter declared fatal", False))


def escalation_bound(
    policy: PlatformPolicy, *, ttl: float, tick_interval: float, close_timeout: float
) -> float:
    """The longest time, in seconds, from a platform's last proof of life to its being
    marked fatal (pings stop), when no later attempt shows any proof of life.

    Each attempt is judged failing at most ``max(ttl, start_timeout, reconnect_timeout)``
    after it started (or after the last proof), plus one tick; a restart waits its backoff,
    or the stop of the old instance (at most three ``close_timeout``: close, wait, cancel)
    if that is longer. Restarts in a row without proof of life count against the budget
    however far apart they are, so the budget is spent after ``max_restarts`` of them.
    """
    per_attempt = max(ttl, policy.start_timeout, policy.reconnect_timeout) + tick_interval
    r = policy.restart
    pauses = sum(
        max(min(r.backoff_initial * r.backoff_factor**i, r.backoff_max), 3 * close_timeout)
        for i in range(r.max_restarts)
    )
    return (r.max_restarts + 1) * per_attempt + pauses
