"""User administration pages: the list with the add form, edit (role, password reset,
unlock, the user's tokens) and deactivate. Admins only (``users.manage``)."""
from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from server.core import db
from server.core.models import ROLES, User, utcnow
from server.guards import requires, visible_or_404
from server.people.accounts import add_user, deactivate_user, tokens_of, update_user
from server.web import web_bp
from server.web.common import save


@web_bp.route("/admin/users", methods=["GET", "POST"])
@login_required
@requires("users.manage")
def users():
    error, status, form = None, 200, {}
    if request.method == "POST":
        form = {k: request.form.get(k, "") for k in ("username", "role", "password", "email")}
        user, errors = save(add_user, form, actor=current_user.username)
        error, status = errors.text or None, errors.status
        if user is not None:
            flash(f"User {user.username} created.", "success")
            return redirect(url_for("web.users"))
        status = status if status != 200 else 422
    rows = db.session.execute(select(User).order_by(User.is_active.desc(), User.username)).scalars().all()
    return render_template("admin/users.html", users=rows, roles=ROLES, error=error, form=form, now=utcnow()), status


@web_bp.route("/admin/users/<int:user_id>", methods=["GET", "POST"])
@login_required
@requires("users.manage")
def user_edit(user_id: int):
    user = visible_or_404(User, user_id, "user")
    error, status = None, 200
    if request.method == "POST":
        data: dict[str, Any] = {"role": request.form.get("role", user.role), "email": request.form.get("email", ""),
                                "is_active": request.form.get("is_active") == "on"}
        if request.form.get("password"):
            data["password"] = request.form["password"]
        if request.form.get("unlock") == "on":
            data["unlock"] = True
        if request.form.get("reset_mfa") == "on":
            data["reset_mfa"] = True
        _, errors = save(update_user, user, data, actor=current_user)
        error, status = errors.text or None, errors.status
        if error is None:
            flash(f"User {user.username} saved.", "success")
            return redirect(url_for("web.users"))
    tokens = tokens_of(db.session(), user)
    return render_template("admin/user_edit.html", user=user, roles=ROLES, error=error, tokens=tokens,
                           now=utcnow()), status


@web_bp.post("/admin/users/<int:user_id>/delete")
@login_required
@requires("users.manage")
def user_delete(user_id: int):
    user = visible_or_404(User, user_id, "user")
    _, errors = save(deactivate_user, user, actor=current_user)
    error = errors.text or None
    flash(error or f"User {user.username} deactivated; their tokens are revoked.", "error" if error else "success")
    return redirect(url_for("web.users"))
