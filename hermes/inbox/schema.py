"""The inbox's tables (revision 0003): one row per inbound event, one cursor per platform.

They live with the code that owns them; the migrations stay one chain in
``watchdog/migrations``, and a test checks that these definitions match what the
migrations create. Column names are a public contract (README, SQL users).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, Table

from watchdog.schema import StoredString, StoredText, UTCDateTime, metadata

inbox = Table(
    "inbox",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("platform", StoredString(128), nullable=False),
    # The platform's own id for the event (QQ: the message id): a replay is recognised by it.
    Column("event_id", StoredString(255), nullable=False),
    Column("message_id", StoredString(255), nullable=False),
    Column("event", StoredString(64), nullable=False),
    Column("chat_kind", StoredString(32), nullable=False),
    Column("chat_id", StoredString(255), nullable=False),
    Column("author_id", StoredString(255), nullable=False),
    Column("author_name", StoredString(255)),
    Column("text", StoredText, nullable=False),
    Column("extra", StoredText),  # JSON object of adapter-specific strings
    Column("sent_at", UTCDateTime),
    Column("received_at", UTCDateTime, nullable=False),
    # received, handled, skipped (no route), dead (its handler failed every attempt)
    Column("status", StoredString(16), nullable=False),
    Column("run_id", StoredString(36)),
    Column("attempts", Integer, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ux_inbox_event", "platform", "event_id", unique=True),
    Index("ix_inbox_status", "status", "id"),
    Index("ix_inbox_received_at", "received_at"),
    Index("ix_inbox_run_id", "run_id"),
)

inbound_cursors = Table(
    "inbound_cursors",
    metadata,
    Column("platform", StoredString(128), primary_key=True),
    # The adapter's position covering every event stored in the inbox (QQ: session id and
    # seq), JSON; advanced in the same transaction as the rows it covers.
    Column("cursor", StoredText),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("instance_id", StoredString(36)),
    Column("gaps", Integer, nullable=False),
    Column("gap_events", BigInteger, nullable=False),
    Column("last_gap", StoredText),
    Column("last_gap_at", UTCDateTime),
    Column("lost", BigInteger, nullable=False),
    Column("last_lost", StoredText),
)
