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
from server.core.models import (
    EXECUTION_STATUSES,
    OPERATION_STATUSES,
    Approval,
    ApprovalRequest,
    Execution,
    ExecutionStatus,
    Operation,
    Step,
    Task,
)
from server.core.pagination import TEXT_ARG_SCHEMA, text_arg
from server.core.validation import Fields, text, variables
from server.api import api_bp, json_body, me
from server.api.common import iso, page_of
from server.reporting import operations_page
from server.api.openapi import DATETIME, describe, register_schema
from server.api.tasks import visible_task
from server.guards import MAX_ID, visible_or_404
from server.reporting import output

RUN_FIELDS = ("vars", "reason", "limit", "dry_run", "ticket", "tags", "skip_tags")
_TRIGGER_RE = re.compile(r"^[a-z_]{1,20}$")
_ONE_STATUS = "(?:" + "|".join(EXECUTION_STATUSES) + ")"
_STATUS_LIST = f"^ *{_ONE_STATUS}? *(?:, *{_ONE_STATUS}? *)*$"  # what list_executions splits and checks


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
        "ticket": ex.ticket,
        "vars": ex.vars or {},  # secret values are stored and shown only as ********
        "limit": ex.limit_hosts,
        "limit_pattern": ex.limit_pattern,
        "dry_run": bool(ex.check_mode),
        "tags": ex.tags or [],
        "skip_tags": ex.skip_tags or [],
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


def decision_dict(a: Approval) -> dict[str, Any]:
    return {"level": a.level, "approver": a.approver.username, "decision": a.decision, "comment": a.comment,
            "at": iso(a.created_at)}


def approval_levels(req: ApprovalRequest | None) -> list[dict[str, Any]]:
    """Per level: who may decide it (names, or "any approver") and its decision, if any."""
    if req is None:
        return []
    return [
        {"level": row["level"], "approvers": row["approvers"] or ["any approver"],
         "decision": decision_dict(row["decision"]) if row["decision"] else None}
        for row in approvals.level_rows(db.session(), req)
    ]


def approval_summary(ex: Execution) -> dict[str, Any] | None:
    """Who must approve a waiting run, level by level, and who approved a finished one."""
    req = ex.approval
    if req is None:
        return None
    return {"status": req.status, "level": req.level, "hosts": list(req.hosts), "levels": approval_levels(req)}


def execution_detail(ex: Execution) -> dict[str, Any]:
    body = execution_dict(ex)
    body["operations"] = [operation_dict(op) for op in ex.operations]
    body["approval"] = approval_summary(ex)
    return body


def visible_execution(execution_id: int) -> Execution:
    return visible_or_404(Execution, execution_id, "execution", lambda ex: can_view_execution(db.session(), me(), ex))


@api_bp.post("/tasks/<int:task_id>/executions")
@describe(request="RunRequest", response="Accepted", status=202, body_optional=True)
def run_task(task_id: int):
    """Run a task now: 202 with the new execution's id (queued, or waiting for approval).

    Optional body: ``vars`` (values of the declared variables), ``reason`` and ``ticket``
    (required by some policies), ``limit`` (host or group names, or an Ansible pattern, within
    the task's targets), ``dry_run`` (check mode with diff), ``tags``/``skip_tags``.
    """
    user = me()
    task = visible_task(task_id)
    require_task(db.session(), user, task, "execute")
    f = Fields(json_body(required=False), RUN_FIELDS, partial=True)
    # Text the database could not store (NUL, lone surrogates) is refused here; the rules
    # about names and length are request_execution's.
    f.take("vars", lambda v: v if not isinstance(v, dict) else variables(v))
    f.take("reason", text(MAX_REASON, nullable=True, allow_empty=True, multiline=True, strip=False))
    f.raise_if_invalid()
    ex = request_execution(db.session(), task, user, run_vars=f.data.get("vars"), reason=f.data.get("reason"),
                           limit=f.data.get("limit") or None, dry_run=f.data.get("dry_run", False),
                           ticket=f.data.get("ticket"), tags=f.data.get("tags"), skip_tags=f.data.get("skip_tags"))
    db.session.commit()  # then the id goes to Redis (jobs.enqueue_after_commit)
    return jsonify({"id": ex.id, "status": ex.status, "url": f"/api/v1/executions/{ex.id}"}), 202


