"""Signing in and out: the login form, logout, and the home page that leads to the dashboard.

A sign-in always starts a fresh server-side session (``web_sessions``), so nothing an
earlier cookie carried, CSRF token included, outlives it unless it is the same user's.
"""
from __future__ import annotations

from flask import current_app, flash, g, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user

from server.core import audit, db
from server.core.errors import ApiError
from server.core.models import User
from server.people import login_throttle, web_sessions
from server.people.auth import authenticate
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


@web_bp.route("/login", methods=["GET", "POST"])
def login():
    error, status, headers = None, 200, {}
    if request.method == "POST":
        try:
            user = authenticate(db.session(), request.form.get("username", ""), request.form.get("password", ""))
            _sign_in(user)
            return redirect(safe_next(request.args.get("next")))
        except LoginThrottled as err:
            db.session.rollback()
            error, status, headers = err.message, err.status, {"Retry-After": str(err.retry_after)}
        except ApiError as err:
            db.session.rollback()
            error, status = err.message, 401
    return render_template("login.html", error=error), status, headers


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


def _sign_in(user: User) -> None:
    """Start a fresh server-side session: nothing from the previous cookie carries over.

    The session this browser had is ended. Its CSRF token is kept only when the same user
    signs in again over a live session of his own; otherwise (an anonymous cookie, perhaps
    planted with a token its planter knows, or another user's) the token is new too.
    """
    previous = web_sessions.current_key()
    same_user = current_user.is_authenticated and current_user.id == user.id
    web_sessions.end(db.session(), previous)
    _fresh_cookie(keep_csrf=same_user)
    key = web_sessions.start(db.session(), user, login_throttle.client_address())
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
