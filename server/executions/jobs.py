"""The RQ side: execution ids go to Redis only after the database row is committed."""
from __future__ import annotations

import logging

from flask import current_app, has_app_context
from rq import Queue
from sqlalchemy import event
from sqlalchemy.orm import Session

from server.core.models import Execution
from server.core.redis_conn import redis

log = logging.getLogger(__name__)
JOB_FUNC = "server.runs.worker.run_execution_job"
_PENDING = "jobs.pending"  # session.info key: (execution id, timeout) to push after commit


def queue(name: str | None = None) -> Queue:
    if name is None:
        name = current_app.config["TM"].queue_name if has_app_context() else "executions"
    return Queue(name, connection=redis())


def _job(execution_id: int, timeout_s: int) -> dict:
    """The one job definition. Its id is derived from the execution, so re-enqueueing is idempotent."""
    return {
        "args": (execution_id,),
        "job_id": f"execution-{execution_id}",
        "timeout": timeout_s + 300,  # ansible-runner enforces the task timeout first
        "result_ttl": 3600,
        "failure_ttl": 86400,
    }


def enqueue(execution_id: int, timeout_s: int = 3600) -> None:
    """Push one execution id."""
    queue().enqueue_call(JOB_FUNC, **_job(execution_id, timeout_s))


def enqueue_many(items: list[tuple[int, int]]) -> None:
    """Push several (execution id, timeout) in one Redis round trip: the scheduler's bursts."""
    if items:
        queue().enqueue_many([Queue.prepare_data(JOB_FUNC, **_job(ex_id, t)) for ex_id, t in items])


def enqueue_after_commit(session: Session, execution_id: int) -> None:
    """Push the id once the caller's transaction commits, never for a rolled-back one.

    A Redis failure at that point is logged, not raised: the execution is committed and
    the reaper re-enqueues queued executions that Redis does not hold.
    """
    ex = session.get(Execution, execution_id)
    timeout = (ex.task.timeout_s if ex is not None and ex.task is not None else None) or 3600
    session.info.setdefault(_PENDING, []).append((execution_id, timeout))


@event.listens_for(Session, "after_commit")
def _push_pending(session: Session) -> None:
    items = session.info.pop(_PENDING, None)
    if items:
        try:
            enqueue_many(items)
        except Exception:  # noqa: BLE001 - see enqueue_after_commit
            log.warning("could not enqueue executions %s; the reaper will", [i for i, _ in items], exc_info=True)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)
