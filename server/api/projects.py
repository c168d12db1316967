"""Playbook projects: ``/api/v1/projects`` (see ../shared/CONTRACT.md, "Playbook projects").

A sync is an RQ job: ``POST .../sync`` and the webhook answer ``202`` at once. The webhook
is the one endpoint here without a bearer token: it is authenticated by the project's
webhook secret instead (``projects.verify_webhook``).
"""
from __future__ import annotations

import json

from flask import current_app, jsonify, request
from sqlalchemy import select

from server.api import PUBLIC_ENDPOINTS, api_bp, json_body, me
from server.api.common import no_content, page_of
from server.api.openapi import DATETIME, describe, register_schema
from server.core.validation import schema_of
from server.catalog import projects
from server.core import audit, db
from server.core.errors import ApiError, Unauthorized
from server.core.models import SYNC_STATUSES, Project
from server.guards import requires, visible_or_404
from server.runs.project_jobs import enqueue_sync

PUBLIC_ENDPOINTS.add("api.project_webhook")
MAX_WEBHOOK_BODY = 5 * 1024 * 1024
PUSH_EVENTS = {"x-github-event": {"push"}, "x-gitea-event": {"push"}, "x-gitlab-event": {"Push Hook", "Tag Push Hook"}}


def _settings():
    return current_app.config["TM"]


def _start_sync(project: Project, actor: str | None, reason: str) -> None:
    projects.mark_syncing(db.session(), project, actor=actor, reason=reason)
    db.session.commit()
    try:
        enqueue_sync(_settings().queue_name, project.id, actor)
    except Exception:  # noqa: BLE001 - Redis unreachable: say so on the project, never a 500
        projects.queue_failed(db.session(), project)
        db.session.commit()


@api_bp.get("/projects")
@describe(response="Project", paged=True)
@requires("hosts.view")
def list_projects():
    """List projects by name (``local`` is the built-in playbook directory)."""
    projects.local_project(db.session())
    page = page_of(select(Project).order_by(Project.name))
    return jsonify(page.envelope([projects.public(p) for p in page.items]))


@api_bp.post("/projects")
@describe(request="ProjectInput", response="Project", status=201)
@requires("projects.edit")
def create_project_view():
    """Add a git project; its first sync starts at once (``sync_status`` ``syncing``)."""
    user = me()
    project = projects.create_project(db.session(), json_body(), user=user)
    _start_sync(project, user.username, "created")
    return jsonify(projects.public(project)), 201


@api_bp.get("/projects/<int:project_id>")
@describe(response="Project")
@requires("hosts.view")
def get_project(project_id: int):
    """One project: its commit, last sync and error."""
    return jsonify(projects.public(visible_or_404(Project, project_id, "project")))


@api_bp.patch("/projects/<int:project_id>")
@describe(request="ProjectInput", response="Project")
@requires("projects.edit")
def update_project_view(project_id: int):
    """Change a project; a new URL or branch starts a sync."""
    user = me()
    project = visible_or_404(Project, project_id, "project")
    changed = projects.update_project(db.session(), project, json_body(), user=user,
                                      instance_dir=_settings().instance_dir)
    if {"url", "branch", "credential"} & set(changed):
        _start_sync(project, user.username, "changed")
    else:
        db.session.commit()
    return jsonify(projects.public(project))


@api_bp.delete("/projects/<int:project_id>")
@describe(status=204)
@requires("projects.edit")
def delete_project_view(project_id: int):
    """Delete a project no task uses (409 names the tasks that do), with its mirror."""
    project = visible_or_404(Project, project_id, "project")
    projects.delete_project(db.session(), project, user=me(), instance_dir=_settings().instance_dir)
    db.session.commit()
    return no_content()


@api_bp.post("/projects/<int:project_id>/sync")
@describe(response="Project", status=202, body_optional=True)
@requires("projects.edit")
def sync_project_view(project_id: int):
    """Start a sync (an RQ job); follow ``sync_status`` on the project."""
    user = me()
    project = visible_or_404(Project, project_id, "project")
    _start_sync(project, user.username, "requested")
    return jsonify(projects.public(project)), 202


@api_bp.delete("/projects/<int:project_id>/host-keys")
@describe(status=204)
@requires("projects.edit")
def forget_project_host_keys(project_id: int):
    """Forget the git server's pinned SSH host key (after a legitimate rebuild)."""
    project = visible_or_404(Project, project_id, "project")
    projects.forget_host_keys(db.session(), project, user=me(), instance_dir=_settings().instance_dir)
    db.session.commit()
    return no_content()


