"""Schedules, the scheduler switch and blackout windows.

``/api/v1/tasks/<id>/schedules``, ``/api/v1/schedules[/<id>[/fires]]``, ``/api/v1/scheduler``
(+ ``/pause``, ``/resume``) and ``/api/v1/blackouts[/<id>]``. Reading a schedule needs the
task's ``view`` permission, changing it ``schedule``; pausing and blackouts are for admins.
"""
from __future__ import annotations

from flask import jsonify, request
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from server.people import access
from server.core import db
from server.scheduling import schedules as svc
from server.core.errors import ValidationError
from server.core.models import Blackout, Schedule, ScheduleFire
from server.core.pagination import bool_arg, text_arg
from server.api import api_bp, json_body, me
from server.api.common import no_content, page_of
from server.guards import requires, visible_or_404
from server.api.tasks import visible_task
from server.core.validation import schema_of
from server.api.openapi import DATETIME, VARS, describe, register_schema


def _visible_schedule(schedule_id: int) -> Schedule:
    return visible_or_404(Schedule, schedule_id, "schedule",
                          lambda sch: "view" in access.task_permissions(db.session(), me(), sch.task))


def _bool_arg(name: str) -> bool | None:
    return bool_arg(request.args, name)


@api_bp.get("/tasks/<int:task_id>/schedules")
@describe(response="Schedule", paged=True)
def list_task_schedules(task_id: int):
    """The schedules of one task."""
    task = visible_task(task_id)
    page = page_of(select(Schedule).where(Schedule.task_id == task.id).order_by(Schedule.id))
    return jsonify(page.envelope([svc.schedule_dict(s) for s in page.items]))


@api_bp.post("/tasks/<int:task_id>/schedules")
@describe(request="ScheduleInput", response="Schedule", status=201)
def create_schedule(task_id: int):
    """Schedule a task: 5-field cron in an IANA time zone (default: the user's zone, else UTC)."""
    task = visible_task(task_id)
    access.require_task(db.session(), me(), task, "schedule")
    schedule = svc.create_schedule(db.session(), task, me(), json_body())
    db.session.commit()
    return jsonify(svc.schedule_dict(schedule)), 201


@api_bp.get("/schedules")
@describe(response="Schedule", paged=True,
          query={"task": {"type": "integer", "minimum": 0, "maximum": 999_999_999}, "enabled": {"type": "boolean"}})
def list_schedules():
    """Every schedule the user may see, soonest next run first."""
    q = select(Schedule).options(selectinload(Schedule.task))
    q = access.filter_by_task(q, Schedule.task_id, me())
    task = text_arg(request.args, "task")
    if task is not None:
        if not task.isdigit() or len(task) > 9:
            raise ValidationError("'task' must be a task id", field="task")
        q = q.where(Schedule.task_id == int(task))
    enabled = _bool_arg("enabled")
    if enabled is not None:
        q = q.where(Schedule.enabled.is_(enabled))
    q = q.order_by(Schedule.next_fire_at.is_(None), Schedule.next_fire_at, Schedule.id)
    page = page_of(q)
    return jsonify(page.envelope([svc.schedule_dict(s) for s in page.items]))


@api_bp.get("/schedules/preview")
@describe(query={"cron": {"type": "string"}, "timezone": {"type": "string"}})
def preview_schedule():
    """Description and next 5 fire times of a cron expression, without saving it."""
    return jsonify(svc.preview(request.args.get("cron"), request.args.get("timezone") or "UTC"))


@api_bp.get("/schedules/<int:schedule_id>")
@describe(response="Schedule")
def get_schedule(schedule_id: int):
    """One schedule with its next runs and its 20 most recent fires and misses."""
    schedule = _visible_schedule(schedule_id)
    fires = svc.recent_fires(db.session(), schedule.id, limit=20)
    return jsonify(svc.schedule_dict(schedule, fires=fires))


@api_bp.patch("/schedules/<int:schedule_id>")
@describe(request="ScheduleInput", response="Schedule")
def update_schedule(schedule_id: int):
    """Change a schedule; a new cron, zone, dates or enabling recomputes the next run from now."""
    schedule = _visible_schedule(schedule_id)
    access.require_task(db.session(), me(), schedule.task, "schedule")
    schedule = svc.update_schedule(db.session(), schedule, me(), json_body())
    db.session.commit()
    return jsonify(svc.schedule_dict(schedule))


