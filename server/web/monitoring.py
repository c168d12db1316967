"""What operators watch: ``/metrics`` for Prometheus and the RQ dashboard under /admin/rq,
both for admins (or, for /metrics, the TASKMANAGER_METRICS_TOKEN bearer)."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Response, abort, current_app, jsonify, redirect, request, url_for
from flask_login import current_user

from server.core import db
from server.people import access
from server.web import csrf, web_bp


@web_bp.get("/metrics")
def metrics():
    """Prometheus text format; admins or the TASKMANAGER_METRICS_TOKEN bearer only."""
    from server.reporting import metrics as m
    from server.people.auth import user_for_token

    header = request.headers.get("Authorization", "")
    allowed = False
    if header.startswith("Bearer "):
        presented = header[7:].strip()
        if m.token_matches(presented):
            allowed = True
        else:
            user = user_for_token(db.session(), presented)
            if user is None:
                return Response("invalid token\n", 401, {"WWW-Authenticate": "Bearer"})
            db.session.commit()
            allowed = access.has(user, "rq.view")
    elif current_user.is_authenticated:
        allowed = access.has(current_user, "rq.view")
    else:
        return Response("authentication required\n", 401, {"WWW-Authenticate": "Bearer"})
    if not allowed:
        return Response("forbidden\n", 403)
    queues = [current_app.config["TM"].queue_name]
    return Response(m.render(db.session(), queues), 200, {"Content-Type": m.CONTENT_TYPE, "Cache-Control": "no-store"})


# --- RQ dashboard under /admin/rq (admins only) ---------------------------------------------------

RQ_PREFIX = "/admin/rq"
# rq-dashboard endpoints that change state; they must be POSTed from our own pages.
RQ_WRITES = {"delete_job_view", "requeue_job_view", "requeue_all", "empty_queue", "compact_queue"}


def _mount_rq_dashboard(state) -> None:
    """Register rq-dashboard's blueprint behind an admin check (pages AND its JSON)."""
    import rq_dashboard
    from rq_dashboard.web import setup_rq_connection

    app = state.app
    if "rq_dashboard" in app.blueprints:
        return
    app.config.setdefault("RQ_DASHBOARD_REDIS_URL", app.config["TM"].effective_redis_url)
    app.config.setdefault("RQ_DASHBOARD_POLL_INTERVAL", 3000)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=RQ_PREFIX)
    setup_rq_connection(app)
    # Its jQuery posts carry no CSRF token: exempt it and check the Origin instead (below).
    csrf.exempt(rq_dashboard.blueprint)

    @app.before_request
    def _rq_dashboard_guard():
        if request.blueprint != "rq_dashboard":
            return None
        wants_json = request.path.endswith(".json") or request.method == "POST"
        if not current_user.is_authenticated:
            if wants_json:
                return jsonify({"error": {"code": "unauthorized", "message": "sign in as an admin"}}), 401
            return redirect(url_for("web.login", next=request.full_path.rstrip("?")))
        if not access.has(current_user, "rq.view"):
            if wants_json:
                return jsonify({"error": {"code": "forbidden", "message": "admins only"}}), 403
            abort(403)
        endpoint = (request.endpoint or "").split(".")[-1]
        if endpoint in RQ_WRITES:
            if request.method != "POST":
                abort(405)
            origin = request.headers.get("Origin") or request.headers.get("Referer") or ""
            if urlsplit(origin).netloc != request.host:
                return jsonify({"error": {"code": "csrf", "message": "cross-site request refused"}}), 403
        return None


web_bp.record_once(_mount_rq_dashboard)
