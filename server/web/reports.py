"""The dashboard and the report pages: tasks and hosts over a window, one task's or one
host's history. ``reporting.reports`` computes, ``web.charts`` draws the SVG."""
from __future__ import annotations

from flask import abort, render_template, request
from flask_login import current_user, login_required

from server.core import db
from server.core.errors import ValidationError
from server.core.models import OPERATION_STATUSES, Task, utcnow
from server.guards import visible_or_404
from server.people import access
from server.reporting import reports
from server.web import charts, web_bp


def _window() -> str:
    w = request.args.get("window", "7d")
    return w if w in reports.WINDOWS else "7d"


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
    task = visible_or_404(Task, task_id, "task")
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
