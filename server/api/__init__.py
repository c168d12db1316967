"""HTTP API v1: JSON in, JSON out, errors as ``{"error": {"code", "message"}}``.

One module per resource registers its routes on ``api_bp`` (``ROUTE_MODULES``, imported by
``init_app`` before the blueprint is registered); this module owns authentication (bearer
token or the web session) and error rendering.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, request
from flask_login import current_user
from flask_wtf.csrf import validate_csrf
from wtforms.validators import ValidationError as CSRFValidationError
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from server.core import db
from server.people import scopes
from server.people.auth import token_row
from server.core.errors import ApiError, Unauthorized, ValidationError
from server.core.models import User

api_bp = Blueprint("api", __name__, url_prefix="/api/v1")

# Endpoints reachable without a user (the token exchange itself).
PUBLIC_ENDPOINTS = {"api.create_token", "api.openapi"}


def me() -> User:
    """The authenticated user of this request (set by ``_authenticate``)."""
    return g.user


def json_body(required: bool = True, allow_list: bool = False) -> Any:
    """The request's JSON object (or, with ``allow_list``, array), or a clear 400."""
    if not request.data and not required:
        return {}
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # absurdly deep nesting: treat as malformed, not a 500
        data = None
    if data is None:
        if not request.data and not required:
            return {}
        raise ApiError("request body must be valid JSON (Content-Type: application/json)", code="malformed_json")
    if not isinstance(data, dict) and not (allow_list and isinstance(data, list)):
        raise ValidationError("request body must be a JSON object" + (" or array" if allow_list else ""))
    return data


@api_bp.before_request
def _authenticate() -> None:
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        row = token_row(db.session(), header[7:].strip())
        if row is None:
            raise Unauthorized("invalid, expired or revoked API token")
        db.session.commit()  # last_used_at
        if request.url_rule is not None:
            scopes.require(row.scopes, row.user.role, scopes.needed(request.method, request.url_rule.rule))
        g.user = row.user
        g.api_token = row
        return
    if current_user.is_authenticated:
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            # Cookie-authenticated writes need the CSRF token the pages carry.
            try:
                validate_csrf(request.headers.get("X-CSRFToken", ""))
            except CSRFValidationError as exc:
                raise ApiError("missing or invalid X-CSRFToken header", code="csrf", status=400) from exc
        g.user = current_user._get_current_object()
        g.api_token = None
        return
    raise Unauthorized("authentication required: send 'Authorization: Bearer <token>'")


@api_bp.before_request
def _one_value_per_query_arg() -> None:
    """Every query argument of the API is one value (lists are comma-separated): a repeated
    one is refused rather than silently read as its first value."""
    for name in request.args:
        if len(request.args.getlist(name)) > 1:
            raise ValidationError(f"'{name}' may be given once", field=str(name)[:64])


@api_bp.errorhandler(ApiError)
def _api_error(err: ApiError):
    db.session.rollback()
    return jsonify(err.to_dict()), err.status


@api_bp.errorhandler(IntegrityError)
def _integrity(err: IntegrityError):
    db.session.rollback()
    return jsonify({"error": {"code": "conflict", "message": "conflicts with an existing record"}}), 409


@api_bp.errorhandler(HTTPException)
def _http_error(err: HTTPException):
    db.session.rollback()
    code = (err.name or "error").lower().replace(" ", "_")
    return jsonify({"error": {"code": code, "message": err.description}}), err.code


RETRY_AFTER_S = 5
_BUSY_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Busy - Task Manager</title></head>
<body><main><h1>The server is busy</h1><p>Every database connection is in use. Try again in a few seconds.</p>
</main></body></html>"""


@api_bp.app_errorhandler(PoolTimeout)
def _pool_exhausted(_err: PoolTimeout):
    """No pooled database connection came free in time (``db.pool_timeout``): an overload
    the client should retry, so 503 with ``Retry-After``, never a 500. App-wide: JSON under
    /api/, a plain page elsewhere (no template: rendering one could need the database)."""
    try:
        db.session.rollback()
    except Exception:  # noqa: BLE001 - the session may hold nothing to give back
        pass
    if request.path.startswith(api_bp.url_prefix + "/") or request.path == api_bp.url_prefix:
        resp = jsonify({"error": {"code": "unavailable",
                                  "message": "the server is busy (no database connection free); retry shortly"}})
    else:
        resp = Response(_BUSY_PAGE, mimetype="text/html")
    resp.status_code = 503
    resp.headers["Retry-After"] = str(RETRY_AFTER_S)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def register_health(app) -> None:
    @app.get("/healthz")
    def healthz():
        from server.core.redis_conn import redis

        problems = {}
        try:
            db.session.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - report, don't crash
            problems["database"] = type(exc).__name__
        try:
            redis().ping()
        except Exception as exc:  # noqa: BLE001
            problems["redis"] = type(exc).__name__
        if problems:
            return jsonify({"status": "unavailable", "problems": problems}), 503
        return jsonify({"status": "ok"})



# The resource modules whose routes make up the API, one per resource.
ROUTE_MODULES = (
    "tokens", "users", "policies", "audit_trail", "hosts", "groups", "hostkeys", "connections", "credentials", "tasks",
    "executions", "approvals", "schedules", "notifications", "reports", "openapi", "projects",
    "mfa", "sessions", "identity",
)


def _api_routing_error():
    """A URL under /api/ that matches no route (``/hosts/abc`` where an id is an integer) or
    no method answers JSON like every other API error. Routing fails before any blueprint is
    chosen, so no blueprint error handler sees it; app-wide ``before_request`` does."""
    err = request.routing_exception
    if err is None or not (request.path + "/").startswith(api_bp.url_prefix + "/"):
        return None
    if not isinstance(err, HTTPException) or err.code is None or err.code >= 500:
        return None
    if err.code in (301, 302, 307, 308):  # werkzeug's slash redirects keep working
        return None
    resp = _http_error(err)[0]
    resp.status_code = err.code
    if err.code == 405:
        resp.headers["Allow"] = ", ".join(sorted(getattr(err, "valid_methods", None) or []))
    return resp


def init_app(app: Flask) -> None:
    """Load every route module onto ``api_bp``, then register it and ``/healthz``."""
    for name in ROUTE_MODULES:
        import_module(f"{__name__}.{name}")
    app.register_blueprint(api_bp)
    app.before_request(_api_routing_error)
    register_health(app)
