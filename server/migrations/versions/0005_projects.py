"""playbook projects from git: projects, the built-in ``local`` project, task.project_id,
task.vault_credential_id; existing playbook tasks move to ``local``

Revision ID: 0005
Revises: 0004
"""
from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

import server.core.models

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('projects',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=120), nullable=False),
    sa.Column('url', sa.String(length=1000), nullable=False),
    sa.Column('branch', sa.String(length=255), nullable=False),
    sa.Column('credential_id', sa.Integer(), nullable=True),
    sa.Column('sync_on_launch', sa.Boolean(), nullable=False),
    sa.Column('revision', sa.String(length=64), nullable=True),
    sa.Column('synced_at', server.core.models.TZDateTime(timezone=True), nullable=True),
    sa.Column('sync_status', sa.String(length=20), nullable=False),
    sa.Column('sync_error', sa.Text(), nullable=True),
    sa.Column('playbooks', sa.JSON(), nullable=False),
    sa.Column('webhook_secret_enc', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', server.core.models.TZDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', server.core.models.TZDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['credential_id'], ['credentials.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    # Plain ALTER TABLE ... ADD COLUMN (inline REFERENCES on SQLite): a batch copy of ``tasks``
    # would drop and recreate it, and with foreign keys on that cascades into executions.
    if op.get_bind().dialect.name == "sqlite":  # alembic refuses a foreign key in add_column there;
        # no ON DELETE: deleting a project or credential still in use is refused either way
        op.execute("ALTER TABLE tasks ADD COLUMN project_id INTEGER REFERENCES projects (id)")
        op.execute("ALTER TABLE tasks ADD COLUMN vault_credential_id INTEGER "
                   "REFERENCES credentials (id)")
    else:
        op.add_column('tasks', sa.Column('project_id', sa.Integer(), nullable=True))
        op.add_column('tasks', sa.Column('vault_credential_id', sa.Integer(), nullable=True))
        op.create_foreign_key('fk_tasks_project_id', 'tasks', 'projects', ['project_id'], ['id'])
        op.create_foreign_key('fk_tasks_vault_credential_id', 'tasks', 'credentials', ['vault_credential_id'],
                              ['id'])
    op.create_index(op.f('ix_tasks_project_id'), 'tasks', ['project_id'], unique=False)
    now = datetime.now(timezone.utc)
    if op.get_bind().dialect.name == "sqlite":
        now = now.replace(tzinfo=None)  # as TZDateTime stores it there
    projects = sa.table('projects', sa.column('id', sa.Integer), sa.column('name', sa.String),
                        sa.column('url', sa.String), sa.column('branch', sa.String),
                        sa.column('sync_on_launch', sa.Boolean), sa.column('sync_status', sa.String),
                        sa.column('playbooks', sa.JSON), sa.column('created_at', sa.DateTime),
                        sa.column('updated_at', sa.DateTime))
    op.bulk_insert(projects, [{"name": "local", "url": "", "branch": "", "sync_on_launch": False,
                               "sync_status": "ok", "playbooks": [], "created_at": now, "updated_at": now}])
    op.execute("UPDATE tasks SET project_id = (SELECT id FROM projects WHERE name = 'local') "
               "WHERE kind = 'playbook'")


def downgrade() -> None:
    op.drop_index(op.f('ix_tasks_project_id'), table_name='tasks')
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint('fk_tasks_vault_credential_id', 'tasks', type_='foreignkey')
        op.drop_constraint('fk_tasks_project_id', 'tasks', type_='foreignkey')
    op.drop_column('tasks', 'vault_credential_id')
    op.drop_column('tasks', 'project_id')
    op.drop_table('projects')
