"""identity: directory accounts (LDAP, OIDC), TOTP, scoped and expiring API tokens, the
sign-in method and last second factor of web sessions, and the admin-edited sign-in
settings. Existing users become ``local`` accounts; existing tokens keep every scope their
owner's role holds (``scopes`` NULL) and never expire.

Revision ID: 0007
Revises: 0006
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import server.core.models

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

TZ = server.core.models.TZDateTime(timezone=True)


def upgrade() -> None:
    op.create_table('identity_settings',
    sa.Column('name', sa.String(length=20), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('updated_at', TZ, nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    # Plain ADD COLUMN (no batch copy of users: see 0002).
    op.add_column('users', sa.Column('auth_source', sa.String(length=10), server_default='local', nullable=False))
    op.add_column('users', sa.Column('external_id', sa.String(length=512), nullable=True))
    op.add_column('users', sa.Column('directory_checked_at', TZ, nullable=True))
    op.add_column('users', sa.Column('mapped_policy_ids', sa.JSON(), nullable=True))
    op.add_column('users', sa.Column('totp_secret', sa.LargeBinary(), nullable=True))
    op.add_column('users', sa.Column('totp_confirmed_at', TZ, nullable=True))
    op.add_column('users', sa.Column('totp_last_step', sa.Integer(), nullable=True))
    op.add_column('users', sa.Column('recovery_codes', sa.JSON(), nullable=True))
    op.add_column('api_tokens', sa.Column('scopes', sa.JSON(), nullable=True))
    op.add_column('api_tokens', sa.Column('expires_at', TZ, nullable=True))
    op.add_column('api_tokens', sa.Column('mfa_at', TZ, nullable=True))
    op.add_column('web_sessions', sa.Column('method', sa.String(length=10), nullable=True))
    op.add_column('web_sessions', sa.Column('mfa_at', TZ, nullable=True))


def downgrade() -> None:
    for table, column in (('web_sessions', 'mfa_at'), ('web_sessions', 'method'), ('api_tokens', 'mfa_at'),
                          ('api_tokens', 'expires_at'), ('api_tokens', 'scopes'), ('users', 'recovery_codes'),
                          ('users', 'totp_last_step'), ('users', 'totp_confirmed_at'), ('users', 'totp_secret'),
                          ('users', 'mapped_policy_ids'), ('users', 'directory_checked_at'),
                          ('users', 'external_id'), ('users', 'auth_source')):
        op.drop_column(table, column)
    op.drop_table('identity_settings')
