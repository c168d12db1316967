"""Pages for schedules: the list with next runs, the form on a task, fire/miss history,
the pause-all switch and blackout windows. Thin views over ``server.scheduling.schedules``."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from markupsafe import Markup
from flask_login import current_user, login_required
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from server.people import access
from server.core import db
from server.scheduling import schedules as svc
from server.core.errors import ApiError, Forbidden, ValidationError
from server.core.models import Blackout, Schedule, ScheduleFire, Task, utcnow
from server.guards import requires, visible_or_404
from server.web import web_bp

FIRES_PER_PAGE = 50


def _schedule(schedule_id: int) -> Schedule:
    return visible_or_404(Schedule, schedule_id, "schedule",
                          lambda s: "view" in access.task_permissions(db.session(), current_user, s.task))


def _schedulable_tasks() -> list[Task]:
    q = access.filter_tasks(select(Task).order_by(Task.name), current_user)
    tasks = db.session.execute(q).scalars().all()
    return [t for t in tasks if "schedule" in access.task_permissions(db.session(), current_user, t)]


def _form_data(schedule: Schedule | None) -> dict[str, Any]:
    """The form as service input; dates only when changed (a date input drops the time of day)."""
    f = request.form
    data: dict[str, Any] = {
        "cron": f.get("cron", ""),
        "timezone": f.get("timezone", ""),
        "enabled": f.get("enabled") == "on",
    }
    grace = f.get("misfire_grace_s", "").strip()
    if grace:
        if not grace.isdigit() or len(grace) > 9:
            raise ValidationError("'misfire_grace_s' must be a whole number of seconds", field="misfire_grace_s")
        data["misfire_grace_s"] = int(grace)
    raw_vars = f.get("vars", "").strip()
    try:
        data["vars"] = json.loads(raw_vars) if raw_vars else {}
    except ValueError as exc:
        raise ValidationError(f"'vars' must be a JSON object: {exc}", field="vars") from exc
    except RecursionError:
        raise ValidationError("'vars' is nested too deeply", field="vars") from None
    for key in ("start_at", "end_at"):
        value = f.get(key, "").strip()
        if schedule is None or value != _date_value(schedule, key):
            data[key] = value or None
    return data


def _date_value(schedule: Schedule | None, key: str) -> str:
    value = getattr(schedule, key, None) if schedule else None
    return value.astimezone(svc.zone(schedule.timezone)).date().isoformat() if value else ""


def _form_from(schedule: Schedule | None) -> dict[str, Any]:
    default_tz = current_user.timezone if current_user.timezone in svc.zone_names() else "UTC"
    if schedule is None:
        return {"cron": "0 6 * * *", "timezone": default_tz, "enabled": True, "misfire_grace_s": svc.DEFAULT_GRACE_S,
                "vars": "", "start_at": "", "end_at": "",
                "zone_from_browser": current_user.timezone not in svc.zone_names()}  # no zone of his own
    return {"cron": schedule.cron, "timezone": schedule.timezone, "enabled": schedule.enabled,
            "misfire_grace_s": schedule.misfire_grace_s,
            "vars": json.dumps(schedule.vars, indent=2) if schedule.vars else "",
            "start_at": _date_value(schedule, "start_at"), "end_at": _date_value(schedule, "end_at")}


def _preview(form: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return svc.preview(form.get("cron"), form.get("timezone") or "UTC")
    except ApiError:
        return None


def _last_outcomes(ids: list[int]) -> dict[int, ScheduleFire]:
    if not ids:
        return {}
    latest = (select(ScheduleFire.schedule_id, func.max(ScheduleFire.due_at).label("due"))
              .where(ScheduleFire.schedule_id.in_(ids)).group_by(ScheduleFire.schedule_id).subquery())
    rows = db.session.execute(
        select(ScheduleFire).join(latest, (ScheduleFire.schedule_id == latest.c.schedule_id)
                                  & (ScheduleFire.due_at == latest.c.due))
    ).scalars()
    return {f.schedule_id: f for f in rows}


@web_bp.get("/schedules")
@login_required
def schedules():
    q = select(Schedule).options(selectinload(Schedule.task))
    q = access.filter_by_task(q, Schedule.task_id, current_user)
    task_id = request.args.get("task", "")
    task = None
    if task_id.isdigit() and len(task_id) < 10:
        task = db.session.get(Task, int(task_id))
        q = q.where(Schedule.task_id == int(task_id))
    q = q.order_by(Schedule.next_fire_at.is_(None), Schedule.next_fire_at, Schedule.id).limit(500)
    rows = db.session.execute(q).scalars().all()
    now = utcnow()
    return render_template(
        "schedules/list.html", rows=rows, task=task, now=now, svc=svc, last=_last_outcomes([s.id for s in rows]),
        pause=svc.pause_state(db.session()), blackouts=svc.blackouts_at(db.session(), now, now),
        is_admin=access.has(current_user, "schedules.admin"), can_create=bool(_schedulable_tasks()),
    )


@web_bp.route("/schedules/new", methods=["GET", "POST"])
@login_required
def schedule_new():
    tasks = _schedulable_tasks()
    if not tasks:
        abort(403)
    selected = request.values.get("task", "")
    error = None
    form = _form_from(None)
    if request.method == "POST":
        form = {**form, **request.form.to_dict(), "enabled": request.form.get("enabled") == "on"}
        try:
            task = next((t for t in tasks if str(t.id) == selected), None)
            if task is None:
                raise ValidationError("choose a task you may schedule", field="task")
            s = svc.create_schedule(db.session(), task, current_user, _form_data(None))
            db.session.commit()
            flash(f"Schedule added to “{task.name}”: {svc.describe(s.cron, s.timezone)}.", "success")
            return redirect(url_for("web.schedule_detail", schedule_id=s.id))
        except ApiError as err:
            db.session.rollback()
            error = err
    return render_template("schedules/form.html", schedule=None, tasks=tasks, selected=selected, form=form,
                           error=error, preview=_preview(form), zones=svc.zone_names()), (422 if error else 200)


@web_bp.route("/schedules/<int:schedule_id>", methods=["GET", "POST"])
@login_required
def schedule_detail(schedule_id: int):
    s = _schedule(schedule_id)
    can_edit = "schedule" in access.task_permissions(db.session(), current_user, s.task)
    error = None
    form = _form_from(s)
    if request.method == "POST":
        if not can_edit:
            abort(403)
        form = {**form, **request.form.to_dict(), "enabled": request.form.get("enabled") == "on"}
        try:
            svc.update_schedule(db.session(), s, current_user, _form_data(s))
            db.session.commit()
            flash("Schedule saved.", "success")
            return redirect(url_for("web.schedule_detail", schedule_id=s.id))
        except ApiError as err:
            db.session.rollback()
            db.session.refresh(s)
            error = err
    q = select(ScheduleFire).where(ScheduleFire.schedule_id == s.id)
    outcome = request.args.get("outcome", "")
    if outcome in svc.FIRE_OUTCOMES:
        q = q.where(ScheduleFire.outcome == outcome)
    before = request.args.get("before", "")
    if before.isdigit() and len(before) < 10:
        q = q.where(ScheduleFire.id < int(before))
    fires = db.session.execute(q.order_by(ScheduleFire.id.desc()).limit(FIRES_PER_PAGE + 1)).scalars().all()
    older = fires[FIRES_PER_PAGE - 1].id if len(fires) > FIRES_PER_PAGE else None
    return render_template(
        "schedules/detail.html", s=s, svc=svc, form=form, error=error, can_edit=can_edit,
        next_runs=svc.next_runs(s), fires=fires[:FIRES_PER_PAGE], older=older, outcome=outcome,
        zones=svc.zone_names(), preview=_preview(form) if error else None, tz=svc.zone(s.timezone),
    ), (422 if error else 200)


@web_bp.post("/schedules/<int:schedule_id>/delete")
@login_required
def schedule_delete(schedule_id: int):
    s = _schedule(schedule_id)
    try:
        access.require_task(db.session(), current_user, s.task, "schedule")
    except Forbidden:
        abort(403)
    task_name = s.task.name
    svc.delete_schedule(db.session(), s, current_user)
    db.session.commit()
    flash(f"Schedule of “{task_name}” deleted.", "success")
    return redirect(url_for("web.schedules"))


@web_bp.post("/scheduler/pause")
@login_required
@requires("schedules.admin")
def scheduler_pause():
    return _set_paused(True)


@web_bp.post("/scheduler/resume")
@login_required
@requires("schedules.admin")
def scheduler_resume():
    return _set_paused(False)


def _set_paused(paused: bool):
    try:
        svc.set_paused(db.session(), current_user, paused, request.form.get("reason") or None)
        db.session.commit()
        flash("All schedules paused: due runs are recorded as paused, not started." if paused
              else "Schedules resumed.", "warning" if paused else "success")
    except ApiError as err:
        db.session.rollback()
        flash(err.message, "error")
    return redirect(url_for("web.schedules"))


@web_bp.route("/blackouts", methods=["GET", "POST"])
@login_required
def blackouts():
    is_admin = access.has(current_user, "schedules.admin")
    error = None
    default_tz = current_user.timezone if current_user.timezone in svc.zone_names() else "UTC"
    form = {"name": "", "starts_at": "", "ends_at": "", "timezone": default_tz}
    if request.method == "POST":
        if not is_admin:
            abort(403)
        form = {k: request.form.get(k, "").strip() for k in form}
        try:
            b = svc.create_blackout(db.session(), current_user, form)
            db.session.commit()
            flash(f"Blackout “{b.name}” added.", "success")
            return redirect(url_for("web.blackouts"))
        except ApiError as err:
            db.session.rollback()
            error = err
    rows = db.session.execute(select(Blackout).order_by(Blackout.starts_at.desc()).limit(200)).scalars().all()
    return render_template("schedules/blackouts.html", rows=rows, now=utcnow(), form=form, error=error,
                           is_admin=is_admin, zones=svc.zone_names()), (422 if error else 200)


@web_bp.post("/blackouts/<int:blackout_id>/delete")
@login_required
@requires("schedules.admin")
def blackout_delete(blackout_id: int):
    b = visible_or_404(Blackout, blackout_id, "blackout")
    svc.delete_blackout(db.session(), b, current_user)
    db.session.commit()
    flash(f"Blackout “{b.name}” deleted.", "success")
    return redirect(url_for("web.blackouts"))


@web_bp.app_template_filter("in_zone")
def in_zone(value: datetime | None, tz: str = "UTC") -> str:
    """A time as ``<time>``, shown by app.js in the viewer's zone like every other time,
    followed by the wall-clock time where the schedule lives (``2025-03-30 03:00 CEST
    (+02:00)``), which is what makes its DST behaviour readable."""
    if value is None:
        return "–"
    local = value.astimezone(svc.zone(tz))
    offset = local.isoformat()[-6:]
    text = f"{local:%Y-%m-%d %H:%M} {local.tzname()} ({offset})" if local.tzname() not in (offset, None) \
        else f"{local:%Y-%m-%d %H:%M} ({offset})"
    return Markup('<time datetime="{}" data-format="full">{}</time> <span class="muted small">· {}</span>').format(
        value.isoformat(), text, text)

