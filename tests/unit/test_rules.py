"""The verdict rules, with the clock passed in: no I/O, no sleeps."""

from __future__ import annotations

import pytest

from watchdog import reasons
from watchdog.heartbeat import HeartbeatBoard, PlatformPolicy, PlatformRecord, Reason, TaskExit
from watchdog.rules import judge
from watchdog.states import DeclaredState, Health

POLICY = PlatformPolicy(heartbeat_ttl=10.0, start_timeout=20.0, reconnect_timeout=30.0)
T0 = 1000.0


class Clock:
    now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup() -> tuple[Clock, HeartbeatBoard, PlatformRecord]:
    clock = Clock()
    board = HeartbeatBoard(clock)
    record = board.register("p", "test", required=True, policy=POLICY)
    return clock, board, record


def connect(clock: Clock, board: HeartbeatBoard, record: PlatformRecord, at: float) -> None:
    clock.now = at
    board.set_declared(record, DeclaredState.CONNECTED)


def test_starting_within_allowance_is_degraded_without_reason(setup):
    _, _, record = setup
    assert judge(record, T0 + 20.0, POLICY).health is Health.DEGRADED
    assert judge(record, T0 + 20.0, POLICY).reason is None


def test_starting_past_allowance_is_start_timeout(setup):
    _, _, record = setup
    verdict = judge(record, T0 + 20.001, POLICY)
    assert verdict.health is Health.FAILING
    assert verdict.reason is not None
    assert verdict.reason.code == reasons.START_TIMEOUT
    assert verdict.reason.retryable


def test_connected_with_fresh_beat_is_ok(setup):
    clock, board, record = setup
    connect(clock, board, record, T0)
    record.last_beat = T0 + 5
    assert judge(record, T0 + 15.0, POLICY).health is Health.OK


def test_heartbeat_older_than_ttl_while_connected_is_heartbeat_timeout(setup):
    clock, board, record = setup
    connect(clock, board, record, T0)
    record.last_beat = T0 + 5
    verdict = judge(record, T0 + 15.01, POLICY)
    assert verdict.health is Health.FAILING
    assert verdict.reason is not None
    assert verdict.reason.code == reasons.HEARTBEAT_TIMEOUT
    assert "TTL 10 s" in verdict.reason.message


def test_connected_but_never_beating_times_out_one_ttl_after_the_attempt_started(setup):
    clock, board, record = setup
    connect(clock, board, record, T0 + 3)
    # Connected, but nothing has proved it alive yet: not ok, only inside the grace.
    assert judge(record, T0 + 10.0, POLICY).health is Health.DEGRADED
    verdict = judge(record, T0 + 10.01, POLICY)
    assert verdict.reason is not None
    assert verdict.reason.code == reasons.HEARTBEAT_TIMEOUT


def test_connected_is_ok_only_with_a_beat_inside_the_ttl(setup):
    clock, board, record = setup
    connect(clock, board, record, T0 + 1)
    assert judge(record, T0 + 2, POLICY).health is Health.DEGRADED
    record.last_beat = T0 + 2
    assert judge(record, T0 + 2, POLICY).health is Health.OK
    assert judge(record, T0 + 12, POLICY).health is Health.OK
    assert judge(record, T0 + 12.01, POLICY).health is Health.FAILING


def test_a_reconnect_buys_no_fresh_grace(setup):
    """A server that accepts every session and then never acknowledges: each new
    ``connected`` used to restart the TTL, so the state said ok between zombie connections."""
    clock, board, record = setup
    record.last_beat = T0 + 1
    for at in (T0 + 4, T0 + 7, T0 + 10):
        clock.now = at
        board.set_declared(record, DeclaredState.RECONNECTING)
        connect(clock, board, record, at + 0.5)
    assert judge(record, T0 + 11, POLICY).health is Health.OK
    verdict = judge(record, T0 + 11.01, POLICY)
    assert verdict.health is Health.FAILING
    assert verdict.reason is not None
    assert verdict.reason.code == reasons.HEARTBEAT_TIMEOUT


