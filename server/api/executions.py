"""Executions: start (``POST /tasks/<id>/executions``), list, inspect, cancel, relaunch."""
from __future__ import annotations

import re
from typing import Any

from flask import jsonify, request
from sqlalchemy import select
from sqlalchemy.orm import joinedload, selectinload

from server.executions import approvals
from server.core import db
from server.people.access import can_view_execution, filter_executions, require_task, task_permissions
from server.core.errors import Forbidden, NotFound, ValidationError
from server.executions.relaunch import relaunch
from server.executions.request import MAX_REASON, cancel_execution, request_execution
from server.core.models import EXECUTION_STATUSES, OPERATION_STATUSES, Execution, Operation, Step, Task
from server.core.pagination import text_arg
from server.core.validation import Fields, name_list, text, variables
from server.api import api_bp, json_body, me
from server.api.common import iso, page_of
from server.api.openapi import DATETIME, describe, register_schema
from server.api.tasks import visible_task
from server.guards import MAX_ID, visible_or_404
from server.reporting import output

RUN_FIELDS = ("vars", "reason", "limit", "dry_run")
_TRIGGER_RE = re.compile(r"^[a-z_]{1,20}$")


def execution_dict(ex: Execution) -> dict[str, Any]:
    """The light form used in lists (no operations)."""
    return {
        "id": ex.id,
        "task": ex.task.name if ex.task else None,
        "task_id": ex.task_id,
        "status": ex.status,
        "trigger": ex.trigger,
        "requested_by": ex.requested_by.username if ex.requested_by else None,
        "reason": ex.reason,
        "vars": ex.vars or {},
        "limit": ex.limit_hosts,
        "created_at": iso(ex.created_at),
        "queued_at": iso(ex.queued_at),
        "started_at": iso(ex.started_at),
        "finished_at": iso(ex.finished_at),
        "duration_s": ex.duration_s,
        "revision": ex.revision,
        "content_hash": ex.content_hash,
        "message": ex.message,
        "host_count": ex.host_count,
        "hosts_done": ex.hosts_done,
        "cancel_requested": ex.cancel_requested,
        "attempt": ex.attempt,
        "parent_id": ex.parent_id,
        "schedule_id": ex.schedule_id,
        "scheduled_for": iso(ex.scheduled_for),
        "approval_level": ex.approval_level,
        "approval_expires_at": iso(ex.approval_expires_at),
    }


def operation_dict(op: Operation) -> dict[str, Any]:
    return {
        "host": op.host_name,
        "host_id": op.host_id,
        "status": op.status,
        "rc": op.rc,
        "stdout": op.stdout or "",
        "stderr": op.stderr or "",
        "message": op.message,
        "started_at": iso(op.started_at),
        "finished_at": iso(op.finished_at),
        "steps": [
            {"id": s.id, "name": s.name, "status": s.status, "rc": s.rc, "stdout": s.stdout or "", "stderr": s.stderr or "",
             "changed": s.changed, "duration_s": s.duration_s, "started_at": iso(s.started_at)}
            for s in op.steps
        ],
    }


def execution_detail(ex: Execution) -> dict[str, Any]:
    body = execution_dict(ex)
    body["operations"] = [operation_dict(op) for op in ex.operations]
    return body


def visible_execution(execution_id: int) -> Execution:
    return visible_or_404(Execution, execution_id, "execution", lambda ex: can_view_execution(db.session(), me(), ex))


@api_bp.post("/tasks/<int:task_id>/executions")
@describe(request="RunRequest", response="Accepted", status=202, body_optional=True)
def run_task(task_id: int):
    """Run a task now: 202 with the new execution's id (queued, or waiting for approval).

    Optional body: ``vars`` (extra variables), ``reason`` (required by some policies),
    ``limit`` (host names: run on this subset of the task's targets only).
    """
    user = me()
    task = visible_task(task_id)
    require_task(db.session(), user, task, "execute")
    f = Fields(json_body(required=False), RUN_FIELDS, partial=True)
    f.take("limit", name_list())
    # Text the database could not store (NUL, lone surrogates) is refused here; the rules
    # about names and length are request_execution's.
    f.take("vars", lambda v: v if not isinstance(v, dict) else variables(v))
    f.take("reason", text(MAX_REASON, nullable=True, allow_empty=True, multiline=True, strip=False))
    f.raise_if_invalid()
    ex = request_execution(db.session(), task, user, run_vars=f.data.get("vars"), reason=f.data.get("reason"),
                           limit_hosts=f.clean.get("limit") or None, dry_run=f.data.get("dry_run", False))
    db.session.commit()  # then the id goes to Redis (jobs.enqueue_after_commit)
    return jsonify({"id": ex.id, "status": ex.status, "url": f"/api/v1/executions/{ex.id}"}), 202


