"""Task pages: the list with each task's last run, the task page with its run form,
create, edit, delete and run.

What a user may do with a task comes from ``access.task_permissions``; a task he may not
view is a 404, an action he may not take a 403.
"""
from __future__ import annotations

from typing import Any

import yaml

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import selectinload

from server.catalog import playbooks
from server.catalog.tasks import create_task, delete_task, update_task
from server.core import db
from server.core.models import Credential, Execution, ExecutionStatus, Group, Host, Project, Task
from server.core.pagination import like_pattern
from server.core.errors import ValidationError
from server.executions.fingerprint import target_hosts
from server.executions.request import request_execution, select_targets
from server.guards import requires, visible_or_404
from server.people import access
from server.reporting import reports
from server.web import web_bp
from server.web.common import page_of, save, search_arg
from server.web.forms import checkbox, dump_vars, int_or_text, lines, parse_vars


def _visible_task(task_id: int) -> tuple[Task, set[str]]:
    task = visible_or_404(Task, task_id, "task")
    perms = access.task_permissions(db.session(), current_user, task)
    if "view" not in perms:
        abort(404)
    return task, perms


def _last_runs(task_ids: list[int]) -> dict[int, Execution]:
    if not task_ids:
        return {}
    latest = select(func.max(Execution.id)).where(Execution.task_id.in_(task_ids)).group_by(Execution.task_id)
    rows = db.session.execute(select(Execution).where(Execution.id.in_(latest))).scalars()
    return {ex.task_id: ex for ex in rows}


@web_bp.get("/tasks")
@login_required
def tasks():
    query = access.filter_tasks(
        select(Task).options(selectinload(Task.hosts), selectinload(Task.groups), selectinload(Task.credential))
        .order_by(Task.name), current_user)
    q = search_arg("q")
    if q:
        pattern = like_pattern(q)
        query = query.where(or_(Task.name.ilike(pattern, escape="\\"), Task.description.ilike(pattern, escape="\\")))
    page = page_of(query)
    perms = {t.id: access.task_permissions(db.session(), current_user, t) for t in page.items}
    return render_template("tasks/list.html", page=page, q=q or "", perms=perms,
                           last=_last_runs([t.id for t in page.items]),
                           can_create=access.has(current_user, "tasks.create"),
                           has_hosts=db.session.execute(select(Host.id).limit(1)).first() is not None)


def _number(form, name: str, default: int) -> Any:
    value = int_or_text(form.get(name))
    return default if value is None else value


def _task_data(form) -> dict[str, Any]:
    kind = form.get("kind", "")
    data: dict[str, Any] = {
        "name": form.get("name", ""),
        "description": form.get("description", ""),
        "kind": kind,
        "hosts": form.getlist("hosts"),
        "groups": form.getlist("groups"),
        "credential": form.get("credential", "") or None,
        "vars": parse_vars(form.get("vars", "")),
        "timeout_s": _number(form, "timeout_s", 3600),
        "become": checkbox(form, "become"),
        "allow_simultaneous": checkbox(form, "allow_simultaneous"),
        "retry_attempts": _number(form, "retry_attempts", 1),
        "retry_delay_s": _number(form, "retry_delay_s", 10),
        "retry_on_lost": checkbox(form, "retry_on_lost"),
        "variables": parse_vars(form.get("variables", ""), "variables") or [],
        "allowed_tags": form.get("allowed_tags", ""),
        "serial": _serial_text(form.get("serial", "")),
        "max_fail_percentage": int_or_text(form.get("max_fail_percentage")),
    }
    if kind == "playbook":
        data["playbook"] = form.get("playbook", "")
        data["vault_credential"] = form.get("vault_credential", "") or None
        if form.get("project"):
            data["project"] = form["project"]
    else:
        data["commands"] = lines(form.get("commands", ""))
    return data


def _serial_text(raw: str) -> Any:
    """``2``, ``25%`` or ``1, 25%, 100%`` (a list) as the API takes it."""
    raw = (raw or "").strip()
    if "," in raw:
        return [part.strip() for part in raw.split(",")]
    return raw or None


