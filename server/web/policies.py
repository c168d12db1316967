"""Access policy pages: the list (admins and auditors), create, edit and delete (admins).

The form becomes the dict the API takes and goes to ``people.policies``.
"""
from __future__ import annotations

from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from server.core import db
from server.core.models import PERMISSIONS, Policy, Task, User
from server.guards import requires, visible_or_404
from server.people import access
from server.people.policies import delete_policy, policy_dict, save_policy
from server.web import web_bp
from server.web.common import FormErrors, save


@web_bp.get("/admin/policies")
@login_required
def policies():
    if current_user.role not in ("admin", "auditor"):
        abort(403)
    rows = db.session.execute(select(Policy).order_by(Policy.name)).scalars().all()
    return render_template("admin/policies.html", policies=[policy_dict(p) for p in rows],
                           can_edit=access.has(current_user, "policies.manage"))


def _policy_form() -> dict[str, Any]:
    f = request.form
    data: dict[str, Any] = {
        "name": f.get("name", ""),
        "users": f.getlist("users"),
        "tasks": f.getlist("tasks"),
        "permissions": [p for p in PERMISSIONS if f.get(f"perm_{p}") == "on"],
        "requires_approval": f.get("requires_approval") == "on",
        "requires_reason": f.get("requires_reason") == "on",
        "approvers": [{"user": name, "level": level} for level in (1, 2, 3) for name in f.getlist(f"level{level}")],
        "requires_ticket": f.get("requires_ticket") == "on",
        "ticket_pattern": f.get("ticket_pattern", "").strip() or None,
        # one curated reason per line; none: any reason
        "reasons": [line.strip() for line in f.get("reasons", "").splitlines() if line.strip()],
    }
    ttl = f.get("approval_ttl_h", "").strip()
    if ttl:
        try:
            data["approval_ttl_s"] = int(round(float(ttl) * 3600))
        except ValueError:
            data["approval_ttl_s"] = ttl  # the service explains what is wrong
    return data


def _policy_page(policy: Policy | None, values: dict[str, Any], errors: FormErrors, status: int):
    s = db.session()
    return render_template(
        "admin/policy_form.html",
        policy=policy,
        values=values,
        errors=errors,
        permissions=PERMISSIONS,
        all_users=s.execute(select(User).where(User.is_active.is_(True)).order_by(User.username)).scalars().all(),
        all_tasks=s.execute(select(Task).order_by(Task.name)).scalars().all(),
    ), status


def _defaults() -> dict[str, Any]:
    return {"name": "", "users": [], "tasks": [], "permissions": ["view", "execute"], "requires_approval": False,
            "requires_reason": False, "approvers": [], "approval_ttl_s": 86400, "requires_ticket": False,
            "ticket_pattern": None, "reasons": []}


@web_bp.route("/admin/policies/new", methods=["GET", "POST"])
@login_required
@requires("policies.manage")
def policy_new():
    if request.method == "POST":
        values = _policy_form()
        policy, errors = save(save_policy, values, actor=current_user.username)
        if policy is not None:
            flash(f"Policy {policy.name} created.", "success")
            return redirect(url_for("web.policies"))
        return _policy_page(None, {**_defaults(), **values}, errors, errors.status)
    return _policy_page(None, _defaults(), FormErrors(), 200)


@web_bp.route("/admin/policies/<int:policy_id>", methods=["GET", "POST"])
@login_required
@requires("policies.manage")
def policy_edit(policy_id: int):
    policy = visible_or_404(Policy, policy_id, "policy")
    if request.method == "POST":
        values = _policy_form()
        saved, errors = save(save_policy, values, actor=current_user.username, policy=policy)
        if saved is not None:
            flash(f"Policy {saved.name} saved.", "success")
            return redirect(url_for("web.policies"))
        return _policy_page(policy, {**_defaults(), **values}, errors, errors.status)
    return _policy_page(policy, policy_dict(policy), FormErrors(), 200)


@web_bp.post("/admin/policies/<int:policy_id>/delete")
@login_required
@requires("policies.manage")
def policy_delete(policy_id: int):
    policy = visible_or_404(Policy, policy_id, "policy")
    name = policy.name
    _, errors = save(delete_policy, policy, actor=current_user.username)
    error = errors.text or None
    flash(error or f"Policy {name} deleted.", "error" if error else "success")
    return redirect(url_for("web.policies"))
