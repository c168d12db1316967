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


def enqueue(execution_id: int, timeout_s: int = 3600) -> None:
    """Push one execution id. The job id is derived from it, so re-enqueueing is idempotent."""
    q = queue()
    job_id = f"execution-{execution_id}"
    q.enqueue_call(
        JOB_FUNC,
        args=(execution_id,),
        job_id=job_id,
        timeout=timeout_s + 300,  # ansible-runner enforces the task timeout first
        result_ttl=3600,
        failure_ttl=86400,
    )


def enqueue_after_commit(session: Session, execution_id: int) -> None:
    timeout = 3600
    from .models import Execution

    ex = session.get(Execution, execution_id)
    if ex is not None and ex.task is not None:
        timeout = ex.task.timeout_s or 3600

    @event.listens_for(session, "after_commit", once=True)
    def _push(_session) -> None:
        enqueue(execution_id, timeout)
