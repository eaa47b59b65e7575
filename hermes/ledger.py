"""The job runner's ledger (``job_runs``) and the durable outbox (``outbox``) in SQL.

Plain synchronous functions on the state store's engine. The gateway runs them on one
:class:`~watchdog.threads.DaemonWorker` thread, so they never touch the event loop and
never race each other; the ``hermes jobs`` CLI calls a few of them directly.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from loguru import logger
from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from watchdog.schema import job_runs, outbox
from watchdog.tasks import describe_exception

REQUEST_MAX_AGE = timedelta(minutes=10)
OUTPUT_LIMIT = 4000
ERROR_LIMIT = 2000
TERMINAL = ("ok", "error", "timeout", "cancelled", "missed")


def now_utc() -> datetime:
    return datetime.now(UTC)


def clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One outbox row to send now."""

    id: int
    platform: str
    chat_kind: str
    chat_id: str
    text: str
    reply_to: str | None
    reply_seq: int | None
    attempts: int


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to put in the outbox."""

    key: str
    """Idempotency key: enqueueing the same key twice stores one row."""
    platform: str
    chat_kind: str
    chat_id: str
    text: str
    reply_to: str | None = None
    expires_at: datetime | None = None


class Ledger:
    """SQL operations of the job runner and the outbox."""

    def __init__(self, engine: Engine, instance_id: str | None = None) -> None:
        self.engine = engine
        self.instance_id = instance_id

    # -- runs

    def start_run(
        self,
        *,
        kind: str,
        name: str,
        trigger: str,
        platform: str | None = None,
        message_id: str | None = None,
        scheduled_for: datetime | None = None,
    ) -> str | None:
        """Record a run as started; returns its id, or None if this scheduled run already
        exists (it fired before a crash): the caller must not run it again."""
        rid = str(uuid.uuid4())
        row = {
            "id": rid,
            "kind": kind,
            "name": name,
            "trigger": trigger,
            "platform": platform,
            "message_id": message_id,
            "scheduled_for": scheduled_for,
            "started_at": now_utc(),
            "status": "running",
            "instance_id": self.instance_id,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(job_runs).values(row))
        except IntegrityError:
            if scheduled_for is None:
                raise
            return None
        return rid

    def finish_run(
        self,
        run_id: str,
        status: str,
        *,
        error: str | None = None,
        output: str | None = None,
        messages: Sequence[Outgoing] = (),
    ) -> list[int]:
        """Record how a run ended and put its messages in the outbox, in one transaction."""
        with self.engine.begin() as conn:
            conn.execute(
                update(job_runs)
                .where(job_runs.c.id == run_id)
                .values(
                    status=status,
                    finished_at=now_utc(),
                    error=clip(error, ERROR_LIMIT),
                    output=clip(output, OUTPUT_LIMIT),
                )
            )
            return self._enqueue(conn, messages, run_id)

    def record_missed(self, name: str, scheduled_for: datetime, why: str) -> bool:
        """A scheduled run that was not run (misfire); False if already recorded."""
        row = {
            "id": str(uuid.uuid4()),
            "kind": "job",
            "name": name,
            "trigger": "schedule",
            "scheduled_for": scheduled_for,
            "status": "missed",
            "error": why,
            "finished_at": now_utc(),
            "instance_id": self.instance_id,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(job_runs).values(row))
        except IntegrityError:
            return False
        return True

    def request_run(self, name: str) -> str:
        """Ask the running gateway to run a job now (``hermes jobs run``)."""
        rid = str(uuid.uuid4())
        row = {
            "id": rid,
            "kind": "job",
            "name": name,
            "trigger": "manual",
            "requested_at": now_utc(),
            "status": "requested",
        }
        with self.engine.begin() as conn:
            conn.execute(insert(job_runs).values(row))
        return rid

    def claim_requests(self, max_age: timedelta = REQUEST_MAX_AGE) -> list[tuple[str, str]]:
        """Requested runs, now marked running by this instance: ``(run id, job name)``.

        A request older than ``max_age`` is closed as ``cancelled`` instead: nobody wants a
        ``hermes jobs run`` from yesterday to fire when a gateway finally starts."""
        now = now_utc()
        # Polled every second or so: read first, and write only when there is a request, so
        # an idle gateway takes no write lock.
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(
                    job_runs.c.id,
                    job_runs.c.name,
                    (job_runs.c.requested_at < now - max_age).label("stale"),
                )
                .where(job_runs.c.status == "requested")
                .order_by(job_runs.c.requested_at)
            ).all()
            stale = [r.id for r in rows if r.stale]
            fresh = [r for r in rows if not r.stale]
            if stale:
                conn.execute(
                    update(job_runs)
                    .where(job_runs.c.id.in_(stale), job_runs.c.status == "requested")
                    .values(
                        status="cancelled",
                        finished_at=now,
                        error=f"expired: no gateway picked the request up within {max_age.total_seconds():.0f} s",
                    )
                )
            if fresh:
                conn.execute(
                    update(job_runs)
                    .where(
                        job_runs.c.id.in_([r.id for r in fresh]), job_runs.c.status == "requested"
                    )
                    .values(status="running", started_at=now_utc(), instance_id=self.instance_id)
                )
        return [(r.id, r.name) for r in fresh]

    def close_interrupted(self) -> int:
        """At start: runs left ``running`` by a process that died are ``cancelled``."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(job_runs)
                .where(job_runs.c.status == "running")
                .values(
                    status="cancelled",
                    finished_at=now_utc(),
                    error="interrupted: the gateway stopped during the run",
                )
            )
        return int(result.rowcount or 0)

    def runs(self, name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The newest runs (of one job or route), oldest first."""
        query = select(job_runs).order_by(
            func.coalesce(
                job_runs.c.started_at, job_runs.c.requested_at, job_runs.c.finished_at
            ).desc()
        )
        if name is not None:
            query = query.where(job_runs.c.name == name)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query.limit(limit)).mappings()]
        rows.reverse()
        return rows

    def run(self, run_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(job_runs).where(job_runs.c.id == run_id)).mappings().first()
        return dict(row) if row else None

    def prune(self, older_than: timedelta, outbox_older_than: timedelta) -> tuple[int, int]:
        """Delete finished runs and settled outbox rows past their retention."""
        cutoff = now_utc() - older_than
        box_cutoff = now_utc() - outbox_older_than
        with self.engine.begin() as conn:
            runs = conn.execute(
                delete(job_runs).where(
                    job_runs.c.status.in_(TERMINAL), job_runs.c.finished_at < cutoff
                )
            ).rowcount
            boxes = conn.execute(
                delete(outbox).where(
                    outbox.c.status.in_(("delivered", "failed", "expired")),
                    outbox.c.updated_at < box_cutoff,
                )
            ).rowcount
        return int(runs or 0), int(boxes or 0)

    # -- outbox

    def enqueue(self, messages: Sequence[Outgoing], run_id: str | None = None) -> list[int]:
        with self.engine.begin() as conn:
            return self._enqueue(conn, messages, run_id)

    def _enqueue(self, conn: Any, messages: Sequence[Outgoing], run_id: str | None) -> list[int]:
        ids = []
        now = now_utc()
        for m in messages:
            seq = None
            if m.reply_to is not None:
                # The n-th reply to one message: fixed now, so a retry is the same reply.
                last = conn.execute(
                    select(func.max(outbox.c.reply_seq)).where(outbox.c.reply_to == m.reply_to)
                ).scalar()
                seq = (last or 0) + 1
            row = {
                "idempotency_key": m.key,
                "platform": m.platform,
                "chat_kind": m.chat_kind,
                "chat_id": m.chat_id,
                "text": m.text,
                "reply_to": m.reply_to,
                "reply_seq": seq,
                "expires_at": m.expires_at,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "run_id": run_id,
                "created_at": now,
                "updated_at": now,
            }
            # RETURNING tells whether a row went in; inserted_primary_key would not (SQLite
            # reports the previous insert's id after ON CONFLICT DO NOTHING).
            inserted = conn.execute(_insert_ignore(conn, row).returning(outbox.c.id)).scalar()
            if inserted is not None:
                ids.append(int(inserted))
        return ids

    def recover_sending(self) -> int:
        """At start: rows a dead process was sending go back to pending (delivery is at
        least once; a reply's fixed ``reply_seq`` lets the platform drop a repeat)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(outbox)
                .where(outbox.c.status == "sending")
                .values(status="pending", updated_at=now_utc())
            )
        return int(result.rowcount or 0)

    def expire_due(self) -> list[dict[str, Any]]:
        """Pending rows past their deadline become ``expired``; returns them."""
        now = now_utc()
        with self.engine.begin() as conn:
            rows = (
                conn.execute(
                    select(outbox.c.id, outbox.c.platform, outbox.c.reply_to).where(
                        outbox.c.status == "pending",
                        outbox.c.expires_at.is_not(None),
                        outbox.c.expires_at < now,
                    )
                )
                .mappings()
                .all()
            )
            if rows:
                conn.execute(
                    update(outbox)
                    .where(outbox.c.id.in_([r["id"] for r in rows]))
                    .values(
                        status="expired",
                        updated_at=now,
                        last_error="past the platform's reply window",
                    )
                )
        return [dict(r) for r in rows]

    def claim(self, platforms: Iterable[str], limit: int) -> list[Delivery]:
        """Due pending rows of the given (connected) platforms, marked ``sending``."""
        names = list(platforms)
        if not names:
            return []
        now = now_utc()
        with self.engine.begin() as conn:
            rows = (
                conn.execute(
                    select(outbox)
                    .where(
                        outbox.c.status == "pending",
                        outbox.c.next_attempt_at <= now,
                        outbox.c.platform.in_(names),
                    )
                    .order_by(outbox.c.id)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
            if not rows:
                return []
            conn.execute(
                update(outbox)
                .where(outbox.c.id.in_([r["id"] for r in rows]), outbox.c.status == "pending")
                .values(status="sending", attempts=outbox.c.attempts + 1, updated_at=now)
            )
        return [
            Delivery(
                r["id"],
                r["platform"],
                r["chat_kind"],
                r["chat_id"],
                r["text"],
                r["reply_to"],
                r["reply_seq"],
                r["attempts"] + 1,
            )
            for r in rows
        ]

    def delivered(
        self, row_id: int, platform_message_id: str | None, note: str | None = None
    ) -> None:
        self._settle(
            row_id,
            status="delivered",
            delivered_at=now_utc(),
            platform_message_id=platform_message_id,
            last_error=note,
        )

    def retry_later(self, row_id: int, error: str, at: datetime) -> None:
        self._settle(
            row_id, status="pending", next_attempt_at=at, last_error=clip(error, ERROR_LIMIT)
        )

    def failed(self, row_id: int, error: str) -> None:
        self._settle(row_id, status="failed", last_error=clip(error, ERROR_LIMIT))

    def _settle(self, row_id: int, **values: Any) -> None:
        """The outcome of one delivery attempt."""
        with self.engine.begin() as conn:
            conn.execute(
                update(outbox).where(outbox.c.id == row_id).values(updated_at=now_utc(), **values)
            )

    def next_due(self, platforms: Iterable[str]) -> datetime | None:
        """When the next pending row of these platforms is due (None: nothing pending)."""
        names = list(platforms)
        if not names:
            return None
        with self.engine.connect() as conn:
            due: datetime | None = conn.execute(
                select(func.min(outbox.c.next_attempt_at)).where(
                    outbox.c.status == "pending", outbox.c.platform.in_(names)
                )
            ).scalar()
        return due

    def outbox_rows(self, status: str | None = None) -> list[dict[str, Any]]:
        query = select(outbox).order_by(outbox.c.id)
        if status is not None:
            query = query.where(outbox.c.status == status)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]


def _insert_ignore(conn: Any, row: dict[str, Any]) -> Any:
    """INSERT that does nothing when the idempotency key already exists."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return (
            postgresql.insert(outbox)
            .values(row)
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
        )
    if dialect == "sqlite":
        return (
            sqlite.insert(outbox)
            .values(row)
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
        )
    raise ValueError(f"unsupported database {dialect}")


class Outage:
    """Tracks failing database calls in a loop: one log line when an outage starts, one when
    it ends, and a growing delay between attempts meanwhile. A failing database is reported,
    never escalated: the platforms, the watchdog and the pings go on without it."""

    def __init__(self, what: str, *, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.what = what
        self.initial = initial
        self.maximum = maximum
        self.failures = 0
        self._since: datetime | None = None

    def failed(self, exc: BaseException) -> float:
        """Note a failure; the delay before the next attempt."""
        if self._since is None:
            self._since = now_utc()
            logger.error(
                "{}: state store unavailable, will retry: {}", self.what, describe_exception(exc)
            )
        self.failures += 1
        return float(min(self.initial * 2 ** min(self.failures - 1, 16), self.maximum))

    def ok(self) -> None:
        if self._since is not None:
            seconds = (now_utc() - self._since).total_seconds()
            logger.info("{}: state store works again after {:.0f} s", self.what, seconds)
            self._since = None
            self.failures = 0


DB_ERRORS = (SQLAlchemyError, OSError)
"""What a database call raises when the database, not our code, is the problem."""
