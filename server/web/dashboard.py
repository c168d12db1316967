"""Dashboard, report pages, notification channels, /metrics and the RQ dashboard mount.

Views stay thin: ``server.reporting.reports`` computes, ``server.reporting.notify`` validates and stores,
``web.charts`` draws the SVG.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import (
    Response,
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import current_user, login_required
from sqlalchemy import select

from server.people import access
from server.core import db
from server.reporting import notify, reports
from server.core.errors import ApiError, ValidationError
from server.core.models import OPERATION_STATUSES, NotificationChannel, Task, utcnow
from server.web import charts, csrf, web_bp


MAX_ID = 2**31 - 1  # larger ids in a URL cannot exist (and overflow the database's integer)


def _window() -> str:
    w = request.args.get("window", "7d")
    return w if w in reports.WINDOWS else "7d"


def _require(grant: str) -> None:
    if not access.has(current_user, grant):
        abort(403)


# --- dashboard and reports ---------------------------------------------------------------------

@web_bp.get("/dashboard")
@login_required
def dashboard():
    data = reports.dashboard(db.session(), current_user, _window())
    return render_template("reports/dashboard.html", d=data, charts=charts,
                           statuses=charts.STATUS_ORDER)


@web_bp.get("/reports/tasks")
@login_required
def report_tasks():
    window = request.args.get("window", "30d")
    window = window if window in reports.WINDOWS else "30d"
    ids = access.visible_task_ids(db.session(), current_user)
    rows = reports.task_success(db.session(), ids, utcnow() - reports.WINDOWS[window], limit=500)
    return render_template("reports/tasks.html", rows=rows, window=window)


@web_bp.get("/reports/tasks/<int:task_id>")
@login_required
def report_task(task_id: int):
    s = db.session()
    task = s.get(Task, task_id) if task_id <= MAX_ID else None
    if task is None:
        abort(404)
    if "view" not in access.task_permissions(s, current_user, task):
        abort(403)
    window = request.args.get("window", "30d")
    window = window if window in reports.WINDOWS else "30d"
    data = reports.task_report(s, current_user, task, window)
    f = reports.Filters(task=task)
    try:
        before, after, limit = reports.parse_cursor(request.args)
    except ValidationError:
        before = after = None
        limit = reports.PAGE_SIZE
    page = reports.execution_page(s, f, before, after, limit)
    return render_template("reports/task.html", task=task, d=data, page=page, window=window, charts=charts,
                           args={"task_id": task.id, "window": window})


@web_bp.get("/reports/hosts")
@login_required
def report_hosts():
    # 7 days by default: per-host totals read every operation of the window.
    window = request.args.get("window", "7d")
    window = window if window in reports.WINDOWS else "7d"
    rows = reports.host_summary(db.session(), current_user, utcnow() - reports.WINDOWS[window])
    return render_template("reports/hosts.html", rows=rows, window=window)


@web_bp.get("/reports/hosts/<path:host_name>")
@login_required
def report_host(host_name: str):
    s = db.session()
    window = request.args.get("window", "30d")
    window = window if window in reports.WINDOWS else "30d"
    error = None
    try:
        f = reports.parse_filters(s, current_user, request.args, statuses=OPERATION_STATUSES)
        before, after, limit = reports.parse_cursor(request.args)
        page = reports.host_operation_page(s, host_name, f, before, after, limit)
    except ValidationError as err:
        error, f, page = err, reports.Filters(), reports.Page([], None, None)
    data = reports.host_report(s, current_user, host_name, window)
    args = {"host_name": host_name, "window": window, **{k: v for k, v in f.args.items() if k != "host"}}
    return render_template("reports/host.html", host=host_name, d=data, page=page, window=window, args=args,
                           raw=request.args, error=error, statuses=OPERATION_STATUSES), (422 if error else 200)


# --- notification channels ---------------------------------------------------------------------

def _form_data() -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": request.form.get("name", ""),
        "events": request.form.getlist("events"),
        "enabled": request.form.get("enabled") == "on",
    }
    url = request.form.get("url", "").strip()
    if url:
        data["url"] = url
    return data


@web_bp.route("/notifications", methods=["GET", "POST"])
@login_required
def notifications():
    _require("notifications.manage")
    s = db.session()
    error, form = None, {"events": list(notify.DEFAULT_EVENTS), "enabled": True}
    if request.method == "POST":
        form = _form_data()
        try:
            if "url" not in form:
                raise ValidationError("'url' is required: an Apprise URL such as mailto://… or json://host/path",
                                      field="url")
            channel = notify.create_channel(s, form, actor=current_user.username)
            s.commit()
            flash(f"Channel “{channel.name}” added. Send a test message to check it.", "success")
            return redirect(url_for("web.notifications"))
        except ApiError as err:
            s.rollback()
            error = err
    channels = s.execute(select(NotificationChannel).order_by(NotificationChannel.name)).scalars().all()
    return render_template("notifications/list.html", channels=[notify.channel_dict(c) for c in channels],
                           recent=notify.recent_deliveries(s, limit=20), names={c.id: c.name for c in channels},
                           form=form, error=error, events=notify.EVENTS), (422 if error else 200)


@web_bp.route("/notifications/<int:channel_id>", methods=["GET", "POST"])
@login_required
def notification(channel_id: int):
    _require("notifications.manage")
    s = db.session()
    channel = s.get(NotificationChannel, channel_id) if channel_id <= MAX_ID else None
    if channel is None:
        abort(404)
    error = None
    form = notify.channel_dict(channel)
    if request.method == "POST":
        form = {**form, **_form_data()}
        try:
            notify.update_channel(s, channel, _form_data(), actor=current_user.username)
            s.commit()
            flash(f"Channel “{channel.name}” saved.", "success")
            return redirect(url_for("web.notifications"))
        except ApiError as err:
            s.rollback()
            error = err
    return render_template("notifications/edit.html", channel=notify.channel_dict(channel), form=form, error=error,
                           events=notify.EVENTS, recent=notify.recent_deliveries(s, channel_id, limit=20)), \
        (422 if error else 200)


@web_bp.post("/notifications/<int:channel_id>/delete")
@login_required
def notification_delete(channel_id: int):
    _require("notifications.manage")
    s = db.session()
    channel = (s.get(NotificationChannel, channel_id) if channel_id <= MAX_ID else None) or abort(404)
    name = channel.name
    notify.delete_channel(s, channel, actor=current_user.username)
    s.commit()
    flash(f"Channel “{name}” deleted.", "success")
    return redirect(url_for("web.notifications"))


@web_bp.post("/notifications/<int:channel_id>/test")
@login_required
def notification_test(channel_id: int):
    _require("notifications.manage")
    s = db.session()
    channel = (s.get(NotificationChannel, channel_id) if channel_id <= MAX_ID else None) or abort(404)
    notify.send_test(s, channel, actor=current_user.username)
    s.commit()
    flash(f"Test message queued for “{channel.name}”; its result appears below within a few seconds.", "success")
    return redirect(url_for("web.notifications"))


# --- /metrics ------------------------------------------------------------------------------------

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


# --- RQ dashboard under /admin/rq (admins only) --------------------------------------------------

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
