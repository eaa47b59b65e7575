"""The job runner's ledger and the outbox table, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from hermes.jobrunner.ledger import Ledger, Outgoing
from watchdog.schema import outbox
from watchdog.store import StateStore

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


@pytest.fixture
def ledger(store_url):
    store = StateStore(store_url)
    store.migrate()
    yield Ledger(store.engine, "instance-1")
    store.close()


def reply(key: str, to: str = "m1", platform: str = "qq") -> Outgoing:
    return Outgoing(key, platform, "group", "G1", f"text {key}", reply_to=to)


def test_finishing_a_run_enqueues_its_messages_in_the_same_transaction(ledger):
    run = ledger.start_run(
        kind="route", name="echo", trigger="message", platform="qq", message_id="m1"
    )
    ids = ledger.finish_run(run, "ok", output="hi", messages=[reply("run:1:reply")])
    (row,) = ledger.outbox_rows()
    assert row["id"] == ids[0]
    assert (row["status"], row["run_id"], row["reply_to"], row["reply_seq"]) == (
        "pending",
        run,
        "m1",
        1,
    )
    finished = ledger.run(run)
    assert finished is not None
    assert (finished["status"], finished["output"], finished["instance_id"]) == (
        "ok",
        "hi",
        "instance-1",
    )


def test_enqueue_is_idempotent_and_replies_to_one_message_are_numbered(ledger):
    assert len(ledger.enqueue([reply("a"), reply("b"), reply("c", to="m2")])) == 3
    assert ledger.enqueue([reply("a")]) == []  # the same key again: nothing new
    rows = {r["idempotency_key"]: r for r in ledger.outbox_rows()}
    assert [rows[k]["reply_seq"] for k in ("a", "b", "c")] == [1, 2, 1]


def test_a_scheduled_slot_runs_once_even_if_started_twice(ledger):
    first = ledger.start_run(kind="job", name="daily", trigger="schedule", scheduled_for=T0)
    again = ledger.start_run(kind="job", name="daily", trigger="schedule", scheduled_for=T0)
    assert first is not None
    assert again is None
    assert ledger.record_missed("daily", T0, "late") is False  # that slot is taken too
    assert ledger.record_missed("daily", T0 + timedelta(hours=24), "late") is True
    assert ledger.record_missed("daily", T0 + timedelta(hours=24), "late") is False


def test_requested_runs_are_claimed_once(ledger):
    rid = ledger.request_run("daily")
    assert ledger.claim_requests() == [(rid, "daily")]
    assert ledger.claim_requests() == []
    row = ledger.run(rid)
    assert row is not None
    assert (row["status"], row["trigger"]) == ("running", "manual")


def test_what_a_dead_process_left_is_cleaned_up_at_start(ledger):
    run = ledger.start_run(kind="route", name="slow", trigger="message")
    ledger.enqueue([reply("x")])
    (claimed,) = ledger.claim(["qq"], 10)
    assert ledger.close_interrupted() == 1
    assert ledger.recover_sending() == 1
    row = ledger.run(run)
    assert row is not None
    assert (row["status"], row["error"]) == (
        "cancelled",
        "interrupted: the gateway stopped during the run",
    )
    (box,) = ledger.outbox_rows()
    assert (box["status"], box["attempts"]) == ("pending", 1)
    assert claimed.attempts == 1


def test_claim_takes_due_rows_of_connected_platforms_in_order(ledger):
    ledger.enqueue([reply("1"), reply("2", platform="tg"), reply("3")])
    batch = ledger.claim(["qq"], 10)
    assert [d.text for d in batch] == ["text 1", "text 3"]
    assert ledger.claim(["qq"], 10) == []  # already sending
    assert ledger.claim([], 10) == []
    ledger.retry_later(batch[0].id, "boom", datetime.now(UTC) + timedelta(hours=1))
    ledger.failed(batch[1].id, "gave up")
    ledger.delivered(ledger.claim(["tg"], 10)[0].id, "platform-id-7")
    rows = {r["text"]: r for r in ledger.outbox_rows()}
    assert (rows["text 1"]["status"], rows["text 1"]["last_error"]) == ("pending", "boom")
    assert ledger.claim(["qq"], 10) == []  # not due yet
    assert rows["text 3"]["status"] == "failed"
    assert (rows["text 2"]["status"], rows["text 2"]["platform_message_id"]) == (
        "delivered",
        "platform-id-7",
    )
    assert ledger.next_due(["qq"]) is not None


def test_rows_past_their_deadline_expire_instead_of_going_out(ledger):
    past = datetime.now(UTC) - timedelta(seconds=1)
    ledger.enqueue(
        [
            Outgoing("late", "qq", "c2c", "U", "too late", reply_to="m", expires_at=past),
            reply("fine"),
        ]
    )
    (expired,) = ledger.expire_due()
    assert expired["platform"] == "qq"
    assert [d.text for d in ledger.claim(["qq"], 10)] == ["text fine"]


def test_prune_deletes_only_settled_history_past_retention(ledger):
    done = ledger.start_run(kind="route", name="r", trigger="message")
    ledger.finish_run(done, "ok")
    running = ledger.start_run(kind="route", name="r", trigger="message")
    assert ledger.prune(timedelta(seconds=-1), timedelta(seconds=-1)) == (1, 0)
    assert ledger.run(running) is not None
    assert ledger.run(done) is None


def test_a_request_nobody_picked_up_in_time_is_cancelled_not_run_later(ledger):
    rid = ledger.request_run("daily")
    assert ledger.claim_requests(max_age=timedelta(seconds=-1)) == []
    row = ledger.run(rid)
    assert row is not None
    assert row["status"] == "cancelled"
    assert "no gateway picked the request up" in row["error"]


def test_an_idle_poll_for_requests_takes_no_write_lock(tmp_path):
    # Polled every second: with nothing requested it must only read, or every idle poll
    # would contend with the store writer for SQLite's one write lock.
    import sqlite3

    path = tmp_path / "hermes.db"
    store = StateStore(f"sqlite:///{path}", timeout=0.2)
    store.migrate()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        assert Ledger(store.engine, "instance-1").claim_requests() == []
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.close()


# -- order within a chat


def to(chat: str, key: str) -> Outgoing:
    return Outgoing(key, "qq", "group", chat, key)


def test_a_chat_waits_behind_its_head_while_other_chats_go(ledger):
    ledger.enqueue([to("G1", "a"), to("G2", "x"), to("G1", "b"), to("G1", "c"), to("G2", "y")])
    first = ledger.claim(["qq"], 10)
    assert [d.text for d in first] == ["a", "x", "b", "c", "y"]
    assert ledger.claim(["qq"], 10) == []
    a, x, b, c, y = first
    # a fails and waits for its retry: b and c, claimed behind it, are given back unsent.
    ledger.retry_later(a.id, "HTTP 500", datetime.now(UTC) + timedelta(hours=1))
    ledger.release([b.id, c.id])
    ledger.delivered(x.id, None)
    ledger.delivered(y.id, None)
    ledger.enqueue([to("G2", "z"), to("G1", "d")])
    assert [d.text for d in ledger.claim(["qq"], 10)] == ["z"]  # G1 held, G2 not
    # Once a is settled (failed for good), the rest of G1 goes, in order, with the
    # release's attempt not counted.
    ledger.failed(a.id, "gave up")
    assert [(d.text, d.attempts) for d in ledger.claim(["qq"], 10)] == [
        ("b", 1),
        ("c", 1),
        ("d", 1),
    ]


def test_a_row_being_sent_holds_its_chat_for_every_later_claim(ledger):
    ledger.enqueue([to("G1", "a"), to("G1", "b"), to("G2", "x"), to("G1", "c")])
    assert [d.text for d in ledger.claim(["qq"], 1)] == ["a"]
    # A second claim (the next pass, or the last pass at stop) takes nothing of G1.
    assert [d.text for d in ledger.claim(["qq"], 10)] == ["x"]
    # A process that died mid-send: at start its rows are pending again, the head first.
    assert ledger.recover_sending() == 2
    assert [d.text for d in ledger.claim(["qq"], 10)] == ["a", "b", "x", "c"]


def test_an_expired_head_lets_the_next_row_of_its_chat_go(ledger):
    ledger.enqueue(
        [
            Outgoing(
                "a", "qq", "group", "G1", "a", reply_to="m", expires_at=T0 + timedelta(days=9999)
            ),
            to("G1", "b"),
        ]
    )
    (a,) = ledger.claim(["qq"], 1)
    ledger.retry_later(a.id, "HTTP 500", datetime.now(UTC) + timedelta(hours=1))
    assert ledger.claim(["qq"], 10) == []
    with ledger.engine.begin() as conn:  # the reply window passes
        conn.execute(update(outbox).where(outbox.c.id == a.id).values(expires_at=T0))
    assert [r["id"] for r in ledger.expire_due()] == [a.id]
    assert [d.text for d in ledger.claim(["qq"], 10)] == ["b"]


# -- rows the database refuses, and outages


def test_a_message_the_database_refuses_fails_alone_and_the_run_says_so(ledger):
    run = ledger.start_run(kind="job", name="digest", trigger="manual")
    assert run is not None
    bad = Outgoing("run:1:bad", "qq", None, "G2", "two")  # type: ignore[arg-type]
    ids = ledger.finish_run(
        run, "ok", output="hi", messages=[to("G1", "one"), bad, to("G3", "three")]
    )
    assert len(ids) == 2
    assert [(r["chat_id"], r["status"]) for r in ledger.outbox_rows()] == [
        ("G1", "pending"),
        ("G3", "pending"),
    ]
    row = ledger.run(run)
    assert row is not None
    assert row["status"] == "error"
    assert row["error"].startswith(
        "1 of 3 messages could not be stored; message run:1:bad: not stored: IntegrityError"
    )
    assert row["output"] == "hi"


def test_a_value_too_long_for_postgresql_fails_that_message_as_a_failed_row(pg_url):
    store = StateStore(pg_url)
    store.migrate()
    ledger = Ledger(store.engine, "instance-1")
    try:
        run = ledger.start_run(kind="route", name="echo", trigger="message", message_id="m" * 300)
        assert run is not None
        long_chat = "G" * 300  # a chat id over VARCHAR(255): PostgreSQL raises DataError
        ledger.finish_run(
            run, "ok", output="x", messages=[to("G1", "a"), to(long_chat, "b"), to("G1", "c")]
        )
        rows = {r["idempotency_key"]: r for r in ledger.outbox_rows()}
        assert (rows["a"]["status"], rows["c"]["status"]) == ("pending", "pending")
        assert rows["b"]["status"] == "failed"
        assert rows["b"]["chat_id"] == "G" * 254 + "…"
        assert rows["b"]["last_error"].startswith("not stored: DataError")
        started = ledger.run(run)
        assert started is not None
        assert started["message_id"] == "m" * 254 + "…"  # recorded clipped, not lost
        assert started["status"] == "error"
        # An outcome the platform answered with an over-long id still settles the row.
        a, _ = ledger.claim(["qq"], 10)
        ledger.delivered(a.id, "p" * 300)
        assert {r["id"]: r["status"] for r in ledger.outbox_rows()}[a.id] == "delivered"
    finally:
        store.close()


def test_a_locked_database_is_an_outage_not_a_bad_row(tmp_path):
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from watchdog.store import is_row_error

    path = tmp_path / "hermes.db"
    store = StateStore(f"sqlite:///{path}", timeout=0.2)
    store.migrate()
    ledger = Ledger(store.engine, "instance-1")
    run = ledger.start_run(kind="route", name="echo", trigger="message")
    assert run is not None
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError) as caught:
            ledger.finish_run(run, "ok", output="hi", messages=[to("G1", "a")])
        assert not is_row_error(caught.value)
        holder.execute("ROLLBACK")
        row = ledger.run(run)
        assert row is not None
        assert row["status"] == "running"  # nothing was marked failed meanwhile
        assert ledger.outbox_rows() == []
        ledger.finish_run(run, "ok", output="hi", messages=[to("G1", "a")])  # the retry
        row = ledger.run(run)
        assert row is not None
        assert row["status"] == "ok"
        assert [r["status"] for r in ledger.outbox_rows()] == ["pending"]
    finally:
        holder.close()
        store.close()


@pytest.mark.parametrize(
    "text",
    ["a\x00b", "a\ud800b", "\x00", "plain"],
)
def test_text_no_backend_can_hold_is_stored_the_same_on_every_backend(ledger, text):
    run = ledger.start_run(kind="route", name="echo", trigger="message", message_id=text)
    assert run is not None
    ledger.finish_run(
        run,
        "ok",
        output=text,
        error=text,
        messages=[Outgoing("k", "qq", "c2c", text, text, reply_to=text)],
    )
    expected = text.replace("\x00", "\ufffd").replace("\ud800", "\ufffd")
    row = ledger.run(run)
    assert row is not None
    assert (row["message_id"], row["output"], row["error"], row["status"]) == (
        expected,
        expected,
        expected,
        "ok",
    )
    (box,) = ledger.outbox_rows()
    assert (box["text"], box["chat_id"], box["reply_to"]) == (expected, expected, expected)
