"""The store writer: the tick never waits for the database, and nothing queued is lost."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.timing import t
from watchdog.exceptions import StoreError
from watchdog.store import Batch, StateStore
from watchdog.writer import StoreWriter

T0 = datetime(2026, 11, 21, tzinfo=UTC)


class FlakyStore:
    """Wraps a real store; writes fail while ``failing`` is set, block while ``gate`` is closed."""

    def __init__(self, real: StateStore) -> None:
        self.real = real
        self.failing = False
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.attempts = 0

    def write(self, batch: Batch, instance_id: str) -> None:
        self.attempts += 1
        self.entered.set()
        self.gate.wait()
        if self.failing:
            raise StoreError("database is locked (simulated)")
        self.real.write(batch, instance_id)


def transition(i: int) -> dict[str, Any]:
    return {
        "at": T0 + timedelta(seconds=i),
        "instance_id": "i-1",
        "platform": "p",
        "from_state": "connected",
        "to_state": "reconnecting",
        "from_health": "ok",
        "to_health": "ok",
        "reason_code": None,
        "reason_message": f"#{i}",
    }


@pytest.fixture
def real(store_url):
    store = StateStore(store_url)
    store.migrate()
    store.begin_instance(
        {
            "id": "i-1",
            "host": "h",
            "pid": 1,
            "version": "t",
            "started_at": T0,
            "tick_interval": 1.0,
            "pinging": True,
            "store_failures": 0,
        }
    )
    yield store
    store.close()


def test_transitions_queued_while_the_database_fails_are_all_written_in_order_later(real):
    flaky = FlakyStore(real)
    writer = StoreWriter(flaky, "i-1", retry_initial=0.01, retry_max=0.05)  # type: ignore[arg-type]
    writer.start()
    try:
        flaky.failing = True
        for i in range(50):
            writer.submit(Batch(transitions=[transition(i)]))
        assert wait_until(lambda: writer.status().state == "failing")
        status = writer.status()
        assert "database is locked" in (status.last_error or "")
        assert "store failing" in status.describe(now=status.since or 0)
        flaky.failing = False
        assert writer.flush(t(10))
        assert writer.status().state == "ok"
    finally:
        writer.stop(t(5))
    rows = real.transitions(limit=None)
    assert [r["reason_message"] for r in rows] == [f"#{i}" for i in range(50)]
    inst = real.latest_instance()
    assert inst is not None
    assert inst["store_failures"] >= 1
    assert "database is locked" in inst["store_last_error"]


def test_submit_returns_at_once_while_a_write_is_stuck(real):
    flaky = FlakyStore(real)
    flaky.gate.clear()
    writer = StoreWriter(flaky, "i-1", slow_after=0.0)  # type: ignore[arg-type]
    writer.start()
    try:
        writer.submit(Batch(transitions=[transition(0)]))
        assert flaky.entered.wait(t(5))
        # The writer thread is now blocked inside the database call. If submit() waited for it,
        # this loop would never finish: the gate only opens after it.
        for i in range(1, 1000):
            writer.submit(Batch(transitions=[transition(i)]))
        assert writer.status().state == "slow"
        assert writer.status().pending_transitions == 999
    finally:
        flaky.gate.set()
        assert writer.stop(t(10))
    assert len(real.transitions(limit=None)) == 1000


def test_queued_transitions_are_bounded_and_drops_are_counted(real):
    flaky = FlakyStore(real)
    flaky.gate.clear()
    writer = StoreWriter(flaky, "i-1", max_transitions=10)  # type: ignore[arg-type]
    writer.start()
    try:
        writer.submit(Batch(transitions=[transition(0)]))
        assert flaky.entered.wait(t(5))
        for i in range(1, 31):
            writer.submit(Batch(transitions=[transition(i)]))
        status = writer.status()
        assert (status.pending_transitions, status.dropped_transitions) == (10, 20)
    finally:
        flaky.gate.set()
        writer.stop(t(10))
    # The newest ones survive: the first (in flight) plus #21..#30.
    assert [r["reason_message"] for r in real.transitions(limit=None)] == ["#0"] + [
        f"#{i}" for i in range(21, 31)
    ]


def test_stop_gives_up_after_its_time_limit_and_says_what_was_lost(real):
    flaky = FlakyStore(real)
    flaky.failing = True
    writer = StoreWriter(flaky, "i-1", retry_initial=0.01)  # type: ignore[arg-type]
    writer.start()
    writer.submit(Batch(transitions=[transition(0)]))
    assert writer.stop(0.2) is False
    assert not writer.alive  # the thread ended too: it does not go on retrying


def test_a_dead_writer_thread_is_restarted_by_its_owner(real):
    writer = StoreWriter(real, "i-1")
    assert writer.restart_if_dead() is False  # never started: nothing to restart
    writer.start()
    with pytest.raises(RuntimeError, match="already started"):
        writer.start()
    writer._stop = True  # simulate the thread ending unexpectedly
    with writer._cond:
        writer._cond.notify_all()
    assert writer._thread is not None
    writer._thread.join(t(5))
    writer._stop = False
    assert writer.restart_if_dead() is True
    assert writer.alive
    writer.submit(Batch(transitions=[transition(7)]))
    assert writer.stop(t(5))
    assert [r["reason_message"] for r in real.transitions()] == ["#7"]


def wait_until(predicate, timeout: float = 5.0) -> bool:
    """Poll a condition of another thread (no await possible here), bounded."""
    done = threading.Event()
    deadline = t(timeout)
    step = 0.005
    waited = 0.0
    while not predicate():
        if waited >= deadline:
            return False
        done.wait(step)
        waited += step
    return True


def test_a_row_the_database_refuses_is_left_out_and_counted_and_its_neighbours_written(real):
    writer = StoreWriter(real, "i-1", retry_initial=0.01)
    writer.start()
    try:
        bad = transition(1) | {"platform": None}  # NOT NULL: refused on every backend
        writer.submit(Batch(transitions=[transition(0), bad, transition(2)]))
        assert writer.flush(t(10))
        assert writer.status().state == "ok"  # not taken for an outage, not retried
        writer.submit(Batch(transitions=[transition(3)]))  # carries the count to the instance row
        assert writer.flush(t(10))
    finally:
        writer.stop(t(5))
    assert [r["reason_message"] for r in real.transitions(limit=None)] == ["#0", "#2", "#3"]
    inst = real.latest_instance()
    assert inst is not None
    assert inst["store_failures"] == 1
    assert inst["store_last_error"].startswith("refused and left out: transition of None")
    assert "not null" in inst["store_last_error"].lower().replace("-", " ")


def test_a_value_too_long_for_postgresql_is_written_clipped_with_its_neighbours(pg_url):
    store = StateStore(pg_url)
    store.migrate()
    writer = StoreWriter(store, "i-1", retry_initial=0.01)
    writer.start()
    try:
        long_code = transition(1) | {"reason_code": "x" * 100}  # VARCHAR(64): DataError
        writer.submit(Batch(transitions=[transition(0), long_code, transition(2)]))
        assert writer.flush(t(10))
        assert writer.status().state == "ok"
    finally:
        writer.stop(t(5))
        rows = store.transitions(limit=None)
        store.close()
    assert [r["reason_message"] for r in rows] == ["#0", "#1", "#2"]
    assert rows[1]["reason_code"] == "x" * 63 + "…"


def test_a_locked_database_is_still_an_outage_and_the_batch_is_written_whole_later(tmp_path):
    import sqlite3

    path = tmp_path / "hermes.db"
    store = StateStore(f"sqlite:///{path}", timeout=0.1)
    store.migrate()
    holder = sqlite3.connect(path, isolation_level=None)
    writer = StoreWriter(store, "i-1", retry_initial=0.01, retry_max=0.05)
    writer.start()
    try:
        holder.execute("BEGIN IMMEDIATE")
        writer.submit(Batch(transitions=[transition(0), transition(1)]))
        assert wait_until(lambda: writer.status().state == "failing")
        assert "database is locked" in (writer.status().last_error or "")
        holder.execute("ROLLBACK")
        assert writer.flush(t(10))
        assert writer.status().state == "ok"
    finally:
        writer.stop(t(5))
        holder.close()
    assert [r["reason_message"] for r in store.transitions(limit=None)] == ["#0", "#1"]
    store.close()