def test_reconnecting_is_measured_from_the_last_proof_of_life_not_the_last_declaration(setup):
    clock, board, record = setup
    record.last_beat = T0 + 1
    # Flapping between connected and reconnecting never resets the allowance.
    for at in range(2, 31, 2):
        connect(clock, board, record, T0 + at)
        clock.now = T0 + at + 1
        board.set_declared(record, DeclaredState.RECONNECTING)
    assert judge(record, T0 + 31, POLICY).health is Health.DEGRADED
    verdict = judge(record, T0 + 31.01, POLICY)
    assert verdict.reason is not None
    assert verdict.reason.code == reasons.RECONNECT_STALLED
    assert "no proof of life for 30.0 s" in verdict.reason.message


def test_a_new_attempt_gets_one_grace_period(setup):
    clock, board, record = setup
    record.last_beat = T0 + 1
    clock.now = T0 + 100
    board.begin_attempt(record, restart=True)
    connect(clock, board, record, T0 + 101)
    # The old beat is no proof for this attempt, and the grace runs from the attempt's start.
    assert judge(record, T0 + 110, POLICY).health is Health.DEGRADED
    assert judge(record, T0 + 110.01, POLICY).health is Health.FAILING


def test_adapter_set_ttl_is_what_counts(setup):
    clock, board, record = setup
    connect(clock, board, record, T0)
    board.handle(record).set_heartbeat_ttl(60)
    assert judge(record, T0 + 59, POLICY).health is Health.DEGRADED
    assert judge(record, T0 + 60.01, POLICY).health is Health.FAILING
    record.last_beat = T0 + 59
    assert judge(record, T0 + 119, POLICY).health is Health.OK


def test_reconnecting_within_allowance_is_degraded(setup):
    _clock, board, record = setup
    board.set_declared(record, DeclaredState.RECONNECTING)
    assert judge(record, T0 + 30, POLICY).health is Health.DEGRADED


def test_reconnecting_past_allowance_is_reconnect_stalled(setup):
    clock, board, record = setup
    clock.now = T0 + 7
    board.set_declared(record, DeclaredState.RECONNECTING)
    verdict = judge(record, T0 + 37.001, POLICY)
    assert verdict.health is Health.FAILING
    assert verdict.reason is not None
    assert verdict.reason.code == reasons.RECONNECT_STALLED


def test_task_returned_while_connected_is_adapter_exited(setup):
    clock, board, record = setup
    connect(clock, board, record, T0)
    record.last_beat = T0
    board.note_exit(record, record.generation, TaskExit(False, "returned"))
    verdict = judge(record, T0 + 0.001, POLICY)
    assert verdict.health is Health.FAILING
    assert verdict.reason is not None
    assert verdict.reason.code == reasons.ADAPTER_EXITED
    assert "connected" in verdict.reason.message


def test_task_returned_after_declaring_stopped_unasked_is_still_adapter_exited(setup):
    _clock, board, record = setup
    board.set_declared(record, DeclaredState.STOPPED)
    board.note_exit(record, record.generation, TaskExit(False, "returned"))
    verdict = judge(record, T0, POLICY)
    assert verdict.reason is not None
    assert verdict.reason.code == reasons.ADAPTER_EXITED


def test_stopped_declared_without_a_stop_request_is_adapter_stopped(setup):
    _, board, record = setup
    board.set_declared(record, DeclaredState.STOPPED)
    verdict = judge(record, T0, POLICY)
    assert verdict.reason is not None
    assert verdict.reason.code == reasons.ADAPTER_STOPPED


def test_task_raised_is_adapter_crashed_with_the_exception_summary(setup):
    _, board, record = setup
    board.note_exit(record, record.generation, TaskExit(True, "ValueError: bad frame"))
    verdict = judge(record, T0, POLICY)
    assert verdict.health is Health.FAILING
    assert verdict.reason == Reason(reasons.ADAPTER_CRASHED, "ValueError: bad frame", True)


@pytest.mark.parametrize(("retryable", "health"), [(True, Health.FAILING), (False, Health.FATAL)])
def test_explicit_fatal_wins_over_everything(setup, retryable, health):
    clock, board, record = setup
    connect(clock, board, record, T0)
    board.handle(record).fatal("qq_banned", "banned", retryable=retryable)
    board.note_exit(record, record.generation, TaskExit(False, "returned"))
    verdict = judge(record, T0 + 999, POLICY)
    assert verdict.health is health
    assert verdict.reason == Reason("qq_banned", "banned", retryable)


def test_a_requested_stop_is_not_a_failure(setup):
    _, board, record = setup
    record.stop_requested = True
    board.note_exit(record, record.generation, TaskExit(False, "returned"))
    assert judge(record, T0 + 999, POLICY).health is record.health
