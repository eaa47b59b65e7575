"""The inbox's SQL: group commits of inbound rows with their cursor, claims, outcomes.

Every method runs on a database thread (never on the event loop) and is one
transaction. A replayed event whose ``(platform, event_id)`` is already stored is
skipped by the database itself (a unique index), so no handler ever sees it twice.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from loguru import logger
from sqlalchemy import Engine, and_, delete, select, update

from hermes.inbox.schema import inbound_cursors, inbox
from hermes.jobrunner.ledger import now_utc
from hermes.messages import InboundMessage
from watchdog.schema import fitted, platform_transitions, storable
from watchdog.store import is_row_error
from watchdog.tasks import describe_exception

INBOUND_GAP = "inbound_gap"
"""Reason code of a transition recording events the platform will not send again."""


@dataclass(slots=True)
class Arrival:
    """One inbound event on its way to the inbox."""

    message: InboundMessage
    event_id: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Stored:
    """An inbox row the routes may see: its id and the message it holds."""

    id: int
    message: InboundMessage


@dataclass(frozen=True, slots=True)
class Gap:
    """Events the platform will not send again (a resume refused after a crash)."""

    platform: str
    detail: str
    size: int | None


@dataclass(frozen=True, slots=True)
class SavedCursor:
    cursor: dict[str, Any]
    saved_at: datetime


@dataclass(slots=True)
class Committed:
    """What one group commit did."""

    stored: list[Stored]
    replayed: int
    """Events already in the inbox (a replay): skipped."""
    lost: int
    """Events the database refused even clipped (counted in ``inbound_cursors.lost``)."""


def _row(a: Arrival) -> dict[str, Any]:
    """An arrival as an inbox row (the row-by-row path: a batch the database refused)."""
    m = a.message
    return {
        "platform": m.platform,
        "event_id": a.event_id,
        "message_id": m.message_id,
        "event": m.event,
        "chat_kind": m.chat_kind,
        "chat_id": m.chat_id,
        "author_id": m.author_id,
        "author_name": m.author_name,
        "text": m.text,
        "extra": _extra(m.extra),
        "sent_at": m.timestamp,
        "received_at": a.received_at,
        "status": "received",
        "run_id": None,
        "attempts": 0,
        "updated_at": a.received_at,
    }


def _extra(extra: Any) -> str | None:
    """The ``extra`` column: the adapter's strings as a JSON object (None when empty)."""
    if not extra:
        return None
    if type(extra) is dict:
        try:
            return orjson.dumps(extra).decode()
        except (TypeError, orjson.JSONEncodeError):
            pass  # a lone surrogate (orjson refuses it) or a key that is not a string
    return json.dumps(dict(extra), ensure_ascii=False)


def message_of(row: Any) -> InboundMessage:
    """The message an inbox row holds, as its route sees it."""
    extra = row["extra"]
    return InboundMessage(
        platform=row["platform"],
        message_id=row["message_id"],
        chat_kind=row["chat_kind"],
        chat_id=row["chat_id"],
        author_id=row["author_id"],
        text=row["text"],
        timestamp=row["sent_at"],
        author_name=row["author_name"],
        event=row["event"],
        extra=json.loads(extra) if extra else {},
    )


_COLUMNS = tuple(c.name for c in inbox.columns if c.name != "id")

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
"""What :func:`~watchdog.schema.storable` replaces: looked for once per row on the hot path."""

_BATCH_COLUMNS = (
    "platform",
    "event_id",
    "message_id",
    "event",
    "chat_kind",
    "chat_id",
    "author_id",
    "text",
    "author_name",
    "extra",
    "sent_at",
    "received_at",
)
"""The columns a group commit binds, in the order :func:`_values` builds them; ``status``,
``run_id`` and ``attempts`` are the same for every new row, and ``updated_at`` is
``received_at``."""
assert set(_BATCH_COLUMNS) | {"status", "run_id", "attempts", "updated_at"} == set(_COLUMNS)