@api_bp.get("/projects/<int:project_id>/playbooks")
@describe(response="PlaybookList")
@requires("hosts.view")
def project_playbooks(project_id: int):
    """The files holding plays at the project's last good sync."""
    from server.catalog import playbooks

    project = visible_or_404(Project, project_id, "project")
    items = playbooks.list_playbooks(_settings().playbook_dir) if project.is_local else list(project.playbooks or [])
    return jsonify({"items": items})


@api_bp.post("/projects/<int:project_id>/webhook")
@describe(response="WebhookResult", status=202, body_optional=True)
def project_webhook(project_id: int):
    """A GitHub, GitLab or Gitea push event: authenticated by the project's webhook secret.

    GitHub ``X-Hub-Signature-256``, Gitea ``X-Gitea-Signature`` (HMAC-SHA256 of the body) or
    GitLab ``X-Gitlab-Token``. Wrong or missing: 401 (audited). Other events answer 200.
    """
    session = db.session()
    project = session.get(Project, project_id) if 0 < project_id < 2**31 else None
    body = request.get_data(cache=False)[:MAX_WEBHOOK_BODY + 1]
    if project is None or project.is_local:
        audit.record(session, "project.webhook", actor=None, target_type="project", target_id=project_id,
                     outcome="refused", reason="no such project", address=request.remote_addr)
        session.commit()
        raise Unauthorized("unknown project or wrong webhook signature")
    try:
        forge = projects.verify_webhook(project, dict(request.headers), body)
    except PermissionError as err:
        audit.record(session, "project.webhook", actor=None, target=project, outcome="refused", reason=str(err),
                     address=request.remote_addr)
        session.commit()
        raise Unauthorized("unknown project or wrong webhook signature") from None
    if len(body) > MAX_WEBHOOK_BODY:
        raise ApiError("webhook body too large", code="too_large", status=413)
    try:
        event = json.loads(body) if body else None
    except ValueError:
        event = None
    if not isinstance(event, dict):
        audit.record(session, "project.webhook", actor=None, target=project, forge=forge, outcome="refused",
                     reason="malformed body", address=request.remote_addr)
        session.commit()
        raise ApiError("webhook body must be a JSON object", code="malformed_json", status=400)
    kind = next((request.headers.get(h, "") for h in PUSH_EVENTS if request.headers.get(h)), "")
    if kind not in PUSH_EVENTS.get(f"x-{forge}-event", set()):
        return jsonify({"sync": False, "reason": f"event {kind or 'unknown'!r} ignored"}), 200
    ref = str(event.get("ref") or "")
    if project.branch and ref and ref.rsplit("/", 1)[-1] != project.branch.rsplit("/", 1)[-1] \
            and not ref.endswith("/" + project.branch):
        return jsonify({"sync": False, "reason": f"push to {ref} is not the project's branch"}), 200
    audit.record(session, "project.webhook", actor=None, target=project, forge=forge, outcome="ok", ref=ref,
                 address=request.remote_addr)
    _start_sync(project, f"webhook:{forge}", "push")
    return jsonify({"sync": True}), 202


_PROPS = {
    "name": schema_of(projects.PROJECT_NAME),
    "url": {"type": "string", "maxLength": 1000, "pattern": f"^\\s*(?:{projects.URL_RE.pattern[1:-1]}|{projects.SCP_RE.pattern[1:-1]})\\s*$",
            "description": "ssh://..., user@host:path, https://... or file:///... (file: admins only)"},
    "branch": {"type": "string", "maxLength": 255, "description": "branch or tag; empty: the remote's default"},
    "credential": {"type": ["string", "null"], "description": "ssh_key for ssh URLs, token or password for https"},
    "sync_on_launch": {"type": "boolean", "default": False},
}
register_schema("Project", {"type": "object", "properties": {
    "id": {"type": "integer"}, **_PROPS,
    "name": {"type": "string"}, "url": {"type": "string", "description": "as given; empty for the built-in 'local'"},
    "revision": {"type": ["string", "null"], "description": "commit of the last good sync"},
    "synced_at": DATETIME, "sync_status": {"type": "string", "enum": list(SYNC_STATUSES)},
    "sync_error": {"type": ["string", "null"]}, "has_webhook_secret": {"type": "boolean"},
    "created_at": DATETIME, "updated_at": DATETIME}})
register_schema("ProjectInput", {"type": "object", "additionalProperties": False, "required": ["name", "url"],
                                 "properties": {**_PROPS, "webhook_secret": {
                                     "type": ["string", "null"], "writeOnly": True, "minLength": 16,
                                     "description": "shared with the forge's webhook; never returned"}}})
register_schema("PlaybookList", {"type": "object", "properties": {"items": {"type": "array",
                                                                          "items": {"type": "string"}}}})
register_schema("WebhookResult", {"type": "object", "properties": {"sync": {"type": "boolean"},
                                                                   "reason": {"type": "string"}}})
