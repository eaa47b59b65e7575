"""The inbox and the durable inbound cursors.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("platform", sa.String(128), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("chat_kind", sa.String(32), nullable=False),
        sa.Column("chat_id", sa.String(255), nullable=False),
        sa.Column("author_id", sa.String(255), nullable=False),
        sa.Column("author_name", sa.String(255)),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("extra", sa.Text),
        sa.Column("sent_at", TS),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(36)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ux_inbox_event", "inbox", ["platform", "event_id"], unique=True)
    op.create_index("ix_inbox_status", "inbox", ["status", "id"])
    op.create_index("ix_inbox_received_at", "inbox", ["received_at"])
    op.create_index("ix_inbox_run_id", "inbox", ["run_id"])
    op.create_table(
        "inbound_cursors",
        sa.Column("platform", sa.String(128), primary_key=True),
        sa.Column("cursor", sa.Text),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("instance_id", sa.String(36)),
        sa.Column("gaps", sa.Integer, nullable=False),
        sa.Column("gap_events", sa.BigInteger, nullable=False),
        sa.Column("last_gap", sa.Text),
        sa.Column("last_gap_at", TS),
        sa.Column("lost", sa.BigInteger, nullable=False),
        sa.Column("last_lost", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("inbound_cursors")
    op.drop_table("inbox")
