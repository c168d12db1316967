"""The web UI: server-rendered pages on the same services as the API.

Views stay thin: they parse the form, call a service module, and render. One module per
resource (``ROUTE_MODULES``) registers its pages on ``web_bp``; ``init_app`` imports them
all before the blueprint is registered.
"""
from __future__ import annotations

from importlib import import_module

from flask import Blueprint, Flask, jsonify, render_template, request, url_for
from flask_login import LoginManager, current_user
from flask_wtf.csrf import CSRFProtect
from werkzeug.exceptions import HTTPException, InternalServerError, default_exceptions

from server.core import db
from server.core.errors import ApiError
from server.core.models import User
from server.people import access, login_throttle, web_sessions

web_bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/static")
login_manager = LoginManager()
login_manager.login_view = "web.login"
csrf = CSRFProtect()

# The page modules, one per resource.
ROUTE_MODULES = (
    "auth", "account", "hosts", "hosts_bulk", "groups", "connections", "credentials", "tasks", "executions", "approvals", "schedules",
    "reports", "notifications", "users", "policies", "audit_trail", "monitoring", "projects", "mfa", "identity",
)


@login_manager.user_loader
def _load_user(user_id: str) -> User | None:
    """A cookie counts only while its server-side session lives (see ``web_sessions``)."""
    return web_sessions.user_for(db.session(), user_id, web_sessions.current_key())


@web_bp.errorhandler(ApiError)
def _refused(err: ApiError):
    """A refusal no view turned into a message (``visible_or_404``, ``requires``): roll back
    and answer with the error page of its status, as ``abort`` would."""
    db.session.rollback()
    return _error_page(default_exceptions.get(err.status, InternalServerError)())


ERROR_PAGES = {
    403: ("Not allowed", "Your role does not let you open this page. An administrator can change your role "
                         "or a task's access policy."),
    404: ("Not found", "There is nothing here, or it is not visible to you. It may have been deleted."),
    405: ("Not allowed here", "This address does not answer that kind of request."),
}


@web_bp.app_errorhandler(403)
@web_bp.app_errorhandler(404)
@web_bp.app_errorhandler(405)
def _error_page(err: HTTPException):
    """Refusals as pages with the navigation and a way back; JSON under /api/ as before."""
    db.session.rollback()
    if request.path == "/api" or request.path.startswith("/api/"):
        code = (err.name or "error").lower().replace(" ", "_")
        return jsonify({"error": {"code": code, "message": err.description}}), err.code
    title, explanation = ERROR_PAGES.get(err.code or 500, (err.name, err.description))
    referrer = request.referrer or ""
    back = referrer if referrer.startswith(request.host_url) else url_for("web.index")
    return render_template("error.html", code=err.code, title=title, explanation=explanation, back=back), err.code


def _can(grant: str) -> bool:
    """Templates show a link only to a user whose role holds its grant (``access.ROLE_GRANTS``)."""
    return current_user.is_authenticated and access.has(current_user, grant)


def init_app(app: Flask) -> None:
    from server.api import api_bp

    for name in ROUTE_MODULES:
        import_module(f"{__name__}.{name}")
    login_manager.init_app(app)
    app.jinja_env.globals["login_delays"] = login_throttle.delays_for
    app.jinja_env.globals["can"] = _can
    csrf.init_app(app)
    csrf.exempt(api_bp)  # the API checks X-CSRFToken itself for cookie-authenticated writes
    app.register_blueprint(web_bp)
