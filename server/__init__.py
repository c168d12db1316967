"""Task Manager: the Flask application factory.

``create_app`` wires settings, database, vault, audit key and Redis; the worker and the
scheduler call it too, so every process shares one configuration.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from flask import Flask, Response, request

from server.core import audit, db
from server.core.config import Settings, load_settings
from server.core.redis_conn import init_redis
from server.core.vault import init_vault


# No inline script anywhere: pages load /static/*.js and pass data in data-* attributes.
# Styles may be inline (style="" attributes in templates and in the SVG charts).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
# rq-dashboard (admins only, under /admin/rq/) ships inline scripts and underscore.js
# templates compiled with new Function(): it gets inline and eval, still same-origin only.
CSP_RQ_DASHBOARD = CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline' 'unsafe-eval'")
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _security_headers(resp: Response) -> Response:
    """On every response, pages, API and static files alike."""
    relaxed = request.blueprint == "rq_dashboard"
    resp.headers.setdefault("Content-Security-Policy", CSP_RQ_DASHBOARD if relaxed else CSP)
    for name, value in SECURITY_HEADERS.items():
        resp.headers.setdefault(name, value)
    return resp


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    settings: Settings = load_settings()
    # The app-level /static route serves the web UI's assets (it shadows the blueprint's own
    # /static route, and extensions such as rq-dashboard build url_for('static', ...)).
    app = Flask(__name__, instance_path=str(settings.instance_dir), static_folder="web/static")
    app.config.update(
        SECRET_KEY=settings.secret_key,
        TM=settings,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        # Web sessions end after this long idle, and at the latest this long after sign-in.
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=int(os.environ.get("TASKMANAGER_SESSION_IDLE_S", 12 * 3600))),
        SESSION_ABSOLUTE_LIFETIME=timedelta(seconds=int(os.environ.get("TASKMANAGER_SESSION_MAX_S", 24 * 3600))),
        WTF_CSRF_TIME_LIMIT=None,
        MAX_CONTENT_LENGTH=16 * 1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    if overrides:
        app.config.update(overrides)

    db.init_engine(settings.database_url)
    init_vault(settings.vault_keys)
    audit.init_audit(settings.secret_key, settings.instance_dir / "audit_head")
    init_redis(settings.effective_redis_url)

    app.after_request(_security_headers)

    @app.teardown_appcontext
    def _remove_session(_exc: BaseException | None) -> None:
        db.session.remove()

    from server import api, cli, web

    web.init_app(app)
    api.init_app(app)
    cli.init_app(app)
    return app