def _task_form(task: Task | None, errors: dict[str, str] | None = None, status: int = 200,
               copy_of: Task | None = None):
    if copy_of is not None:
        values = _copy_values(copy_of)
    elif request.method == "POST":
        values: dict[str, Any] = request.form.to_dict()
        values["hosts"], values["groups"] = request.form.getlist("hosts"), request.form.getlist("groups")
    elif task is not None:
        values = {"name": task.name, "description": task.description, "kind": task.kind,
                  "commands": "\n".join(task.commands or []), "playbook": task.playbook or "",
                  "project": task.project.name if task.project else "local",
                  "hosts": [h.name for h in task.hosts], "groups": [g.name for g in task.groups],
                  "credential": task.credential.name if task.credential else "", "vars": dump_vars(task.vars),
                  "vault_credential": task.vault_credential.name if task.vault_credential else "",
                  "timeout_s": task.timeout_s, "become": task.become, "allow_simultaneous": task.allow_simultaneous,
                  "retry_attempts": task.retry_attempts, "retry_delay_s": task.retry_delay_s,
                  "retry_on_lost": task.retry_on_lost,
                  "variables": yaml.safe_dump(task.variables, sort_keys=False, allow_unicode=True) if task.variables else "",
                  "allowed_tags": ", ".join(task.allowed_tags or []),
                  "serial": ", ".join(map(str, task.serial)) if isinstance(task.serial, list) else (task.serial or ""),
                  "max_fail_percentage": "" if task.max_fail_percentage is None else task.max_fail_percentage}
    else:
        values = {"kind": "commands", "timeout_s": 3600, "retry_attempts": 1, "retry_delay_s": 10}
    hosts, groups, creds, vaults = _choices(task)
    return render_template(
        "tasks/form.html", task=task, form=values, errors=errors or {},
        playbooks=playbooks.list_playbooks(current_app.config["TM"].playbook_dir),
        git_projects=_git_projects(),
        all_hosts=hosts, all_groups=groups, all_credentials=creds, vault_credentials=vaults,
    ), status


def _git_projects() -> list[tuple[str, list[str]]]:
    """(name, playbooks at its last good sync) of every git project, for the form's pickers."""
    rows = db.session.execute(select(Project).where(Project.url != "").order_by(Project.name)).scalars()
    return [(p.name, list(p.playbooks or [])) for p in rows]


def _choices(task: Task | None) -> tuple[list[str], list[str], list[Any], list[str]]:
    """The hosts, groups, credentials and vault credentials this user may point the task at
    (``access.usable_targets``; ``local`` hosts for admins only), plus what the task already uses."""
    s = db.session()
    user = current_user._get_current_object()
    usable = access.usable_targets(s, user)
    hosts_q = select(Host.name).order_by(Host.name)
    groups_q = select(Group.name).order_by(Group.name)
    creds_q = select(Credential.name, Credential.kind).where(Credential.kind != "vault_password").order_by(Credential.name)
    vaults_q = select(Credential.name).where(Credential.kind == "vault_password").order_by(Credential.name)
    allowed = []
    if usable.host_ids is not None:
        allowed.append(Host.id.in_(usable.host_ids))
    if not access.may_target_local(user):
        allowed.append(Host.protocol != access.LOCAL_PROTOCOL)
    if allowed:
        hosts_q = hosts_q.where(or_(and_(*allowed), Host.id.in_({h.id for h in (task.hosts if task else [])})))
    if usable.group_ids is not None:
        groups_q = groups_q.where(Group.id.in_(usable.group_ids | {g.id for g in (task.groups if task else [])}))
    if usable.credential_ids is not None:
        current = {task.credential_id} if task and task.credential_id else set()
        creds_q = creds_q.where(Credential.id.in_(usable.credential_ids | current))
    if usable.vault_ids is not None:
        current = {task.vault_credential_id} if task and task.vault_credential_id else set()
        vaults_q = vaults_q.where(Credential.id.in_(usable.vault_ids | current))
    return (s.execute(hosts_q).scalars().all(), s.execute(groups_q).scalars().all(), s.execute(creds_q).all(),
            s.execute(vaults_q).scalars().all())


def _copy_values(src: Task) -> dict[str, Any]:
    """The new-task form filled from ``src``: "Copy task" saves nothing until the form is sent."""
    return {"name": f"Copy of {src.name}"[:120], "description": src.description, "kind": src.kind,
            "commands": "\n".join(src.commands or []), "playbook": src.playbook or "",
            "hosts": [h.name for h in src.hosts], "groups": [g.name for g in src.groups],
            "credential": src.credential.name if src.credential else "", "vars": dump_vars(src.vars),
            "vault_credential": src.vault_credential.name if src.vault_credential else "",
            "timeout_s": src.timeout_s, "become": src.become, "allow_simultaneous": src.allow_simultaneous,
            "retry_attempts": src.retry_attempts, "retry_delay_s": src.retry_delay_s,
            "retry_on_lost": src.retry_on_lost}


@web_bp.route("/tasks/new", methods=["GET", "POST"])
@login_required
@requires("tasks.create")
def task_new():
    if request.method == "GET":
        copy = request.args.get("copy", "")
        return _task_form(None, copy_of=_visible_task(int(copy))[0] if copy.isdigit() and len(copy) <= 10 else None)
    task, errors = save(lambda s: create_task(s, _task_data(request.form), user=current_user._get_current_object(),
                                               playbook_dir=current_app.config["TM"].playbook_dir))
    if errors:
        return _task_form(None, errors, errors.status)
    flash(f"Task {task.name} created.", "success")
    return redirect(url_for("web.task", task_id=task.id))


