"""The SQL state store on real SQLite files and the real PostgreSQL server."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from hermes.inbox import schema as inbox_schema
from watchdog.exceptions import StoreError, StoreNotFound
from watchdog.schema import metadata
from watchdog.store import SCHEMA_HEAD, Batch, StateStore

T0 = datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)


def instance(id_: str = "i-1", **over):
    row = {
        "id": id_,
        "host": "h",
        "pid": 42,
        "version": "0.1.0",
        "started_at": T0,
        "last_tick_at": None,
        "tick_interval": 2.0,
        "pinging": False,
        "status_text": "starting",
        "store_failures": 0,
    }
    row.update(over)
    return row


def platform(name: str, **over):
    row = {
        "platform": name,
        "adapter": "demo",
        "required": True,
        "declared_state": "starting",
        "declared_since": T0,
        "health": "degraded",
        "health_since": T0,
        "last_heartbeat_at": None,
        "heartbeat_ttl": 30.0,
        "restarts": 0,
        "reason_code": None,
        "reason_message": None,
        "retryable": None,
        "instance_id": "i-1",
        "updated_at": T0,
    }
    row.update(over)
    return row


def transition(name: str, at: datetime, **over):
    row = {
        "at": at,
        "instance_id": "i-1",
        "platform": name,
        "from_state": "starting",
        "to_state": "connected",
        "from_health": "degraded",
        "to_health": "degraded",
        "reason_code": None,
        "reason_message": None,
    }
    row.update(over)
    return row


@pytest.fixture
def store(store_url):
    s = StateStore(store_url)
    s.migrate()
    yield s
    s.close()


def test_migrations_create_every_table_on_an_empty_database_and_are_idempotent(store_url):
    s = StateStore(store_url)
    try:
        assert s.revision() is None
        assert s.migrate() == (None, SCHEMA_HEAD)
        assert s.migrate() == (SCHEMA_HEAD, SCHEMA_HEAD)
        # Tables owned by the gateway's packages join the one metadata (one migration chain).
        assert {inbox_schema.inbox.name, inbox_schema.inbound_cursors.name} <= set(metadata.tables)
        with s.engine.connect() as conn:
            insp = inspect(conn)
            for table in metadata.sorted_tables:
                assert insp.has_table(table.name)
                migrated = {c["name"] for c in insp.get_columns(table.name)}
                assert migrated == {c.name for c in table.columns}, table.name
                assert {i["name"] for i in insp.get_indexes(table.name)} >= {
                    i.name for i in table.indexes
                }
    finally:
        s.close()


def test_a_second_store_object_sees_the_schema_as_current(store_url):
    StateStore(store_url).migrate()
    again = StateStore(store_url)
    try:
        assert again.migrate() == (SCHEMA_HEAD, SCHEMA_HEAD)
        again.check_readable()
    finally:
        again.close()


def test_timestamps_round_trip_as_aware_utc(store):
    store.begin_instance(instance(started_at=T0.astimezone(timezone_plus_8())))
    row = store.latest_instance()
    assert row is not None
    assert row["started_at"] == T0
    assert row["started_at"].tzinfo is not None


def timezone_plus_8() -> timezone:
    return timezone(timedelta(hours=8))


def test_naive_datetimes_are_refused(store):
    with pytest.raises(StoreError):
        store.begin_instance(instance(started_at=datetime(2026, 1, 1)))


def test_a_new_instance_closes_the_rows_a_crash_left_open(store):
    store.begin_instance(instance("old", last_tick_at=T0 + timedelta(seconds=30)))
    closed = store.begin_instance(instance("new", started_at=T0 + timedelta(minutes=5)))
    assert [c["id"] for c in closed] == ["old"]
    latest = store.latest_instance()
    assert latest is not None
    assert latest["id"] == "new"
    with store.engine.connect() as conn:
        old = conn.execute(
            text("SELECT stopped_at, exit_reason FROM gateway_instances WHERE id = 'old'")
        ).one()
    assert "no clean stop" in old.exit_reason


def test_replace_platforms_keeps_exactly_the_configured_ones(store):
    store.replace_platforms([platform("a"), platform("b")])
    gone = store.replace_platforms([platform("b", adapter="qqbot"), platform("c")])
    assert gone == ["a"]
    rows = store.platforms()
    assert [(r["platform"], r["adapter"]) for r in rows] == [("b", "qqbot"), ("c", "demo")]


def test_a_batch_upserts_rows_appends_transitions_and_updates_the_instance(store):
    store.begin_instance(instance())
    store.replace_platforms([platform("a"), platform("gone")])
    batch = Batch(
        rows={"a": platform("a", declared_state="connected", health="ok", last_heartbeat_at=T0)},
        removed={"gone"},
        transitions=[
            transition("a", T0),
            transition("a", T0 + timedelta(seconds=1), to_health="ok"),
        ],
        instance={"last_tick_at": T0, "pinging": True, "status_text": "1/1 platforms ok"},
    )
    store.write(batch, "i-1")
    (row,) = store.platforms()
    assert (row["platform"], row["health"], row["last_heartbeat_at"]) == ("a", "ok", T0)
    history = store.transitions()
    assert [(h["to_state"], h["to_health"]) for h in history] == [
        ("connected", "degraded"),
        ("connected", "ok"),
    ]
    latest = store.latest_instance()
    assert latest is not None
    assert (latest["pinging"], latest["last_tick_at"]) == (True, T0)


def test_history_filters_by_platform_time_and_limit_oldest_first(store):
    rows = [transition(p, T0 + timedelta(seconds=i)) for i, p in enumerate("abab")]
    store.write(Batch(transitions=rows), "i-1")
    assert [r["at"] for r in store.transitions("a")] == [T0, T0 + timedelta(seconds=2)]
    assert [r["platform"] for r in store.transitions(since=T0 + timedelta(seconds=2))] == ["a", "b"]
    assert [r["at"] for r in store.transitions(limit=2)] == [
        T0 + timedelta(seconds=2),
        T0 + timedelta(seconds=3),
    ]


def test_batches_merge_latest_row_wins_and_transitions_keep_order():
    old = Batch(rows={"a": {"v": 1}}, transitions=[{"n": 1}], instance={"x": 1, "y": 1})
    old.merge(
        Batch(
            rows={"a": {"v": 2}, "b": {"v": 1}},
            removed={"c"},
            transitions=[{"n": 2}],
            instance={"y": 2},
        )
    )
    old.merge(Batch(rows={"c": {"v": 9}}))
    assert old.rows == {"a": {"v": 2}, "b": {"v": 1}, "c": {"v": 9}}
    assert old.removed == set()
    assert old.transitions == [{"n": 1}, {"n": 2}]
    assert old.instance == {"x": 1, "y": 2}


# -- readers never create or damage anything


def test_a_reader_does_not_create_a_missing_sqlite_file(tmp_path):
    path = tmp_path / "none" / "hermes.db"
    with pytest.raises(StoreNotFound, match="no state store at"):
        StateStore(f"sqlite:///{path}", read_only=True)
    assert not path.exists()
    assert not path.parent.exists()


def test_a_corrupt_sqlite_file_is_reported_and_left_untouched(tmp_path):
    path = tmp_path / "hermes.db"
    path.write_bytes(b"this is not a database" * 100)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    store = StateStore(f"sqlite:///{path}", read_only=True)
    try:
        with pytest.raises(StoreError, match="file is not a database"):
            store.check_readable()
    finally:
        store.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hermes.db"]


def test_a_foreign_database_is_not_mistaken_for_a_store(store_url):
    other = StateStore(store_url)
    try:
        with other.engine.begin() as conn:
            conn.execute(text("CREATE TABLE unrelated (x INTEGER)"))
    finally:
        other.close()
    reader = StateStore(store_url, read_only=True)
    try:
        with pytest.raises(StoreError, match="not a hermes state store"):
            reader.check_readable()
    finally:
        reader.close()


def test_a_read_only_store_refuses_to_migrate(store):
    reader = StateStore(store.url.render_as_string(hide_password=False), read_only=True)
    try:
        with pytest.raises(StoreError, match="read-only"):
            reader.migrate()
        reader.check_readable()
    finally:
        reader.close()


def test_an_unreachable_postgres_is_a_store_error_naming_it_without_password():
    store = StateStore("postgresql+psycopg://hermes:hunter2@127.0.0.1:9/hermes", timeout=2)
    try:
        with pytest.raises(StoreError) as info:
            store.revision()
    finally:
        store.close()
    assert "127.0.0.1:9" in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "notadb://x", "::"])
def test_unusable_urls_are_refused_clearly(url):
    with pytest.raises(StoreError):
        StateStore(url)


def test_sqlite_store_uses_wal(tmp_path: Path):
    s = StateStore(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        s.migrate()
        with s.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        s.close()
