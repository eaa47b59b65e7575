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


metadata = MetaData()

gateway_instances = Table(
    "gateway_instances",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", String(64), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("last_tick_at", UTCDateTime),
    Column("tick_interval", Float, nullable=False),
    Column("pinging", Boolean, nullable=False),
    Column("status_text", Text),
    Column("stopped_at", UTCDateTime),
    Column("exit_code", Integer),
    Column("exit_reason", Text),
    Column("store_failures", Integer, nullable=False),
    Column("store_last_error", Text),
    Column("store_last_error_at", UTCDateTime),
    Index("ix_gateway_instances_started_at", "started_at"),
)

platform_state = Table(
    "platform_state",
    metadata,
    Column("platform", String(128), primary_key=True),
    Column("adapter", String(128), nullable=False),
    Column("required", Boolean, nullable=False),
    Column("declared_state", String(16), nullable=False),
    Column("declared_since", UTCDateTime, nullable=False),
    Column("health", String(16), nullable=False),
    Column("health_since", UTCDateTime, nullable=False),
    Column("last_heartbeat_at", UTCDateTime),
    Column("heartbeat_ttl", Float, nullable=False),
    Column("restarts", Integer, nullable=False),
    Column("reason_code", String(64)),
    Column("reason_message", Text),
    Column("retryable", Boolean),
    Column("instance_id", String(36), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

platform_transitions = Table(
    "platform_transitions",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("at", UTCDateTime, nullable=False),
    Column("instance_id", String(36), nullable=False),
    Column("platform", String(128), nullable=False),
    Column("from_state", String(16)),
    Column("to_state", String(16)),
    Column("from_health", String(16)),
    Column("to_health", String(16)),
    Column("reason_code", String(64)),
    Column("reason_message", Text),
    Index("ix_platform_transitions_platform_at", "platform", "at"),
    Index("ix_platform_transitions_at", "at"),
)

# -- the job runner's ledger and the durable outbox (revision 0002)

job_runs = Table(
    "job_runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(16), nullable=False),  # route (message handler) or job (scheduled)
    Column("name", String(128), nullable=False),
    Column("trigger", String(16), nullable=False),  # message, schedule or manual
    Column("platform", String(128)),
    Column("message_id", String(255)),
    Column("scheduled_for", UTCDateTime),
    Column("requested_at", UTCDateTime),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    # requested, running, ok, error, timeout, cancelled, missed
    Column("status", String(16), nullable=False),
    Column("error", Text),
    Column("output", Text),
    Column("instance_id", String(36)),
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
    Column("idempotency_key", String(255), nullable=False, unique=True),
    Column("platform", String(128), nullable=False),
    Column("chat_kind", String(32), nullable=False),
    Column("chat_id", String(255), nullable=False),
    Column("text", Text, nullable=False),
    Column("reply_to", String(255)),
    # Position among the replies to reply_to (QQ: msg_seq), fixed at enqueue, so that the
    # platform recognises a retry as the same message.
    Column("reply_seq", Integer),
    Column("expires_at", UTCDateTime),
    Column("status", String(16), nullable=False),  # pending, sending, delivered, failed, expired
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("last_error", Text),
    Column("run_id", String(36)),
    Column("platform_message_id", String(255)),
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
