"""Project pages: the list (status, commit, last sync, error, playbooks, Sync button) and adding one.

Syncs run on a worker (an RQ job): the Sync button only asks for one.
"""
from __future__ import annotations

from typing import Any

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from server.catalog import playbooks, projects
from server.core import db
from server.core.models import Credential, Project
from server.guards import requires, visible_or_404
from server.people import access
from server.runs.project_jobs import enqueue_sync
from server.web import web_bp
from server.web.common import save
from server.web.forms import checkbox


def _rows() -> list[dict[str, Any]]:
    projects.local_project(db.session())
    db.session.commit()
    rows = []
    for project in db.session.execute(select(Project).order_by(Project.name)).scalars():
        row = projects.public(project)
        row["playbooks"] = (playbooks.list_playbooks(current_app.config["TM"].playbook_dir) if project.is_local
                            else list(project.playbooks or []))
        row["is_local"] = project.is_local
        rows.append(row)
    return rows


def _page(errors: dict[str, str] | None = None, form: dict[str, Any] | None = None, status: int = 200):
    creds = db.session.execute(select(Credential.name).where(Credential.kind.in_(("ssh_key", "token", "password")))
                               .order_by(Credential.name)).scalars().all()
    return render_template("projects/list.html", items=_rows(), errors=errors or {}, form=form or {},
                           credentials=creds, can_edit=access.has(current_user, "projects.edit")), status


@web_bp.get("/projects")
@login_required
@requires("hosts.view")
def projects_page():
    return _page()


def _data(form) -> dict[str, Any]:
    data: dict[str, Any] = {"name": form.get("name", ""), "url": form.get("url", ""),
                            "branch": form.get("branch", ""), "credential": form.get("credential", "") or None,
                            "sync_on_launch": checkbox(form, "sync_on_launch")}
    if form.get("webhook_secret"):
        data["webhook_secret"] = form["webhook_secret"]
    return data


def _enqueue(project: Project) -> None:
    try:
        enqueue_sync(current_app.config["TM"].queue_name, project.id, current_user.username)
    except Exception:  # noqa: BLE001 - Redis unreachable: shown on the project, never a 500
        projects.queue_failed(db.session(), project)
        db.session.commit()


@web_bp.post("/projects")
@login_required
@requires("projects.edit")
def project_new():
    def create(session):
        project = projects.create_project(session, _data(request.form), user=current_user)
        projects.mark_syncing(session, project, actor=current_user.username, reason="created")
        return project

    project, errors = save(create)
    if errors:
        values = {k: v for k, v in request.form.items() if k not in ("webhook_secret", "csrf_token")}
        return _page(errors, values, errors.status)
    _enqueue(project)
    flash(f"Project {project.name} added; its first sync has started.", "success")
    return redirect(url_for("web.projects_page"))


@web_bp.post("/projects/<int:project_id>/sync")
@login_required
@requires("projects.edit")
def project_sync(project_id: int):
    project = visible_or_404(Project, project_id, "project")
    _, errors = save(projects.mark_syncing, project, actor=current_user.username, reason="requested")
    if errors:
        flash(errors.message, "error")
    else:
        _enqueue(project)
        flash(f"Sync of {project.name} started.", "success")
    return redirect(url_for("web.projects_page"))


@web_bp.post("/projects/<int:project_id>/delete")
@login_required
@requires("projects.edit")
def project_delete(project_id: int):
    project = visible_or_404(Project, project_id, "project")
    name = project.name
    _, errors = save(projects.delete_project, project, user=current_user,
                     instance_dir=current_app.config["TM"].instance_dir)
    flash(errors.message if errors else f"Project {name} deleted.", "error" if errors else "success")
    return redirect(url_for("web.projects_page"))
