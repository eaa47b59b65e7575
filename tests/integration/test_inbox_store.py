"""The inbox's SQL on real SQLite and PostgreSQL: group commits, cursors, gaps, losses, claims."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from hermes.inbox.schema import inbound_cursors, inbox
from hermes.inbox.store import Arrival, Gap, InboxStore
from hermes.jobrunner.ledger import Ledger
from hermes.messages import InboundMessage
from watchdog.schema import platform_transitions
from watchdog.store import StateStore


@pytest.fixture
def stores(store_url: str) -> Iterator[tuple[InboxStore, Ledger]]:
    state = StateStore(store_url)
    state.migrate()
    try:
        yield InboxStore(state.engine, "instance-1"), Ledger(state.engine, "instance-1")
    finally:
        state.close()


def arrival(n: int, platform: str = "qq", **kw: object) -> Arrival:
    fields: dict[str, object] = {
        "platform": platform,
        "message_id": f"m{n}",
        "chat_kind": "group",
        "chat_id": "G1",
        "author_id": "u1",
        "text": f"hello {n}",
        "timestamp": datetime(2026, 11, 30, tzinfo=UTC),
        "event": "GROUP_AT_MESSAGE_CREATE",
        **kw,
    }
    message = InboundMessage(**fields)  # type: ignore[arg-type]
    return Arrival(message, message.message_id, datetime.now(UTC))


def rows(store: InboxStore, table: Any = inbox) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(table)).mappings()]


def test_a_batch_and_its_cursor_commit_together_and_a_replay_is_skipped(stores):
    store, _ = stores
    done = store.commit([arrival(i) for i in range(3)], {"qq": {"session_id": "s", "seq": 3}})
    assert [s.message.message_id for s in done.stored] == ["m0", "m1", "m2"]
    again = store.commit([arrival(1), arrival(3)], {"qq": {"session_id": "s", "seq": 5}})
    assert ([s.message.message_id for s in again.stored], again.replayed) == (["m3"], 1)
    assert sorted(r["message_id"] for r in rows(store)) == ["m0", "m1", "m2", "m3"]
    assert store.cursors()["qq"].cursor == {"session_id": "s", "seq": 5}
    # What a route sees is what was received, extra and timestamps included.
    (m,) = (r for r in store.backlog(10) if r.message.message_id == "m0")
    assert m.message.timestamp == datetime(2026, 11, 30, tzinfo=UTC)
    assert m.message.text == "hello 0"


def test_text_and_times_are_stored_as_every_other_column_stores_them(stores):
    store, _ = stores
    received = datetime(2026, 11, 30, 20, 0, 0, 123456, tzinfo=UTC)
    a = arrival(1, text="a\x00b \ud800 ok", author_name="名字")
    a.received_at = received
    store.commit([a], {})
    (row,) = rows(store)
    assert (row["text"], row["author_name"]) == ("a\ufffdb \ufffd ok", "名字")
    assert row["received_at"] == received
    assert row["sent_at"] == datetime(2026, 11, 30, tzinfo=UTC)


def test_a_row_the_database_refuses_is_counted_as_lost_and_its_neighbours_stored(stores):
    store, _ = stores
    bad = arrival(2, chat_kind=None)  # NOT NULL: this row's data, not an outage
    done = store.commit([arrival(1), bad, arrival(3)], {"qq": {"seq": 3}})
    assert ([s.message.message_id for s in done.stored], done.lost) == (["m1", "m3"], 1)
    (cursor,) = rows(store, inbound_cursors)
    assert cursor["lost"] == 1
    assert "event m2" in str(cursor["last_lost"])
    assert json.loads(str(cursor["cursor"])) == {"seq": 3}


def test_gaps_are_counted_and_recorded_as_transitions(stores):
    store, _ = stores
    store.commit([], {}, [Gap("qq", "session s refused after seq 9", None)])
    store.commit([], {}, [Gap("qq", "too old", 4)])
    (cursor,) = rows(store, inbound_cursors)
    assert (cursor["gaps"], cursor["gap_events"], cursor["last_gap"]) == (2, 4, "too old")
    gaps = [r for r in rows(store, platform_transitions) if r["reason_code"] == "inbound_gap"]
    assert [g["reason_message"] for g in gaps] == ["session s refused after seq 9", "too old"]


def test_a_stored_message_is_taken_by_exactly_one_run(stores):
    store, ledger = stores
    (row,) = store.commit([arrival(1)], {}).stored
    first = ledger.start_run(kind="route", name="echo", trigger="message", inbox_id=row.id)
    second = ledger.start_run(kind="route", name="echo", trigger="message", inbox_id=row.id)
    assert first is not None and second is None
    assert store.backlog(10) == []
    ledger.finish_run(first, "ok")
    ((stored,),) = [rows(store)]
    assert (stored["status"], stored["run_id"], stored["attempts"]) == ("handled", first, 1)


def test_a_run_cut_off_by_a_crash_is_retried_only_for_retry_routes(stores):
    store, ledger = stores
    a, b = store.commit([arrival(1), arrival(2)], {}).stored
    ledger.start_run(kind="route", name="deploy", trigger="message", inbox_id=a.id)
    ledger.start_run(kind="route", name="echo", trigger="message", inbox_id=b.id)
    assert ledger.close_interrupted(retry=["echo"]) == 2
    status = {r["message_id"]: (r["status"], r["run_id"] is None) for r in rows(store)}
    assert status == {"m1": ("handled", False), "m2": ("received", True)}
    assert [r.message.message_id for r in store.backlog(10)] == ["m2"]
    # What status shows: one message cut off (deploy's); echo's waits for its new run.
    summary = StateStore(str(store.engine.url), read_only=True)
    try:
        hour_ago = datetime.now(UTC) - timedelta(hours=1)
        assert (summary.inbox_summary(hour_ago) or {})["cut_off_recently"] == 1
    finally:
        summary.close()


def test_settled_rows_past_their_retention_are_pruned_and_waiting_ones_kept(stores):
    store, ledger = stores
    a, b, _c = store.commit([arrival(1), arrival(2), arrival(3)], {}).stored
    store.skip([a.id])
    rid = ledger.start_run(kind="route", name="echo", trigger="message", inbox_id=b.id)
    assert rid is not None
    ledger.finish_run(rid, "error", error="boom")
    old = datetime.now(UTC) - timedelta(days=8)
    with store.engine.begin() as conn:
        conn.execute(update(inbox).values(updated_at=old))
    assert {r["message_id"]: r["status"] for r in rows(store)} == {
        "m1": "skipped",
        "m2": "dead",
        "m3": "received",
    }
    assert store.prune(timedelta(days=7)) == 2
    assert [r["message_id"] for r in rows(store)] == ["m3"]
