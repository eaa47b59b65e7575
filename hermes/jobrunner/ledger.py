"""The job runner's ledger (``job_runs``) and the durable outbox (``outbox``) in SQL.

Plain synchronous functions on the state store's engine. The gateway runs them on one
:class:`~watchdog.threads.DaemonWorker` thread, so they never touch the event loop and
never race each other; the ``hermes jobs`` CLI calls a few of them directly.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from loguru import logger
from sqlalchemy import (
    Engine,
    and_,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from hermes.inbox.schema import inbox
from watchdog.schema import fitted, job_runs, outbox, storable
from watchdog.store import is_row_error
from watchdog.tasks import describe_exception

T = TypeVar("T")

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


CLAIM_LOCK = 0x6865726D6573
"""PostgreSQL advisory lock taken by every claim: two processes on one store never claim
side by side, so neither sends a chat's later row while the other sends its head."""


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


@dataclass(frozen=True, slots=True)
class StartRun:
    """A run of a route for a stored message, to be started (see :meth:`Ledger.start_run`);
    its outcome is the run id, or None if another run has the inbox row."""

    kind: str
    name: str
    trigger: str
    platform: str | None = None
    message_id: str | None = None
    inbox_id: int | None = None


@dataclass(frozen=True, slots=True)
class FinishRun:
    """The end of a run and what it produced (see :meth:`Ledger.finish_run`); its outcome
    is a :class:`Finished`."""

    run_id: str
    status: str
    error: str | None = None
    output: str | None = None
    messages: Sequence[Outgoing] = ()
    again: bool = False
    send_now: frozenset[str] = frozenset()
    """Platforms connected now: their messages are claimed for sending in the same
    transaction, unless an earlier row of their chat is pending."""


@dataclass(frozen=True, slots=True)
class Finished:
    ids: list[int]
    """The outbox rows stored."""
    claimed: list[Delivery]
    """Those of them already marked ``sending``: to be sent now, in this order."""


@dataclass(frozen=True, slots=True)
class MarkDelivered:
    """A delivery's outcome (see :meth:`Ledger.delivered`); its outcome is None."""

    row_id: int
    platform_message_id: str | None = None
    note: str | None = None


Write = StartRun | FinishRun | MarkDelivered
"""What the job runner and the outbox write in group commits (:meth:`Ledger.write`)."""


