"""Supervision state: gateway instances, platform state, platform transitions.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "gateway_instances",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("last_tick_at", TS),
        sa.Column("tick_interval", sa.Float, nullable=False),
        sa.Column("pinging", sa.Boolean, nullable=False),
        sa.Column("status_text", sa.Text),
        sa.Column("stopped_at", TS),
        sa.Column("exit_code", sa.Integer),
        sa.Column("exit_reason", sa.Text),
        sa.Column("store_failures", sa.Integer, nullable=False),
        sa.Column("store_last_error", sa.Text),
        sa.Column("store_last_error_at", TS),
    )
    op.create_index("ix_gateway_instances_started_at", "gateway_instances", ["started_at"])
    op.create_table(
        "platform_state",
        sa.Column("platform", sa.String(128), primary_key=True),
        sa.Column("adapter", sa.String(128), nullable=False),
        sa.Column("required", sa.Boolean, nullable=False),
        sa.Column("declared_state", sa.String(16), nullable=False),
        sa.Column("declared_since", TS, nullable=False),
        sa.Column("health", sa.String(16), nullable=False),
        sa.Column("health_since", TS, nullable=False),
        sa.Column("last_heartbeat_at", TS),
        sa.Column("heartbeat_ttl", sa.Float, nullable=False),
        sa.Column("restarts", sa.Integer, nullable=False),
        sa.Column("reason_code", sa.String(64)),
        sa.Column("reason_message", sa.Text),
        sa.Column("retryable", sa.Boolean),
        sa.Column("instance_id", sa.String(36), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "platform_transitions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("at", TS, nullable=False),
        sa.Column("instance_id", sa.String(36), nullable=False),
        sa.Column("platform", sa.String(128), nullable=False),
        sa.Column("from_state", sa.String(16)),
        sa.Column("to_state", sa.String(16)),
        sa.Column("from_health", sa.String(16)),
        sa.Column("to_health", sa.String(16)),
        sa.Column("reason_code", sa.String(64)),
        sa.Column("reason_message", sa.Text),
    )
    op.create_index(
        "ix_platform_transitions_platform_at", "platform_transitions", ["platform", "at"]
    )
    op.create_index("ix_platform_transitions_at", "platform_transitions", ["at"])


def downgrade() -> None:
    op.drop_table("platform_transitions")
    op.drop_table("platform_state")
    op.drop_table("gateway_instances")
