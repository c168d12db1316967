"""report stored variables with reserved names (no schema change)

Variable names starting with ``ansible_`` or ``tm_`` (any case) are refused since this
revision (server.validation.var_name_problem). Rows saved before may still hold some: this
revision lists each such row and name (hosts, groups, tasks, schedules, and executions
still queued or waiting for approval) as a warning of the ``alembic.runtime.migration``
logger, so ``flask db upgrade`` shows them. Nothing is changed: inventory.user_vars drops
those names whenever an inventory or a run's variables are built, so they never reach
Ansible; editing the row (removing the name) makes the warning go away.

Revision ID: 0003
Revises: 0002
"""
from __future__ import annotations

import json
import logging
from typing import Any

import sqlalchemy as sa
from alembic import op

from server.core.validation import var_name_problem

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

# (table, column naming the row, condition): executions only while they can still start.
SCANNED = (
    ("hosts", "name", ""),
    ("groups", "name", ""),
    ("tasks", "name", ""),
    ("schedules", "id", ""),
    ("executions", "id", " WHERE status IN ('queued', 'waiting_approval')"),
)


def _names(raw: Any) -> list[str]:
    """Top-level names of a stored ``vars`` value (JSON text on SQLite, a dict elsewhere)."""
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except ValueError:
            return []
    return [str(k) for k in raw] if isinstance(raw, dict) else []


def refused_rows(conn: sa.Connection) -> list[tuple[str, Any, list[str]]]:
    """(table, row label, refused names) for every stored row that holds one."""
    found = []
    for table, label, where in SCANNED:
        for row_label, raw in conn.execute(sa.text(f"SELECT {label}, vars FROM {table}{where} ORDER BY id")):
            bad = [name for name in _names(raw) if var_name_problem(name)]
            if bad:
                found.append((table, row_label, bad))
    return found


def upgrade() -> None:
    found = refused_rows(op.get_bind())
    for table, row_label, names in found:
        log.warning("%s %s holds reserved variable name(s) %s: ignored at run time; remove them from the row",
                    table, row_label, ", ".join(names))
    if found:
        log.warning("%d row(s) hold variable names starting with ansible_ or tm_ (reserved)", len(found))


def downgrade() -> None:
    pass  # nothing was changed
