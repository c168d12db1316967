"""Pages for hosts, credentials and tasks (list, create, edit, delete, run).

Views are thin: parse the form into the same dict the API takes, call the same service
function, and on a validation error render the form again with each message next to its
field. Secrets are never put back into a page.
"""
from __future__ import annotations

from typing import Any

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from server.people import access
from server.core import db
from server.catalog import playbooks
from server.catalog.credentials import (
    BECOME_METHODS,
    create_credential,
    delete_credential,
    public,
    update_credential,
)
from server.core.errors import ApiError, Forbidden
from server.executions.request import request_execution, target_hosts
from server.catalog.hosts import create_host, delete_host, update_host
from server.core.models import CREDENTIAL_KINDS, PROTOCOLS, Credential, Execution, Group, Host, Task
from server.core.pagination import like_pattern, page_args, paginate, text_arg
from server.catalog.tasks import create_task, delete_task, update_task
from server.web import web_bp
from server.web.common import get_or_404, need
from server.web.forms import FormError, checkbox, dump_vars, errors_of, int_or_text, lines, parse_vars, split_names

PER_PAGE = 50


# --- helpers -------------------------------------------------------------------------------

def _page(query):
    """A page of ``query`` from ?page (bad values fall back to the first page)."""
    try:
        page, _ = page_args(request.args)
    except ApiError:
        page = 1
    return paginate(db.session(), query, page, PER_PAGE)


def _search(name: str = "q") -> str | None:
    try:
        return text_arg(request.args, name)
    except ApiError:
        return None


class _Errors(dict):
    """Field -> message for the form, remembering a refused right (shown with a 403)."""

    forbidden = False


def _save(action, *args, **kwargs) -> tuple[Any, dict[str, str]]:
    """Run a service call and commit; on a validation problem roll back and return the errors."""
    try:
        result = action(db.session(), *args, **kwargs)
        db.session.commit()
        return result, {}
    except (ApiError, FormError) as err:
        db.session.rollback()
        errors = _Errors(errors_of(err))
        errors.forbidden = isinstance(err, Forbidden)
        return None, errors
    except IntegrityError:
        db.session.rollback()
        return None, {"name": "conflicts with an existing record (changed meanwhile?)"}


def _status(errors: dict[str, str]) -> int:
    if getattr(errors, "forbidden", False):
        return 403
    return 200 if not errors else 409 if any("already exists" in m for m in errors.values()) else 422


# --- hosts ---------------------------------------------------------------------------------

@web_bp.get("/hosts")
@login_required
def hosts():
    need("hosts.view")
    query = access.filter_hosts(select(Host).options(selectinload(Host.groups)).order_by(Host.name), current_user)
    q, group = _search("q"), _search("group")
    if q:
        pattern = like_pattern(q)
        query = query.where(or_(Host.name.ilike(pattern, escape="\\"), Host.address.ilike(pattern, escape="\\")))
    if group:
        query = query.where(Host.groups.any(Group.name == group))
    groups = db.session.execute(select(Group.name).order_by(Group.name)).scalars().all()
    return render_template("hosts/list.html", page=_page(query), q=q or "", group=group or "", groups=groups,
                           can_edit=access.has(current_user, "hosts.edit"))


def _host_data(form) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": form.get("name", ""),
        "port": int_or_text(form.get("port")),
        "protocol": form.get("protocol", "ssh"),
        "groups": split_names(form.get("groups", "")),
        "vars": parse_vars(form.get("vars", "")),
    }
    if form.get("address", "").strip():
        data["address"] = form["address"]
    return data


def _host_form(host: Host | None, errors: dict[str, str] | None = None, status: int = 200):
    if request.method == "POST":
        values = request.form.to_dict()
    elif host is not None:
        values = {"name": host.name, "address": host.address, "port": host.port or "", "protocol": host.protocol,
                  "groups": ", ".join(g.name for g in host.groups), "vars": dump_vars(host.vars)}
    else:
        values = {"protocol": "ssh"}
    known_groups = db.session.execute(select(Group.name).order_by(Group.name)).scalars().all()
    return render_template("hosts/form.html", host=host, form=values, errors=errors or {}, protocols=PROTOCOLS,
                           known_groups=known_groups), status


@web_bp.route("/hosts/new", methods=["GET", "POST"])
@login_required
def host_new():
    need("hosts.edit")
    if request.method == "GET":
        return _host_form(None)
    host, errors = _save(lambda s: create_host(s, _host_data(request.form), actor=current_user.username))
    if errors:
        return _host_form(None, errors, _status(errors))
    flash(f"Host {host.name} added.", "success")
    return redirect(url_for("web.hosts"))


