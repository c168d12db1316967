"""Retrying unreachable hosts inside the same execution (Task.retry_attempts / retry_delay_s).

A host that was unreachable is run again, alone with the other unreachable ones, after the
task's delay, up to ``retry_attempts`` attempts in all. Hosts that were reached (succeeded
or failed) never run twice. Every attempt stays visible: the retry's steps follow the
earlier ones on the same operation, named ``[attempt N] ...``, and the operation's message
tells how many attempts it took. All attempts together stay within the task's timeout.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.core import audit, db
from server.core.config import Settings
from server.core.models import Execution, ExecutionStatus, Host, Operation, OperationStatus
from server.runs import recorder, runner

ACTOR = "worker"


def _cancel_requested(execution_id: int) -> bool:
    with db.engine().connect() as conn:
        return bool(conn.execute(select(Execution.cancel_requested).where(Execution.id == execution_id)).scalar())


def _wait(execution_id: int, seconds: float) -> bool:
    """Sleep ``seconds``; True as soon as a cancel is requested."""
    deadline = time.monotonic() + seconds
    while True:
        if _cancel_requested(execution_id):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(0.5, left))


def run_with_retries(
    session: Session,
    ex: Execution,
    hosts: list[Host],
    ops: dict[str, Operation],
    settings: Settings,
    run: Callable[..., runner.RunResult] = runner.run,
) -> runner.RunResult:
    task = ex.task
    attempts = max(1, min(10, int(task.retry_attempts or 1)))
    delay = max(0, int(task.retry_delay_s or 0))
    budget = int(task.timeout_s or 3600)
    started = time.monotonic()
    result = run(session, ex, hosts, ops, settings)
    attempt = 1
    while attempt < attempts and result.status in (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED):
        retry = [h for h in hosts if ops[h.name].status == OperationStatus.UNREACHABLE]
        if not retry:
            break
        remaining = budget - (time.monotonic() - started) - delay
        if remaining < 1:
            used_up = f"not retried: the task's {budget} s timeout is used up"
            for h in retry:
                ops[h.name].message = _note(ops[h.name].message, used_up)
            break
        session.commit()  # the attempt's results are visible while we wait
        if _wait(ex.id, delay):
            return runner.RunResult(ExecutionStatus.CANCELLED, "cancelled on request")
        attempt += 1
        for h in retry:
            op = ops[h.name]
            op.message = f"unreachable on attempt {attempt - 1}: {op.message or 'unreachable'}; retrying"
            op.status, op.finished_at = OperationStatus.PENDING, None
        ex.hosts_done = max(0, (ex.hosts_done or 0) - len(retry))
        audit.record(session, "execution.retry_hosts", actor=ACTOR, target=ex, attempt=attempt,
                     of=attempts, hosts=[h.name for h in retry])
        session.commit()
        result = run(session, ex, retry, {h.name: ops[h.name] for h in retry}, settings,
                     timeout_s=int(remaining), attempt=attempt)
        ex.hosts_done = ex.host_count
        for h in retry:
            op = ops[h.name]
            if op.status == OperationStatus.SUCCEEDED:
                op.message = f"succeeded on attempt {attempt} of {attempts} (unreachable before)"
            elif op.status == OperationStatus.UNREACHABLE:
                op.message = _note(op.message, f"unreachable on {attempt} attempts")
    if attempt == 1 or result.status in (ExecutionStatus.CANCELLED, ExecutionStatus.TIMED_OUT):
        return result
    controller = session.execute(select(Operation).where(
        Operation.execution_id == ex.id, Operation.host_name == recorder.controller_name(next(
            (op.slice for op in ops.values()), None)))).scalars().all()
    return recorder.outcome([*ops.values(), *controller], note=f"after {attempt} attempts")


def _note(message: str | None, note: str) -> str:
    return f"{note}: {message}" if message else note