@api_bp.get("/executions")
@describe(response="Execution", paged=True, query={
    "task": {"type": "string", "description": "task id or name"},
    "status": {"type": "string", "description": "one status or several, comma-separated"},
    "trigger": {"type": "string", "description": "manual, schedule, ..."}})
def list_executions():
    """Executions this user may see, newest first (without operations)."""
    s = db.session()
    if approvals.expire_due(s):  # requests past their deadline show as expired (lazy expiry)
        s.commit()
    query = (select(Execution).options(joinedload(Execution.task), joinedload(Execution.requested_by))
             .order_by(Execution.created_at.desc(), Execution.id.desc()))
    query = filter_executions(query, me(), s)
    task = text_arg(request.args, "task")
    if task:
        if task.isdigit():
            query = query.where(Execution.task_id == (int(task) if len(task) < 10 else -1))
        else:
            query = query.where(Execution.task_id.in_(select(Task.id).where(Task.name == task)))
    status = text_arg(request.args, "status")
    if status:
        wanted = [v.strip() for v in status.split(",") if v.strip()]
        bad = [v for v in wanted if v not in EXECUTION_STATUSES]
        if bad:
            raise ValidationError(f"unknown status {', '.join(bad)}; use {', '.join(EXECUTION_STATUSES)}",
                                  field="status")
        query = query.where(Execution.status.in_(wanted))
    trigger = text_arg(request.args, "trigger")
    if trigger:
        if not _TRIGGER_RE.match(trigger):
            raise ValidationError("'trigger' must be a trigger name such as manual or schedule", field="trigger")
        query = query.where(Execution.trigger == trigger)
    page = page_of(query)
    return jsonify(page.envelope([execution_dict(ex) for ex in page.items]))


@api_bp.get("/executions/<int:execution_id>")
@describe(response="ExecutionDetail")
def get_execution(execution_id: int):
    """One execution with its operations (one per host) and their steps."""
    if approvals.expire_if_due(db.session(), visible_execution(execution_id)):
        db.session.commit()
    ex = db.session.execute(
        select(Execution).where(Execution.id == execution_id)
        .options(selectinload(Execution.operations).selectinload(Operation.steps))
    ).scalar_one()
    return jsonify(execution_detail(ex))


@api_bp.post("/executions/<int:execution_id>/cancel")
@describe(response="Execution", status=202)
def cancel_execution_view(execution_id: int):
    """Cancel: at once if not started (200), else ask the worker to stop it (202); 409 if finished."""
    user = me()
    ex = visible_execution(execution_id)
    if ex.requested_by_id != user.id and "execute" not in task_permissions(db.session(), user, ex.task):
        raise Forbidden(f"you may not cancel executions of task '{ex.task.name}'")
    cancel_execution(db.session(), ex, user)
    db.session.commit()
    return jsonify(execution_dict(ex)), (200 if ex.status == "cancelled" else 202)


@api_bp.post("/executions/<int:execution_id>/relaunch")
def relaunch_execution(execution_id: int):
    """Run again as a new execution: ``{"failed_only": true, "reason": ...}`` (the default
    reruns only the hosts that did not succeed)."""
    parent = visible_or_404(Execution, execution_id, "execution")
    body = json_body(required=False)
    child = relaunch(
        db.session(), parent, me(), failed_only=body.get("failed_only", True), reason=body.get("reason")
    )
    db.session.commit()
    return jsonify(
        {"id": child.id, "status": child.status, "parent_id": parent.id, "limit_hosts": child.limit_hosts}
    ), 202


register_schema("RunRequest", {"type": "object", "additionalProperties": False, "properties": {
    "vars": {"type": "object", "description": "extra variables for this run (treated as data, never templated)"},
    "reason": {"type": "string", "maxLength": 2000},
    "limit": {"type": "array", "items": {"type": "string"}, "description": "run only on these of its hosts"},
    "dry_run": {"type": "boolean", "description": "for runs needing approval: approve a check-mode run first"}}})
register_schema("Accepted", {"type": "object", "required": ["id", "status"], "properties": {
    "id": {"type": "integer"}, "status": {"type": "string", "enum": ["queued", "waiting_approval"]},
    "url": {"type": "string"}}})
