"""The status CLI's light read path (``watchdog.reader``) reads exactly what ``StateStore`` reads,
and imports neither SQLAlchemy nor pydantic, loguru or alembic."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Boolean, insert

from hermes.inbox.schema import inbound_cursors, inbox
from tests.support.proc import child_env
from watchdog import reader as light
from watchdog import store as full
from watchdog.reader import open_reader
from watchdog.schema import (
    UTCDateTime,
    gateway_instances,
    job_runs,
    outbox,
    platform_state,
    platform_transitions,
)
from watchdog.store import Batch, StateStore, display_url
from watchdog.storeurl import parse_url

IID = "11111111-2222-3333-4444-555555555555"


def test_the_columns_read_are_the_tables_columns_in_order():
    for columns, table in (
        (light.INSTANCE_COLUMNS, gateway_instances),
        (light.PLATFORM_COLUMNS, platform_state),
        (light.TRANSITION_COLUMNS, platform_transitions),
    ):
        expected = [
            (
                c.name,
                "t"
                if isinstance(c.type, UTCDateTime)
                else "b"
                if isinstance(c.type, Boolean)
                else "",
            )
            for c in table.columns
        ]
        assert list(columns) == expected, table.name
    names = [name for name, _ in light.CURSOR_COLUMNS]
    assert set(names) <= set(inbound_cursors.c.keys())
    assert [kind for _, kind in light.CURSOR_COLUMNS] == [
        "t" if isinstance(inbound_cursors.c[n].type, UTCDateTime) else "" for n in names
    ]
    assert (light.SCHEMA_HEAD, light.RUNNER_SCHEMA, light.INBOX_SCHEMA) == (
        full.SCHEMA_HEAD,
        full.RUNNER_SCHEMA,
        full.INBOX_SCHEMA,
    )


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////var/lib/hermes/hermes.db",
        "sqlite:///relative dir/hermes.db",
        "sqlite+pysqlite:///a%20b/hermes.db",
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        "postgresql+psycopg://hermes:hunter2@db.example:5432/hermes?sslmode=require&options=-csearch_path%3Dx",
        "postgresql+psycopg://us%40er:p%40ss@[::1]:5432/db",
        "postgresql+psycopg:///hermes?host=/run/postgresql",
        "postgresql://h/db",
    ],
)
def test_urls_are_parsed_and_shown_as_sqlalchemy_does(url):
    from sqlalchemy.engine import make_url

    parsed = parse_url(url)
    assert parsed is not None
    sa = make_url(url)
    assert parsed.display() == display_url(url)
    assert (parsed.username, parsed.password, parsed.host, parsed.port, parsed.database) == (
        sa.username,
        sa.password,
        sa.host,
        sa.port,
        sa.database,
    )
    assert parsed.query == dict(sa.query)
    assert parsed.backend == sa.get_backend_name()


def test_what_the_light_path_does_not_handle_is_left_to_sqlalchemy():
    assert parse_url("not a url") is None
    assert parse_url("postgresql+psycopg://h/db?a=1&a=2") is None
    assert open_reader("postgresql+psycopg2://h/db") is None
    assert open_reader("sqlite:///x.db?timeout=3") is None


def seed(url: str) -> None:
    now = datetime.now(UTC).replace(microsecond=123456)
    store = StateStore(url)
    try:
        store.migrate()
        store.begin_instance(
            {
                "id": IID,
                "host": "gw1",
                "pid": 4242,
                "version": "0.1.0",
                "started_at": now - timedelta(hours=2),
                "last_tick_at": now - timedelta(seconds=1),
                "tick_interval": 2.0,
                "pinging": True,
                "status_text": "状态 ok",
                "store_failures": 2,
                "store_last_error": "disk full",
                "store_last_error_at": now - timedelta(minutes=3),
            }
        )
        base = {
            "adapter": "qqbot",
            "declared_since": now - timedelta(minutes=5),
            "health_since": now - timedelta(minutes=4),
            "heartbeat_ttl": 112.5,
            "restarts": 1,
            "instance_id": IID,
            "updated_at": now,
        }
        store.replace_platforms(
            [
                {
                    **base,
                    "platform": "qq-a",
                    "required": True,
                    "declared_state": "connected",
                    "health": "ok",
                    "last_heartbeat_at": now - timedelta(seconds=3),
                    "reason_code": None,
                    "reason_message": None,
                    "retryable": None,
                },
                {
                    **base,
                    "platform": "qq\x00b",
                    "required": False,
                    "declared_state": "fatal",
                    "health": "fatal",
                    "last_heartbeat_at": None,
                    "reason_code": "qq_banned",
                    "reason_message": "banned 🚫",
                    "retryable": False,
                },
            ]
        )
        store.write(
            Batch(
                transitions=[
                    {
                        "at": now - timedelta(minutes=60 - i),
                        "instance_id": IID,
                        "platform": "qq\x00b" if i % 3 else "qq-a",
                        "from_state": "connected",
                        "to_state": "reconnecting" if i % 2 else None,
                        "from_health": "ok",
                        "to_health": "degraded",
                        "reason_code": "adapter_exited" if i % 2 else None,
                        "reason_message": f"event {i}",
                    }
                    for i in range(30)
                ]
            ),
            IID,
        )
        with store.engine.begin() as conn:
            conn.execute(
                insert(job_runs),
                [
                    {
                        "id": f"run-{i}",
                        "kind": "route" if i % 2 else "job",
                        "name": f"r{i % 3}",
                        "trigger": "message",
                        "started_at": now - timedelta(minutes=30 - i),
                        "finished_at": None if i == 9 else now - timedelta(minutes=29 - i),
                        "status": ("ok", "error", "timeout")[i % 3],
                        "error": None if i % 3 == 0 else f"boom {i}",
                    }
                    for i in range(10)
                ]
                + [  # runs a stop or crash cut off: one within the hour, one before it
                    {
                        "id": f"run-cut-{i}",
                        "kind": "route",
                        "name": "r1",
                        "trigger": "message",
                        "started_at": now - timedelta(minutes=minutes + 1),
                        "finished_at": now - timedelta(minutes=minutes),
                        "status": "cancelled",
                        "error": "interrupted: the gateway stopped during the run",
                    }
                    for i, minutes in enumerate((5, 90))
                ],
            )
            conn.execute(
                insert(outbox),
                [
                    {
                        "idempotency_key": f"k{i}",
                        "platform": "qq-a",
                        "chat_kind": "group",
                        "chat_id": "c",
                        "text": "hi",
                        "status": ("pending", "sending", "failed", "expired", "delivered")[i % 5],
                        "attempts": 1,
                        "next_attempt_at": now,
                        "created_at": now - timedelta(minutes=i),
                        "updated_at": now - timedelta(minutes=i),
                    }
                    for i in range(12)
                ],
            )
            conn.execute(
                insert(inbox),
                [
                    {
                        "platform": "qq-a",
                        "event_id": f"e{i}",
                        "message_id": f"m{i}",
                        "event": "GROUP_AT_MESSAGE_CREATE",
                        "chat_kind": "group",
                        "chat_id": "c",
                        "author_id": "a",
                        "text": "x",
                        "received_at": now - timedelta(minutes=i),
                        "status": ("received", "dead", "handled")[i % 3],
                        # A handled message whose last run was cut off (recently, long ago),
                        # and one whose run finished.
                        "run_id": {2: "run-cut-0", 5: "run-cut-1", 8: "run-0"}.get(i),
                        "attempts": 0,
                        "updated_at": now - timedelta(minutes=i),
                    }
                    for i in range(9)
                ],
            )
            conn.execute(
                insert(inbound_cursors),
                [
                    {
                        "platform": "qq-a",
                        "updated_at": now,
                        "gaps": 2,
                        "gap_events": 7,
                        "last_gap": "seq 4 -> 9",
                        "last_gap_at": now - timedelta(minutes=2),
                        "lost": 0,
                        "last_lost": None,
                    },
                    {
                        "platform": "qq-c",
                        "updated_at": now,
                        "gaps": 0,
                        "gap_events": 0,
                        "last_gap": None,
                        "last_gap_at": None,
                        "lost": 3,
                        "last_lost": "3 events: the session expired",
                    },
                    {
                        "platform": "qq-d",
                        "updated_at": now,
                        "gaps": 0,
                        "gap_events": 0,
                        "last_gap": None,
                        "last_gap_at": None,
                        "lost": 0,
                        "last_lost": None,
                    },
                ],
            )
    finally:
        store.close()


def reads(store: object, now: datetime) -> dict[str, object]:
    hour_ago = now - timedelta(hours=1)

    def read() -> dict[str, object]:
        s: object = store
        s.check_readable()  # type: ignore[attr-defined]
        return {
            "instance": s.latest_instance(),  # type: ignore[attr-defined]
            "platforms": s.platforms(),  # type: ignore[attr-defined]
            "jobs": s.jobs_summary(hour_ago),  # type: ignore[attr-defined]
            "outbox": s.outbox_summary(hour_ago),  # type: ignore[attr-defined]
            "inbox": s.inbox_summary(hour_ago),  # type: ignore[attr-defined]
            "all": s.transitions(limit=None),  # type: ignore[attr-defined]
            "newest": s.transitions(limit=7),  # type: ignore[attr-defined]
            "one": s.transitions("qq\x00b", now - timedelta(minutes=40), 5),  # type: ignore[attr-defined]
            "none": s.transitions("nobody"),  # type: ignore[attr-defined]
        }

    return store.read_consistently(read)  # type: ignore[attr-defined,no-any-return]


def test_the_light_reader_reads_what_the_state_store_reads(store_url):
    seed(store_url)
    now = datetime.now(UTC)
    expected_store = StateStore(store_url, read_only=True)
    reader = open_reader(store_url)
    assert reader is not None
    try:
        expected, got = reads(expected_store, now), reads(reader, now)
    finally:
        expected_store.close()
        reader.close()
    assert got == expected
    # Same types too (== would let 1 pass for True), and the same key order (the JSON output).
    assert json.dumps(got, default=repr) == json.dumps(expected, default=repr)
    assert expected["jobs"] and expected["outbox"]["failed_recently"]  # type: ignore[index]
    assert expected["inbox"]["platforms"] and len(expected["one"]) == 5  # type: ignore[index,arg-type]
    assert expected["inbox"]["cut_off_recently"] == 1  # type: ignore[index]
    assert reader.name == expected_store.name


HEAVY = ("sqlalchemy", "pydantic", "loguru", "alembic", "apscheduler")


@pytest.mark.parametrize("command", [["status", "--json"], ["history"]])
def test_status_and_history_import_no_heavy_package(store_url, command):
    seed(store_url)
    probe = (
        "import sys\n"
        "from watchdog.cli import main\n"
        f"code = main({[*command, '--database', store_url]!r})\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))\n"
        "print('psycopg' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=child_env(), check=True
    )
    *_, heavy, psycopg = out.stdout.splitlines()
    assert heavy == "[]", out.stdout
    assert psycopg == str(store_url.startswith("postgresql"))