@api_bp.get("/executions")
@describe(response="Execution", paged=True, query={
    "task": {"type": "string", "description": "task id or name"},
    "status": {**TEXT_ARG_SCHEMA, "pattern": _STATUS_LIST, "description": "one status or several, comma-separated"},
    "trigger": {**TEXT_ARG_SCHEMA, "pattern": f"^ *(?:{_TRIGGER_RE.pattern[1:-1]})? *$",
                "description": "manual, schedule, ..."}})
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
@describe(response="ExecutionDetail", query={
    "ops_page": {"type": "integer", "minimum": 1, "description": "page of operations (big executions)"},
    "ops_per_page": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
    "ops_status": {"type": "string", "description": "only operations with this status"}})
def get_execution(execution_id: int):
    """One execution with its operations (one per host) and their steps.

    Up to 500 hosts every operation comes at once. A bigger execution, or a request with
    ``ops_page``/``ops_per_page`` (at most 500)/``ops_status``, gets one page of operations
    in host-name order and ``operations_page``: ``{page, per_page, total, pages, status}``."""
    if approvals.expire_if_due(db.session(), visible_execution(execution_id)):
        db.session.commit()
    ex = db.session.get(Execution, execution_id)
    if operations_page.wanted(request.args, ex):  # a big execution: one page of hosts at a time
        ops, where = operations_page.operations_page(db.session(), ex, request.args)
        return jsonify({**execution_dict(ex), "operations": [operation_dict(op) for op in ops],
                        "operations_page": where})
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
    return jsonify(execution_dict(ex)), (200 if ex.status == ExecutionStatus.CANCELLED else 202)


@api_bp.post("/executions/<int:execution_id>/relaunch")
def relaunch_execution(execution_id: int):
    """Run again as a new execution: ``{"failed_only": true, "reason": ...}`` (the default
    reruns only the hosts that did not succeed)."""
    parent = visible_or_404(Execution, execution_id, "execution")
    body = json_body(required=False)
    child = relaunch(
        db.session(), parent, me(), failed_only=body.get("failed_only", True), reason=body.get("reason"),
        run_vars=body.get("vars"), ticket=body.get("ticket"),
    )
    db.session.commit()
    return jsonify(
        {"id": child.id, "status": child.status, "parent_id": parent.id, "limit_hosts": child.limit_hosts}
    ), 202


register_schema("RunRequest", {"type": "object", "additionalProperties": False, "properties": {
    "vars": {"type": "object", "description": "values of the task's declared variables (checked against the "
             "declarations: 422 naming vars.NAME); free-form extra variables on tasks without declarations"},
    "reason": {"type": "string", "maxLength": 2000, "description": "may be restricted to a policy's reasons"},
    "ticket": {"type": "string", "maxLength": 200, "description": "change/incident reference (policy may require "
               "it and a pattern)"},
    "limit": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
              "description": "host names, group names or an Ansible pattern (web:!web-03, a:&b), within the "
                             "task's targets"},
    "tags": {"type": "array", "items": {"type": "string"}, "description": "playbook tasks, among allowed_tags"},
    "skip_tags": {"type": "array", "items": {"type": "string"}},
    "dry_run": {"type": "boolean", "description": "check mode with diff; for a run needing approval, approvers "
                "get a check-mode preview first"}}})
register_schema("Accepted", {"type": "object", "required": ["id", "status"], "properties": {
    "id": {"type": "integer"},
    "status": {"type": "string", "enum": [ExecutionStatus.QUEUED, ExecutionStatus.WAITING_APPROVAL]},
    "url": {"type": "string"}}})
_EX_PROPS = {
    "id": {"type": "integer"}, "task": {"type": "string"}, "task_id": {"type": "integer"},
    "status": {"type": "string", "enum": list(EXECUTION_STATUSES)},
    "trigger": {"type": "string", "description": "manual or schedule"},
    "requested_by": {"type": ["string", "null"]}, "reason": {"type": ["string", "null"]},
    "ticket": {"type": ["string", "null"]}, "dry_run": {"type": "boolean"},
    "tags": {"type": "array", "items": {"type": "string"}}, "skip_tags": {"type": "array", "items": {"type": "string"}},
    "limit_pattern": {"type": ["string", "null"], "description": "the limit as given"},
    "vars": {"type": "object", "description": "launch values; secret ones as ********"}, "limit": {"type": ["array", "null"], "items": {"type": "string"}},
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
    **_EX_PROPS, "operations": {"type": "array", "items": {"$ref": "#/components/schemas/Operation"}},
    "approval": {"type": ["object", "null"], "description": "for a run that needed approval: its request's "
                 "status, current level, the hosts it was asked for, and per level the approvers and the decision",
                 "properties": {"status": {"type": "string"}, "level": {"type": "integer"},
                                "hosts": {"type": "array", "items": {"type": "string"}},
                                "levels": {"type": "array"}}},
    "operations_page": {"type": "object", "description": "only when paged: page, per_page, total, pages, status"}}})




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
