"""Tasks: ``/api/v1/tasks``."""
from __future__ import annotations

from typing import Any

from flask import current_app, jsonify, request
from sqlalchemy import or_, select
from sqlalchemy.orm import selectinload

from server.core import db
from server.people.access import filter_tasks, require_task, task_permissions
from server.core.models import PERMISSIONS, TASK_KINDS, Task
from server.core.pagination import like_pattern, text_arg
from server.core.errors import ValidationError
from server.core.validation import schema_of
from server.catalog.tasks import TASK_CHECKS, create_task, delete_task, update_task
from server.executions.request import select_targets
from server.api import api_bp, json_body, me
from server.api.common import iso, no_content, page_of
from server.guards import requires, visible_or_404
from server.api.openapi import DATETIME, VARS, describe, register_schema


def task_dict(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "name": task.name,
        "description": task.description or "",
        "kind": task.kind,
        "commands": list(task.commands or []),
        "playbook": task.playbook,
        "project": task.project.name if task.project else None,
        "vault_credential": task.vault_credential.name if task.vault_credential else None,
        "hosts": [h.name for h in task.hosts],
        "groups": [g.name for g in task.groups],
        "credential": task.credential.name if task.credential else None,
        "vars": task.vars or {},
        "timeout_s": task.timeout_s,
        "become": task.become,
        "allow_simultaneous": task.allow_simultaneous,
        "retry_attempts": task.retry_attempts,
        "retry_delay_s": task.retry_delay_s,
        "retry_on_lost": task.retry_on_lost,
        "variables": list(task.variables or []),
        "allowed_tags": list(task.allowed_tags or []),
        "serial": task.serial,
        "max_fail_percentage": task.max_fail_percentage,
        "created_at": iso(task.created_at),
        "updated_at": iso(task.updated_at),
    }


def visible_task(task_id: int) -> Task:
    """The task if this user may see it; otherwise 404 (its existence is not revealed)."""
    return visible_or_404(Task, task_id, "task", lambda t: "view" in task_permissions(db.session(), me(), t))


def playbook_dir():
    return current_app.config["TM"].playbook_dir


@api_bp.get("/tasks")
@describe(response="Task", paged=True, query={"q": {"type": "string", "description": "name contains"},
                                              "kind": {"type": "string", "enum": list(TASK_KINDS)}})
def list_tasks():
    """List the tasks this user may see, by name."""
    query = (select(Task).options(selectinload(Task.hosts), selectinload(Task.groups),
                                  selectinload(Task.credential)).order_by(Task.name))
    query = filter_tasks(query, me())
    term = text_arg(request.args, "q")
    if term:
        pattern = like_pattern(term)
        query = query.where(or_(Task.name.ilike(pattern, escape="\\"), Task.description.ilike(pattern, escape="\\")))
    kind = request.args.get("kind")
    if kind is not None:
        if kind not in TASK_KINDS:
            raise ValidationError(f"'kind' must be one of {', '.join(TASK_KINDS)}", field="kind")
        query = query.where(Task.kind == kind)
    page = page_of(query)
    return jsonify(page.envelope([task_dict(t) for t in page.items]))


@api_bp.post("/tasks")
@describe(request="TaskInput", response="Task", status=201)
@requires("tasks.create")
def create_task_view():
    """Define a task (commands or a playbook, targets, credential)."""
    user = me()
    task = create_task(db.session(), json_body(), user=user, playbook_dir=playbook_dir())
    db.session.commit()
    return jsonify(task_dict(task)), 201


@api_bp.get("/tasks/<int:task_id>")
@describe(response="Task")
def get_task(task_id: int):
    """One task, with what this user may do with it (``permissions``)."""
    task = visible_task(task_id)
    body = task_dict(task)
    body["permissions"] = sorted(task_permissions(db.session(), me(), task))
    return jsonify(body)


@api_bp.get("/tasks/<int:task_id>/targets")
@describe(response="TargetPreview", query={"limit": {"type": "string", "description": "host or group names or an "
                                                    "Ansible pattern such as web:!web-03"}})
def task_targets(task_id: int):
    """The hosts a run of this task would touch, with ``limit`` applied (422 naming 'limit')."""
    task = visible_task(task_id)
    limit = request.args.get("limit")
    hosts = select_targets(task, limit if limit and limit.strip() else None)
    return jsonify({"task": task.name, "limit": limit or None, "count": len(hosts),
                    "items": [{"name": h.name} for h in hosts]})  # names only, as the task itself shows


