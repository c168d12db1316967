"""One's own second factor and sessions in the UI: TOTP enrolment (QR code drawn here),
recovery codes shown once, the step-up page that re-asks for a code before approval
decisions and credential edits, the list of live sessions and "sign out everywhere"."""
from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, logout_user

from server.core import audit, db
from server.core.errors import ApiError, NotFound
from server.core.models import utcnow
from server.people import mfa, stepup, web_sessions
from server.people.auth import second_factor
from server.guards import MAX_ID
from server.web import web_bp
from server.web.auth import _fresh_cookie, safe_next


@web_bp.before_app_request
def _step_up():
    """A sensitive change from a page needs a recent second factor: ask for it first."""
    if request.blueprint != "web" or request.url_rule is None or not current_user.is_authenticated:
        return None
    if not stepup.sensitive(request.method, request.url_rule.rule):
        return None
    user = current_user._get_current_object()
    if not stepup.needed(db.session(), user, web_sessions.mfa_at()):
        return None
    flash("Confirm it is you with a current code, then submit again.", "warning")
    back = request.referrer or "/"
    host = request.host_url.rstrip("/")
    return redirect(url_for("web.account_mfa_verify", next=back[len(host):] if back.startswith(host) else "/"))


def _user():
    return current_user._get_current_object()


@web_bp.get("/account/mfa")
@login_required
def account_mfa():
    user = _user()
    s = db.session()
    if mfa.enrolled(user):
        return render_template("admin/mfa.html", enrolled=True, required=mfa.required_for(s, user),
                               left=len(user.recovery_codes or []))
    secret, uri = mfa.begin(s, user)
    s.commit()
    return render_template("admin/mfa.html", enrolled=False, required=mfa.required_for(s, user), secret=secret,
                           uri=uri, qr=mfa.qr_svg(uri))


@web_bp.post("/account/mfa/confirm")
@login_required
def account_mfa_confirm():
    user = _user()
    s = db.session()
    try:
        codes = mfa.confirm(s, user, request.form.get("code", ""))
    except ApiError as err:
        s.rollback()
        flash(err.message, "error")
        return redirect(url_for("web.account_mfa"))
    web_sessions.mark_mfa(s, utcnow())
    s.commit()
    # Rendered, never flashed or stored: shown this once.
    return render_template("admin/mfa.html", enrolled=True, recovery_codes=codes, left=len(codes),
                           required=mfa.required_for(s, user))


@web_bp.post("/account/mfa/disable")
@login_required
def account_mfa_disable():
    user = _user()
    s = db.session()
    if mfa.required_for(s, user):
        flash(f"Role {user.role} must use a second factor: it cannot be turned off.", "error")
        return redirect(url_for("web.account_mfa"))
    try:
        mfa.disable(s, user, request.form.get("code", ""))
        s.commit()
        flash("Two-factor sign-in turned off.", "success")
    except ApiError as err:
        s.rollback()
        flash(err.message, "error")
    return redirect(url_for("web.account_mfa"))


@web_bp.route("/account/mfa/verify", methods=["GET", "POST"])
@login_required
def account_mfa_verify():
    """Step-up: a current code makes this session's second factor fresh again."""
    error, status = None, 200
    if request.method == "POST":
        s = db.session()
        try:
            when = second_factor(s, _user(), request.form.get("otp", ""))
            web_sessions.mark_mfa(s, when)
            s.commit()
            return redirect(safe_next(request.args.get("next")))
        except ApiError as err:
            s.rollback()
            error, status = err.message, err.status
    return render_template("login_otp.html", error=error, next=request.args.get("next"),
                           action=url_for("web.account_mfa_verify", next=request.args.get("next"))), status


@web_bp.post("/account/sessions/end-all")
@login_required
def account_sessions_end_all():
    s = db.session()
    count = web_sessions.revoke_all(s, _user())
    audit.record(s, "auth.logout_everywhere", actor=current_user.username, target=_user(), sessions_ended=count)
    s.commit()
    logout_user()
    _fresh_cookie()
    flash(f"Signed out everywhere ({count} session{'s' if count != 1 else ''}).")
    return redirect(url_for("web.login"))


@web_bp.post("/account/sessions/<int:session_id>/end")
@login_required
def account_session_end(session_id: int):
    s = db.session()
    if not (0 < session_id <= MAX_ID) or not web_sessions.revoke(s, _user(), session_id):
        raise NotFound(f"session {session_id} does not exist")
    audit.record(s, "auth.logout", actor=current_user.username, target=_user(), session_id=session_id)
    s.commit()
    flash("Session ended.", "success")
    return redirect(url_for("web.account"))