@web_bp.route("/hosts/<int:host_id>/edit", methods=["GET", "POST"])
@login_required
def host_edit(host_id: int):
    need("hosts.edit")
    host = get_or_404(Host, host_id)
    if request.method == "GET":
        return _host_form(host)
    _, errors = _save(lambda s: update_host(s, host, _host_data(request.form), actor=current_user.username))
    if errors:
        return _host_form(get_or_404(Host, host_id), errors, _status(errors))
    flash(f"Host {host.name} saved.", "success")
    return redirect(url_for("web.hosts"))


@web_bp.post("/hosts/<int:host_id>/delete")
@login_required
def host_delete(host_id: int):
    need("hosts.edit")
    host = get_or_404(Host, host_id)
    name = host.name
    _, errors = _save(delete_host, host, actor=current_user.username)
    if errors:
        flash(next(iter(errors.values())), "error")
    else:
        flash(f"Host {name} deleted; its past operations are kept.", "success")
    return redirect(url_for("web.hosts"))


# --- credentials ---------------------------------------------------------------------------

@web_bp.get("/credentials")
@login_required
def credentials():
    need("credentials.view")
    query = select(Credential).order_by(Credential.name)
    q = _search("q")
    if q:
        query = query.where(Credential.name.ilike(like_pattern(q), escape="\\"))
    page = _page(query)
    usage = dict(db.session.execute(
        select(Task.credential_id, func.count(Task.id))
        .where(Task.credential_id.in_([c.id for c in page.items] or [-1])).group_by(Task.credential_id)
    ).all())
    return render_template("credentials/list.html", page=page, items=[public(c) for c in page.items], usage=usage,
                           q=q or "", can_edit=access.has(current_user, "credentials.edit"))


def _credential_data(form, editing: bool) -> dict[str, Any]:
    kind = form.get("kind", "")
    data: dict[str, Any] = {
        "name": form.get("name", ""),
        "kind": kind,
        "username": form.get("username", ""),
        "become_method": form.get("become_method", "") or None,
        "become_user": form.get("become_user", ""),
    }
    # Two inputs: a textarea for keys, a password box for passwords; use the one for the kind.
    secret = form.get("secret_key", "") if kind in ("ssh_key", "certificate") else form.get("secret_password", "")
    if secret or not editing:
        data["secret"] = secret  # on edit, empty means "keep"
    if checkbox(form, "clear_become_password"):
        data["become_password"] = None
    elif form.get("become_password", ""):
        data["become_password"] = form["become_password"]
    return data


def _credential_form(cred: Credential | None, errors: dict[str, str] | None = None, status: int = 200):
    if request.method == "POST":
        # Everything but the secrets goes back into the form.
        values = {k: v for k, v in request.form.items()
                  if k not in ("secret_key", "secret_password", "become_password", "csrf_token")}
    elif cred is not None:
        values = public(cred)
    else:
        values = {"kind": "ssh_key"}
    for key in ("secret_key", "secret_password"):
        if key in (errors or {}):
            errors["secret"] = errors.pop(key)
    return render_template("credentials/form.html", cred=cred, info=public(cred) if cred else None, form=values,
                           errors=errors or {}, kinds=CREDENTIAL_KINDS, become_methods=BECOME_METHODS), status


@web_bp.route("/credentials/new", methods=["GET", "POST"])
@login_required
def credential_new():
    need("credentials.edit")
    if request.method == "GET":
        return _credential_form(None)
    cred, errors = _save(lambda s: create_credential(s, _credential_data(request.form, False),
                                                     actor=current_user.username))
    if errors:
        return _credential_form(None, errors, _status(errors))
    flash(f"Credential {cred.name} saved; its secret is stored encrypted.", "success")
    return redirect(url_for("web.credentials"))


@web_bp.route("/credentials/<int:credential_id>/edit", methods=["GET", "POST"])
@login_required
def credential_edit(credential_id: int):
    need("credentials.edit")
    cred = get_or_404(Credential, credential_id)
    if request.method == "GET":
        return _credential_form(cred)
    _, errors = _save(lambda s: update_credential(s, cred, _credential_data(request.form, True),
                                                  actor=current_user.username))
    if errors:
        return _credential_form(get_or_404(Credential, credential_id), errors, _status(errors))
    flash(f"Credential {cred.name} saved.", "success")
    return redirect(url_for("web.credentials"))


@web_bp.post("/credentials/<int:credential_id>/delete")
@login_required
def credential_delete(credential_id: int):
    need("credentials.edit")
    cred = get_or_404(Credential, credential_id)
    name = cred.name
    _, errors = _save(delete_credential, cred, actor=current_user.username)
    if errors:
        flash(next(iter(errors.values())), "error")
    else:
        flash(f"Credential {name} deleted.", "success")
    return redirect(url_for("web.credentials"))


# --- tasks ---------------------------------------------------------------------------------

def _visible_task(task_id: int) -> tuple[Task, set[str]]:
    task = get_or_404(Task, task_id)
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
    q = _search("q")
    if q:
        pattern = like_pattern(q)
        query = query.where(or_(Task.name.ilike(pattern, escape="\\"), Task.description.ilike(pattern, escape="\\")))
    page = _page(query)
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
    }
    if kind == "playbook":
        data["playbook"] = form.get("playbook", "")
    else:
        data["commands"] = lines(form.get("commands", ""))
    return data


