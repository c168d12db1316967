"""The web UI: server-rendered pages on the same services as the API.

Views stay thin: they parse the form, call a service module, and render.
"""
from __future__ import annotations

from flask import Blueprint, Flask, flash, redirect, render_template, request, url_for
from flask_login import LoginManager, current_user, login_required, login_user, logout_user
from flask_wtf.csrf import CSRFProtect

from .. import db
from ..errors import ApiError
from ..models import User

web_bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/static")
login_manager = LoginManager()
login_manager.login_view = "web.login"
csrf = CSRFProtect()


@login_manager.user_loader
def _load_user(user_id: str) -> User | None:
    user = db.session.get(User, int(user_id)) if user_id.isdigit() else None
    return user if user is not None and user.is_active else None


def init_app(app: Flask) -> None:
    from ..api import api_bp, register_health

    login_manager.init_app(app)
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
    from ..auth import authenticate

    error = None
    if request.method == "POST":
        try:
            user = authenticate(db.session(), request.form.get("username", ""), request.form.get("password", ""))
            db.session.commit()
            login_user(user)
            nxt = request.args.get("next") or ""
            # Only same-site relative redirects.
            if not nxt.startswith("/") or nxt.startswith("//"):
                nxt = url_for("web.index")
            return redirect(nxt)
        except ApiError as err:
            db.session.rollback()
            error = err.message
    return render_template("login.html", error=error), (401 if error else 200)


@web_bp.post("/logout")
@login_required
def logout():
    from .. import audit

    audit.record(db.session(), "auth.logout", actor=current_user.username, target=current_user)
    db.session.commit()
    logout_user()
    flash("Signed out.")
    return redirect(url_for("web.login"))


from . import executions, views  # noqa: E402,F401
from . import dashboard  # noqa: E402,F401  (helper F: dashboard, reports, notifications, /metrics, /admin/rq)
from . import admin, approvals  # noqa: E402,F401  (helper E: approvals, users, policies, audit, account)
from . import schedules  # noqa: E402,F401  (helper D: schedules, blackouts, pause-all)
from . import connections  # noqa: E402,F401  (helper C: connection test page)
