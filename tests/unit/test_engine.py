"""The watchdog's tick decisions with an injected clock: detection latency, restarts, escalation.

Ticks run every TICK seconds on a fake clock; faults are injected between ticks.
A condition that becomes true at time c must be reported by the first tick at or
after c, so the detection delay is at most one tick.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from watchdog import reasons
from watchdog.clock import FakeClock
from watchdog.engine import EXIT_ESCALATE, EXIT_NOT_RETRYABLE, TickOutcome, WatchdogEngine
from watchdog.heartbeat import (
    HeartbeatBoard,
    PlatformHandle,
    PlatformPolicy,
    PlatformRecord,
    TaskExit,
)
from watchdog.restart import RestartPolicy
from watchdog.states import DeclaredState, Health

TICK = 1.0
POLICY = PlatformPolicy(
    heartbeat_ttl=5.0,
    start_timeout=8.0,
    reconnect_timeout=10.0,
    restart=RestartPolicy(max_restarts=2, window=100, backoff_initial=1, backoff_max=30),
)


@dataclass
class Rig:
    clock: FakeClock
    board: HeartbeatBoard
    engine: WatchdogEngine
    outcomes: list[TickOutcome]

    def add(
        self, name: str = "p", *, required: bool = True, policy: PlatformPolicy = POLICY
    ) -> tuple[PlatformRecord, PlatformHandle]:
        record = self.board.register(name, "test", required=required, policy=policy)
        return record, self.board.begin_attempt(record, restart=False)

    def tick(self) -> TickOutcome:
        out = self.engine.evaluate(self.clock.monotonic())
        self.outcomes.append(out)
        return out

    def run_until(self, t: float, *, each: Callable[[], None] | None = None) -> None:
        """Tick at every multiple of TICK up to ``t``, calling ``each`` (the adapter's behaviour) before each."""
        while True:
            now = self.clock.monotonic()
            next_tick = (math.floor(now / TICK + 1e-9) + 1) * TICK
            if next_tick > t + 1e-9:
                return
            self.clock.advance(next_tick - now)
            if each:
                each()
            self.tick()

    def first_failure(self, name: str) -> tuple[float, str]:
        for out in self.outcomes:
            for tr in out.transitions:
                if (
                    tr.platform == name
                    and tr.to_health in (Health.FAILING, Health.FATAL)
                    and tr.from_health != tr.to_health
                ):
                    assert tr.reason is not None
                    return out.now, tr.reason.code
        raise AssertionError("no failure detected")


@pytest.fixture
def rig() -> Rig:
    clock = FakeClock(start=0.0)
    board = HeartbeatBoard(clock.monotonic)
    return Rig(clock, board, WatchdogEngine(board), [])


def connected(rig: Rig, handle: PlatformHandle) -> None:
    handle.declare(DeclaredState.CONNECTED)
    handle.beat()


# -- detection latency per failure mode


FAULT_AT = 3.3  # between two ticks


def inject_fatal_retryable(rig, record, handle):
    handle.fatal("test_broken", "broke", retryable=True)
    return FAULT_AT, "test_broken"


def inject_fatal_final(rig, record, handle):
    handle.fatal("test_banned", "banned", retryable=False)
    return FAULT_AT, "test_banned"


def inject_return(rig, record, handle):
    rig.board.note_exit(record, record.generation, TaskExit(False, "returned"))
    return FAULT_AT, reasons.ADAPTER_EXITED


def inject_crash(rig, record, handle):
    rig.board.note_exit(record, record.generation, TaskExit(True, "OSError: boom"))
    return FAULT_AT, reasons.ADAPTER_CRASHED


def inject_stop_beating(rig, record, handle):
    # The last beat is at FAULT_AT; the condition becomes true once the TTL has passed.
    handle.beat()
    return FAULT_AT + POLICY.heartbeat_ttl, reasons.HEARTBEAT_TIMEOUT


def inject_reconnect_forever(rig, record, handle):
    handle.declare(DeclaredState.RECONNECTING)
    return FAULT_AT + POLICY.reconnect_timeout, reasons.RECONNECT_STALLED


def inject_declared_stopped(rig, record, handle):
    handle.declare(DeclaredState.STOPPED)
    return FAULT_AT, reasons.ADAPTER_STOPPED


@pytest.mark.parametrize(
    "inject",
    [
        inject_fatal_retryable,
        inject_fatal_final,
        inject_return,
        inject_crash,
        inject_stop_beating,
        inject_reconnect_forever,
        inject_declared_stopped,
    ],
)
def test_each_failure_mode_is_reported_within_one_tick_of_becoming_true(rig, inject):
    record, handle = rig.add()
    connected(rig, handle)
    rig.run_until(3.0, each=handle.beat)
    rig.clock.advance(FAULT_AT - 3.0)
    true_at, code = inject(rig, record, handle)
    rig.run_until(40.0)
    detected_at, detected_code = rig.first_failure("p")
    assert detected_code == code
    assert true_at <= detected_at <= true_at + TICK


def test_start_timeout_is_reported_within_one_tick_of_the_allowance(rig):
    rig.add()
    rig.run_until(30.0)
    detected_at, code = rig.first_failure("p")
    assert code == reasons.START_TIMEOUT
    assert POLICY.start_timeout < detected_at <= POLICY.start_timeout + TICK


def test_connected_without_a_single_beat_goes_by_ttl(rig):
    _record, handle = rig.add()
    handle.declare(DeclaredState.CONNECTED)  # and never beats
    rig.run_until(30.0)
    detected_at, code = rig.first_failure("p")
    assert code == reasons.HEARTBEAT_TIMEOUT
    assert POLICY.heartbeat_ttl < detected_at <= POLICY.heartbeat_ttl + TICK


def test_a_healthy_platform_is_never_flagged(rig):
    record, handle = rig.add()
    connected(rig, handle)
    rig.run_until(100.0, each=handle.beat)
    assert record.health is Health.OK
    assert all(o.ping for o in rig.outcomes)
    assert not any(o.restarts or o.stops for o in rig.outcomes)


# -- restarts and the budget


def restart(rig: Rig, record: PlatformRecord) -> PlatformHandle:
    """What the supervisor does when a restart is due."""
    assert record.restart_at is not None
    rig.clock.advance(max(0.0, record.restart_at - rig.clock.monotonic()))
    return rig.board.begin_attempt(record, restart=True)


def test_a_retryable_failure_orders_one_restart_with_backoff_and_retires_the_instance(rig):
    record, handle = rig.add()
    connected(rig, handle)
    rig.run_until(2.0, each=handle.beat)
    rig.board.note_exit(record, record.generation, TaskExit(False, "returned"))
    out = rig.tick()
    assert [(o.platform, o.delay) for o in out.restarts] == [("p", 1.0)]
    assert record.health is Health.FAILING
    assert not handle.current
    assert out.ping  # within budget: handled in-process, systemd need not act
    # The fault stays visible until the restart, but is not acted on twice.
    rig.clock.advance(0.9)
    again = rig.tick()
    assert (again.restarts, again.transitions, record.health) == ([], [], Health.FAILING)


def test_restarting_platform_keeps_its_failure_reason_until_it_is_ok_again(rig):
    record, handle = rig.add()
    connected(rig, handle)
    rig.board.note_exit(record, record.generation, TaskExit(False, "returned"))
    rig.run_until(1.0)
    handle = restart(rig, record)
    rig.tick()
    assert record.health is Health.DEGRADED
    assert record.reason is not None
    assert record.reason.code == reasons.ADAPTER_EXITED
    connected(rig, handle)
    rig.tick()
    assert (record.health, record.reason) == (Health.OK, None)


def test_spent_budget_makes_the_platform_fatal_and_escalates_with_75(rig):
    record, handle = rig.add()
    delays = []
    for _ in range(POLICY.restart.max_restarts):
        connected(rig, handle)
        rig.board.note_exit(record, record.generation, TaskExit(True, "OSError: boom"))
        out = rig.tick()
        delays += [o.delay for o in out.restarts]
        handle = restart(rig, record)
    assert delays == [1.0, 2.0]
    connected(rig, handle)
    rig.board.note_exit(record, record.generation, TaskExit(True, "OSError: boom"))
    out = rig.tick()
    assert record.health is Health.FATAL
    assert record.reason is not None
    assert record.reason.code == reasons.ADAPTER_CRASHED
    assert "restart budget spent (2 restarts in 100 s)" in record.reason.message
    assert out.stops == ["p"]
    assert out.escalation is not None
    assert out.escalation.exit_code == EXIT_ESCALATE
    assert out.escalation.platforms == ("p",)
    assert not out.ping
    later = rig.tick()
    assert later.escalation is None  # escalated once
    assert not later.ping  # and never pings again


def test_non_retryable_fatal_is_final_at_once_and_exits_78(rig):
    record, handle = rig.add()
    connected(rig, handle)
    handle.fatal("test_invalid_token", "token refused", retryable=False)
    out = rig.tick()
    assert record.health is Health.FATAL
    assert out.restarts == []
    assert out.escalation is not None
    assert out.escalation.exit_code == EXIT_NOT_RETRYABLE


def test_a_non_retryable_cause_anywhere_decides_the_exit_code(rig):
    a, _ha = rig.add("a", policy=PlatformPolicy(restart=RestartPolicy(max_restarts=0)))
    _b, hb = rig.add("b")
    rig.board.note_exit(a, a.generation, TaskExit(False, "returned"))
    hb.fatal("test_banned", "banned")
    out = rig.tick()
    assert out.escalation is not None
    assert out.escalation.platforms == ("a", "b")
    assert out.escalation.exit_code == EXIT_NOT_RETRYABLE
    assert out.escalation.reason.code == "test_banned"


def test_a_fatal_optional_platform_is_recorded_but_does_not_escalate(rig):
    record, _handle = rig.add(
        "extra", required=False, policy=PlatformPolicy(restart=RestartPolicy(max_restarts=0))
    )
    _main, main_handle = rig.add("main")
    connected(rig, main_handle)
    rig.board.note_exit(record, record.generation, TaskExit(False, "returned"))
    out = rig.tick()
    assert record.health is Health.FATAL
    assert out.stops == ["extra"]
    assert out.escalation is None
    assert out.ping


def test_transitions_carry_states_health_and_reason(rig):
    record, handle = rig.add()
    rig.clock.advance(0.5)
    connected(rig, handle)
    out = rig.tick()
    assert [
        (t.from_state, t.to_state, t.from_health, t.to_health, t.at) for t in out.transitions
    ] == [
        (DeclaredState.STARTING, DeclaredState.CONNECTED, Health.DEGRADED, Health.DEGRADED, 0.5),
        (DeclaredState.CONNECTED, DeclaredState.CONNECTED, Health.DEGRADED, Health.OK, 0.5),
    ]
    rig.clock.advance(TICK)
    rig.board.note_exit(record, record.generation, TaskExit(False, "returned"))
    (failed,) = rig.tick().transitions
    assert (failed.from_health, failed.to_health) == (Health.OK, Health.FAILING)
    assert failed.reason is not None
    assert failed.reason.code == reasons.ADAPTER_EXITED


def test_changing_a_platforms_restart_policy_gives_it_a_fresh_budget(rig):
    record, _handle = rig.add(policy=PlatformPolicy(restart=RestartPolicy(max_restarts=1)))
    rig.board.note_exit(record, record.generation, TaskExit(False, "returned"))
    rig.tick()
    restart(rig, record)
    assert rig.engine.budget(record).used(rig.clock.monotonic()) == 1
    record.policy = PlatformPolicy(restart=RestartPolicy(max_restarts=3))
    assert rig.engine.budget(record).used(rig.clock.monotonic()) == 0


@pytest.mark.parametrize("phase", [0.0, 0.001, 0.25, 0.5, 0.999])
def test_detection_bound_holds_wherever_in_the_tick_the_fault_falls(rig, phase):
    record, handle = rig.add()
    connected(rig, handle)
    rig.run_until(5.0, each=handle.beat)
    rig.clock.advance(phase)
    fault = rig.clock.monotonic()
    rig.board.note_exit(record, record.generation, TaskExit(False, "returned"))
    rig.run_until(12.0)
    detected, code = rig.first_failure("p")
    assert code == reasons.ADAPTER_EXITED
    assert detected == 6.0
    assert fault <= detected <= fault + TICK
