"""A platform the gateway holds (its inbox is full) is reported, never judged silent.

The clock is passed in: no I/O, no sleeps.
"""

from __future__ import annotations

import pytest

from watchdog import reasons
from watchdog.engine import WatchdogEngine
from watchdog.heartbeat import HeartbeatBoard, PlatformPolicy, PlatformRecord, Reason, TaskExit
from watchdog.rules import judge
from watchdog.states import DeclaredState, Health

POLICY = PlatformPolicy(heartbeat_ttl=10.0, start_timeout=20.0, reconnect_timeout=30.0)
T0 = 1000.0
FULL = Reason("inbox_full", "the gateway's inbox is full", True)


class Clock:
    now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup() -> tuple[Clock, HeartbeatBoard, PlatformRecord]:
    clock = Clock()
    board = HeartbeatBoard(clock)
    record = board.register("p", "test", required=True, policy=POLICY)
    board.set_declared(record, DeclaredState.CONNECTED)
    record.last_beat = T0 + 1
    return clock, board, record


def held_at(clock: Clock, board: HeartbeatBoard, record: PlatformRecord, at: float) -> None:
    """What the QQ adapter does when the inbox refuses an event: the gateway holds the
    platform, the adapter drops the connection and waits for room, reconnecting."""
    clock.now = at
    board.hold(record.name, FULL)
    board.set_declared(record, DeclaredState.RECONNECTING)


def test_a_held_platform_is_degraded_for_its_hold_however_long_it_lasts(setup):
    clock, board, record = setup
    held_at(clock, board, record, T0 + 2)
    for later in (T0 + 31.01, T0 + 3600.0):
        verdict = judge(record, later, POLICY)
        assert (verdict.health, verdict.reason) == (Health.DEGRADED, FULL)


def test_a_held_platform_is_never_restarted_and_the_pings_go_on(setup):
    clock, board, record = setup
    engine = WatchdogEngine(board)
    held_at(clock, board, record, T0 + 2)
    for second in range(3, 600):
        out = engine.evaluate(T0 + second)
        assert out.ping
        assert out.restarts == [] and out.stops == []
    assert record.health is Health.DEGRADED
    assert record.reason == FULL


def test_after_the_release_its_allowance_runs_from_the_release(setup):
    clock, board, record = setup
    held_at(clock, board, record, T0 + 2)
    clock.now = T0 + 500
    board.release(record.name)
    assert record.held is None
    # Reconnecting: reconnect_timeout from the release, not from the last beat.
    assert judge(record, T0 + 530, POLICY).health is Health.DEGRADED
    verdict = judge(record, T0 + 530.01, POLICY)
    assert verdict.reason is not None
    assert verdict.reason.code == reasons.RECONNECT_STALLED
    # Connected again without a proof of life: the TTL from the release.
    board.set_declared(record, DeclaredState.CONNECTED)
    assert judge(record, T0 + 510, POLICY).health is Health.DEGRADED
    assert judge(record, T0 + 510.01, POLICY).health is Health.FAILING
    record.last_beat = T0 + 505
    assert judge(record, T0 + 510.01, POLICY).health is Health.OK


def test_a_hold_covers_only_silence_not_a_crash_an_exit_or_a_fatal_error(setup):
    clock, board, record = setup
    held_at(clock, board, record, T0 + 2)
    record.exit = TaskExit(True, "ValueError: boom")
    verdict = judge(record, T0 + 3, POLICY)
    assert verdict.reason is not None
    assert (verdict.health, verdict.reason.code) == (Health.FAILING, reasons.ADAPTER_CRASHED)
    record.exit = None
    board.set_declared(record, DeclaredState.STOPPED)
    verdict = judge(record, T0 + 3, POLICY)
    assert verdict.reason is not None
    assert verdict.reason.code == reasons.ADAPTER_STOPPED
    board.handle(record).fatal("qq_banned", "banned", retryable=False)
    assert judge(record, T0 + 3, POLICY).health is Health.FATAL


def test_a_hold_outlives_a_restart_and_is_not_the_adapters_to_lift(setup):
    clock, board, record = setup
    held_at(clock, board, record, T0 + 2)
    handle = board.begin_attempt(record, restart=True)
    handle.declare(DeclaredState.RECONNECTING)
    assert judge(record, T0 + 500, POLICY).reason == FULL
    assert not hasattr(handle, "release")
    board.release("no-such-platform")  # a platform removed meanwhile: nothing to do
    assert record.held == FULL
