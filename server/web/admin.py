"""Pages for users, access policies, the audit trail and one's own account (password, tokens).

Thin views: the form becomes the same dict the API takes and goes to the same service
(``accounts``, ``policies``, ``audit``); validation messages come back next to the form.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from server.people import access
from server.core import audit, db
from server.people.accounts import (
    add_user,
    change_own_password,
    deactivate_user,
    revoke_token,
    token_name,
    tokens_of,
    update_user,
)
from server.people.auth import issue_token
from server.core.dates import parse_moment
from server.core.errors import ApiError, ValidationError
from server.core.models import PERMISSIONS, ROLES, ApiToken, Policy, Task, User, utcnow
from server.core.pagination import page_args, paginate
from server.people.policies import delete_policy, policy_dict, save_policy
from server.web import web_bp
from server.web.common import get_or_404, need

PER_PAGE = 50
# Pages a user who must change their password may still open.
_OPEN_WHILE_MUST_CHANGE = {"web.account", "web.account_password", "web.logout", "web.login", "web.static"}


def _try(action, *args, **kwargs) -> tuple[Any, str | None, int]:
    """Run a service call and commit; on a problem roll back and return (None, message, status)."""
    try:
        result = action(db.session(), *args, **kwargs)
        db.session.commit()
        return result, None, 200
    except ApiError as err:
        db.session.rollback()
        return None, (f"{err.field}: {err.message}" if err.field and err.field not in err.message else err.message), err.status
    except IntegrityError:
        db.session.rollback()
        return None, "conflicts with an existing record (changed meanwhile?)", 409


@web_bp.before_app_request
def _force_password_change():
    """The first admin's one-time password must be replaced before anything else."""
    if (
        request.blueprint == "web"
        and current_user.is_authenticated
        and getattr(current_user, "must_change_password", False)
        and request.endpoint not in _OPEN_WHILE_MUST_CHANGE
    ):
        flash("Choose a new password before you continue.", "warning")
        return redirect(url_for("web.account"))
    return None


# --------------------------------------------------------------------------- users


@web_bp.route("/admin/users", methods=["GET", "POST"])
@login_required
def users():
    need("users.manage")
    error, status, form = None, 200, {}
    if request.method == "POST":
        form = {k: request.form.get(k, "") for k in ("username", "role", "password", "email")}
        user, error, status = _try(add_user, form, actor=current_user.username)
        if user is not None:
            flash(f"User {user.username} created.", "success")
            return redirect(url_for("web.users"))
        status = status if status != 200 else 422
    rows = db.session.execute(select(User).order_by(User.is_active.desc(), User.username)).scalars().all()
    return render_template("admin/users.html", users=rows, roles=ROLES, error=error, form=form, now=utcnow()), status


@web_bp.route("/admin/users/<int:user_id>", methods=["GET", "POST"])
@login_required
def user_edit(user_id: int):
    need("users.manage")
    user = get_or_404(User, user_id)
    error, status = None, 200
    if request.method == "POST":
        data: dict[str, Any] = {"role": request.form.get("role", user.role), "email": request.form.get("email", ""),
                                "is_active": request.form.get("is_active") == "on"}
        if request.form.get("password"):
            data["password"] = request.form["password"]
        if request.form.get("unlock") == "on":
            data["unlock"] = True
        _, error, status = _try(update_user, user, data, actor=current_user)
        if error is None:
            flash(f"User {user.username} saved.", "success")
            return redirect(url_for("web.users"))
    tokens = tokens_of(db.session(), user)
    return render_template("admin/user_edit.html", user=user, roles=ROLES, error=error, tokens=tokens,
                           now=utcnow()), status


@web_bp.post("/admin/users/<int:user_id>/delete")
@login_required
def user_delete(user_id: int):
    need("users.manage")
    user = get_or_404(User, user_id)
    _, error, _status = _try(deactivate_user, user, actor=current_user)
    flash(error or f"User {user.username} deactivated; their tokens are revoked.", "error" if error else "success")
    return redirect(url_for("web.users"))


# --------------------------------------------------------------------------- policies


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
    }
    ttl = f.get("approval_ttl_h", "").strip()
    if ttl:
        try:
            data["approval_ttl_s"] = int(round(float(ttl) * 3600))
        except ValueError:
            data["approval_ttl_s"] = ttl  # the service explains what is wrong
    return data


def _policy_page(policy: Policy | None, values: dict[str, Any], error: str | None, status: int):
    s = db.session()
    return render_template(
        "admin/policy_form.html",
        policy=policy,
        values=values,
        error=error,
        permissions=PERMISSIONS,
        all_users=s.execute(select(User).where(User.is_active.is_(True)).order_by(User.username)).scalars().all(),
        all_tasks=s.execute(select(Task).order_by(Task.name)).scalars().all(),
    ), status


