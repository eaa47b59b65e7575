"""The SQL state store: what the watchdog saw, for the status CLI, monitoring and plain SQL.

SQLite (WAL) by default, PostgreSQL by URL. The gateway writes through
:class:`~watchdog.writer.StoreWriter` on a thread of its own; the CLI opens the
store read-only and never creates or migrates anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy import column as sa_column
from sqlalchemy import table as sa_table
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    SQLAlchemyError,
    StatementError,
)

from watchdog.exceptions import StoreError, StoreNotFound
from watchdog.readonly import read_only_uri as _read_only_uri
from watchdog.readonly import sidecars as _sidecars
from watchdog.schema import (
    UTCDateTime,
    fitted,
    gateway_instances,
    job_runs,
    metadata,
    outbox,
    platform_state,
    platform_transitions,
)
from watchdog.states import FAILED_RUNS
from watchdog.storeurl import default_sqlite_url as default_sqlite_url

SCHEMA_HEAD = "0003"
RUNNER_SCHEMA = "0002"
"""The first revision with ``job_runs`` and ``outbox``."""
INBOX_SCHEMA = "0003"
"""The first revision with ``inbox`` and ``inbound_cursors``."""

# The inbox's tables belong to the gateway (``hermes.inbox.schema``); supervision reads
# them by their documented column names only, for ``status``.
_inbox = sa_table(
    "inbox",
    sa_column("status", String),
    sa_column("received_at", UTCDateTime),
    sa_column("updated_at", UTCDateTime),
    sa_column("run_id", String),
)
_cursors = sa_table(
    "inbound_cursors",
    sa_column("platform", String),
    sa_column("gaps", Integer),
    sa_column("gap_events", Integer),
    sa_column("last_gap", String),
    sa_column("last_gap_at", UTCDateTime),
    sa_column("lost", Integer),
    sa_column("last_lost", String),
)
ALEMBIC_LOCATION = "watchdog:migrations"

HEAD_TABLES = frozenset(
    {
        "gateway_instances",
        "platform_state",
        "platform_transitions",
        "job_runs",
        "outbox",
        "apscheduler_jobs",
        "inbox",
        "inbound_cursors",
    }
)
"""Every table the migrations create up to :data:`SCHEMA_HEAD`. A new store is created at head
from the table definitions (``metadata``) when they hold exactly these: the gateway's
(``hermes.inbox.schema``) register there when imported. tests/integration/test_schema_head.py
holds the tables created at head to what the migrations build, on SQLite and PostgreSQL."""

_alembic_version = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)
"""Alembic's own version table, as ``alembic.runtime.migration`` defines it."""

T = TypeVar("T")


def display_url(url: str | URL) -> str:
    """The URL with any password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


@dataclass(slots=True)
class Batch:
    """Rows to write in one transaction; newer batches merge into older ones while the store is down."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Full ``platform_state`` rows, by platform."""
    removed: set[str] = field(default_factory=set)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    instance: dict[str, Any] = field(default_factory=dict)
    """Columns of this gateway's ``gateway_instances`` row to update."""

    def merge(self, newer: Batch) -> None:
        for name in newer.removed:
            self.rows.pop(name, None)
            self.removed.add(name)
        for name, row in newer.rows.items():
            self.rows[name] = row
            self.removed.discard(name)
        self.transitions.extend(newer.transitions)
        self.instance.update(newer.instance)

    def __bool__(self) -> bool:
        return bool(self.rows or self.removed or self.transitions or self.instance)