@api_bp.delete("/schedules/<int:schedule_id>")
@describe(status=204)
def delete_schedule(schedule_id: int):
    """Remove a schedule (its executions stay; the audit log keeps the definition)."""
    schedule = _visible_schedule(schedule_id)
    access.require_task(db.session(), me(), schedule.task, "schedule")
    svc.delete_schedule(db.session(), schedule, me())
    db.session.commit()
    return no_content()


@api_bp.get("/schedules/<int:schedule_id>/fires")
@describe(response="ScheduleFire", paged=True,
          query={"outcome": {"type": "string", "enum": list(svc.FIRE_OUTCOMES)}})
def list_schedule_fires(schedule_id: int):
    """What happened at each due instant: fired, missed, blackout, paused, suspended or error."""
    schedule = _visible_schedule(schedule_id)
    q = select(ScheduleFire).where(ScheduleFire.schedule_id == schedule.id)
    outcome = text_arg(request.args, "outcome")
    if outcome is not None:
        if outcome not in svc.FIRE_OUTCOMES:
            raise ValidationError(f"'outcome' must be one of {', '.join(svc.FIRE_OUTCOMES)}", field="outcome")
        q = q.where(ScheduleFire.outcome == outcome)
    page = page_of(q.order_by(ScheduleFire.due_at.desc(), ScheduleFire.id.desc()))
    return jsonify(page.envelope([svc.fire_dict(f, schedule.timezone) for f in page.items]))


# ------------------------------------------------------------------ the scheduler switch


@api_bp.get("/scheduler")
@describe(response="SchedulerStatus")
def scheduler_status():
    """Paused or running, next due instant, active blackouts and live scheduler processes."""
    return jsonify(svc.scheduler_status(db.session()))


@api_bp.post("/scheduler/pause")
@describe(response="SchedulerStatus")
@requires("schedules.admin")
def pause_scheduler():
    """Pause every schedule (admins). Instants due meanwhile are recorded as 'paused'."""
    reason = json_body(required=False).get("reason")
    svc.set_paused(db.session(), me(), True, reason)
    db.session.commit()
    return jsonify(svc.scheduler_status(db.session()))


@api_bp.post("/scheduler/resume")
@describe(response="SchedulerStatus")
@requires("schedules.admin")
def resume_scheduler():
    """Resume schedules (admins); paused instants are not caught up."""
    reason = json_body(required=False).get("reason")
    svc.set_paused(db.session(), me(), False, reason)
    db.session.commit()
    return jsonify(svc.scheduler_status(db.session()))


# ------------------------------------------------------------------ blackout windows


@api_bp.get("/blackouts")
@describe(response="Blackout", paged=True, query={"active": {"type": "boolean"}})
def list_blackouts():
    """Maintenance freezes during which scheduled runs do not start, latest first."""
    q = select(Blackout)
    active = _bool_arg("active")
    if active is not None:
        from server.core.models import utcnow

        now = utcnow()
        cond = (Blackout.starts_at <= now) & (Blackout.ends_at > now)
        q = q.where(cond if active else ~cond)
    page = page_of(q.order_by(Blackout.starts_at.desc(), Blackout.id.desc()))
    return jsonify(page.envelope([svc.blackout_dict(b) for b in page.items]))


@api_bp.post("/blackouts")
@describe(request="BlackoutInput", response="Blackout", status=201)
@requires("schedules.admin")
def create_blackout():
    """Define a blackout window (admins)."""
    b = svc.create_blackout(db.session(), me(), json_body())
    db.session.commit()
    return jsonify(svc.blackout_dict(b)), 201


@api_bp.get("/blackouts/<int:blackout_id>")
@describe(response="Blackout")
def get_blackout(blackout_id: int):
    """One blackout window."""
    return jsonify(svc.blackout_dict(visible_or_404(Blackout, blackout_id, "blackout")))


@api_bp.patch("/blackouts/<int:blackout_id>")
@describe(request="BlackoutInput", response="Blackout")
@requires("schedules.admin")
def update_blackout(blackout_id: int):
    """Move or rename a blackout window (admins)."""
    b = svc.update_blackout(db.session(), visible_or_404(Blackout, blackout_id, "blackout"), me(), json_body())
    db.session.commit()
    return jsonify(svc.blackout_dict(b))


