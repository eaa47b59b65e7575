"""The watchdog job's persistence and status line, with an injected clock (no I/O)."""

from __future__ import annotations

from typing import Any, cast

from watchdog.clock import FakeClock
from watchdog.engine import WatchdogEngine
from watchdog.heartbeat import HeartbeatBoard, PlatformHandle, PlatformPolicy, TaskExit
from watchdog.job import WatchdogJob
from watchdog.notify import Notifier
from watchdog.states import DeclaredState
from watchdog.supervisor import Supervisor
from watchdog.tasks import TaskRegistry
from watchdog.writer import StoreWriter


def make_job(clock: FakeClock, persist_every: float = 5.0) -> WatchdogJob:
    board = HeartbeatBoard(clock.monotonic)
    engine = WatchdogEngine(board)
    return WatchdogJob(
        engine,
        Supervisor(board, engine, TaskRegistry()),
        Notifier(None),
        StoreWriter(cast(Any, None), "instance-1"),  # never started: batches are only built here
        clock=clock,
        tick_interval=1.0,
        heartbeat_persist_interval=persist_every,
        on_escalate=lambda esc: None,
    )


def add(job: WatchdogJob, name: str, **kw: Any) -> PlatformHandle:
    record = job.board.register(
        name, "test", required=kw.pop("required", True), policy=PlatformPolicy(**kw)
    )
    handle = job.board.begin_attempt(record, restart=False)
    handle.declare(DeclaredState.CONNECTED)
    return handle


def test_heartbeats_reach_the_store_at_a_bounded_rate_not_once_per_beat():
    clock = FakeClock(start=0.0)
    job = make_job(clock, persist_every=5.0)
    handle = add(job, "bot")
    written_at = []
    for _ in range(13):
        for _beat in range(8):  # eight beats per second (exact in binary floating point)
            clock.advance(0.125)
            handle.beat()
        out = job.engine.evaluate(clock.monotonic())
        batch = job.batch(clock.monotonic(), out.transitions, pinging=True, status="s")
        if "bot" in batch.rows:
            written_at.append(round(clock.monotonic()))
    # First tick: the new row. Then one heartbeat write per 5 s, whatever the beat rate.
    assert written_at == [1, 6, 11]


def test_a_state_change_is_written_at_the_next_tick_without_waiting_for_the_heartbeat_interval():
    clock = FakeClock(start=0.0)
    job = make_job(clock, persist_every=60.0)
    handle = add(job, "bot")
    handle.beat()
    job.batch(0.0, job.engine.evaluate(0.0).transitions, pinging=True, status="s")
    clock.advance(1)
    handle.declare(DeclaredState.RECONNECTING)
    out = job.engine.evaluate(clock.monotonic())
    batch = job.batch(clock.monotonic(), out.transitions, pinging=True, status="s")
    assert batch.rows["bot"]["declared_state"] == "reconnecting"
    assert [
        (t["from_state"], t["to_state"], t["from_health"], t["to_health"])
        for t in batch.transitions
    ] == [
        ("connected", "reconnecting", "ok", "ok"),  # the declaration, at its own time
        ("reconnecting", "reconnecting", "ok", "degraded"),  # the verdict, at the tick
    ]
    assert batch.instance["pinging"] is True
    # Wall times are derived from the monotonic times of the events.
    assert batch.rows["bot"]["declared_since"] == clock.wall()


def test_the_status_line_names_the_worst_platforms_first_and_counts_the_rest():
    clock = FakeClock(start=0.0)
    job = make_job(clock)
    for name in ("a", "b"):
        add(job, name).beat()
    for name in ("c", "d", "e"):
        add(job, name, reconnect_timeout=100).declare(DeclaredState.RECONNECTING)
    add(job, "z", required=False)
    job.board.note_exit(job.board["z"], job.board["z"].generation, TaskExit(False, "returned"))
    out = job.engine.evaluate(clock.monotonic())
    line = job.status_line(out)
    assert (
        line
        == "2/6 platforms ok; z failing: adapter_exited; c degraded: reconnecting; d degraded: reconnecting; +1 more"
    )