def _defaults() -> dict[str, Any]:
    return {"name": "", "users": [], "tasks": [], "permissions": ["view", "execute"], "requires_approval": False,
            "requires_reason": False, "approvers": [], "approval_ttl_s": 86400}


@web_bp.route("/admin/policies/new", methods=["GET", "POST"])
@login_required
def policy_new():
    need("policies.manage")
    if request.method == "POST":
        values = _policy_form()
        policy, error, status = _try(save_policy, values, actor=current_user.username)
        if policy is not None:
            flash(f"Policy {policy.name} created.", "success")
            return redirect(url_for("web.policies"))
        return _policy_page(None, {**_defaults(), **values}, error, status)
    return _policy_page(None, _defaults(), None, 200)


@web_bp.route("/admin/policies/<int:policy_id>", methods=["GET", "POST"])
@login_required
def policy_edit(policy_id: int):
    need("policies.manage")
    policy = get_or_404(Policy, policy_id)
    if request.method == "POST":
        values = _policy_form()
        saved, error, status = _try(save_policy, values, actor=current_user.username, policy=policy)
        if saved is not None:
            flash(f"Policy {saved.name} saved.", "success")
            return redirect(url_for("web.policies"))
        return _policy_page(policy, {**_defaults(), **values}, error, status)
    return _policy_page(policy, policy_dict(policy), None, 200)


@web_bp.post("/admin/policies/<int:policy_id>/delete")
@login_required
def policy_delete(policy_id: int):
    need("policies.manage")
    policy = get_or_404(Policy, policy_id)
    name = policy.name
    _, error, _status = _try(delete_policy, policy, actor=current_user.username)
    flash(error or f"Policy {name} deleted.", "error" if error else "success")
    return redirect(url_for("web.policies"))


# --------------------------------------------------------------------------- audit


def _day(name: str, end: bool) -> datetime | None:
    """A date filter, or None when empty; malformed or out of range raises ValidationError."""
    raw = (request.args.get(name) or "").strip()
    return parse_moment(raw, name, end=end) if raw else None


@web_bp.get("/audit")
@login_required
def audit_log():
    need("audit.view")
    filters = {k: (request.args.get(k) or "").strip()[:120] for k in ("actor", "action", "outcome", "from", "to")}
    status = 200
    try:
        since, until = _day("from", False), _day("to", True)
    except ValidationError as err:
        flash(err.message, "error")  # shown on this page: the bad date is left out of the query
        since = until = None
        status = 422
    query = audit.query(db.session(), actor=filters["actor"] or None, action=filters["action"] or None,
                        outcome=filters["outcome"] or None, since=since, until=until)
    try:
        page_no, _ = page_args(request.args)
    except ApiError:
        page_no = 1
    page = paginate(db.session(), query, page_no, PER_PAGE)
    check = audit.verify_trail(db.session()) if request.args.get("verify") else None
    args = {k: v for k, v in filters.items() if v}
    return render_template("admin/audit.html", page=page, filters=filters, args=args, check=check), status


# --------------------------------------------------------------------------- own account


def _account_page(new_token: str | None = None, error: str | None = None, status: int = 200):
    tokens = tokens_of(db.session(), current_user._get_current_object())
    return render_template("admin/account.html", tokens=tokens, new_token=new_token, error=error), status


@web_bp.get("/account")
@login_required
def account():
    return _account_page()


@web_bp.post("/account/password")
@login_required
def account_password():
    user = current_user._get_current_object()
    if request.form.get("new_password", "") != request.form.get("confirm", ""):
        return _account_page(error="the two new passwords differ", status=422)
    _, error, status = _try(change_own_password, user, request.form.get("current_password", ""),
                            request.form.get("new_password", ""))
    if error:
        return _account_page(error=error, status=status)
    flash("Password changed.", "success")
    return redirect(url_for("web.account"))


@web_bp.post("/account/tokens")
@login_required
def account_token_new():
    user = current_user._get_current_object()
    try:
        value = issue_token(db.session(), user, name=token_name(request.form.get("name") or None), actor=user.username)
        db.session.commit()
    except ApiError as err:
        db.session.rollback()
        return _account_page(error=err.message, status=err.status)
    # Rendered, not flashed: a flash would carry the token in the (signed, not encrypted) cookie.
    return _account_page(new_token=value, status=201)


@web_bp.post("/account/tokens/<int:token_id>/revoke")
@login_required
def account_token_revoke(token_id: int):
    token = get_or_404(ApiToken, token_id)
    if token.user_id != current_user.id and not access.has(current_user, "users.manage"):
        abort(404)
    _, error, _status = _try(revoke_token, token, actor=current_user._get_current_object())
    flash(error or f"Token {token.name} ({token.prefix}…) revoked.", "error" if error else "success")
    back = request.form.get("back")
    if back == "user" and access.has(current_user, "users.manage"):
        return redirect(url_for("web.user_edit", user_id=token.user_id))
    return redirect(url_for("web.account"))
