"""Relaunch: a new execution of a finished one, optionally limited to the hosts that failed.

It goes through ``request.request_execution`` like every other trigger, so access
rules, reasons and approvals apply to the relaunch exactly as to a fresh run. A dry run
(check mode, for approvers) is never relaunched: that would turn it into a live run.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.core import audit
from server.core.errors import Conflict, NotFound, ValidationError
from server.core.models import EXECUTION_RELAUNCHABLE, OPERATION_OK, Execution, Operation, User
from server.executions.approvals import DRY_RUN_TRIGGER
from server.executions.request import request_execution
from server.people import access


def failed_hosts(session: Session, ex: Execution) -> list[str]:
    """Hosts of ``ex`` that did not succeed: failed, unreachable, or never finished."""
    return list(
        session.execute(
            select(Operation.host_name)
            .where(Operation.execution_id == ex.id, Operation.status.not_in(OPERATION_OK))
            .order_by(Operation.host_name)
        ).scalars()
    )


def check_relaunchable(session: Session, parent: Execution, user: User) -> None:
    """Refuse (404, 403, 409) what may not be relaunched by ``user``, before asking him anything."""
    if not access.can_view_execution(session, user, parent):
        raise NotFound(f"execution {parent.id} does not exist")  # like every other endpoint: no existence oracle
    access.require_task(session, user, parent.task, "execute")
    if parent.trigger == DRY_RUN_TRIGGER:
        raise Conflict(f"execution {parent.id} is a dry run (check mode) for an approval request; it cannot be "
                       "relaunched as a live run: request a new run of the task")
    if parent.status not in EXECUTION_RELAUNCHABLE:
        raise Conflict(f"execution {parent.id} is {parent.status}; only finished executions can be relaunched")


def relaunch(session: Session, parent: Execution, user: User, *, failed_only: Any = True, reason: Any = None,
             run_vars: Any = None, ticket: Any = None) -> Execution:
    """Request a new execution of ``parent``'s task with its launch values and options (caller
    commits). Secret values were erased when the parent ended: they are given again in
    ``run_vars`` (which overrides the parent's values name by name)."""
    check_relaunchable(session, parent, user)
    if not isinstance(failed_only, bool):
        raise ValidationError("'failed_only' must be true or false", field="failed_only")
    if failed_only:
        hosts: list[str] | None = failed_hosts(session, parent)
        if not hosts:
            raise ValidationError(
                f"execution {parent.id} has no failed or unreachable hosts to relaunch", field="failed_only"
            )
    else:
        hosts = parent.limit_hosts
    if run_vars is not None and not isinstance(run_vars, dict):
        raise ValidationError("'vars' must be an object", field="vars")
    child = request_execution(
        session,
        parent.task,
        user,
        run_vars={**(parent.vars or {}), **(run_vars or {})},
        reason=reason,
        ticket=ticket if ticket is not None else parent.ticket,
        tags=parent.tags,
        skip_tags=parent.skip_tags,
        dry_run=bool(parent.check_mode),
        trigger="manual",
        limit_hosts=hosts,
        parent_id=parent.id,
    )
    audit.record(
        session,
        "execution.relaunch",
        actor=user.username,
        target=child,
        parent=parent.id,
        failed_only=failed_only,
        hosts=hosts,
    )
    return child