def _task_form(task: Task | None, errors: dict[str, str] | None = None, status: int = 200):
    if request.method == "POST":
        values: dict[str, Any] = request.form.to_dict()
        values["hosts"], values["groups"] = request.form.getlist("hosts"), request.form.getlist("groups")
    elif task is not None:
        values = {"name": task.name, "description": task.description, "kind": task.kind,
                  "commands": "\n".join(task.commands or []), "playbook": task.playbook or "",
                  "hosts": [h.name for h in task.hosts], "groups": [g.name for g in task.groups],
                  "credential": task.credential.name if task.credential else "", "vars": dump_vars(task.vars),
                  "timeout_s": task.timeout_s, "become": task.become, "allow_simultaneous": task.allow_simultaneous,
                  "retry_attempts": task.retry_attempts, "retry_delay_s": task.retry_delay_s,
                  "retry_on_lost": task.retry_on_lost}
    else:
        values = {"kind": "commands", "timeout_s": 3600, "retry_attempts": 1, "retry_delay_s": 10}
    hosts, groups, creds = _choices(task)
    return render_template(
        "tasks/form.html", task=task, form=values, errors=errors or {},
        playbooks=playbooks.list_playbooks(current_app.config["TM"].playbook_dir),
        all_hosts=hosts, all_groups=groups, all_credentials=creds,
    ), status


def _choices(task: Task | None) -> tuple[list[str], list[str], list[Any]]:
    """The hosts, groups and credentials this user may point the task at (``access.
    usable_targets``; ``local`` hosts for admins only), plus what the task already uses."""
    s = db.session()
    user = current_user._get_current_object()
    usable = access.usable_targets(s, user)
    hosts_q = select(Host.name).order_by(Host.name)
    groups_q = select(Group.name).order_by(Group.name)
    creds_q = select(Credential.name, Credential.kind).order_by(Credential.name)
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
    return s.execute(hosts_q).scalars().all(), s.execute(groups_q).scalars().all(), s.execute(creds_q).all()


@web_bp.route("/tasks/new", methods=["GET", "POST"])
@login_required
def task_new():
    need("tasks.create")
    if request.method == "GET":
        return _task_form(None)
    task, errors = _save(lambda s: create_task(s, _task_data(request.form), user=current_user._get_current_object(),
                                               playbook_dir=current_app.config["TM"].playbook_dir))
    if errors:
        return _task_form(None, errors, _status(errors))
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
    return render_template("tasks/detail.html", task=task, perms=perms, recent=recent, rules=rules,
                           targets=target_hosts(task), vars_text=dump_vars(task.vars), errors=errors or {},
                           run_form=run_form), status


@web_bp.route("/tasks/<int:task_id>/edit", methods=["GET", "POST"])
@login_required
def task_edit(task_id: int):
    task, perms = _visible_task(task_id)
    if "edit" not in perms:
        abort(403)
    if request.method == "GET":
        return _task_form(task)
    _, errors = _save(lambda s: update_task(s, task, _task_data(request.form), user=current_user._get_current_object(),
                                            playbook_dir=current_app.config["TM"].playbook_dir))
    if errors:
        return _task_form(get_or_404(Task, task_id), errors, _status(errors))
    flash(f"Task {task.name} saved.", "success")
    return redirect(url_for("web.task", task_id=task.id))


@web_bp.post("/tasks/<int:task_id>/delete")
@login_required
def task_delete(task_id: int):
    task, perms = _visible_task(task_id)
    if "edit" not in perms:
        abort(403)
    name = task.name
    _, errors = _save(delete_task, task, user=current_user._get_current_object())
    if errors:
        flash(next(iter(errors.values())), "error")
        return redirect(url_for("web.task", task_id=task_id))
    flash(f"Task {name} deleted.", "success")
    return redirect(url_for("web.tasks"))


@web_bp.post("/tasks/<int:task_id>/run")
@login_required
def task_run(task_id: int):
    task, perms = _visible_task(task_id)
    if "execute" not in perms:
        abort(403)

    def run(s):
        return request_execution(s, task, current_user._get_current_object(),
                                 run_vars=parse_vars(request.form.get("vars", "")),
                                 reason=request.form.get("reason", ""))

    ex, errors = _save(run)
    if errors:
        return _task_page(get_or_404(Task, task_id), perms, errors, 422)
    if ex.status == "waiting_approval":
        flash(f"Execution #{ex.id} is waiting for approval.", "warning")
    else:
        flash(f"Execution #{ex.id} queued.", "success")
    if "web.execution" in current_app.view_functions:
        return redirect(url_for("web.execution", execution_id=ex.id))
    return redirect(url_for("web.executions"))
