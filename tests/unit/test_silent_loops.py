"""Loops that never prove life: the zombie server, at production settings, on a fake clock.

A zombie server accepts every Identify and Resume and then never acknowledges a
heartbeat and sends nothing. The adapter closes each connection as a zombie one
Hello interval after an unacknowledged heartbeat and connects again, declaring
``connected`` each time. The state must never say ``ok`` once the last proof of
life is older than the TTL, and the loop must end in an escalation within the
documented bound (:func:`watchdog.rules.escalation_bound`) even when each round of
connections outlasts the restart window.

The adapter's declarations are scripted here with the default settings and the
platform's real Hello interval (41.25 s); the engine, the board and the restart
budget are the real ones. No I/O, no sleeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from hermes.adapters.qqbot.adapter import QQBotSettings
from watchdog import reasons
from watchdog.clock import FakeClock
from watchdog.engine import EXIT_ESCALATE, WatchdogEngine
from watchdog.heartbeat import HeartbeatBoard, PlatformHandle, PlatformRecord
from watchdog.rules import escalation_bound
from watchdog.settings import SupervisionSettings, WatchdogSettings
from watchdog.states import DeclaredState, Health

HELLO = 41.25  # the QQ gateway's Hello interval in production
DEFAULTS = SupervisionSettings().policy()
TICK = WatchdogSettings().tick_interval
CLOSE_TIMEOUT = WatchdogSettings().close_timeout
TTL = HELLO * QQBotSettings.model_fields["heartbeat_ttl_factor"].default
RECONNECT_BACKOFF = QQBotSettings.model_fields["reconnect_backoff"].default
HANDSHAKE = 0.2  # Hello, Identify, READY


@dataclass
class ZombieAdapter:
    """What the QQ adapter declares against a zombie server, as a function of time.

    Each connection: declared ``connected`` after the handshake, the first heartbeat
    one interval later, no ACK by the next one: closed as a zombie, ``reconnecting``
    for the backoff, and round again. ``ack_until`` lets the server answer for a
    while before it turns zombie.
    """

    handle: PlatformHandle
    started: float
    ack_until: float = -math.inf
    events: list[tuple[float, str]] = field(default_factory=list)

    def script(self) -> list[tuple[float, str]]:
        """(time, what) pairs for this attempt, far enough ahead for any test."""
        out: list[tuple[float, str]] = []
        t = self.started
        while t < self.started + 4000:
            t += HANDSHAKE
            out.append((t, "connected"))
            beat = t + HELLO
            while beat <= self.ack_until:
                out.append((beat, "beat"))
                beat += HELLO
            out.append((beat + HELLO, "reconnecting"))
            t = beat + HELLO + RECONNECT_BACKOFF
        return out


@dataclass
class Run:
    fatal_at: float | None = None
    ok_ticks: list[tuple[float, float]] = field(default_factory=list)
    """(tick time, silence at that tick) for every tick that judged the platform ok."""
    restarts: int = 0
    reason: str | None = None


def simulate(*, ack_until: float = -math.inf, horizon: float = 6000.0) -> tuple[Run, float]:
    clock = FakeClock(start=0.0)
    board = HeartbeatBoard(clock.monotonic)
    engine = WatchdogEngine(board)
    record = board.register("qq", "qqbot", required=True, policy=DEFAULTS)
    run = Run()

    def attempt(restart: bool) -> list[tuple[float, str]]:
        handle = board.begin_attempt(record, restart=restart)
        handle.set_heartbeat_ttl(TTL)
        return ZombieAdapter(handle, clock.monotonic(), ack_until).script()

    def act(what: str, handle_record: PlatformRecord) -> None:
        handle = board.handle(handle_record)
        if what == "beat":
            handle.beat()
        else:
            handle.declare(DeclaredState(what))

    script = attempt(False)
    next_tick = TICK
    while clock.monotonic() < horizon:
        # The next thing to happen: a scripted adapter event, a due restart or a tick.
        due = [next_tick]
        if script:
            due.append(script[0][0])
        if record.restart_at is not None:
            due.append(record.restart_at)
        at = min(due)
        clock.advance(at - clock.monotonic())
        if record.restart_at is not None and at == record.restart_at:
            # What the supervisor does: the old instance is gone, a new one starts.
            script = attempt(True)
            run.restarts += 1
            continue
        if script and at == script[0][0]:
            _, what = script.pop(0)
            if record.restart_at is None and record.health is not Health.FATAL:
                act(what, record)
            continue
        out = engine.evaluate(at)
        next_tick = at + TICK
        if record.health is Health.OK:
            assert record.last_beat is not None
            run.ok_ticks.append((at, at - record.last_beat))
        if out.escalation is not None:
            run.fatal_at = at
            run.reason = record.reason.code if record.reason else None
            assert out.escalation.exit_code == EXIT_ESCALATE
            assert not out.ping
            break
    return run, record.last_beat if record.last_beat is not None else 0.0


def test_the_bound_is_a_formula_of_the_settings():
    bound = escalation_bound(DEFAULTS, ttl=TTL, tick_interval=TICK, close_timeout=CLOSE_TIMEOUT)
    per_attempt = max(TTL, DEFAULTS.start_timeout, DEFAULTS.reconnect_timeout) + TICK
    pauses = 15 + 15 + 15 + 15 + 16  # max(backoff 1, 2, 4, 8, 16 s; 3 x close_timeout)
    assert bound == pytest.approx(6 * per_attempt + pauses)
    assert bound == pytest.approx(1888.0)


def test_a_zombie_server_at_production_settings_escalates_within_the_bound():
    run, _last = simulate()
    bound = escalation_bound(DEFAULTS, ttl=TTL, tick_interval=TICK, close_timeout=CLOSE_TIMEOUT)
    assert run.fatal_at is not None, "the zombie loop never escalated"
    assert run.fatal_at <= bound
    assert run.reason == reasons.HEARTBEAT_TIMEOUT
    assert run.restarts == DEFAULTS.restart.max_restarts
    # Each zombie round (about 2 Hello intervals) outlasts window / max_restarts: the
    # restart window alone would never have been spent.
    assert (
        run.fatal_at / (run.restarts + 1) > DEFAULTS.restart.window / DEFAULTS.restart.max_restarts
    )
    # Without any proof of life, the state never said ok.
    assert run.ok_ticks == []


def test_after_the_last_ack_the_state_is_not_ok_beyond_the_ttl():
    run, last_beat = simulate(ack_until=500.0)
    assert run.ok_ticks, "the platform should have been ok while the server acknowledged"
    assert last_beat <= 500.0
    # ok only while the last proof of life is at most one TTL old...
    assert max(silence for _, silence in run.ok_ticks) <= TTL
    assert max(at for at, _ in run.ok_ticks) <= last_beat + TTL + TICK
    # ...and the zombie phase escalates within the bound, measured from the last proof.
    bound = escalation_bound(DEFAULTS, ttl=TTL, tick_interval=TICK, close_timeout=CLOSE_TIMEOUT)
    assert run.fatal_at is not None
    assert run.fatal_at - last_beat <= bound