def _bind(value: Any, sqlite_: bool) -> Any:
    """A value as its column type would bind it (see ``watchdog.schema``)."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, datetime):
        value = value.astimezone(UTC)
        # SQLite: SQLAlchemy's DATETIME text, UTC without an offset (UTCDateTime).
        return value.replace(tzinfo=None).isoformat(" ", "microseconds") if sqlite_ else value
    return value


def _time(value: Any, sqlite_: bool) -> Any:
    """:func:`_bind` for a time, without its detours for the usual aware datetime."""
    if type(value) is not datetime:
        return _bind(value, sqlite_)
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26] if sqlite_ else value


def _values(arrivals: Sequence[Arrival], sqlite_: bool) -> list[tuple[Any, ...]]:
    """Each arrival's values for :data:`_BATCH_COLUMNS`, bound as the column types would bind
    them (:func:`_bind`), in one pass: the receive path's one cost on the database thread.

    A row's strings are checked for what :func:`storable` replaces all at once; only a row
    that holds any (rare: a NUL, a lone surrogate) goes through it string by string. Times
    shared by neighbours (one second's messages, one read's arrivals) are converted once."""
    out = []
    sent_from = sent_to = received_from = received_to = None
    for a in arrivals:
        m = a.message
        strings: tuple[Any, ...] = (
            m.platform,
            a.event_id,
            m.message_id,
            m.event,
            m.chat_kind,
            m.chat_id,
            m.author_id,
            m.text,
        )
        try:
            joined = "".join(strings)
        except TypeError:  # a value that is not a string: as its column binds it
            strings = tuple(_bind(v, sqlite_) for v in strings)
        else:
            if not (joined.isascii() and "\x00" not in joined) and _UNSTORABLE.search(joined):
                strings = tuple(storable(v) for v in strings)
        name = m.author_name
        if name is not None:
            name = _bind(name, sqlite_)
        extra = _extra(m.extra)
        if extra is not None and not extra.isascii() and _UNSTORABLE.search(extra):
            extra = storable(extra)  # NUL is escaped in JSON; a lone surrogate may be left
        sent = m.timestamp
        if sent is not sent_from and sent != sent_from:
            sent_from, sent_to = sent, _time(sent, sqlite_)
        received = a.received_at
        if received is not received_from:
            received_from, received_to = received, _time(received, sqlite_)
        out.append((*strings, name, extra, sent_to, received_to))
    return out


_SQLITE_ROWS_MAX = 1024
"""Rows in one SQLite INSERT at most (fewer if its limit on bound parameters is lower)."""
_SQLITE_ROWS_STEP = 64


@functools.lru_cache(maxsize=128)
def _sqlite_insert(rows: int) -> str:
    """The INSERT of ``rows`` new inbox rows: parameter 1 is the first one's id (the others
    follow it), then each row's :data:`_BATCH_COLUMNS`; its ``updated_at`` is its
    ``received_at``. One statement per batch size, prepared once by the driver."""
    width = len(_BATCH_COLUMNS)
    received = _BATCH_COLUMNS.index("received_at")
    values = ", ".join(
        f"(?1 + {i}, {', '.join(['?'] * width)}, ?{2 + i * width + received}, 'received', NULL, 0)"
        for i in range(rows)
    )
    return (
        f"INSERT INTO inbox (id, {', '.join(_BATCH_COLUMNS)}, updated_at, status, run_id, "
        f"attempts) VALUES {values} ON CONFLICT (platform, event_id) DO NOTHING"
    )


_PG_INSERT = (
    f"INSERT INTO inbox ({', '.join(_BATCH_COLUMNS)}, updated_at, status, run_id, attempts) "
    f"SELECT {', '.join(f'r->>{i}' for i in range(10))}, (r->>10)::timestamptz, "
    "(r->>11)::timestamptz, (r->>11)::timestamptz, 'received', NULL, 0 "
    "FROM jsonb_array_elements(%s::jsonb) AS r "
    "ON CONFLICT (platform, event_id) DO NOTHING RETURNING id, platform, event_id"
)
"""One statement for a whole batch on PostgreSQL: the rows as one JSON array parameter
(orjson writes it in C; psycopg's adaptation of a list per column took 50 us a row in
Python), unpacked by the server, and the new rows' ids back from RETURNING."""
assert _BATCH_COLUMNS.index("sent_at") == 10 and _BATCH_COLUMNS.index("received_at") == 11


