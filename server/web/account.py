"""One's own account: change the password, create and revoke API tokens; and the rule that
a one-time password must be replaced before any other page opens."""
from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from server.core import db
from server.core.errors import ApiError, ValidationError
from server.core.models import ApiToken, utcnow
from server.guards import visible_or_404
from server.people import access, mfa, scopes, web_sessions
from server.people.accounts import change_own_password, revoke_token, token_name, tokens_of
from server.people.auth import issue_token, token_expiry
from server.web import web_bp
from server.web.common import save

# Pages a user who must change their password may still open.
_OPEN_WHILE_MUST_CHANGE = {"web.account", "web.account_password", "web.logout", "web.login", "web.static",
                           "web.login_otp", "web.account_mfa", "web.account_mfa_confirm",
                           "web.account_sessions_end_all"}


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
    if (
        request.blueprint == "web"
        and current_user.is_authenticated
        and request.endpoint not in _OPEN_WHILE_MUST_CHANGE
        and mfa.must_enrol(db.session(), current_user._get_current_object())
    ):
        flash(f"Role {current_user.role} signs in with a second factor: set it up before you continue.", "warning")
        return redirect(url_for("web.account_mfa"))
    return None


def _account_page(new_token: str | None = None, error: str | None = None, status: int = 200):
    user = current_user._get_current_object()
    tokens = tokens_of(db.session(), user)
    return render_template("admin/account.html", tokens=tokens, new_token=new_token, error=error,
                           sessions=web_sessions.active_of(db.session(), user), is_current=web_sessions.is_current,
                           role_scopes=scopes.of_role(user.role), effective_scopes=scopes.effective,
                           mfa_on=mfa.enrolled(user), now=utcnow()), status


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
    _, errors = save(change_own_password, user, request.form.get("current_password", ""),
                     request.form.get("new_password", ""))
    error, status = errors.text or None, errors.status
    if error:
        return _account_page(error=error, status=status)
    flash("Password changed.", "success")
    return redirect(url_for("web.account"))


@web_bp.post("/account/tokens")
@login_required
def account_token_new():
    user = current_user._get_current_object()
    try:
        chosen = request.form.getlist("scopes")
        expiry_days = request.form.get("expires_days", "").strip()
        if expiry_days and not expiry_days.isdigit():
            raise ValidationError("'expires_days' must be a whole number of days", field="expires_days")
        value = issue_token(db.session(), user, name=token_name(request.form.get("name") or None), actor=user.username,
                            scopes=scopes.parse(chosen or None, user.role),
                            expires_at=token_expiry(int(expiry_days) * 86400) if expiry_days else None,
                            mfa_at=web_sessions.mfa_at())
        db.session.commit()
    except ApiError as err:
        db.session.rollback()
        return _account_page(error=err.message, status=err.status)
    # Rendered, not flashed: a flash would carry the token in the (signed, not encrypted) cookie.
    return _account_page(new_token=value, status=201)


@web_bp.post("/account/tokens/<int:token_id>/revoke")
@login_required
def account_token_revoke(token_id: int):
    token = visible_or_404(ApiToken, token_id, "token",
                           lambda t: t.user_id == current_user.id or access.has(current_user, "users.manage"))
    _, errors = save(revoke_token, token, actor=current_user._get_current_object())
    error = errors.text or None
    flash(error or f"Token {token.name} ({token.prefix}…) revoked.", "error" if error else "success")
    back = request.form.get("back")
    if back == "user" and access.has(current_user, "users.manage"):
        return redirect(url_for("web.user_edit", user_id=token.user_id))
    return redirect(url_for("web.account"))