_EX_PROPS = {
    "id": {"type": "integer"}, "task": {"type": "string"}, "task_id": {"type": "integer"},
    "status": {"type": "string", "enum": list(EXECUTION_STATUSES)},
    "trigger": {"type": "string", "description": "manual or schedule"},
    "requested_by": {"type": ["string", "null"]}, "reason": {"type": ["string", "null"]},
    "vars": {"type": "object"}, "limit": {"type": ["array", "null"], "items": {"type": "string"}},
    "created_at": DATETIME, "queued_at": DATETIME, "started_at": DATETIME, "finished_at": DATETIME,
    "duration_s": {"type": ["number", "null"]},
    "revision": {"type": ["string", "null"], "description": "git commit of the playbook dir, or content hash"},
    "content_hash": {"type": ["string", "null"]}, "message": {"type": ["string", "null"]},
    "host_count": {"type": "integer"}, "hosts_done": {"type": "integer"},
    "cancel_requested": {"type": "boolean"}, "attempt": {"type": "integer"},
    "parent_id": {"type": ["integer", "null"]}, "schedule_id": {"type": ["integer", "null"]},
    "scheduled_for": DATETIME, "approval_level": {"type": "integer"}, "approval_expires_at": DATETIME,
}
register_schema("Execution", {"type": "object", "properties": _EX_PROPS})
register_schema("Step", {"type": "object", "properties": {
    "id": {"type": "integer", "description": "for GET /executions/{id}/steps/{step_id}/output"},
    "name": {"type": "string"}, "status": {"type": "string"}, "rc": {"type": ["integer", "null"]},
    "stdout": {"type": "string"}, "stderr": {"type": "string"}, "changed": {"type": "boolean"},
    "duration_s": {"type": ["number", "null"]}, "started_at": DATETIME}})
register_schema("Operation", {"type": "object", "properties": {
    "host": {"type": "string"}, "host_id": {"type": ["integer", "null"]},
    "status": {"type": "string", "enum": list(OPERATION_STATUSES)}, "rc": {"type": ["integer", "null"]},
    "stdout": {"type": "string"}, "stderr": {"type": "string"}, "message": {"type": ["string", "null"]},
    "started_at": DATETIME, "finished_at": DATETIME,
    "steps": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}}}})
register_schema("ExecutionDetail", {"type": "object", "properties": {
    **_EX_PROPS, "operations": {"type": "array", "items": {"$ref": "#/components/schemas/Operation"}}}})


register_schema("StepOutput", {"type": "object", "required": ["step_id", "status", "stdout", "stderr"], "properties": {
    "step_id": {"type": "integer"}, "status": {"type": "string"},
    "stdout": {"$ref": "#/components/schemas/OutputSlice"}, "stderr": {"$ref": "#/components/schemas/OutputSlice"}}})
register_schema("OutputSlice", {"type": "object", "properties": {
    "text": {"type": "string", "description": "the output after the offset, escape codes included"},
    "next_offset": {"type": "integer", "description": "the offset to ask from next time"}}})


def _offset_arg(name: str) -> int:
    raw = request.args.get(name, "0")
    if not raw.isdigit() or len(raw) > 10:
        raise ValidationError(f"'{name}' must be a whole number of characters", field=name)
    return int(raw)


@api_bp.get("/executions/<int:execution_id>/steps/<int:step_id>/output")
@describe(response="StepOutput", query={"stdout_offset": {"type": "integer", "minimum": 0, "default": 0},
                                        "stderr_offset": {"type": "integer", "minimum": 0, "default": 0}})
def step_output(execution_id: int, step_id: int):
    """One step's output after the given offsets (in characters), to follow a running step.

    While the step runs only whole lines are returned; ask again from ``next_offset``. Output
    printed before a cancel, a timeout or a lost worker stays on the step."""
    ex = visible_execution(execution_id)
    offsets = (_offset_arg("stdout_offset"), _offset_arg("stderr_offset"))
    step = db.session.execute(
        select(Step).join(Operation).where(Step.id == step_id, Operation.execution_id == ex.id)
    ).scalar_one_or_none() if 0 < step_id <= MAX_ID else None
    if step is None:
        raise NotFound(f"step {step_id} does not exist in execution {ex.id}")
    body: dict[str, Any] = {"step_id": step.id, "status": step.status}
    for stream, offset in zip(("stdout", "stderr"), offsets, strict=True):
        sl = output.slice_from(getattr(step, stream), offset, running=step.status == "running")
        body[stream] = {"text": sl.text, "next_offset": sl.next_offset}
    return jsonify(body)