@web_bp.get("/tasks/<int:task_id>")
@login_required
def task(task_id: int):
    task, perms = _visible_task(task_id)
    return _task_page(task, perms)


def _task_page(task: Task, perms: set[str], errors: dict[str, str] | None = None, status: int = 200):
    s = db.session()
    recent = s.execute(
        select(Execution).where(Execution.task_id == task.id)
        .order_by(Execution.created_at.desc(), Execution.id.desc()).limit(10)
    ).scalars().all()
    rules = access.request_rules(s, current_user, task)
    run_form = request.form.to_dict() if request.method == "POST" else {}
    run_lists = {k: request.form.getlist(k) for k in request.form} if request.method == "POST" else {}
    preview, preview_limit = None, request.args.get("limit", "").strip() if request.args.get("preview") else ""
    if request.args.get("preview"):
        try:
            preview = select_targets(task, preview_limit or None)
        except ValidationError as err:
            errors = {**(errors or {}), "limit": err.message}
    return render_template("tasks/detail.html", task=task, perms=perms, recent=recent, rules=rules,
                           targets=target_hosts(task), vars_text=dump_vars(task.vars), errors=errors or {},
                           run_form=run_form, run_form_lists=run_lists, preview=preview, preview_limit=preview_limit,
                           launch_keys=[f"vars.{v['name']}" for v in task.variables or []],
                           next_run=next(iter(reports.upcoming_runs(s, {task.id}, limit=1)), None)), status


@web_bp.route("/tasks/<int:task_id>/edit", methods=["GET", "POST"])
@login_required
def task_edit(task_id: int):
    task, perms = _visible_task(task_id)
    if "edit" not in perms:
        abort(403)
    if request.method == "GET":
        return _task_form(task)
    _, errors = save(lambda s: update_task(s, task, _task_data(request.form), user=current_user._get_current_object(),
                                            playbook_dir=current_app.config["TM"].playbook_dir))
    if errors:
        return _task_form(visible_or_404(Task, task_id, "task"), errors, errors.status)
    flash(f"Task {task.name} saved.", "success")
    return redirect(url_for("web.task", task_id=task.id))


@web_bp.post("/tasks/<int:task_id>/delete")
@login_required
def task_delete(task_id: int):
    task, perms = _visible_task(task_id)
    if "edit" not in perms:
        abort(403)
    name = task.name
    _, errors = save(delete_task, task, user=current_user._get_current_object())
    if errors:
        flash(errors.message, "error")
        return redirect(url_for("web.task", task_id=task_id))
    flash(f"Task {name} deleted.", "success")
    return redirect(url_for("web.tasks"))


def _typed(kind: str, raw: str) -> Any:
    """A number field's text as a number when it is one (else the text: the check names it)."""
    try:
        return int(raw) if kind == "integer" or raw.lstrip("-").isdigit() else float(raw)
    except ValueError:
        return raw


def launch_form_values(task: Task, form) -> dict[str, Any]:
    """The Run form's fields (``vars.NAME``, one per declared variable) as launch values."""
    values: dict[str, Any] = {}
    for decl in task.variables or []:
        key, kind = f"vars.{decl['name']}", decl["type"]
        if kind == "boolean":
            if form.get(f"{key}.present"):
                values[decl["name"]] = checkbox(form, key)
        elif kind == "multichoice":
            if form.getlist(key):
                values[decl["name"]] = form.getlist(key)
        elif form.get(key, "") != "":
            raw = form.get(key)
            values[decl["name"]] = _typed(kind, raw.strip()) if kind in ("integer", "number") else raw
    return values


@web_bp.post("/tasks/<int:task_id>/run")
@login_required
def task_run(task_id: int):
    task, perms = _visible_task(task_id)
    if "execute" not in perms:
        abort(403)

    def run(s):
        form = request.form
        run_vars = launch_form_values(task, form) if task.variables else parse_vars(form.get("vars", ""))
        return request_execution(s, task, current_user._get_current_object(), run_vars=run_vars,
                                 reason=form.get("reason", ""), ticket=form.get("ticket") or None,
                                 limit=form.get("limit", "").strip() or None, dry_run=checkbox(form, "dry_run"),
                                 tags=form.get("tags") or None, skip_tags=form.get("skip_tags") or None)

    ex, errors = save(run)
    if errors:
        return _task_page(visible_or_404(Task, task_id, "task"), perms, errors, 422)
    if ex.status == ExecutionStatus.WAITING_APPROVAL:
        flash(f"Execution #{ex.id} is waiting for approval.", "warning")
    else:
        flash(f"Execution #{ex.id} queued.", "success")
    if "web.execution" in current_app.view_functions:
        return redirect(url_for("web.execution", execution_id=ex.id))
    return redirect(url_for("web.executions"))
