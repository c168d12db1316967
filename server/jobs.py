"""The RQ side: execution ids go to Redis only after the database row is committed."""
from __future__ import annotations

from flask import current_app, has_app_context
from rq import Queue
from sqlalchemy import event
from sqlalchemy.orm import Session

from .redis_conn import redis

JOB_FUNC = "server.worker.run_execution_job"


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
    timeout = 3600
    from .models import Execution

    ex = session.get(Execution, execution_id)
    if ex is not None and ex.task is not None:
        timeout = ex.task.timeout_s or 3600

    @event.listens_for(session, "after_commit", once=True)
    def _push(_session) -> None:
        enqueue(execution_id, timeout)
