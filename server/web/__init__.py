"""The web UI: server-rendered pages on the same services as the API.

Views stay thin: they parse the form, call a service module, and render.
"""
from __future__ import annotations

from flask import Blueprint, Flask, current_app, flash, g, redirect, render_template, request, session, url_for
from flask_login import LoginManager, current_user, login_required, login_user, logout_user
from flask_wtf.csrf import CSRFProtect

from server.core import db
from server.people import login_throttle, web_sessions
from server.core.errors import ApiError
from server.people.login_throttle import LoginThrottled
from server.core.models import User

web_bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/static")
login_manager = LoginManager()
login_manager.login_view = "web.login"
csrf = CSRFProtect()


@login_manager.user_loader
def _load_user(user_id: str) -> User | None:
    """A cookie counts only while its server-side session lives (see ``web_sessions``)."""
    return web_sessions.user_for(db.session(), user_id, web_sessions.current_key())


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


def init_app(app: Flask) -> None:
    from server.api import api_bp, register_health

    login_manager.init_app(app)
    app.jinja_env.globals["login_delays"] = login_throttle.delays_for
    csrf.init_app(app)
    csrf.exempt(api_bp)  # the API checks X-CSRFToken itself for cookie-authenticated writes
    app.register_blueprint(web_bp)
    register_health(app)


@web_bp.get("/")
@login_required
def index():
    return redirect(url_for("web.dashboard"))


@web_bp.route("/login", methods=["GET", "POST"])
def login():
    from server.people.auth import authenticate

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
    from server.core import audit

    web_sessions.end(db.session(), web_sessions.current_key())
    audit.record(db.session(), "auth.logout", actor=current_user.username, target=current_user)
    db.session.commit()
    logout_user()
    _fresh_cookie()
    flash("Signed out.")
    return redirect(url_for("web.login"))


from server.web import executions, views  # noqa: E402,F401
from server.web import dashboard  # noqa: E402,F401  (helper F: dashboard, reports, notifications, /metrics, /admin/rq)
from server.web import admin, approvals  # noqa: E402,F401  (helper E: approvals, users, policies, audit, account)
from server.web import schedules  # noqa: E402,F401  (helper D: schedules, blackouts, pause-all)
from server.web import connections  # noqa: E402,F401  (helper C: connection test page)
