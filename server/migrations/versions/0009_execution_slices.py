"""execution slices: one execution over many hosts run by several workers at once

Adds ``operations.slice`` (which slice runs the host; NULL for every existing row: they
were never sliced) and the ``execution_slices`` table (one row per slice: status, worker,
heartbeat). Existing data is untouched.

Revision ID: 0009
Revises: 0008
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from server.core.models import TZDateTime

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.add_column(sa.Column("slice", sa.Integer(), nullable=True))
    op.create_table(
        "execution_slices",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("execution_id", sa.Integer(), sa.ForeignKey("executions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("hosts", sa.Integer(), nullable=False),
        sa.Column("worker_name", sa.String(200), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("started_at", TZDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", TZDateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", TZDateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("execution_id", "index", name="uq_execution_slice"),
    )


def downgrade() -> None:
    op.drop_table("execution_slices")
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("slice")
