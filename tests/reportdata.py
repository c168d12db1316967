"""Test data for reports and notifications: tasks, executions and operations written
directly (the worker that normally writes them is tested elsewhere)."""
from __future__ import annotations

from datetime import datetime, timedelta

from server.core.models import Execution, Operation, Step, Task, utcnow


def make_task(session, name: str = "restart-nginx", **kw) -> Task:
    task = Task(name=name, kind="commands", commands=kw.pop("commands", ["systemctl restart nginx"]), **kw)
    session.add(task)
    session.flush()
    return task


def make_execution(
    session,
    task: Task,
    status: str = "succeeded",
    *,
    hosts: dict[str, str] | None = None,
    created_at: datetime | None = None,
    duration_s: float = 12.0,
    trigger: str = "manual",
    user=None,
    errors: dict[str, str] | None = None,
) -> Execution:
    """An execution with one operation per host ({name: operation status})."""
    hosts = hosts if hosts is not None else {"web-01": "succeeded"}
    created = created_at or utcnow()
    started = created + timedelta(seconds=1)
    final = status not in ("queued", "running", "waiting_approval")
    ex = Execution(
        task_id=task.id, task=task, status=status, trigger=trigger, created_at=created, queued_at=created,
        started_at=started if status != "queued" else None,
        finished_at=started + timedelta(seconds=duration_s) if final else None,
        requested_by_id=user.id if user else None, host_count=len(hosts),
        hosts_done=sum(1 for s in hosts.values() if s not in ("pending", "running")), revision="abc123",
    )
    session.add(ex)
    session.flush()
    for name, op_status in sorted(hosts.items()):
        err = (errors or {}).get(name)
        op = Operation(
            execution_id=ex.id, host_name=name, status=op_status,
            rc=0 if op_status == "succeeded" else (None if op_status in ("pending", "running") else 2),
            stdout=f"output of {name}\n", stderr=err or "", started_at=started,
            finished_at=started + timedelta(seconds=duration_s) if op_status not in ("pending", "running") else None,
            message=err if op_status == "unreachable" else None,
        )
        session.add(op)
        session.flush()
        session.add(Step(operation_id=op.id, seq=1, name="restart service", status=op_status, rc=op.rc,
                         stdout=f"step output {name}", stderr=err, duration_s=duration_s / 2))
    session.flush()
    return ex
