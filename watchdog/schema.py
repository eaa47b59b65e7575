"""Table definitions of the state store. Column names are a public contract (README, SQL users).

The tables are created by alembic migrations (``watchdog/migrations``); these
definitions are what the code reads and writes through, and a test checks that
they match what the migrations create.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator

from watchdog.storable import REPLACEMENT as REPLACEMENT
from watchdog.storable import storable as storable


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python; ``timestamptz`` on PostgreSQL, UTC text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"refusing to store a naive datetime: {value!r}")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class StoredString(TypeDecorator[str]):
    """``VARCHAR(n)`` whose values go through :func:`storable`: one boundary for every
    string the gateway writes (or compares with), the same on SQLite and PostgreSQL."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return storable(value) if isinstance(value, str) else value


class StoredText(StoredString):
    """``TEXT`` whose values go through :func:`storable`."""

    impl = Text
    cache_ok = True


def fitted(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with every string clipped to its column's length: the second try of a row the
    database refused (PostgreSQL enforces ``VARCHAR(n)``, SQLite does not)."""
    out = dict(row)
    for name, value in row.items():
        column = table.c.get(name)
        length = getattr(column.type, "length", None) if column is not None else None
        if isinstance(value, str) and isinstance(length, int) and len(value) > length:
            out[name] = value[: length - 1] + "…"
    return out


metadata = MetaData()

gateway_instances = Table(
    "gateway_instances",
    metadata,
    Column("id", StoredString(36), primary_key=True),
    Column("host", StoredString(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", StoredString(64), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("last_tick_at", UTCDateTime),
    Column("tick_interval", Float, nullable=False),
    Column("pinging", Boolean, nullable=False),
    Column("status_text", StoredText),
    Column("stopped_at", UTCDateTime),
    Column("exit_code", Integer),
    Column("exit_reason", StoredText),
    Column("store_failures", Integer, nullable=False),
    Column("store_last_error", StoredText),
    Column("store_last_error_at", UTCDateTime),
    Index("ix_gateway_instances_started_at", "started_at"),
)

platform_state = Table(
    "platform_state",
    metadata,
    Column("platform", StoredString(128), primary_key=True),
    Column("adapter", StoredString(128), nullable=False),
    Column("required", Boolean, nullable=False),
    Column("declared_state", StoredString(16), nullable=False),
    Column("declared_since", UTCDateTime, nullable=False),
    Column("health", StoredString(16), nullable=False),
    Column("health_since", UTCDateTime, nullable=False),
    Column("last_heartbeat_at", UTCDateTime),
    Column("heartbeat_ttl", Float, nullable=False),
    Column("restarts", Integer, nullable=False),
    Column("reason_code", StoredString(64)),
    Column("reason_message", StoredText),
    Column("retryable", Boolean),
    Column("instance_id", StoredString(36), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

platform_transitions = Table(
    "platform_transitions",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("at", UTCDateTime, nullable=False),
    Column("instance_id", StoredString(36), nullable=False),
    Column("platform", StoredString(128), nullable=False),
    Column("from_state", StoredString(16)),
    Column("to_state", StoredString(16)),
    Column("from_health", StoredString(16)),
    Column("to_health", StoredString(16)),
    Column("reason_code", StoredString(64)),
    Column("reason_message", StoredText),
    Index("ix_platform_transitions_platform_at", "platform", "at"),
    Index("ix_platform_transitions_at", "at"),
)

# -- the job runner's ledger and the durable outbox (revision 0002)

job_runs = Table(
    "job_runs",
    metadata,
    Column("id", StoredString(36), primary_key=True),
    Column("kind", StoredString(16), nullable=False),  # route (message handler) or job (scheduled)
    Column("name", StoredString(128), nullable=False),
    Column("trigger", StoredString(16), nullable=False),  # message, schedule or manual
    Column("platform", StoredString(128)),
    Column("message_id", StoredString(255)),
    Column("scheduled_for", UTCDateTime),
    Column("requested_at", UTCDateTime),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    # requested, running, ok, error, timeout, cancelled, missed
    Column("status", StoredString(16), nullable=False),
    Column("error", StoredText),
    Column("output", StoredText),
    Column("instance_id", StoredString(36)),
    Index("ix_job_runs_name_started", "name", "started_at"),
    Index("ix_job_runs_name_finished", "name", "finished_at"),
    Index("ix_job_runs_status", "status"),
    Index("ix_job_runs_requested_at", "requested_at"),
    Index("ux_job_runs_schedule", "name", "scheduled_for", unique=True),
)

outbox = Table(
    "outbox",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("idempotency_key", StoredString(255), nullable=False, unique=True),
    Column("platform", StoredString(128), nullable=False),
    Column("chat_kind", StoredString(32), nullable=False),
    Column("chat_id", StoredString(255), nullable=False),
    Column("text", StoredText, nullable=False),
    Column("reply_to", StoredString(255)),
    # Position among the replies to reply_to (QQ: msg_seq), fixed at enqueue, so that the
    # platform recognises a retry as the same message.
    Column("reply_seq", Integer),
    Column("expires_at", UTCDateTime),
    Column(
        "status", StoredString(16), nullable=False
    ),  # pending, sending, delivered, failed, expired
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("last_error", StoredText),
    Column("run_id", StoredString(36)),
    Column("platform_message_id", StoredString(255)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime),
    Index("ix_outbox_due", "status", "next_attempt_at"),
    Index("ix_outbox_reply_to", "reply_to"),
)

apscheduler_jobs = Table(
    "apscheduler_jobs",
    metadata,
    Column("id", String(191), primary_key=True),
    Column("next_run_time", Float(25), index=True),
    Column("job_state", LargeBinary, nullable=False),
)
"""APScheduler's own job store table, created by our migrations so that one alembic history
describes the whole database; its layout is APScheduler's."""