@api_bp.delete("/blackouts/<int:blackout_id>")
@describe(status=204)
@requires("schedules.admin")
def delete_blackout(blackout_id: int):
    """Remove a blackout window (admins)."""
    svc.delete_blackout(db.session(), visible_or_404(Blackout, blackout_id, "blackout"), me())
    db.session.commit()
    return no_content()


_OFFSET_DT = {"type": ["string", "null"], "format": "date-time", "description": "ISO 8601 with offset"}
_SCHEDULE_INPUT = {
    "cron": {"type": "string", "description": "5 fields: minute hour day-of-month month day-of-week; "
                                              "@hourly/@daily/@weekly/@monthly/@yearly accepted"},
    "timezone": {"type": "string", "description": "IANA name, e.g. Europe/Berlin"},
    "enabled": {"type": "boolean", "default": True},
    "start_at": {"type": ["string", "null"], "description": "ISO date or date-time; naive = schedule's zone"},
    "end_at": {"type": ["string", "null"], "description": "inclusive; a plain date means through that day"},
    "misfire_grace_s": {"type": "integer", "minimum": 0, "maximum": svc.MAX_GRACE_S, "default": 600},
    "vars": VARS,
}
register_schema("ScheduleInput", {"type": "object", "required": ["cron"], "properties": _SCHEDULE_INPUT})
register_schema("ScheduleFire", {"type": "object", "properties": {
    "id": {"type": "integer"}, "schedule": {"type": "integer"}, "due_at": _OFFSET_DT,
    "outcome": {"type": "string", "enum": list(svc.FIRE_OUTCOMES)},
    "execution": {"type": ["integer", "null"]}, "detail": {"type": ["string", "null"]}, "recorded_at": DATETIME}})
register_schema("Schedule", {"type": "object", "properties": {
    "id": {"type": "integer"}, "task": {"type": "string"}, "task_id": {"type": "integer"}, **_SCHEDULE_INPUT,
    "description": {"type": "string"},
    "next_runs": {"type": "array", "items": _OFFSET_DT, "description": "next 5 fire times in the schedule's zone"},
    "next_fire_at": _OFFSET_DT, "last_fire_at": _OFFSET_DT,
    "approval_status": {"type": ["string", "null"]}, "suspended_reason": {"type": ["string", "null"]},
    "created_at": DATETIME, "updated_at": DATETIME,
    "recent_fires": {"type": "array", "items": {"$ref": "#/components/schemas/ScheduleFire"},
                     "description": "only on GET /schedules/{id}"}}})
_WHEN = {"type": "string", "minLength": 1, "maxLength": 40,
         "description": f"ISO 8601 date or date-time, years {svc.MIN_YEAR} to {svc.MAX_YEAR}"}
register_schema("BlackoutInput", {
    "type": "object", "required": ["name", "starts_at", "ends_at"], "additionalProperties": False,
    "description": "POST needs name, starts_at and ends_at (after starts_at); PATCH takes any subset",
    "properties": {
        "name": schema_of(svc.BLACKOUT_NAME), "starts_at": _WHEN, "ends_at": _WHEN,
        "timezone": {"type": ["string", "null"], "enum": [*svc.zone_names(), "", None],
                     "description": "IANA zone of naive date-times (null or empty: UTC)"},
        **{name: {"readOnly": True, "description": "ignored"} for name in ("id", "active", "created_by",
                                                                           "created_at")}}})
register_schema("Blackout", {"type": "object", "properties": {
    "id": {"type": "integer"}, "name": {"type": "string"}, "starts_at": DATETIME, "ends_at": DATETIME,
    "active": {"type": "boolean"}, "created_by": {"type": ["integer", "null"]}, "created_at": DATETIME}})
register_schema("SchedulerStatus", {"type": "object", "properties": {
    "paused": {"type": "boolean"}, "by": {"type": ["string", "null"]}, "at": DATETIME,
    "reason": {"type": ["string", "null"]}, "next_fire_at": DATETIME, "enabled_schedules": {"type": "integer"},
    "active_blackouts": {"type": "array", "items": {"$ref": "#/components/schemas/Blackout"}},
    "schedulers": {"type": "array", "items": {"type": "object"}}}})
