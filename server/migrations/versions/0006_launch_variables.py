"""launch variables and options: declared variables, allowed tags and rolling-run settings on
tasks; ticket, tags, limit pattern and encrypted secret values on executions; the secret
values of schedules; ticket rules and curated reasons on policies

Every new column is nullable or has a default, so existing rows keep working unchanged:
a task without declarations accepts free-form run variables as before.

Revision ID: 0006
Revises: 0005
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

COLUMNS = {
    "tasks": [
        sa.Column('variables', sa.JSON(), nullable=True),
        sa.Column('allowed_tags', sa.JSON(), nullable=True),
        sa.Column('serial', sa.JSON(), nullable=True),
        sa.Column('max_fail_percentage', sa.Integer(), nullable=True),
    ],
    "executions": [
        sa.Column('ticket', sa.String(length=200), nullable=True),
        sa.Column('tags', sa.JSON(), nullable=True),
        sa.Column('skip_tags', sa.JSON(), nullable=True),
        sa.Column('limit_pattern', sa.String(length=1000), nullable=True),
        sa.Column('secret_vars_enc', sa.LargeBinary(), nullable=True),
    ],
    "schedules": [
        sa.Column('secret_vars_enc', sa.LargeBinary(), nullable=True),
    ],
    "policies": [
        sa.Column('requires_ticket', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column('ticket_pattern', sa.String(length=200), nullable=True),
        sa.Column('reasons', sa.JSON(), nullable=True),
    ],
}


def upgrade() -> None:
    # Plain ALTER TABLE ... ADD COLUMN: a batch copy would recreate tables that others reference.
    for table, columns in COLUMNS.items():
        for column in columns:
            op.add_column(table, column)


def downgrade() -> None:
    for table, columns in COLUMNS.items():
        for column in reversed(columns):
            op.drop_column(table, column.name)
