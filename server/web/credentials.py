"""Credential pages: the list (with how many tasks use each), add, edit and delete.

Secrets are never put back into a page: on edit an empty secret box keeps the stored one.
"""
from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import func, select

from server.catalog.credentials import BECOME_METHODS, create_credential, delete_credential, public, update_credential
from server.core import db
from server.core.models import CREDENTIAL_KINDS, Credential, Task
from server.core.pagination import like_pattern
from server.guards import requires, visible_or_404
from server.people import access
from server.web import web_bp
from server.web.common import page_of, save, search_arg
from server.web.forms import checkbox


@web_bp.get("/credentials")
@login_required
@requires("credentials.view")
def credentials():
    query = select(Credential).order_by(Credential.name)
    q = search_arg("q")
    if q:
        query = query.where(Credential.name.ilike(like_pattern(q), escape="\\"))
    page = page_of(query)
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
@requires("credentials.edit")
def credential_new():
    if request.method == "GET":
        return _credential_form(None)
    cred, errors = save(lambda s: create_credential(s, _credential_data(request.form, False),
                                                     actor=current_user.username))
    if errors:
        return _credential_form(None, errors, errors.status)
    flash(f"Credential {cred.name} saved; its secret is stored encrypted.", "success")
    return redirect(url_for("web.credentials"))


@web_bp.route("/credentials/<int:credential_id>/edit", methods=["GET", "POST"])
@login_required
@requires("credentials.edit")
def credential_edit(credential_id: int):
    cred = visible_or_404(Credential, credential_id, "credential")
    if request.method == "GET":
        return _credential_form(cred)
    _, errors = save(lambda s: update_credential(s, cred, _credential_data(request.form, True),
                                                  actor=current_user.username))
    if errors:
        return _credential_form(visible_or_404(Credential, credential_id, "credential"), errors, errors.status)
    flash(f"Credential {cred.name} saved.", "success")
    return redirect(url_for("web.credentials"))


@web_bp.post("/credentials/<int:credential_id>/delete")
@login_required
@requires("credentials.edit")
def credential_delete(credential_id: int):
    cred = visible_or_404(Credential, credential_id, "credential")
    name = cred.name
    _, errors = save(delete_credential, cred, actor=current_user.username)
    if errors:
        flash(errors.message, "error")
    else:
        flash(f"Credential {name} deleted.", "success")
    return redirect(url_for("web.credentials"))
