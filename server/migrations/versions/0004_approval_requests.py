"""one approval-request model: runs and schedules wait on approval_requests rows

Before, a run kept its approval progress in ``executions.approval_level``,
``approval_expires_at`` and a JSON ``approval_plan``, and a schedule in a JSON
``schedules.approval_plan`` (with its current level, requester and who had decided inside).
Both now wait on an ``approval_requests`` row (levels and their approvers, the parts of the
fingerprint, the hosts, the current level, the status) and every decision (``approvals``)
points at its request.

Existing requests are carried over: one request per run that needed approval (its status
from the run's: waiting -> pending, queued once -> approved, rejected, expired, cancelled,
otherwise refused), one per schedule under approval (its current request; decisions older
than that request go to a closed "renewed" request). The hosts of a request are the run's
target hosts as stored now (the run's limit applied), since older rows kept no snapshot.

Revision ID: 0004
Revises: 0003
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from server.core.models import TZDateTime

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

requests_t = sa.table(
    "approval_requests",
    sa.column("id", sa.Integer), sa.column("execution_id", sa.Integer), sa.column("schedule_id", sa.Integer),
    sa.column("status", sa.String), sa.column("level", sa.Integer), sa.column("levels", sa.JSON),
    sa.column("parts", sa.JSON), sa.column("policies", sa.JSON), sa.column("hosts", sa.JSON),
    sa.column("fingerprint", sa.String), sa.column("requested_by_id", sa.Integer),
    sa.column("created_at", TZDateTime), sa.column("expires_at", TZDateTime), sa.column("closed_at", TZDateTime),
)
executions_t = sa.table(
    "executions",
    sa.column("id", sa.Integer), sa.column("task_id", sa.Integer), sa.column("status", sa.String),
    sa.column("requested_by_id", sa.Integer), sa.column("limit_hosts", sa.JSON), sa.column("fingerprint", sa.String),
    sa.column("created_at", TZDateTime), sa.column("queued_at", TZDateTime), sa.column("finished_at", TZDateTime),
    sa.column("approval_level", sa.Integer), sa.column("approval_expires_at", TZDateTime),
    sa.column("approval_plan", sa.JSON),
)
schedules_t = sa.table(
    "schedules",
    sa.column("id", sa.Integer), sa.column("task_id", sa.Integer), sa.column("approval_status", sa.String),
    sa.column("approved_fingerprint", sa.String), sa.column("created_at", TZDateTime),
    sa.column("approval_plan", sa.JSON),
)
approvals_t = sa.table(
    "approvals",
    sa.column("id", sa.Integer), sa.column("execution_id", sa.Integer), sa.column("schedule_id", sa.Integer),
    sa.column("request_id", sa.Integer), sa.column("fingerprint", sa.String), sa.column("created_at", TZDateTime),
)


def _target_names(conn: sa.Connection, task_id: int, limit: list[str] | None) -> list[str]:
    """The task's hosts (named and through its groups) by name, the run's limit applied."""
    rows = conn.execute(sa.text(
        "SELECT h.name FROM hosts h JOIN task_hosts th ON th.host_id = h.id WHERE th.task_id = :t "
        "UNION SELECT h.name FROM hosts h JOIN host_groups hg ON hg.host_id = h.id "
        "JOIN task_groups tg ON tg.group_id = hg.group_id WHERE tg.task_id = :t"), {"t": task_id})
    names = sorted({name for (name,) in rows})
    return [n for n in names if n in set(limit)] if limit is not None else names


def _insert(conn: sa.Connection, **values: Any) -> int:
    return conn.execute(requests_t.insert().values(**values).returning(requests_t.c.id)).scalar_one()


def _plan_fields(plan: dict[str, Any]) -> dict[str, Any]:
    return {"levels": plan.get("levels") or {"1": []}, "parts": plan.get("parts") or {},
            "policies": plan.get("policies") or []}


def _run_status(status: str, queued_at: datetime | None) -> str:
    if status == "waiting_approval":
        return "pending"
    if status in ("rejected", "expired"):
        return status
    if queued_at is not None:
        return "approved"
    return "cancelled" if status == "cancelled" else "refused"


def _carry_runs(conn: sa.Connection) -> None:
    ex = executions_t.c
    for row in conn.execute(sa.select(executions_t).where(ex.approval_plan.is_not(None)).order_by(ex.id)):
        status = _run_status(row.status, row.queued_at)
        req_id = _insert(
            conn, execution_id=row.id, status=status, level=row.approval_level or 1, **_plan_fields(row.approval_plan),
            hosts=_target_names(conn, row.task_id, row.limit_hosts), fingerprint=row.fingerprint,
            requested_by_id=row.requested_by_id, created_at=row.created_at, expires_at=row.approval_expires_at,
            closed_at=None if status == "pending" else (row.queued_at if status == "approved" else row.finished_at),
        )
        conn.execute(approvals_t.update().where(approvals_t.c.execution_id == row.id).values(request_id=req_id))


def _carry_schedules(conn: sa.Connection) -> None:
    sc = schedules_t.c
    for row in conn.execute(sa.select(schedules_t).where(sc.approval_status.is_not(None)).order_by(sc.id)):
        plan = row.approval_plan or {}
        requested_at = datetime.fromisoformat(plan["requested_at"]) if plan.get("requested_at") else row.created_at
        decided = conn.execute(sa.select(approvals_t).where(approvals_t.c.schedule_id == row.id)
                               .order_by(approvals_t.c.id)).all()
        older = [a for a in decided if a.created_at < requested_at]
        if older:
            old_id = _insert(conn, schedule_id=row.id, status="renewed", level=1, **_plan_fields(plan), hosts=[],
                             fingerprint=older[-1].fingerprint, requested_by_id=None, created_at=older[0].created_at,
                             expires_at=None, closed_at=requested_at)
            conn.execute(approvals_t.update().where(approvals_t.c.id.in_([a.id for a in older]))
                         .values(request_id=old_id))
        req_id = _insert(
            conn, schedule_id=row.id, status=row.approval_status, level=int(plan.get("level") or 1),
            **_plan_fields(plan), hosts=_target_names(conn, row.task_id, None),
            fingerprint=plan.get("fingerprint") or row.approved_fingerprint, requested_by_id=plan.get("requested_by"),
            created_at=requested_at, expires_at=None,
            closed_at=None if row.approval_status == "pending" else requested_at,
        )
        newer = [a.id for a in decided if a.created_at >= requested_at]
        if newer:
            conn.execute(approvals_t.update().where(approvals_t.c.id.in_(newer)).values(request_id=req_id))


def upgrade() -> None:
    op.create_table('approval_requests',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('execution_id', sa.Integer(), nullable=True),
    sa.Column('schedule_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('level', sa.Integer(), nullable=False),
    sa.Column('levels', sa.JSON(), nullable=False),
    sa.Column('parts', sa.JSON(), nullable=False),
    sa.Column('policies', sa.JSON(), nullable=False),
    sa.Column('hosts', sa.JSON(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=True),
    sa.Column('requested_by_id', sa.Integer(), nullable=True),
    sa.Column('created_at', TZDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', TZDateTime(timezone=True), nullable=True),
    sa.Column('closed_at', TZDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['execution_id'], ['executions.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['requested_by_id'], ['users.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['schedule_id'], ['schedules.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('execution_id')
    )
    with op.batch_alter_table('approval_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_approval_requests_schedule_id'), ['schedule_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_approval_requests_status'), ['status'], unique=False)
    # ``approvals`` is referenced by no table: a batch copy of it (SQLite) cascades nowhere.
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('request_id', sa.Integer(), nullable=True))
    conn = op.get_bind()
    _carry_runs(conn)
    _carry_schedules(conn)
    conn.execute(approvals_t.delete().where(approvals_t.c.request_id.is_(None)))  # orphans (none expected)
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.alter_column('request_id', existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key('fk_approvals_request_id', 'approval_requests', ['request_id'], ['id'],
                                    ondelete='CASCADE')
        batch_op.create_index(batch_op.f('ix_approvals_request_id'), ['request_id'], unique=False)
    # Plain ALTER TABLE … DROP COLUMN (as in 0002): a batch copy of executions or schedules
    # would cascade into every table that references them.
    op.drop_column('executions', 'approval_plan')
    op.drop_column('executions', 'approval_expires_at')
    op.drop_column('executions', 'approval_level')
    op.drop_column('schedules', 'approval_plan')


def downgrade() -> None:
    op.add_column('schedules', sa.Column('approval_plan', sa.JSON(), nullable=True))
    op.add_column('executions', sa.Column('approval_level', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('executions', sa.Column('approval_expires_at', TZDateTime(timezone=True), nullable=True))
    op.add_column('executions', sa.Column('approval_plan', sa.JSON(), nullable=True))
    conn = op.get_bind()
    rq = requests_t.c
    for req in conn.execute(sa.select(requests_t).order_by(rq.id)):  # a schedule's latest request wins
        plan = {"levels": req.levels, "parts": req.parts, "policies": req.policies}
        if req.execution_id is not None:
            conn.execute(executions_t.update().where(executions_t.c.id == req.execution_id).values(
                approval_level=req.level, approval_expires_at=req.expires_at, approval_plan=plan))
        elif req.schedule_id is not None:
            decided = conn.execute(sa.select(sa.column("approver_id")).select_from(sa.table("approvals"))
                                   .where(sa.column("request_id") == req.id,
                                          sa.column("decision") == "approved")).scalars().all()
            conn.execute(schedules_t.update().where(schedules_t.c.id == req.schedule_id).values(approval_plan={
                **plan, "fingerprint": req.fingerprint, "level": req.level, "requested_by": req.requested_by_id,
                "requested_at": req.created_at.isoformat(), "decided_by": list(decided)}))
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_approvals_request_id'))
        batch_op.drop_constraint('fk_approvals_request_id', type_='foreignkey')
        batch_op.drop_column('request_id')
    with op.batch_alter_table('approval_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_approval_requests_status'))
        batch_op.drop_index(batch_op.f('ix_approval_requests_schedule_id'))
    op.drop_table('approval_requests')