@api_bp.patch("/tasks/<int:task_id>")
@describe(request="TaskInput", response="Task")
def update_task_view(task_id: int):
    """Change some fields of a task; lists (commands, hosts, groups) are replaced."""
    user = me()
    task = visible_task(task_id)
    require_task(db.session(), user, task, "edit")
    update_task(db.session(), task, json_body(), user=user, playbook_dir=playbook_dir())
    db.session.commit()
    return jsonify(task_dict(task))


@api_bp.delete("/tasks/<int:task_id>")
@describe(status=204)
def delete_task_view(task_id: int):
    """Delete a task with its schedules and execution history (409 while one runs)."""
    user = me()
    task = visible_task(task_id)
    require_task(db.session(), user, task, "edit")
    delete_task(db.session(), task, user=user)
    db.session.commit()
    return no_content()


_TASK_PROPS = {  # plain fields generated from the checks the server applies (catalog.tasks.TASK_CHECKS)
    **{name: schema_of(check) for name, check in TASK_CHECKS.items()},
    "commands": schema_of(TASK_CHECKS["commands"], description="shell command lines (kind commands), run in order"),
    "playbook": schema_of(TASK_CHECKS["playbook"], description="path inside the project (kind playbook)"),
    "project": schema_of(TASK_CHECKS["project"], description="project name (kind playbook); default local"),
    "vault_credential": schema_of(TASK_CHECKS["vault_credential"],
                                  description="a vault_password credential's name"),
    "hosts": schema_of(TASK_CHECKS["hosts"], description="host names"),
    "groups": schema_of(TASK_CHECKS["groups"], description="group names"),
    "credential": schema_of(TASK_CHECKS["credential"], description="credential name"),
    "timeout_s": schema_of(TASK_CHECKS["timeout_s"], default=3600),
    "retry_attempts": schema_of(TASK_CHECKS["retry_attempts"], default=1),
    "retry_delay_s": schema_of(TASK_CHECKS["retry_delay_s"], default=10),
    "max_fail_percentage": schema_of(TASK_CHECKS["max_fail_percentage"], description="a rolling run stops once "
                                     "more than this share of a batch failed"),
    "vars": VARS,
    "become": {"type": "boolean", "default": False},
    "allow_simultaneous": {"type": "boolean", "default": False},
    "retry_on_lost": {"type": "boolean", "default": False},
    "variables": {"type": "array", "maxItems": 100, "description": "launch variables; a commands line uses one as "
                  "[#NAME#] (replaced by the value as one shell-quoted word)", "items": {
        "type": "object", "required": ["name"], "additionalProperties": False, "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
            "type": {"type": "string", "enum": ["text", "integer", "number", "boolean", "choice", "multichoice",
                                                "secret"], "default": "text"},
            "label": {"type": "string"}, "required": {"type": "boolean", "default": False}, "default": {},
            "choices": {"type": "array", "items": {"type": "string"}},
            "min": {"type": "number", "description": "value, length (text) or number of choices (multichoice)"},
            "max": {"type": "number"}, "pattern": {"type": "string", "description": "regular expression (text, "
                                                                                    "secret), whole value"}}}},
    "allowed_tags": {"type": "array", "items": {"type": "string"},
                     "description": "tags a launch may pass as tags/skip_tags (playbook tasks)"},
    "serial": {"description": "rolling run: hosts per batch, a number, '25%' or a list such as [1, '25%', '100%']",
               "oneOf": [{"type": "null"}, {"type": "integer", "minimum": 1}, {"type": "string"},
                         {"type": "array", "items": {"type": ["integer", "string"]}}]},
}
register_schema("Task", {"type": "object", "properties": {
    "id": {"type": "integer"}, **_TASK_PROPS, "created_at": DATETIME, "updated_at": DATETIME,
    "permissions": {"type": "array", "items": {"type": "string", "enum": list(PERMISSIONS)},
                    "description": "only on GET /tasks/{id}: what the caller may do"}}})
register_schema("TargetPreview", {"type": "object", "properties": {
    "task": {"type": "string"}, "limit": {"type": ["string", "null"]}, "count": {"type": "integer"},
    "items": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}}})
register_schema("TaskInput", {"type": "object", "additionalProperties": False, "required": ["name", "kind"],
                              "properties": _TASK_PROPS,
                              "description": "POST needs name, kind and commands or playbook; PATCH any subset"})