class InboxStore:
    """The inbox tables, for one gateway instance."""

    def __init__(self, engine: Engine, instance_id: str) -> None:
        self.engine = engine
        self.instance_id = instance_id
        self._sqlite_largest: int | None = None
        """SQLite: rows in one INSERT at most (see :meth:`_chunks`)."""
        self._next_id: int | None = None
        """SQLite: the id after the last batch's, while this store is the inbox's one writer
        (None: read it again)."""
        self._used_to: int | None = None
        """SQLite: the id after the batch being written, until its transaction commits."""

    # -- the group commit

    def commit(
        self,
        arrivals: Sequence[Arrival],
        cursors: Mapping[str, dict[str, Any]],
        gaps: Sequence[Gap] = (),
        dropped: Mapping[str, list[str]] | None = None,
    ) -> Committed:
        """Store a batch of arrivals and advance each platform's cursor past them, in one
        transaction. A row the database refuses (its data, not an outage) is retried alone,
        clipped; one refused even then is counted as lost for its platform, never dropped
        silently. ``dropped``: events an adapter could not even decode, counted as lost too.
        An outage raises, and nothing of the batch is stored."""
        now = now_utc()
        dropped = dropped or {}
        try:
            with self.engine.begin() as conn:
                ids = self._insert(conn, arrivals)
                self._advance(conn, cursors, gaps, dropped, now)
            self._next_id, self._used_to = self._used_to, None  # committed: the ids are taken
            return self._committed(arrivals, ids, {})
        except Exception as exc:
            if not is_row_error(exc):
                raise
            logger.warning(
                "inbox: the database refused part of a batch ({}); storing it row by row",
                describe_exception(exc),
            )
        ids = []
        lost: dict[str, list[str]] = {}
        for a in arrivals:
            rid = None
            try:
                row = _row(a)
            except (TypeError, ValueError) as exc:  # its extra is no JSON object of strings
                attempts, why = [], describe_exception(exc)
            else:
                attempts = [row, fitted(inbox, row)]
            for attempt in attempts:
                try:
                    with self.engine.begin() as conn:
                        rid = self._insert_row(conn, attempt)
                    break
                except Exception as exc:
                    if not is_row_error(exc):
                        raise
                    why = describe_exception(exc)
            else:
                logger.bind(platform=a.message.platform).error(
                    "inbox: event {} cannot be stored and is lost: {}", a.event_id, why
                )
                lost.setdefault(a.message.platform, []).append(f"event {a.event_id}: {why}")
            ids.append(rid)
        with self.engine.begin() as conn:
            everything = {p: dropped.get(p, []) + lost.get(p, []) for p in {*dropped, *lost}}
            self._advance(conn, cursors, gaps, everything, now)
        return self._committed(arrivals, ids, lost)

    def _insert(self, conn: Any, arrivals: Sequence[Arrival]) -> list[int | None]:
        """Insert the arrivals, skipping events already stored; each one's new row id, or None
        for one skipped (a replay, or a second copy in the batch).

        The receive path's one database cost, so it goes to the driver directly, with values
        converted once by :func:`_values` exactly as the column types would convert them."""
        if not arrivals:
            return []
        if conn.dialect.name == "sqlite":
            return self._insert_sqlite(conn, _values(arrivals, True))
        return self._insert_postgresql(conn, _values(arrivals, False))

    def _insert_sqlite(self, conn: Any, rows: list[tuple[Any, ...]]) -> list[int | None]:
        # The new rows get ids after the largest, in order: what SQLite would choose itself,
        # but known without reading anything back. (executemany cannot return rows, and
        # RETURNING hands them back one sqlite3_step at a time.) Every statement costs two
        # hand-offs of the GIL to the event loop, each a wait of up to the switch interval
        # while the loop is busy: so one INSERT for the batch, and the largest id read once and
        # then remembered (see _next_id). Nothing else inserts into the inbox: the intake's
        # one database thread writes it, and one gateway owns a store. If that were broken,
        # an id taken meanwhile fails the batch on the primary key, as a row error: the
        # batch is then stored row by row with ids SQLite picks, and the id is read again.
        n = len(rows)
        first = self._next_id
        if first is None:
            first = int(conn.exec_driver_sql("SELECT max(id) FROM inbox").scalar() or 0) + 1
        inserted = 0
        at = 0
        for size in self._chunks(conn, n):
            chunk = rows[at : at + size]
            params = (first + at, *itertools.chain.from_iterable(chunk))
            inserted += conn.exec_driver_sql(_sqlite_insert(size), params).rowcount
            at += size
        self._next_id, self._used_to = None, first + n  # until the commit succeeds
        if inserted == n:
            return list(range(first, first + n))
        present = {
            rid
            for (rid,) in conn.exec_driver_sql(
                "SELECT id FROM inbox WHERE id >= ? AND id < ?", (first, first + n)
            )
        }
        return [rid if rid in present else None for rid in range(first, first + n)]

    def _chunks(self, conn: Any, n: int) -> list[int]:
        """Rows per INSERT for a batch of ``n``: as many of the largest statement as fit, then
        the rest rounded down to a multiple of 64, then what is left. Two statements for any
        batch up to the largest, and a bounded number of distinct statements (the driver
        prepares each once and keeps it), however the batches' sizes vary."""
        largest = self._sqlite_largest
        if largest is None:
            limit = conn.connection.dbapi_connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            largest = max(1, min(_SQLITE_ROWS_MAX, (limit - 1) // len(_BATCH_COLUMNS)))
            if largest >= _SQLITE_ROWS_STEP:
                largest -= largest % _SQLITE_ROWS_STEP
            self._sqlite_largest = largest
        out = [largest] * (n // largest)
        n %= largest
        if n >= _SQLITE_ROWS_STEP:
            out.append(n - n % _SQLITE_ROWS_STEP)
            n %= _SQLITE_ROWS_STEP
        if n:
            out.append(n)
        return out

    @staticmethod
    def _insert_postgresql(conn: Any, rows: list[tuple[Any, ...]]) -> list[int | None]:
        batch = orjson.dumps(rows).decode()  # times are aware UTC (_time): ISO 8601 with offset
        new = {
            (platform, event_id): int(rid)
            for rid, platform, event_id in conn.exec_driver_sql(_PG_INSERT, (batch,))
        }
        # A second copy of an event in one batch was skipped: the first one took the id.
        return [new.pop((r[0], r[1]), None) for r in rows]

    def _insert_row(self, conn: Any, row: dict[str, Any]) -> int | None:
        """Insert one row (the row-by-row path); its id, or None if the event is stored already."""
        sqlite_ = conn.dialect.name == "sqlite"
        mark = "?" if sqlite_ else "%s"
        sql = (
            f"INSERT INTO inbox ({', '.join(_COLUMNS)}) VALUES ({', '.join([mark] * len(_COLUMNS))})"
            " ON CONFLICT (platform, event_id) DO NOTHING"
        )
        values = tuple(_bind(row[c], sqlite_) for c in _COLUMNS)
        if sqlite_:
            result = conn.exec_driver_sql(sql, values)
            return int(result.lastrowid) if result.rowcount == 1 else None
        rid = conn.exec_driver_sql(sql + " RETURNING id", values).scalar()
        return None if rid is None else int(rid)

    @staticmethod
    def _committed(
        arrivals: Sequence[Arrival], ids: Sequence[int | None], lost: Mapping[str, list[str]]
    ) -> Committed:
        stored = [
            Stored(rid, a.message) for a, rid in zip(arrivals, ids, strict=True) if rid is not None
        ]
        n_lost = sum(map(len, lost.values()))
        return Committed(stored, len(arrivals) - len(stored) - n_lost, n_lost)

    def _advance(
        self,
        conn: Any,
        cursors: Mapping[str, dict[str, Any]],
        gaps: Sequence[Gap],
        lost: Mapping[str, list[str]],
        now: datetime,
    ) -> None:
        if not gaps and not lost:
            self._move_cursors(conn, cursors, now)
            return
        platforms = set(cursors) | {g.platform for g in gaps} | set(lost)
        c = inbound_cursors
        existing = {
            r.platform
            for r in conn.execute(select(c.c.platform).where(c.c.platform.in_(platforms)))
        }
        for platform in sorted(platforms):
            values: dict[str, Any] = {"updated_at": now, "instance_id": self.instance_id}
            if platform in cursors:
                values["cursor"] = json.dumps(cursors[platform], sort_keys=True)
            mine = [g for g in gaps if g.platform == platform]
            if platform not in existing:
                conn.execute(
                    c.insert().values(platform=platform, gaps=0, gap_events=0, lost=0, **values)
                )
            if mine:
                values["gaps"] = c.c.gaps + len(mine)
                values["gap_events"] = c.c.gap_events + sum(g.size or 0 for g in mine)
                values["last_gap"] = mine[-1].detail
                values["last_gap_at"] = now
            if lost.get(platform):
                values["lost"] = c.c.lost + len(lost[platform])
                values["last_lost"] = lost[platform][-1][:2000]
            conn.execute(update(c).where(c.c.platform == platform).values(values))
            for g in mine:
                conn.execute(
                    platform_transitions.insert().values(
                        at=now,
                        instance_id=self.instance_id,
                        platform=platform,
                        reason_code=INBOUND_GAP,
                        reason_message=g.detail,
                    )
                )

    def _move_cursors(
        self, conn: Any, cursors: Mapping[str, dict[str, Any]], now: datetime
    ) -> None:
        """:meth:`_advance` of every batch (no gap, nothing lost): one upsert per platform."""
        if not cursors:
            return
        sqlite_ = conn.dialect.name == "sqlite"
        mark = "?" if sqlite_ else "%s"
        sql = (
            "INSERT INTO inbound_cursors (platform, cursor, updated_at, instance_id, gaps, "
            f"gap_events, lost) VALUES ({mark}, {mark}, {mark}, {mark}, 0, 0, 0) "
            "ON CONFLICT (platform) DO UPDATE SET cursor = excluded.cursor, "
            "updated_at = excluded.updated_at, instance_id = excluded.instance_id"
        )
        at = _time(now, sqlite_)
        for platform, cursor in sorted(cursors.items()):
            values = (platform, json.dumps(cursor, sort_keys=True), self.instance_id)
            conn.exec_driver_sql(
                sql, (storable(values[0]), storable(values[1]), at, storable(values[2]))
            )

    # -- cursors

    def cursors(self) -> dict[str, SavedCursor]:
        """Every platform's stored cursor."""
        c = inbound_cursors
        with self.engine.connect() as conn:
            rows = conn.execute(select(c.c.platform, c.c.cursor, c.c.updated_at)).all()
        out = {}
        for r in rows:
            if r.cursor:
                try:
                    value = json.loads(r.cursor)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    out[r.platform] = SavedCursor(value, r.updated_at)
        return out

    # -- handling

    def backlog(self, limit: int, skip: Iterable[int] = ()) -> list[Stored]:
        """Rows stored but not yet taken by a run, oldest first (after a restart, or when the
        runner was full)."""
        skip = list(skip)
        query = (
            select(inbox)
            .where(and_(inbox.c.status == "received", inbox.c.run_id.is_(None)))
            .order_by(inbox.c.id)
            .limit(limit + len(skip))
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        skipped = set(skip)
        return [Stored(r["id"], message_of(r)) for r in rows if r["id"] not in skipped][:limit]

    def skip(self, ids: Sequence[int]) -> None:
        """No route matches these rows."""
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(inbox)
                .where(and_(inbox.c.id.in_(ids), inbox.c.status == "received"))
                .values(status="skipped", updated_at=now_utc())
            )

    def prune(self, retention: timedelta) -> int:
        """Delete settled rows (handled, skipped, dead) older than ``retention``."""
        horizon = now_utc() - retention
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(inbox).where(
                    and_(
                        inbox.c.status.in_(("handled", "skipped", "dead")),
                        inbox.c.updated_at < horizon,
                    )
                )
            )
        return int(result.rowcount or 0)
