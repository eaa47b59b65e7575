"""A new store is created at head from the table definitions, not by replaying the migrations;
this is the guard that the two can never drift apart: the same tables, columns, types,
defaults, indexes and constraints, on SQLite and on PostgreSQL.

A new table or column goes into a migration *and* into its table definition
(``watchdog/schema.py``, ``hermes/inbox/schema.py``), and its table name into
``watchdog.store.HEAD_TABLES``; any one of the three forgotten fails here."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

import hermes.inbox.schema  # noqa: F401  (registers the inbox's tables)
from tests.support.pg import create_schema
from watchdog.schema import metadata
from watchdog.store import ALEMBIC_LOCATION, HEAD_TABLES, SCHEMA_HEAD, StateStore


def replay(url: str, revision: str = "head") -> None:
    """Build the store the old way: alembic, every migration in turn."""
    from alembic import command
    from alembic.config import Config

    store = StateStore(url)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", ALEMBIC_LOCATION)
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        store.close()


def create(url: str) -> None:
    store = StateStore(url)
    try:
        assert store.migrate() == (None, SCHEMA_HEAD)
    finally:
        store.close()


def sqlite_schema(url: str) -> list[tuple[Any, ...]]:
    """Every object SQLite keeps, with the exact statement that created it."""
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        rows = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        # Column order, types, NOT NULL, defaults and primary keys, as SQLite reads them.
        tables = [r[1] for r in rows if r[0] == "table"]
        columns = [
            (t, *c) for t in tables for c in conn.execute(f'PRAGMA table_info("{t}")').fetchall()
        ]
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        return [*rows, *columns, *versions]
    finally:
        conn.close()


def pg_schema(url: str) -> list[tuple[Any, ...]]:
    """Columns, constraints, indexes and sequences of the schema on the URL's search path,
    with that schema's name taken out."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            out: list[tuple[Any, ...]] = []
            out += conn.execute(
                text(
                    "SELECT table_name, ordinal_position, column_name, data_type, "
                    "character_maximum_length, numeric_precision, datetime_precision, "
                    "is_nullable, column_default, is_identity "
                    "FROM information_schema.columns WHERE table_schema = :s "
                    "ORDER BY table_name, ordinal_position"
                ),
                {"s": schema},
            ).all()
            out += conn.execute(
                text(
                    "SELECT cl.relname, co.conname, co.contype, pg_get_constraintdef(co.oid) "
                    "FROM pg_constraint co JOIN pg_class cl ON cl.oid = co.conrelid "
                    "JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE n.nspname = :s "
                    "ORDER BY cl.relname, co.conname"
                ),
                {"s": schema},
            ).all()
            out += conn.execute(
                text(
                    "SELECT tablename, indexname, indexdef FROM pg_indexes "
                    "WHERE schemaname = :s ORDER BY tablename, indexname"
                ),
                {"s": schema},
            ).all()
            out += conn.execute(
                text(
                    "SELECT sequencename, data_type, start_value, increment_by FROM pg_sequences "
                    "WHERE schemaname = :s ORDER BY sequencename"
                ),
                {"s": schema},
            ).all()
            out += conn.execute(text("SELECT version_num FROM alembic_version")).all()
    finally:
        engine.dispose()
    pattern = re.compile(rf"\b{re.escape(schema)}\.")
    return [tuple(pattern.sub("", v) if isinstance(v, str) else v for v in row) for row in out]


@pytest.fixture(params=["sqlite", "postgresql"])
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'created.db'}", f"sqlite:///{tmp_path / 'replayed.db'}"
        return
    created, drop_created = create_schema("hermes_head")
    replayed, drop_replayed = create_schema("hermes_head")
    try:
        yield created, replayed
    finally:
        drop_created()
        drop_replayed()


def test_the_table_definitions_are_every_table_at_head():
    assert set(metadata.tables) == HEAD_TABLES


def test_a_store_created_at_head_is_the_one_the_migrations_build(two_stores, monkeypatch):
    created, replayed = two_stores
    replay(replayed)

    def no_replay(self: StateStore) -> None:
        raise AssertionError("a new store must be created at head, not migrated")

    monkeypatch.setattr(StateStore, "_upgrade", no_replay)
    create(created)
    schema = sqlite_schema if created.startswith("sqlite") else pg_schema
    got, expected = schema(created), schema(replayed)
    assert got == expected
    assert len(expected) > 100  # the comparison saw the tables


def test_a_store_behind_head_is_migrated_to_the_same_schema(two_stores):
    behind, replayed = two_stores
    replay(behind, "0002")
    replay(replayed)
    store = StateStore(behind)
    try:
        assert store.migrate() == ("0002", SCHEMA_HEAD)
    finally:
        store.close()
    schema = sqlite_schema if behind.startswith("sqlite") else pg_schema
    assert schema(behind) == schema(replayed)
