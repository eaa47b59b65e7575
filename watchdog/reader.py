"""The state store read with the database driver alone: ``hermes-watchdog status`` and
``history`` without SQLAlchemy.

Importing SQLAlchemy costs several times what the reads themselves do, and an operator
(or a monitoring system, every minute) starts the status command afresh each time. This
module reads the documented tables with :mod:`sqlite3` or :mod:`psycopg` directly and
returns exactly what :class:`watchdog.store.StateStore`'s reads return: the same keys in
the same order, UTC-aware datetimes, booleans, the same errors. It keeps the same
read-only guarantees (:mod:`watchdog.readonly`). Whatever it does not handle plainly (a
driver other than pysqlite or psycopg, a URL with a repeated query key, ...)
:func:`open_reader` leaves to :class:`~watchdog.store.StateStore`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from watchdog.exceptions import StoreError, StoreNotFound
from watchdog.readonly import read_only_uri, sidecars
from watchdog.states import FAILED_RUNS
from watchdog.storeurl import DatabaseURL, parse_url

T = TypeVar("T")

SCHEMA_HEAD = "0003"
"""Kept equal to :data:`watchdog.store.SCHEMA_HEAD` (a test checks)."""
RUNNER_SCHEMA = "0002"
INBOX_SCHEMA = "0003"

# The columns read, in the order of the tables' definitions (watchdog.schema,
# hermes.inbox.schema; a test checks): "t" a UTC timestamp, "b" a boolean.
INSTANCE_COLUMNS = (
    ("id", ""),
    ("host", ""),
    ("pid", ""),
    ("version", ""),
    ("started_at", "t"),
    ("last_tick_at", "t"),
    ("tick_interval", ""),
    ("pinging", "b"),
    ("status_text", ""),
    ("stopped_at", "t"),
    ("exit_code", ""),
    ("exit_reason", ""),
    ("store_failures", ""),
    ("store_last_error", ""),
    ("store_last_error_at", "t"),
)
PLATFORM_COLUMNS = (
    ("platform", ""),
    ("adapter", ""),
    ("required", "b"),
    ("declared_state", ""),
    ("declared_since", "t"),
    ("health", ""),
    ("health_since", "t"),
    ("last_heartbeat_at", "t"),
    ("heartbeat_ttl", ""),
    ("restarts", ""),
    ("reason_code", ""),
    ("reason_message", ""),
    ("retryable", "b"),
    ("instance_id", ""),
    ("updated_at", "t"),
)
TRANSITION_COLUMNS = (
    ("id", ""),
    ("at", "t"),
    ("instance_id", ""),
    ("platform", ""),
    ("from_state", ""),
    ("to_state", ""),
    ("from_health", ""),
    ("to_health", ""),
    ("reason_code", ""),
    ("reason_message", ""),
)
CURSOR_COLUMNS = (
    ("platform", ""),
    ("gaps", ""),
    ("gap_events", ""),
    ("last_gap", ""),
    ("last_gap_at", "t"),
    ("lost", ""),
    ("last_lost", ""),
)

Columns = Sequence[tuple[str, str]]


def _names(columns: Columns) -> str:
    return ", ".join(name for name, _ in columns)


def _utc(value: Any) -> datetime | None:
    """What ``UTCDateTime`` makes of a stored value: SQLite's text, PostgreSQL's timestamptz."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            # SQLite holds naive UTC text; parsed with its zone in one go, 4x faster than
            # fromisoformat() then replace(tzinfo=UTC) (1,000 platforms hold 4,000 of them).
            return datetime.fromisoformat(value + "+00:00")
        except ValueError:
            value = datetime.fromisoformat(value)  # text with a zone of its own, or a date
    if not isinstance(value, datetime):
        raise TypeError(f"expected a timestamp, got {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _Rows:
    """Turns a table's rows into dicts, as SQLAlchemy's column types return them."""

    __slots__ = ("bools", "names", "times")

    def __init__(self, columns: Columns) -> None:
        self.names = tuple(name for name, _ in columns)
        self.times = tuple(i for i, (_, kind) in enumerate(columns) if kind == "t")
        self.bools = tuple(i for i, (_, kind) in enumerate(columns) if kind == "b")

    def __call__(self, row: Sequence[Any]) -> dict[str, Any]:
        values = list(row)
        for i in self.times:
            if values[i] is not None:
                values[i] = _utc(values[i])
        for i in self.bools:
            if values[i] is not None:
                values[i] = bool(values[i])
        return dict(zip(self.names, values, strict=True))


_instance_row = _Rows(INSTANCE_COLUMNS)
_platform_row = _Rows(PLATFORM_COLUMNS)
_transition_row = _Rows(TRANSITION_COLUMNS)
_cursor_row = _Rows(CURSOR_COLUMNS)


def open_reader(url: str, timeout: float = 10.0) -> Reader | None:
    """A reader of the store at ``url``; None for a URL to leave to SQLAlchemy."""
    parsed = parse_url(url)
    if parsed is None:
        return None
    if parsed.drivername in ("sqlite", "sqlite+pysqlite") and not parsed.query:
        return SQLiteReader(parsed, timeout)
    if parsed.drivername == "postgresql+psycopg":
        return PostgresReader(parsed, timeout)
    return None


class Reader:
    """The reads of the status CLI; subclasses connect and bind."""

    def __init__(self, url: DatabaseURL, timeout: float) -> None:
        self.name = url.display()
        self.timeout = timeout
        self._conn: Any = None
        self._checked_revision: str | None = None

    # -- the driver

    def _connect(self) -> Any:
        raise NotImplementedError

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError

    def _bind_time(self, value: datetime) -> Any:
        raise NotImplementedError

    def _has_table(self, conn: Any, name: str) -> bool:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            if self._conn is None:
                self._conn = self._connect()
            cur = self._conn.execute(self._sql(sql), tuple(params))
            try:
                return list(cur.fetchall())
            finally:
                cur.close()
        except self._driver_errors() as exc:
            raise StoreError(f"cannot read {self.name}: {_short(exc)}") from exc

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def read_consistently(self, read: Callable[[], T]) -> T:
        return read()

    # -- schema

    def revision(self) -> str | None:
        """The schema revision, ``None`` for a database without our tables."""
        try:
            if self._conn is None:
                self._conn = self._connect()
            has = self._has_table(self._conn, "alembic_version")
        except self._driver_errors() as exc:
            raise StoreError(f"cannot read {self.name}: {_short(exc)}") from exc
        if not has:
            return None
        rows = self._rows("SELECT version_num FROM alembic_version")
        return rows[0][0] if rows else None

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

    def _at_least(self, revision: str) -> bool:
        rev = self._checked_revision or self.revision()
        return (rev or "") >= revision

    # -- reads

    def latest_instance(self) -> dict[str, Any] | None:
        rows = self._rows(
            f"SELECT {_names(INSTANCE_COLUMNS)} FROM gateway_instances "
            "ORDER BY started_at DESC LIMIT ?",
            (1,),
        )
        return _instance_row(rows[0]) if rows else None

    def platforms(self) -> list[dict[str, Any]]:
        rows = self._rows(
            f"SELECT {_names(PLATFORM_COLUMNS)} FROM platform_state ORDER BY platform"
        )
        return [_platform_row(r) for r in rows]

    def jobs_summary(self, since: datetime) -> list[dict[str, Any]]:
        if not self._at_least(RUNNER_SCHEMA):
            return []
        failed = ", ".join("?" for _ in FAILED_RUNS)
        counts = self._rows(
            f"SELECT name, kind, count(*), sum(CASE WHEN status IN ({failed}) THEN ? ELSE ? END) "
            "FROM job_runs WHERE finished_at >= ? GROUP BY name, kind ORDER BY name",
            (*FAILED_RUNS, 1, 0, self._bind_time(since)),
        )
        result = []
        from watchdog.storable import storable

        for name, kind, runs, failures in counts:
            last = self._rows(
                "SELECT status, finished_at, error FROM job_runs "
                "WHERE name = ? AND finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
                (storable(name), 1),
            )
            if len(last) != 1:
                raise StoreError(
                    f"cannot read {self.name}: NoResultFound: No row was found when one was required"
                )
            status, finished_at, error = last[0]
            result.append(
                {
                    "name": name,
                    "kind": kind,
                    "runs": int(runs),
                    "failures": int(failures or 0),
                    "last_status": status,
                    "last_finished_at": _utc(finished_at),
                    "last_error": error,
                }
            )
        return result

    def outbox_summary(self, since: datetime) -> dict[str, Any] | None:
        if not self._at_least(RUNNER_SCHEMA):
            return None
        waiting = {
            status: (count, _utc(oldest))
            for status, count, oldest in self._rows(
                "SELECT status, count(*), min(created_at) FROM outbox "
                "WHERE status IN (?, ?) GROUP BY status",
                ("pending", "sending"),
            )
        }
        settled = dict(
            self._rows(
                "SELECT status, count(*) FROM outbox "
                "WHERE status IN (?, ?) AND updated_at >= ? GROUP BY status",
                ("failed", "expired", self._bind_time(since)),
            )
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
        if not self._at_least(INBOX_SCHEMA):
            return None
        ((waiting, oldest),) = self._rows(
            "SELECT count(*), min(received_at) FROM inbox WHERE status = ?", ("received",)
        )
        ((dead,),) = self._rows(
            "SELECT count(*) FROM inbox WHERE status = ? AND updated_at >= ?",
            ("dead", self._bind_time(since)),
        )
        ((cut_off,),) = self._rows(
            "SELECT count(*) FROM inbox JOIN job_runs ON job_runs.id = inbox.run_id"
            " WHERE job_runs.status = ? AND job_runs.finished_at >= ?",
            ("cancelled", self._bind_time(since)),
        )
        platforms = [
            _cursor_row(r)
            for r in self._rows(
                f"SELECT {_names(CURSOR_COLUMNS)} FROM inbound_cursors WHERE gaps > ? OR lost > ?",
                (0, 0),
            )
        ]
        return {
            "waiting": int(waiting),
            "oldest_waiting_at": _utc(oldest),
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
        where: list[str] = []
        params: list[Any] = []
        if platform is not None:
            from watchdog.storable import storable

            where.append("platform = ?")
            params.append(storable(platform))
        if since is not None:
            where.append("at >= ?")
            params.append(self._bind_time(since))
        sql = f"SELECT {_names(TRANSITION_COLUMNS)} FROM platform_transitions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = [_transition_row(r) for r in self._rows(sql, params)]
        rows.reverse()
        return rows


class SQLiteReader(Reader):
    """SQLite, opened read-only as :class:`~watchdog.store.StateStore` opens it: ``mode=ro``,
    or ``immutable`` while no connection has it open (see :func:`read_only_uri`)."""

    def __init__(self, url: DatabaseURL, timeout: float) -> None:
        super().__init__(url, timeout)
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise StoreError(f"the state store needs an SQLite file path, got {self.name}")
        path = Path(database)
        if not path.exists():
            raise StoreNotFound(
                f"no state store at {path} (has the gateway run with this configuration?)"
            )
        self._path = path.resolve()
        self._quiet_sidecars: tuple[int, int] | None = None

    def _connect(self) -> Any:
        import sqlite3

        uri, quiet = read_only_uri(self._path)
        if quiet is not None and self._quiet_sidecars is None:
            self._quiet_sidecars = quiet
        conn = sqlite3.connect(uri, uri=True, timeout=self.timeout, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}").close()
        except BaseException:
            conn.close()
            raise
        return conn

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        import sqlite3

        return (sqlite3.Error,)

    def _bind_time(self, value: datetime) -> Any:
        # UTCDateTime then SQLAlchemy's SQLite DATETIME: naive UTC text, always with microseconds.
        v = value.astimezone(UTC)
        return (
            f"{v.year:04d}-{v.month:02d}-{v.day:02d} "
            f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}"
        )

    def _has_table(self, conn: Any, name: str) -> bool:
        # As SQLAlchemy asks: PRAGMA table_info in main, then temp.
        return any(
            conn.execute(f'PRAGMA {schema}.table_info("{name}")').fetchall()
            for schema in ("main", "temp")
        )

    def read_consistently(self, read: Callable[[], T]) -> T:
        """``read()``, done again through SQLite's locks if it ran without them and a gateway
        opened the database meanwhile (what it read may then be torn by a checkpoint)."""
        result = read()
        quiet = self._quiet_sidecars
        if quiet is not None and sidecars(self._path) != quiet:
            self.close()  # the next connection chooses its mode again
            self._quiet_sidecars = None
            self._checked_revision = None
            result = read()
        return result


class PostgresReader(Reader):
    """PostgreSQL through psycopg, in read-only transactions with a statement timeout."""

    def __init__(self, url: DatabaseURL, timeout: float) -> None:
        super().__init__(url, timeout)
        self._url = url
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError(f"cannot use database {self.name}: {exc}") from exc
        self._psycopg = psycopg

    def _connect(self) -> Any:
        # The arguments SQLAlchemy's psycopg dialect and StateStore pass.
        url = self._url
        kwargs: dict[str, Any] = {}
        for key, value in (
            ("user", url.username),
            ("password", url.password),
            ("host", url.host),
            ("port", url.port),
            ("dbname", url.database),
        ):
            if value is not None:
                kwargs[key] = value
        kwargs.update(url.query)
        if "connect_timeout" not in url.query:
            kwargs["connect_timeout"] = max(1, int(self.timeout))
        if "tcp_user_timeout" not in url.query:
            kwargs["tcp_user_timeout"] = int(self.timeout * 3000)
        conn = self._psycopg.connect(**kwargs, autocommit=True)
        try:
            conn.execute(
                f"SET statement_timeout = {int(self.timeout * 1000)}; "
                "SET default_transaction_read_only = on"
            )
        except BaseException:
            conn.close()
            raise
        return conn

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        return (self._psycopg.Error,)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _bind_time(self, value: datetime) -> Any:
        return value

    def _has_table(self, conn: Any, name: str) -> bool:
        # As SQLAlchemy asks: a table-like relation visible on the search path.
        cur = conn.execute(
            "SELECT c.relname FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = %s AND c.relkind = ANY(ARRAY['r', 'p', 'f', 'v', 'm']) "
            "AND pg_catalog.pg_table_is_visible(c.oid) AND n.nspname != 'pg_catalog'",
            (name,),
        )
        return cur.fetchone() is not None


def _short(exc: BaseException) -> str:
    """The driver's message, first line: as :func:`watchdog.store._short` words it."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"
