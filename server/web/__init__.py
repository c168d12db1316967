"""The web UI: server-rendered pages on the same services as the API.

Views stay thin: they parse the form, call a service module, and render. One module per
resource (``ROUTE_MODULES``) registers its pages on ``web_bp``; ``init_app`` imports them
all before the blueprint is registered.
"""
from __future__ import annotations

from importlib import import_module

from flask import Blueprint, Flask
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect
from werkzeug.exceptions import HTTPException, InternalServerError, default_exceptions

from server.core import db
from server.core.errors import ApiError
from server.core.models import User
from server.people import login_throttle, web_sessions

web_bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/static")
login_manager = LoginManager()
login_manager.login_view = "web.login"
csrf = CSRFProtect()

# The page modules, one per resource.
ROUTE_MODULES = (
    "auth", "account", "hosts", "hosts_bulk", "connections", "credentials", "tasks", "executions", "approvals", "schedules",
    "reports", "notifications", "users", "policies", "audit_trail", "monitoring", "projects", "mfa", "identity",
)


@login_manager.user_loader
def _load_user(user_id: str) -> User | None:
    """A cookie counts only while its server-side session lives (see ``web_sessions``)."""
    return web_sessions.user_for(db.session(), user_id, web_sessions.current_key())


@web_bp.errorhandler(ApiError)
def _refused(err: ApiError) -> HTTPException:
    """A refusal no view turned into a message (``visible_or_404``, ``requires``): roll back
    and answer with the plain error page of its status, as ``abort`` would."""
    db.session.rollback()
    return default_exceptions.get(err.status, InternalServerError)()


def init_app(app: Flask) -> None:
    from server.api import api_bp

    for name in ROUTE_MODULES:
        import_module(f"{__name__}.{name}")
    login_manager.init_app(app)
    app.jinja_env.globals["login_delays"] = login_throttle.delays_for
    csrf.init_app(app)
    csrf.exempt(api_bp)  # the API checks X-CSRFToken itself for cookie-authenticated writes
    app.register_blueprint(web_bp)
