"""per-task "notify me" subscriptions and the recipient of a personal delivery

Adds ``task_subscriptions`` (user, task; one row per pair) and the nullable
``notification_deliveries.recipient``; existing deliveries keep a NULL recipient (they go
to their channel as before).

Revision ID: 0010
Revises: 0009
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from server.core.models import TZDateTime

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_subscriptions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("task_id", sa.Integer(), sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", TZDateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("user_id", "task_id", name="uq_task_subscriptions_user_task"),
    )
    op.create_index("ix_task_subscriptions_user_id", "task_subscriptions", ["user_id"])
    op.create_index("ix_task_subscriptions_task_id", "task_subscriptions", ["task_id"])
    with op.batch_alter_table("notification_deliveries") as batch:
        batch.add_column(sa.Column("recipient", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("notification_deliveries") as batch:
        batch.drop_column("recipient")
    op.drop_index("ix_task_subscriptions_task_id", "task_subscriptions")
    op.drop_index("ix_task_subscriptions_user_id", "task_subscriptions")
    op.drop_table("task_subscriptions")
