"""The heartbeat board and the adapters' handle."""

from __future__ import annotations

import pytest

from watchdog.heartbeat import HeartbeatBoard, PlatformPolicy, Reason
from watchdog.states import DeclaredState


class Clock:
    now = 50.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[Clock, HeartbeatBoard]:
    clock = Clock()
    return clock, HeartbeatBoard(clock)


def test_beat_records_the_monotonic_time_of_the_call():
    clock, board = make()
    record = board.register("p", "k", required=True, policy=PlatformPolicy())
    handle = board.handle(record)
    clock.now = 51.25
    handle.beat()
    assert record.last_beat == 51.25


def test_a_retired_handle_can_no_longer_beat_declare_or_report():
    clock, board = make()
    record = board.register("p", "k", required=True, policy=PlatformPolicy(heartbeat_ttl=5))
    old = board.handle(record)
    old.declare(DeclaredState.CONNECTED)
    board.retire(record)
    clock.now = 60
    old.beat()
    old.declare(DeclaredState.STOPPED)
    old.fatal("x_gone", "late")
    old.set_heartbeat_ttl(99)
    assert not old.current
    assert record.last_beat is None
    assert record.declared is DeclaredState.CONNECTED
    assert record.fatal_error is None
    assert record.ttl == 5


def test_begin_attempt_resets_the_record_and_counts_restarts():
    _clock, board = make()
    record = board.register("p", "k", required=True, policy=PlatformPolicy(heartbeat_ttl=5))
    first = board.begin_attempt(record, restart=False)
    first.declare(DeclaredState.CONNECTED)
    first.beat()
    first.set_heartbeat_ttl(40)
    first.fatal("p_broken", "x", retryable=True)
    _clock.now = 51.0
    second = board.begin_attempt(record, restart=True)
    assert second.attempt == 1
    assert record.declared is DeclaredState.STARTING
    assert (record.fatal_error, record.exit, record.ttl) == (None, None, 5)
    # The last proof of life survives the restart (a restart proves nothing), but the new
    # attempt has not shown any yet.
    assert record.last_beat == 50.0
    assert not record.proven
    assert not first.current


def test_the_first_fatal_report_of_a_generation_wins():
    _, board = make()
    record = board.register("p", "k", required=True, policy=PlatformPolicy())
    handle = board.handle(record)
    handle.fatal("qq_invalid_token", "token refused")
    handle.fatal("qq_other", "later noise", retryable=True)
    assert record.fatal_error == Reason("qq_invalid_token", "token refused", False)
    assert record.declared is DeclaredState.FATAL


def test_fatal_cannot_be_declared_without_a_reason():
    _, board = make()
    handle = board.handle(board.register("p", "k", required=True, policy=PlatformPolicy()))
    with pytest.raises(ValueError, match=r"handle\.fatal"):
        handle.declare(DeclaredState.FATAL)


@pytest.mark.parametrize("code", ["", "Bad-Code", "with space", "x" * 65, "1starts_with_digit"])
def test_reason_codes_must_be_snake_case(code):
    _, board = make()
    handle = board.handle(board.register("p", "k", required=True, policy=PlatformPolicy()))
    with pytest.raises(ValueError, match="snake_case"):
        handle.fatal(code, "m")


def test_fatal_messages_are_one_clipped_line():
    _, board = make()
    record = board.register("p", "k", required=True, policy=PlatformPolicy())
    board.handle(record).fatal("p_x", "line one\nline two " + "y" * 1000)
    assert record.fatal_error is not None
    assert "\n" not in record.fatal_error.message
    assert len(record.fatal_error.message) == 500


def test_declarations_are_queued_for_the_history_with_their_time():
    clock, board = make()
    record = board.register("p", "k", required=True, policy=PlatformPolicy())
    handle = board.handle(record)
    clock.now = 52
    handle.declare(DeclaredState.CONNECTED)
    handle.declare(DeclaredState.CONNECTED)  # no change, no history
    clock.now = 53
    handle.declare(DeclaredState.RECONNECTING)
    changes = board.drain_changes()
    assert [(c.at, c.old, c.new) for c in changes] == [
        (52, DeclaredState.STARTING, DeclaredState.CONNECTED),
        (53, DeclaredState.CONNECTED, DeclaredState.RECONNECTING),
    ]
    assert board.drain_changes() == []


def test_ttl_must_be_positive():
    _, board = make()
    handle = board.handle(board.register("p", "k", required=True, policy=PlatformPolicy()))
    with pytest.raises(ValueError, match="> 0"):
        handle.set_heartbeat_ttl(0)
