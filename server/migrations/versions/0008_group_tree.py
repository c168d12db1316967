"""groups with children and a priority (Ansible's group tree)

Adds ``group_children`` (parent, child) and ``groups.priority`` (``ansible_group_priority``,
NULL meaning Ansible's default of 1). Existing groups keep their hosts and variables and
become roots of the tree, which is what they were.

Revision ID: 0008
Revises: 0007
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "group_children",
        sa.Column("parent_id", sa.Integer(), sa.ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("child_id", sa.Integer(), sa.ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    )
    with op.batch_alter_table("groups") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("groups") as batch:
        batch.drop_column("priority")
    op.drop_table("group_children")