class Ledger:
    """SQL operations of the job runner and the outbox."""

    def __init__(self, engine: Engine, instance_id: str | None = None) -> None:
        self.engine = engine
        self.instance_id = instance_id

    # -- group commits

    def write(self, ops: Sequence[Write]) -> list[Any]:
        """Run starts, run ends with their outbox rows, and delivery marks of many runs, in
        one transaction; an outcome per op (its result, or the exception it alone met).

        The same writes as :meth:`start_run`, :meth:`finish_run` and :meth:`delivered`, each
        kind done for the whole batch in a few statements. If the database refuses a row
        (:func:`~watchdog.store.is_row_error`), nothing of the batch is kept and each op is
        written alone by those methods, which fit or fail just that row. An outage raises."""
        try:
            with self.engine.begin() as conn:
                return self._write(conn, ops)
        except Exception as exc:
            if not is_row_error(exc):
                raise
            logger.warning(
                "ledger: the database refused part of a batch of {} writes ({}); writing them one by one",
                len(ops),
                describe_exception(exc),
            )
        return [self._write_alone(op) for op in ops]

    def _write_alone(self, op: Write) -> Any:
        try:
            if isinstance(op, StartRun):
                return self.start_run(
                    kind=op.kind,
                    name=op.name,
                    trigger=op.trigger,
                    platform=op.platform,
                    message_id=op.message_id,
                    inbox_id=op.inbox_id,
                )
            if isinstance(op, FinishRun):
                ids = self.finish_run(
                    op.run_id,
                    op.status,
                    error=op.error,
                    output=op.output,
                    messages=op.messages,
                    again=op.again,
                )
                return Finished(ids, [])  # left pending: the outbox loop sends them
            self.delivered(op.row_id, op.platform_message_id, op.note)
            return None
        except Exception as exc:
            return exc

    def _write(self, conn: Any, ops: Sequence[Write]) -> list[Any]:
        """The batch, straight to the driver: a few SQL strings, each value bound once as
        its column type would bind it. Through SQLAlchemy's per-statement compilation it
        cost several times more, and this is every reply's database cost."""
        sql = _Sql(conn)
        now = now_utc()  # one time for the batch, as each write alone took its own
        out: list[Any] = [None] * len(ops)
        starts = [(i, op) for i, op in enumerate(ops) if isinstance(op, StartRun)]
        finishes = [(i, op) for i, op in enumerate(ops) if isinstance(op, FinishRun)]
        marks = [op for op in ops if isinstance(op, MarkDelivered)]
        if starts:
            self._start_many(sql, starts, out, now)
        if finishes:
            self._finish_many(sql, finishes, out, now)
        if marks:
            sql.many(
                "UPDATE outbox SET status = 'delivered', delivered_at = {}, updated_at = {},"
                " platform_message_id = {}, last_error = {} WHERE id = {}",
                [(now, now, m.platform_message_id, m.note, m.row_id) for m in marks],
            )
        return out

    def _start_many(
        self, sql: _Sql, starts: list[tuple[int, StartRun]], out: list[Any], now: datetime
    ) -> None:
        # The rows still free, then taken without a second look: a row's run_id and status
        # are written only on this writer thread (and, on PostgreSQL, FOR UPDATE locks them
        # against another process), so nothing changes them in between.
        wanted = [op.inbox_id for _, op in starts if op.inbox_id is not None]
        free: set[int] = set()
        for part in _chunks(wanted):
            free.update(
                int(r[0])
                for r in sql.rows(
                    "SELECT id FROM inbox WHERE id IN ({in_}) AND status = 'received'"
                    " AND run_id IS NULL" + sql.for_update,
                    part,
                )
            )
        rows, takes = [], []
        for i, op in starts:
            if op.inbox_id is not None:
                if op.inbox_id not in free:
                    continue  # another run has it (out[i] stays None)
                free.discard(op.inbox_id)
            rid = str(uuid.uuid4())
            rows.append(
                (
                    rid,
                    op.kind,
                    op.name,
                    op.trigger,
                    op.platform,
                    op.message_id,
                    now,
                    "running",
                    self.instance_id,
                )
            )
            if op.inbox_id is not None:
                takes.append((rid, now, op.inbox_id))
            out[i] = rid
        if takes:
            sql.many(
                "UPDATE inbox SET run_id = {}, attempts = attempts + 1, updated_at = {}"
                " WHERE id = {}",
                takes,
            )
        if rows:
            sql.many(
                'INSERT INTO job_runs (id, kind, name, "trigger", platform, message_id, started_at,'
                " status, instance_id) VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {})",
                rows,
            )

    def _finish_many(
        self, sql: _Sql, finishes: list[tuple[int, FinishRun]], out: list[Any], now: datetime
    ) -> None:
        sql.many(
            "UPDATE job_runs SET status = {}, finished_at = {}, error = {}, output = {}"
            " WHERE id = {}",
            [
                (
                    op.status,
                    now,
                    clip(op.error, ERROR_LIMIT),
                    clip(op.output, OUTPUT_LIMIT),
                    op.run_id,
                )
                for _, op in finishes
            ],
        )
        settled = [
            (INBOX_OUTCOME.get(op.status, "handled"), now, op.run_id)
            for _, op in finishes
            if not op.again
        ]
        if settled:
            sql.many(
                "UPDATE inbox SET status = {}, updated_at = {} WHERE run_id = {}",
                settled,
            )
        again = [(now, op.run_id) for _, op in finishes if op.again]
        if again:
            sql.many(
                "UPDATE inbox SET run_id = NULL, status = 'received', updated_at = {}"
                " WHERE run_id = {}",
                again,
            )
        for i, _ in finishes:
            out[i] = Finished([], [])
        messages = [(i, op, m) for i, op in finishes for m in op.messages]
        if not messages:
            return
        placed = self._enqueue_many(sql, [(m, op) for _, op, m in messages], now)
        for (i, _, _), (row_id, delivery) in zip(messages, placed, strict=True):
            if row_id is not None:
                out[i].ids.append(row_id)
            if delivery is not None:
                out[i].claimed.append(delivery)

    def _enqueue_many(
        self, sql: _Sql, items: list[tuple[Outgoing, FinishRun]], now: datetime
    ) -> list[tuple[int | None, Delivery | None]]:
        """:meth:`_enqueue` for a batch: each message's new row id (None if its key was
        there already) and, when claimed at once, its delivery.

        A message is claimed (stored ``sending``) when its platform is connected and no
        earlier row of its chat is ``pending``; otherwise it waits, and the outbox loop
        takes it in order. Rows ``sending`` are this process's, being sent in order by its
        chat's sender (a dead process's were made ``pending`` at start)."""
        reply_tos = list({storable(m.reply_to) for m, _ in items if m.reply_to is not None})
        chat_ids = list({storable(m.chat_id) for m, op in items if m.platform in op.send_now})
        seqs: dict[str, int] = {}
        held: set[tuple[str, str, str]] = set()
        for part in _chunks(reply_tos):
            seqs.update(
                (r[0], int(r[1] or 0))
                for r in sql.rows(
                    "SELECT reply_to, max(reply_seq) FROM outbox WHERE reply_to IN ({in_})"
                    " GROUP BY reply_to",
                    part,
                )
            )
        for part in _chunks(chat_ids):
            held.update(
                (r[0], r[1], r[2])
                for r in sql.rows(
                    "SELECT DISTINCT platform, chat_kind, chat_id FROM outbox"
                    " WHERE status = 'pending' AND chat_id IN ({in_})",
                    part,
                )
            )
        planned: list[tuple[str, Delivery | None]] = []
        rows = []
        for m, op in items:
            key = storable(m.key)
            seq = None
            reply_to = storable(m.reply_to) if m.reply_to is not None else None
            if reply_to is not None:
                seq = seqs.get(reply_to, 0) + 1
                seqs[reply_to] = seq
            chat = (storable(m.platform), storable(m.chat_kind), storable(m.chat_id))
            claim = m.platform in op.send_now and chat not in held
            if not claim:
                held.add(chat)  # the chat's later rows of this batch wait behind this one
            text = storable(m.text)
            delivery = Delivery(0, *chat, text, reply_to, seq, 1) if claim else None
            planned.append((key, delivery))
            rows.append(
                (
                    key, *chat, text, reply_to, seq, m.expires_at,
                    "sending" if claim else "pending", 1 if claim else 0,
                    now, op.run_id, now, now,
                )
            )  # fmt: skip
        ids: dict[str, int] = {}
        for chunk in _chunks(rows):
            # One statement per chunk; RETURNING names the rows that went in (a key already
            # stored is skipped: enqueueing is idempotent).
            ids.update(
                (r[1], int(r[0]))
                for r in sql.rows(
                    "INSERT INTO outbox (idempotency_key, platform, chat_kind, chat_id, text,"
                    " reply_to, reply_seq, expires_at, status, attempts, next_attempt_at, run_id,"
                    " created_at, updated_at) VALUES {values}"
                    " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, idempotency_key",
                    [v for row in chunk for v in row],
                    shape=(len(chunk), 14),
                )
            )
        result: list[tuple[int | None, Delivery | None]] = []
        for key, delivery in planned:
            rid = ids.pop(key, None)  # pop: a key twice in one batch is stored once
            if rid is None:
                result.append((None, None))
            elif delivery is None:
                result.append((rid, None))
            else:
                result.append((rid, dataclasses.replace(delivery, id=rid)))
        return result

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
        inbox_id: int | None = None,
    ) -> str | None:
        """Record a run as started; returns its id, or None if this scheduled run already
        exists (it fired before a crash), or the inbox row ``inbox_id`` is already taken by
        another run: the caller must not run it (again).

        For a message, the run takes its inbox row in the same transaction: exactly one run
        per stored message, however often it is offered."""
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
                if inbox_id is not None and not _take(conn, inbox_id, rid):
                    return None
                conn.execute(insert(job_runs).values(row))
        except IntegrityError:
            if scheduled_for is None:
                raise
            return None
        except Exception as exc:
            if not is_row_error(exc):
                raise
            # A value the database refuses (a platform's 300-character message id): the run
            # is recorded with it clipped rather than not at all.
            logger.warning("run {} recorded with clipped values: {}", rid, describe_exception(exc))
            with self.engine.begin() as conn:
                if inbox_id is not None and not _take(conn, inbox_id, rid):
                    return None
                conn.execute(insert(job_runs).values(fitted(job_runs, row)))
        return rid

    def finish_run(
        self,
        run_id: str,
        status: str,
        *,
        error: str | None = None,
        output: str | None = None,
        messages: Sequence[Outgoing] = (),
        again: bool = False,
    ) -> list[int]:
        """Record how a run ended and put its messages in the outbox, in one transaction.

        The run's inbox row (if it handled a message) is settled in the same transaction:
        ``handled``, or ``dead`` when its handler failed; ``again`` (a run cut off that may be
        run again, ``on_crash = "retry"``) puts the row back for another attempt.

        If the database refuses a row of it (:func:`~watchdog.store.is_row_error`), the run
        and its messages are written one by one instead: a message that cannot be stored is
        recorded as a ``failed`` outbox row where possible, and the run ends ``error`` saying
        which; the others go out. An outage raises, for the caller to retry.
        """
        values = {
            "status": status,
            "finished_at": now_utc(),
            "error": clip(error, ERROR_LIMIT),
            "output": clip(output, OUTPUT_LIMIT),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(update(job_runs).where(job_runs.c.id == run_id).values(values))
                _settle(conn, run_id, status, again)
                return self._enqueue(conn, messages, run_id)
        except Exception as exc:
            if not is_row_error(exc):
                raise
            logger.warning(
                "run {}: the database refused part of its result ({}); writing it row by row",
                run_id,
                describe_exception(exc),
            )
        return self._finish_row_by_row(run_id, values, messages, again)

    def _finish_row_by_row(
        self, run_id: str, values: dict[str, Any], messages: Sequence[Outgoing], again: bool
    ) -> list[int]:
        ids: list[int] = []
        refused: list[str] = []
        for m in messages:
            try:
                with self.engine.begin() as conn:
                    ids += self._enqueue(conn, [m], run_id)
                continue
            except Exception as exc:
                if not is_row_error(exc):
                    raise
                why = f"not stored: {describe_exception(exc)}"
            refused.append(f"message {m.key}: {why}")
            logger.bind(platform=m.platform).error("run {}: message {} {}", run_id, m.key, why)
            try:  # a failed row, counted where failed messages are counted (status)
                with self.engine.begin() as conn:
                    self._enqueue(conn, [m], run_id, failed=why)
            except Exception as exc:
                if not is_row_error(exc):
                    raise
        if refused:
            values["status"] = "error"
            lines = [f"{len(refused)} of {len(messages)} messages could not be stored"]
            values["error"] = clip(
                "; ".join(lines + refused + [values["error"] or ""]).rstrip("; "), ERROR_LIMIT
            )
        try:
            with self.engine.begin() as conn:
                conn.execute(update(job_runs).where(job_runs.c.id == run_id).values(values))
                _settle(conn, run_id, values["status"], again)
        except Exception as exc:
            if not is_row_error(exc):
                raise
            with self.engine.begin() as conn:
                _settle(conn, run_id, "error", again)
                conn.execute(
                    update(job_runs)
                    .where(job_runs.c.id == run_id)
                    .values(
                        status="error",
                        finished_at=values["finished_at"],
                        output=None,
                        error=clip(
                            f"the run ended {values['status']} but its result could not be "
                            f"stored: {describe_exception(exc)}",
                            ERROR_LIMIT,
                        ),
                    )
                )
        return ids

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

    def close_interrupted(self, retry: Iterable[str] = ()) -> int:
        """At start: runs left ``running`` by a process that died are ``cancelled``. The
        messages of routes named in ``retry`` (``on_crash = "retry"``) go back to the inbox
        for another attempt; the others' are settled as handled by the cancelled run."""
        retry = set(retry)
        now = now_utc()
        with self.engine.begin() as conn:
            running = conn.execute(
                select(job_runs.c.id, job_runs.c.kind, job_runs.c.name).where(
                    job_runs.c.status == "running"
                )
            ).all()
            for r in running:
                again = r.kind == "route" and r.name in retry
                conn.execute(
                    update(job_runs)
                    .where(job_runs.c.id == r.id)
                    .values(
                        status="cancelled",
                        finished_at=now,
                        error="interrupted: the gateway stopped during the run"
                        + ("; its message is run again (on_crash = retry)" if again else ""),
                    )
                )
                _settle(conn, r.id, "cancelled", again)
        return len(running)

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

    def _enqueue(
        self,
        conn: Any,
        messages: Sequence[Outgoing],
        run_id: str | None,
        *,
        failed: str | None = None,
    ) -> list[int]:
        """Insert ``messages``; with ``failed``, as ``failed`` rows (clipped to fit) that
        record why a message could not be stored as it was."""
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
            if failed is not None:
                row = fitted(outbox, row) | {
                    "status": "failed",
                    "last_error": clip(failed, ERROR_LIMIT),
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
        # A row waits while an earlier row of its chat is being sent or waits for a retry:
        # order within a chat holds through failures. Other chats are not held.
        earlier = outbox.alias("earlier")
        held = exists().where(
            earlier.c.platform == outbox.c.platform,
            earlier.c.chat_kind == outbox.c.chat_kind,
            earlier.c.chat_id == outbox.c.chat_id,
            earlier.c.id < outbox.c.id,
            or_(
                earlier.c.status == "sending",
                and_(earlier.c.status == "pending", earlier.c.next_attempt_at > now),
            ),
        )
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CLAIM_LOCK})
            rows = (
                conn.execute(
                    select(outbox)
                    .where(
                        outbox.c.status == "pending",
                        outbox.c.next_attempt_at <= now,
                        outbox.c.platform.in_(names),
                        ~held,
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

    def release(self, row_ids: Sequence[int]) -> None:
        """Claimed rows given back unsent, because an earlier row of their chat is to be
        retried first: ``pending`` again, and the claim's attempt does not count."""
        if not row_ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(outbox)
                .where(outbox.c.id.in_(list(row_ids)), outbox.c.status == "sending")
                .values(status="pending", attempts=outbox.c.attempts - 1, updated_at=now_utc())
            )

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
        """The outcome of one delivery attempt. A value the database refuses (a platform's
        over-long message id, say) is clipped to fit rather than leave the row ``sending``
        and its chat held."""
        values["updated_at"] = now_utc()
        statement = update(outbox).where(outbox.c.id == row_id)
        try:
            with self.engine.begin() as conn:
                conn.execute(statement.values(values))
            return
        except Exception as exc:
            if not is_row_error(exc):
                raise
            logger.warning(
                "outbox: message {} outcome stored clipped: {}", row_id, describe_exception(exc)
            )
        with self.engine.begin() as conn:
            conn.execute(statement.values(fitted(outbox, values)))

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


def _chunks(values: list[T], size: int = 500) -> list[list[T]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


class _Sql:
    """SQL strings for the driver of ``conn``: ``{}`` is a parameter, ``{in_}`` the marks of
    a list, ``{values}`` the rows of a multi-row VALUES. Values are bound as the column
    types would bind them (``storable`` text, UTC times: naive text on SQLite)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.sqlite = conn.dialect.name == "sqlite"
        self.mark = "?" if self.sqlite else "%s"
        self.for_update = "" if self.sqlite else " FOR UPDATE"

    def bind(self, value: Any) -> Any:
        if isinstance(value, str):
            return storable(value)
        if isinstance(value, datetime):
            value = value.astimezone(UTC)
            if self.sqlite:
                return value.replace(tzinfo=None).isoformat(" ", "microseconds")
        return value

    def _text(self, template: str, n_in: int = 0, shape: tuple[int, int] | None = None) -> str:
        m = self.mark
        text = template.replace("{in_}", ", ".join([m] * n_in))
        if shape is not None:
            row = "(" + ", ".join([m] * shape[1]) + ")"
            text = text.replace("{values}", ", ".join([row] * shape[0]))
        return text.replace("{}", m)

    def many(self, template: str, rows: list[tuple[Any, ...]]) -> None:
        """``template`` once per row, in one executemany."""
        bind = self.bind
        self.conn.exec_driver_sql(self._text(template), [tuple(map(bind, r)) for r in rows])

    def rows(
        self, template: str, values: list[Any], *, shape: tuple[int, int] | None = None
    ) -> list[Any]:
        """The rows ``template`` returns; ``values`` fill ``{in_}`` or ``{values}``."""
        text = self._text(template, 0 if shape else len(values), shape)
        return list(self.conn.exec_driver_sql(text, tuple(map(self.bind, values))))


def _take(conn: Any, inbox_id: int, run_id: str) -> bool:
    """Give the inbox row to the run, unless another run has it: the one place that makes
    a stored message run exactly once."""
    result = conn.execute(
        update(inbox)
        .where(and_(inbox.c.id == inbox_id, inbox.c.status == "received", inbox.c.run_id.is_(None)))
        .values(run_id=run_id, attempts=inbox.c.attempts + 1, updated_at=now_utc())
    )
    return bool(result.rowcount == 1)


INBOX_OUTCOME = {"ok": "handled", "cancelled": "handled", "error": "dead", "timeout": "dead"}
"""A run's status -> its message's inbox status."""


def _settle(conn: Any, run_id: str, status: str, again: bool) -> None:
    """The inbox row a run handled: settled with the run, or back for another attempt."""
    values: dict[str, Any] = (
        {"run_id": None, "status": "received"}
        if again
        else {"status": INBOX_OUTCOME.get(status, "handled")}
    )
    conn.execute(
        update(inbox).where(inbox.c.run_id == run_id).values(updated_at=now_utc(), **values)
    )


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
    never escalated: the platforms, the watchdog and the pings go on without it.

    The delay stays short (``maximum``, 2 s): these loops carry the messages (the inbox's
    commits, the backlog, a run's end, the outbox), and every one of them must notice that
    the store is back within seconds, not half a minute later with the platform held and
    users waiting. An attempt on a database that is down costs little (refused at once, or
    bounded by the connect timeout), and only the first failure and the recovery are logged."""

    def __init__(self, what: str, *, initial: float = 0.5, maximum: float = 2.0) -> None:
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
