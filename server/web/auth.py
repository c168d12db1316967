"""Signing in and out: the login form, logout, and the home page that leads to the dashboard.

A sign-in always starts a fresh server-side session (``web_sessions``), so nothing an
earlier cookie carried, CSRF token included, outlives it unless it is the same user's.
"""
from __future__ import annotations

import time

from flask import current_app, flash, g, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user

from server.core import audit, db
from server.core.errors import ApiError
from server.core.models import User
from server.people import login_throttle, mfa, oidc, web_sessions
from server.people.auth import complete, first_factor
from server.people.login_throttle import LoginThrottled
from server.web import web_bp


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a path on this site, else the home page.

    Accepted: "/" alone, or "/" followed by a character other than "/" and backslash, with
    no control character anywhere (browsers drop tabs and newlines, so "/<TAB>/evil" would
    become "//evil"). Nothing is stripped first: what is checked is what is sent.
    """
    fallback = url_for("web.index")
    if not isinstance(value, str) or not value.startswith("/"):
        return fallback
    if len(value) > 1 and value[1] in "/\\":
        return fallback
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        return fallback
    return value


@web_bp.get("/")
@login_required
def index():
    return redirect(url_for("web.dashboard"))


PENDING_KEY = "_tm_mfa_pending"  # the user whose password passed, waiting for his code
PENDING_S = 300


@web_bp.route("/login", methods=["GET", "POST"])
def login():
    error, status, headers = None, 200, {}
    if request.method == "POST":
        try:
            user = first_factor(db.session(), request.form.get("username", ""), request.form.get("password", ""))
            if mfa.enrolled(user):
                db.session.commit()
                session[PENDING_KEY] = {"uid": user.id, "at": time.time()}
                return render_template("login_otp.html", next=request.args.get("next"))
            complete(db.session(), user, None, via="web")
            _sign_in(user)
            _remind_enrolment(user)
            return redirect(safe_next(request.args.get("next")))
        except LoginThrottled as err:
            db.session.rollback()
            error, status, headers = err.message, err.status, {"Retry-After": str(err.retry_after)}
        except ApiError as err:
            db.session.rollback()
            error, status = err.message, 401
    return render_template("login.html", error=error, oidc=oidc.configured(db.session())), status, headers


def _remind_enrolment(user: User) -> None:
    """During the grace period, a role that requires a second factor is reminded at sign-in."""
    if mfa.should_enrol(db.session(), user) and not mfa.must_enrol(db.session(), user):
        flash(f"Role {user.role} must use two-factor sign-in: set it up soon on My account "
              "(it becomes required when the grace period ends).", "warning")


OIDC_KEY = "_tm_oidc_pending"  # state, nonce and PKCE verifier of a sign-in at the provider


@web_bp.get("/login/oidc")
def login_oidc():
    """Send the browser to the OpenID provider (authorization code flow with PKCE)."""
    s = db.session()
    if not oidc.configured(s):
        return render_template("login.html", error="single sign-on is not configured"), 404
    try:
        url, pending = oidc.begin(s, url_for("web.login_oidc_callback", _external=True))
    except ApiError as err:
        return render_template("login.html", error=err.message), 401
    session[OIDC_KEY] = {**pending, "next": request.args.get("next")}
    return redirect(url)


@web_bp.get("/login/oidc/callback")
def login_oidc_callback():
    """The provider sends the browser back here with a code; the ID token decides."""
    pending = session.pop(OIDC_KEY, None)
    s = db.session()
    try:
        user = oidc.finish(s, request.args, pending, url_for("web.login_oidc_callback", _external=True))
        if mfa.enrolled(user):
            s.commit()
            session[PENDING_KEY] = {"uid": user.id, "at": time.time()}
            return render_template("login_otp.html", next=(pending or {}).get("next"))
        complete(s, user, None, via="web")
    except ApiError as err:
        s.rollback()
        audit.record(s, "auth.login", actor=None, outcome="denied", method="oidc", reason=err.message,
                     address=login_throttle.client_address())
        s.commit()
        return render_template("login.html", error=err.message, oidc=True), 401
    _sign_in(user)
    _remind_enrolment(user)
    return redirect(safe_next((pending or {}).get("next")))


@web_bp.post("/login/otp")
def login_otp():
    """Second step of a sign-in: the code for the user whose password just passed."""
    pending = session.get(PENDING_KEY) or {}
    user = db.session.get(User, pending.get("uid") or 0)
    if user is None or time.time() - pending.get("at", 0) > PENDING_S:
        session.pop(PENDING_KEY, None)
        return render_template("login.html", error="sign-in expired: enter your password again"), 401
    try:
        mfa_at = complete(db.session(), user, request.form.get("otp", ""), via="web")
    except LoginThrottled as err:
        db.session.rollback()
        return (render_template("login_otp.html", error=err.message, next=request.args.get("next")), err.status,
                {"Retry-After": str(err.retry_after)})
    except ApiError as err:
        db.session.rollback()
        return render_template("login_otp.html", error=err.message, next=request.args.get("next")), 401
    session.pop(PENDING_KEY, None)
    _sign_in(user, mfa_at=mfa_at)
    return redirect(safe_next(request.args.get("next")))


def _fresh_cookie(*, keep_csrf: bool = False) -> None:
    """Empty the session cookie, normally CSRF token included (flask-wtf caches the token in
    ``g`` for the request, so that copy goes too)."""
    name = current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
    csrf_token = session.get(name)
    session.clear()
    if keep_csrf and csrf_token:
        session[name] = csrf_token
    else:
        g.pop(name, None)


def _sign_in(user: User, *, mfa_at=None) -> None:
    """Start a fresh server-side session: nothing from the previous cookie carries over.

    The session this browser had is ended. Its CSRF token is kept only when the same user
    signs in again over a live session of his own; otherwise (an anonymous cookie, perhaps
    planted with a token its planter knows, or another user's) the token is new too.
    """
    previous = web_sessions.current_key()
    same_user = current_user.is_authenticated and current_user.id == user.id
    web_sessions.end(db.session(), previous)
    _fresh_cookie(keep_csrf=same_user)
    method = "password" if user.auth_source == "local" else user.auth_source
    key = web_sessions.start(db.session(), user, login_throttle.client_address(), method=method, mfa_at=mfa_at)
    db.session.commit()
    login_user(user)
    session[web_sessions.COOKIE_KEY] = key


@web_bp.post("/logout")
@login_required
def logout():
    web_sessions.end(db.session(), web_sessions.current_key())
    audit.record(db.session(), "auth.logout", actor=current_user.username, target=current_user)
    db.session.commit()
    logout_user()
    _fresh_cookie()
    flash("Signed out.")
    return redirect(url_for("web.login"))
