"""The inbox's SQL: group commits of inbound rows with their cursor, claims, outcomes.

Every method runs on a database thread (never on the event loop) and is one
transaction. A replayed event whose ``(platform, event_id)`` is already stored is
skipped by the database itself (a unique index), so no handler ever sees it twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

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
        "extra": json.dumps(dict(m.extra), ensure_ascii=False) if m.extra else None,
        "sent_at": m.timestamp,
        "received_at": a.received_at,
        "status": "received",
        "run_id": None,
        "attempts": 0,
        "updated_at": a.received_at,
    }


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


def _bind(value: Any, sqlite_: bool) -> Any:
    """A value as its column type would bind it (see ``watchdog.schema``)."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, datetime):
        value = value.astimezone(UTC)
        # SQLite: SQLAlchemy's DATETIME text, UTC without an offset (UTCDateTime).
        return value.replace(tzinfo=None).isoformat(" ", "microseconds") if sqlite_ else value
    return value


class InboxStore:
    """The inbox tables, for one gateway instance."""

    def __init__(self, engine: Engine, instance_id: str) -> None:
        self.engine = engine
        self.instance_id = instance_id

    # -- the group commit

    def commit(
        self,
        arrivals: Sequence[Arrival],
        cursors: Mapping[str, dict[str, Any]],
        gaps: Sequence[Gap] = (),
    ) -> Committed:
        """Store a batch of arrivals and advance each platform's cursor past them, in one
        transaction. A row the database refuses (its data, not an outage) is retried alone,
        clipped; one refused even then is counted as lost for its platform, never dropped
        silently. An outage raises, and nothing of the batch is stored."""
        now = now_utc()
        try:
            with self.engine.begin() as conn:
                inserted = self._insert(conn, [_row(a) for a in arrivals])
                self._advance(conn, cursors, gaps, {}, now)
            return self._committed(arrivals, inserted, {})
        except Exception as exc:
            if not is_row_error(exc):
                raise
            logger.warning(
                "inbox: the database refused part of a batch ({}); storing it row by row",
                describe_exception(exc),
            )
        inserted = {}
        lost: dict[str, list[str]] = {}
        for a in arrivals:
            row = _row(a)
            for attempt in (row, fitted(inbox, row)):
                try:
                    with self.engine.begin() as conn:
                        inserted.update(self._insert(conn, [attempt]))
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
        with self.engine.begin() as conn:
            self._advance(conn, cursors, gaps, lost, now)
        return self._committed(arrivals, inserted, lost)

    def _insert(self, conn: Any, rows: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
        """Insert ``rows``, skipping events already stored; the ids of the new ones.

        The receive path's one database cost, so it goes to the driver directly: values
        converted once here exactly as the column types would (:func:`storable` text, UTC
        times), one ``executemany``, and the new ids read back by event id. Through the ORM
        layer's per-value processing it was about ten times slower."""
        if not rows:
            return {}
        sqlite_ = conn.dialect.name == "sqlite"
        mark = "?" if sqlite_ else "%s"
        by_platform: dict[str, list[str]] = {}
        for r in rows:
            by_platform.setdefault(r["platform"], []).append(storable(r["event_id"]))
        before = self._ids(conn, by_platform, mark)
        sql = (
            f"INSERT INTO inbox ({', '.join(_COLUMNS)}) VALUES ({', '.join([mark] * len(_COLUMNS))})"
            " ON CONFLICT (platform, event_id) DO NOTHING"
        )
        conn.exec_driver_sql(sql, [tuple(_bind(r[c], sqlite_) for c in _COLUMNS) for r in rows])
        after = self._ids(conn, by_platform, mark)
        return {key: rid for key, rid in after.items() if key not in before}

    @staticmethod
    def _ids(
        conn: Any, by_platform: Mapping[str, list[str]], mark: str
    ) -> dict[tuple[str, str], int]:
        found = {}
        for platform, events in by_platform.items():
            for i in range(0, len(events), 500):
                chunk = events[i : i + 500]
                sql = (
                    f"SELECT id, event_id FROM inbox WHERE platform = {mark} "
                    f"AND event_id IN ({', '.join([mark] * len(chunk))})"
                )
                for rid, event_id in conn.exec_driver_sql(sql, (storable(platform), *chunk)):
                    found[(platform, event_id)] = int(rid)
        return found

    @staticmethod
    def _committed(
        arrivals: Sequence[Arrival],
        inserted: Mapping[tuple[str, str], int],
        lost: Mapping[str, list[str]],
    ) -> Committed:
        stored = []
        for a in arrivals:
            rid = inserted.get((a.message.platform, a.event_id))
            if rid is not None:
                stored.append(Stored(rid, a.message))
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
        platforms = set(cursors) | {g.platform for g in gaps} | set(lost)
        if not platforms:
            return
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