class StateStore:
    """One database holding the supervision tables."""

    def __init__(self, url: str, *, read_only: bool = False, timeout: float = 10.0) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise StoreError(f"invalid database URL {url!r}: {exc}") from exc
        self.url = parsed
        self.read_only = read_only
        self.name = display_url(parsed)
        self._checked_revision: str | None = None
        """The revision check_readable() or migrate() found, so reads need not ask again."""
        self._quiet_sidecars: tuple[int, int] | None = None
        """SQLite read without locks (``immutable``): the -wal and -shm sizes (-1: absent) seen
        then, to notice a gateway that opened the database during the read."""
        self._sqlite_path: Path | None = None
        try:
            self.engine = self._create_engine(parsed, timeout)
        except (SQLAlchemyError, ImportError) as exc:
            raise StoreError(f"cannot use database {self.name}: {exc}") from exc

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def _create_engine(self, url: URL, timeout: float) -> Engine:
        if url.get_backend_name() == "sqlite":
            return self._create_sqlite(url, timeout)
        connect_args: dict[str, Any] = {}
        if url.get_backend_name() == "postgresql":
            q = url.query
            if "connect_timeout" not in q:
                connect_args["connect_timeout"] = max(1, int(timeout))
            if "tcp_user_timeout" not in q and url.get_driver_name() == "psycopg":
                # A dead network must not hang the writer thread forever in recv().
                connect_args["tcp_user_timeout"] = int(timeout * 3000)
        engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True, pool_size=2)
        if self.read_only and engine.dialect.name == "postgresql":
            statement_ms = int(timeout * 1000)

            @event.listens_for(engine, "connect")
            def _readonly(dbapi_conn: Any, _record: Any) -> None:
                with dbapi_conn.cursor() as cur:
                    cur.execute(f"SET statement_timeout = {statement_ms}")
                    cur.execute("SET default_transaction_read_only = on")
                dbapi_conn.commit()

        return engine

    def _create_sqlite(self, url: URL, timeout: float) -> Engine:
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise StoreError(f"the state store needs an SQLite file path, got {self.name}")
        path = Path(database)
        if self.read_only:
            if not path.exists():
                raise StoreNotFound(
                    f"no state store at {path} (has the gateway run with this configuration?)"
                )
            path = self._sqlite_path = path.resolve()
            # The URI is chosen per connection (see _read_only_uri); this one is a placeholder.
            url = url.set(database=f"file:{path}?mode=ro", query={"uri": "true"})
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": timeout})
        if self.read_only:

            @event.listens_for(engine, "do_connect")
            def _read_only_connect(
                _dialect: Any, _record: Any, cargs: list[Any], _cparams: dict[str, Any]
            ) -> None:
                cargs[0], quiet = _read_only_uri(path)
                if quiet is not None and self._quiet_sidecars is None:
                    self._quiet_sidecars = quiet

        busy_ms = int(timeout * 1000)
        read_only = self.read_only

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            try:
                cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
                if not read_only:
                    cur.execute("PRAGMA journal_mode = WAL")
                    cur.execute("PRAGMA synchronous = NORMAL")
            finally:
                cur.close()

        return engine

    def close(self) -> None:
        self.engine.dispose()

    def read_consistently(self, read: Callable[[], T]) -> T:
        """``read()``, done again through SQLite's locks if it ran without them and a gateway
        opened the database meanwhile (what it read may then be torn by a checkpoint)."""
        result = read()
        quiet, path = self._quiet_sidecars, self._sqlite_path
        if quiet is not None and path is not None and _sidecars(path) != quiet:
            self.engine.dispose()  # the next connection chooses its mode again
            self._quiet_sidecars = None
            self._checked_revision = None
            result = read()
        return result

    # -- schema

    def migrate(self) -> tuple[str | None, str]:
        """Bring the schema to the newest revision (idempotent); returns (before, after).

        A store at head is left as it is, and a new one is created at head in one step
        (:meth:`create_at_head`); neither loads alembic. Only a store behind head replays
        the migrations it lacks."""
        if self.read_only:
            raise StoreError("refusing to migrate a store opened read-only")
        before = self.revision()
        if before == SCHEMA_HEAD:
            self._checked_revision = before
            return before, before  # the usual restart: no need to load alembic at all
        if before is None and set(metadata.tables) == HEAD_TABLES and self._is_empty():
            self.create_at_head()
        else:
            self._upgrade()
        after = self.revision()
        if after is None:
            raise StoreError(f"migrating {self.name} left no schema revision")
        self._checked_revision = after
        return before, after

    def _is_empty(self) -> bool:
        """No table of ours, nor alembic's, in the database (or its search path)."""
        with self._reading() as conn:
            insp = inspect(conn)
            return not any(insp.has_table(t) for t in (*HEAD_TABLES, "alembic_version"))

    def create_at_head(self) -> None:
        """Create every table at :data:`SCHEMA_HEAD` from the table definitions and stamp the
        revision, in one transaction: what replaying the migrations builds, in a fraction of
        the time (see :data:`HEAD_TABLES`)."""
        try:
            with self.engine.begin() as conn:
                if self.dialect == "sqlite":
                    # pysqlite runs DDL outside any transaction; begun by hand, the store
                    # appears whole or not at all to a reader (the status CLI).
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                metadata.create_all(conn, checkfirst=False)
                _alembic_version.create(conn, checkfirst=False)
                conn.execute(insert(_alembic_version).values(version_num=SCHEMA_HEAD))
        except SQLAlchemyError as exc:
            raise StoreError(f"creating the store {self.name} failed: {_short(exc)}") from exc

    def _upgrade(self) -> None:
        """Replay the migrations from the store's revision to head (alembic)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", ALEMBIC_LOCATION)
        try:
            with self.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except SQLAlchemyError as exc:
            raise StoreError(f"migrating {self.name} failed: {_short(exc)}") from exc

    def revision(self) -> str | None:
        """The schema revision, ``None`` for a database without our tables."""
        with self._reading() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            rev: str | None = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            return rev

    def check_readable(self) -> None:
        """Raise :class:`StoreError` unless this is a hermes state store we understand."""
        rev = self.revision()
        if rev is None:
            raise StoreError(f"{self.name} is not a hermes state store (no schema revision)")
        if rev > SCHEMA_HEAD:
            raise StoreError(
                f"{self.name} has schema {rev}, newer than this hermes ({SCHEMA_HEAD})"
            )
        self._checked_revision = rev

    def _has_runner_tables(self) -> bool:
        rev = self._checked_revision or self.revision()
        return (rev or "") >= RUNNER_SCHEMA

    # -- gateway writes

    def begin_instance(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """Insert this gateway's instance row; close earlier rows left open by a crash.

        Returns the rows that were closed, for the log.
        """
        with self._writing() as conn:
            stale = (
                conn.execute(
                    select(gateway_instances).where(gateway_instances.c.stopped_at.is_(None))
                )
                .mappings()
                .all()
            )
            for old in stale:
                conn.execute(
                    update(gateway_instances)
                    .where(gateway_instances.c.id == old["id"])
                    .values(
                        stopped_at=old["last_tick_at"] or old["started_at"],
                        exit_reason="vanished: no clean stop was recorded",
                    )
                )
            conn.execute(insert(gateway_instances).values(row))
        return [dict(r) for r in stale]

    def replace_platforms(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        """At start: make ``platform_state`` hold exactly ``rows``; returns the platforms removed."""
        keep = {r["platform"] for r in rows}
        with self._writing() as conn:
            present = set(conn.execute(select(platform_state.c.platform)).scalars())
            gone = sorted(present - keep)
            if gone:
                conn.execute(delete(platform_state).where(platform_state.c.platform.in_(gone)))
            self._upsert(conn, rows)
        return gone

    def write(self, batch: Batch, instance_id: str) -> None:
        with self._writing() as conn:
            if batch.removed:
                conn.execute(
                    delete(platform_state).where(platform_state.c.platform.in_(batch.removed))
                )
            if batch.rows:
                self._upsert(conn, list(batch.rows.values()))
            if batch.transitions:
                conn.execute(insert(platform_transitions), batch.transitions)
            if batch.instance:
                conn.execute(
                    update(gateway_instances)
                    .where(gateway_instances.c.id == instance_id)
                    .values(batch.instance)
                )

    def write_each(self, batch: Batch, instance_id: str) -> list[str]:
        """Write ``batch`` piece by piece, each in a transaction of its own: after a row error
        (:func:`is_row_error`) sank it whole, one bad row must not sink its neighbours.

        A piece the database refuses is tried once more clipped to fit its columns, then
        left out. Written and left-out pieces leave ``batch``, so that after an outage
        midway (raised) a retry of what remains writes nothing twice. Returns a description
        of each piece left out.
        """
        refused: list[str] = []

        def each(what: str, table: Table, row: dict[str, Any], write: Any) -> None:
            try:
                with self._writing() as conn:
                    write(conn, row)
                return
            except StoreError as exc:
                if not is_row_error(exc):
                    raise
                error = str(exc)
            try:
                with self._writing() as conn:
                    write(conn, fitted(table, row))
            except StoreError as exc:
                if not is_row_error(exc):
                    raise
                refused.append(f"{what}: {error}")

        if batch.removed:
            with self._writing() as conn:
                conn.execute(
                    delete(platform_state).where(platform_state.c.platform.in_(batch.removed))
                )
            batch.removed.clear()
        for name in list(batch.rows):
            each(
                f"platform_state row of {name}",
                platform_state,
                batch.rows[name],
                lambda conn, row: self._upsert(conn, [row]),
            )
            del batch.rows[name]
        while batch.transitions:
            first = batch.transitions[0]
            each(
                f"transition of {first.get('platform')} at {first.get('at')}",
                platform_transitions,
                first,
                lambda conn, row: conn.execute(insert(platform_transitions), [row]),
            )
            del batch.transitions[0]
        if batch.instance:
            each(
                "gateway_instances row",
                gateway_instances,
                batch.instance,
                lambda conn, row: conn.execute(
                    update(gateway_instances)
                    .where(gateway_instances.c.id == instance_id)
                    .values(row)
                ),
            )
            batch.instance.clear()
        return refused

    def _upsert(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        stmt: Any
        # Imported here: loading the PostgreSQL dialect package (every driver's module) costs
        # an SQLite gateway's start-up for nothing, and the other way round.
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(platform_state)
        elif self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(platform_state)
        else:
            raise StoreError(f"unsupported database {self.dialect}; use SQLite or PostgreSQL")
        columns = {c.name: stmt.excluded[c.name] for c in platform_state.c if c.name != "platform"}
        conn.execute(
            stmt.on_conflict_do_update(index_elements=["platform"], set_=columns), list(rows)
        )

    @contextmanager
    def _connection(self, *, write: bool) -> Iterator[Connection]:
        """A connection (in a committed transaction when writing); driver errors become
        :class:`StoreError` naming the database without its password."""
        try:
            with self.engine.begin() if write else self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            what = "" if write else "cannot read "
            raise StoreError(f"{what}{self.name}: {_short(exc)}") from exc

    def _writing(self) -> AbstractContextManager[Connection]:
        return self._connection(write=True)

    def _reading(self) -> AbstractContextManager[Connection]:
        return self._connection(write=False)

    # -- reads (CLI, tests, monitoring)

    def latest_instance(self) -> dict[str, Any] | None:
        with self._reading() as conn:
            row = (
                conn.execute(
                    select(gateway_instances)
                    .order_by(gateway_instances.c.started_at.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None

    def platforms(self) -> list[dict[str, Any]]:
        with self._reading() as conn:
            rows = conn.execute(
                select(platform_state).order_by(platform_state.c.platform)
            ).mappings()
            return [dict(r) for r in rows]

    def jobs_summary(self, since: datetime) -> list[dict[str, Any]]:
        """Per route or job with a run finished since ``since``: its latest run, its runs and
        failures since then. Empty for a store older than the job runner."""
        if not self._has_runner_tables():
            return []
        failed = case((job_runs.c.status.in_(FAILED_RUNS), 1), else_=0)
        with self._reading() as conn:
            counts = conn.execute(
                select(
                    job_runs.c.name,
                    job_runs.c.kind,
                    func.count().label("runs"),
                    func.sum(failed).label("failures"),
                )
                .where(job_runs.c.finished_at >= since)
                .group_by(job_runs.c.name, job_runs.c.kind)
                .order_by(job_runs.c.name)
            ).all()
            result = []
            for row in counts:
                last = conn.execute(
                    select(job_runs.c.status, job_runs.c.finished_at, job_runs.c.error)
                    .where(job_runs.c.name == row.name, job_runs.c.finished_at.is_not(None))
                    .order_by(job_runs.c.finished_at.desc())
                    .limit(1)
                ).one()
                result.append(
                    {
                        "name": row.name,
                        "kind": row.kind,
                        "runs": int(row.runs),
                        "failures": int(row.failures or 0),
                        "last_status": last.status,
                        "last_finished_at": last.finished_at,
                        "last_error": last.error,
                    }
                )
        return result

    def outbox_summary(self, since: datetime) -> dict[str, Any] | None:
        """Messages waiting now, and settled badly since ``since``; None before the outbox."""
        if not self._has_runner_tables():
            return None
        with self._reading() as conn:
            waiting = {
                status: (count, oldest)
                for status, count, oldest in conn.execute(
                    select(outbox.c.status, func.count(), func.min(outbox.c.created_at))
                    .where(outbox.c.status.in_(("pending", "sending")))
                    .group_by(outbox.c.status)
                )
            }
            settled: dict[str, int] = dict(
                conn.execute(
                    select(outbox.c.status, func.count())
                    .where(outbox.c.status.in_(("failed", "expired")), outbox.c.updated_at >= since)
                    .group_by(outbox.c.status)
                ).all()
            )
        pending, oldest = waiting.get("pending", (0, None))
        return {
            "pending": int(pending),
            "sending": int(waiting.get("sending", (0, None))[0]),
            "failed_recently": int(settled.get("failed", 0)),
            "expired_recently": int(settled.get("expired", 0)),
            "oldest_pending_at": oldest,
        }

    def inbox_summary(self, since: datetime) -> dict[str, Any] | None:
        """Inbound messages waiting for a run, dead since ``since``, cut off since then (their
        run cancelled by a stop or a crash and not run again), and per platform the gaps and
        losses on record; None before the inbox existed."""
        rev = self._checked_revision or self.revision()
        if (rev or "") < INBOX_SCHEMA:
            return None
        with self._reading() as conn:
            waiting, oldest = conn.execute(
                select(func.count(), func.min(_inbox.c.received_at)).where(
                    _inbox.c.status == "received"
                )
            ).one()
            dead = conn.execute(
                select(func.count()).where(_inbox.c.status == "dead", _inbox.c.updated_at >= since)
            ).scalar_one()
            cut_off = conn.execute(
                select(func.count())
                .select_from(_inbox.join(job_runs, job_runs.c.id == _inbox.c.run_id))
                .where(job_runs.c.status == "cancelled", job_runs.c.finished_at >= since)
            ).scalar_one()
            platforms = [
                dict(r)
                for r in conn.execute(
                    select(_cursors).where((_cursors.c.gaps > 0) | (_cursors.c.lost > 0))
                ).mappings()
            ]
        return {
            "waiting": int(waiting),
            "oldest_waiting_at": oldest,
            "dead_recently": int(dead),
            "cut_off_recently": int(cut_off),
            "gaps": sum(int(p["gaps"]) for p in platforms),
            "lost": sum(int(p["lost"]) for p in platforms),
            "platforms": platforms,
        }

    def transitions(
        self, platform: str | None = None, since: datetime | None = None, limit: int | None = 200
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` transitions (optionally of one platform, since a time), oldest first."""
        t = platform_transitions
        query = select(t).order_by(t.c.id.desc())
        if platform is not None:
            query = query.where(t.c.platform == platform)
        if since is not None:
            query = query.where(t.c.at >= since)
        if limit is not None:
            query = query.limit(limit)
        with self._reading() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        rows.reverse()
        return rows


def is_row_error(exc: BaseException) -> bool:
    """True if ``exc`` says that the data of a row is bad, not that the database is unavailable.

    Such an error comes back however often the write is tried: it belongs to the row (record
    the row as failed, write its neighbours), never to an outage (wait and retry). Rows are
    data errors (a value out of range or too long for its column), integrity errors (a
    constraint), and errors raised while binding values, before the database saw anything.
    Anything else from the database, an ``OperationalError`` above all, is an outage. Looks
    through wrappers such as :class:`StoreError` (``raise ... from``).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (DataError, IntegrityError)):
            return True
        if isinstance(current, StatementError) and not isinstance(current, DBAPIError):
            return True  # a bind processor refused the value (naive datetime, bad type, ...)
        if isinstance(current, (UnicodeError, TypeError)):
            return True  # the driver could not encode the value
        current = current.__cause__
    return False


def _short(exc: BaseException) -> str:
    """The driver's message without SQLAlchemy's statement dump and background link."""
    orig = getattr(exc, "orig", None)
    msg = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig or exc).__name__}: {msg[0] if msg else ''}"
