"""Schedules: cron in the schedule's own time zone, DST-correct; pause and blackouts.

What a cron line means, which days it matches and how wall-clock matches become
instants across DST changes are cronie's rules, written down in ``cron.py``;
``fire_times`` walks them in order.

This module is the service layer for the API and the pages; the firing loop lives in
``scheduler.py``.
"""
from __future__ import annotations

import heapq
import json
import re
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from typing import Any, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from server.catalog import launch
from server.people import access
from server.scheduling import cron as cronlib
from server.scheduling.cron import wall_to_instants
from server.executions import approvals
from server.core import audit
from server.core.errors import ValidationError
from server.core.models import Blackout, Schedule, ScheduleFire, Setting, Task, User, utcnow
from server.core.validation import Invalid, text as text_check, variables

UTC = timezone.utc
FIRE_OUTCOMES = ("fired", "missed", "blackout", "paused", "suspended", "error")
PAUSE_KEY = "schedules_paused"
CHANGED_CHANNEL = "taskmanager:schedules:changed"
MAX_GRACE_S = 86400
DEFAULT_GRACE_S = 600
MAX_CRON_LEN = 120
_CRON_CHARS = re.compile(r"^[0-9A-Za-z*/,\- ]+$")
_SECOND = timedelta(seconds=1)
_MICRO = timedelta(microseconds=1)


# ------------------------------------------------------------------ cron and time zones


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones()) | {"UTC"}


def zone_names() -> list[str]:
    """IANA zone names for pickers (sorted)."""
    return sorted(_zone_names())


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def validate_timezone(value: Any, field: str = "timezone") -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"'{field}' must be an IANA time zone name such as 'Europe/Berlin'", field=field)
    name = value.strip()
    if name not in _zone_names():
        raise ValidationError(f"'{field}': unknown IANA time zone {name[:64]!r}", field=field)
    try:
        zone(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:  # pragma: no cover - tzdata mismatch
        raise ValidationError(f"'{field}': unknown IANA time zone {name[:64]!r}", field=field) from exc
    return name


def normalise_cron(value: Any, field: str = "cron") -> str:
    """A valid 5-field expression (``@daily`` and friends expanded) that fires at least once."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"'{field}' must be a cron expression such as '0 6 * * *'", field=field)
    expr = " ".join(value.split())
    if len(expr) > MAX_CRON_LEN:
        raise ValidationError(f"'{field}' is longer than {MAX_CRON_LEN} characters", field=field)
    expr = cronlib.ALIASES.get(expr.lower(), expr)
    fields = expr.split(" ")
    if len(fields) != 5:
        raise ValidationError(
            f"'{field}' must have 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}",
            field=field,
        )
    if not _CRON_CHARS.match(expr):
        raise ValidationError(f"'{field}': {expr!r} is not a valid cron expression", field=field)
    try:
        parsed = cronlib.parse(expr)
    except cronlib.CronError as exc:
        raise ValidationError(f"'{field}': {expr!r} is not a valid cron expression ({exc})", field=field) from None
    if parsed.first_match() is None:
        raise ValidationError(f"'{field}': {expr!r} never matches a date", field=field)
    return expr


@lru_cache(maxsize=4096)
def parsed(cron: str) -> cronlib.Cron:
    """A parsed expression (bursts of schedules share their cron lines)."""
    return cronlib.parse(cron)


def localize(naive: datetime, tz: str) -> datetime:
    """A wall-clock time in ``tz`` as an aware UTC instant (first occurrence; gaps move forward)."""
    return wall_to_instants(naive, zone(tz))[0]


def _next_match(it: Iterator[datetime], z: ZoneInfo, wild: bool,
                ) -> tuple[datetime | None, list[datetime], datetime | None]:
    """The next wall-clock match, its instants and the bound later matches cannot precede;
    (None, [], None) when there is none before the end of what ``datetime`` holds (year
    9999: zone conversion raises ValueError/OverflowError past it)."""
    try:
        naive = next(it)
        instants = wall_to_instants(naive, z, wildcard=wild)
        # every later match maps at or after the earlier reading of this wall time
        bound = min(naive.replace(tzinfo=z, fold=0).astimezone(UTC),
                    naive.replace(tzinfo=z, fold=1).astimezone(UTC))
    except (StopIteration, ValueError, OverflowError):
        return None, [], None
    return naive, instants, bound


def fire_times(
    cron: str,
    tz: str,
    after: datetime,
    *,
    start_at: datetime | None = None,
    end_at: datetime | None = None,
) -> Iterator[datetime]:
    """Fire instants (aware UTC, ascending, no repeats) strictly after ``after``.

    Only instants in [start_at, end_at] are produced. Mapping wall-clock matches to
    instants is monotone except for the second occurrences of a repeated hour, so those
    wait in a heap until every later match is known to come after them.
    """
    z = zone(tz)
    expr = parsed(cron)
    wild = expr.wildcard
    lower = after
    if start_at is not None and start_at - _MICRO > lower:
        lower = start_at - _MICRO
    # If a fall-back happened just before ``lower``, second occurrences of wall-clock
    # times up to that long before its local time can still lie after it.
    margin = (lower - timedelta(hours=3)).astimezone(z).utcoffset() - lower.astimezone(z).utcoffset()
    local_start = lower.astimezone(z).replace(tzinfo=None) - max(margin, timedelta(0))
    it = expr.after(local_start)
    heap: list[datetime] = []
    last: datetime | None = None
    while True:
        naive, instants, bound = _next_match(it, z, wild)
        for inst in instants:
            heapq.heappush(heap, inst)
        while heap and (bound is None or heap[0] <= bound):
            inst = heapq.heappop(heap)
            if end_at is not None and inst > end_at:
                return
            if inst > lower and (last is None or inst > last):
                last = inst
                yield inst
        if naive is None:
            return


def next_fire(schedule: Schedule, after: datetime) -> datetime | None:
    """The schedule's first fire instant strictly after ``after`` (None: no more fires)."""
    return next(
        fire_times(schedule.cron, schedule.timezone, after, start_at=schedule.start_at, end_at=schedule.end_at),
        None,
    )


def next_runs(schedule: Schedule, now: datetime | None = None, count: int = 5) -> list[datetime]:
    """The next ``count`` fire instants, as aware datetimes in the schedule's zone."""
    if not schedule.enabled:
        return []
    first = schedule.next_fire_at  # the first instant not handled yet, possibly overdue
    after = first - _MICRO if first is not None else (now or utcnow())
    out: list[datetime] = []
    try:
        z = zone(schedule.timezone)
        for inst in fire_times(schedule.cron, schedule.timezone, after, start_at=schedule.start_at,
                               end_at=schedule.end_at):
            out.append(inst.astimezone(z))
            if len(out) >= count:
                break
    except (ValueError, KeyError, ZoneInfoNotFoundError):
        return []  # a definition stored behind the API's back; the scheduler records the error
    return out


def describe(cron: str, tz: str) -> str:
    """Plain language, e.g. "At 06:00 every day, America/Sao_Paulo" (cron-descriptor)."""
    from cron_descriptor import ExpressionDescriptor, Options

    options = Options()
    options.use_24hour_time_format = True
    options.verbose = False
    try:
        text = ExpressionDescriptor(cron, options).get_description()
    except Exception:  # noqa: BLE001 - a description is a nicety; the expression is valid
        text = cron
    minute, hour, dom, month, dow = cron.split(" ")
    if all(f in ("*", "?") for f in (dom, month, dow)) and not hour.startswith("*") and "," not in hour \
            and "-" not in hour and not minute.startswith("*"):
        text += " every day"
    return f"{text}, {tz}"


# ------------------------------------------------------------------ input checking


MIN_YEAR, MAX_YEAR = 1971, 9998


def parse_instant(value: Any, field: str, tz: str, *, end_of_day: bool = False) -> datetime | None:
    """ISO 8601 date or date-time; naive values are wall-clock in ``tz``.

    A plain date means the start of that day (or, for an end, its last second). Years
    outside 1971-9998 are refused, so no time zone can push an instant past what
    ``datetime`` holds (``9999-12-31`` in a zone behind UTC would overflow)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 40:
        raise ValidationError(f"'{field}' must be an ISO 8601 date or date-time", field=field)
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            dt = datetime.combine(day, time(23, 59, 59) if end_of_day else time(0, 0))
        else:
            dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValidationError(f"'{field}' must be an ISO 8601 date or date-time, got {text!r}", field=field) from exc
    out_of_range = ValidationError(f"'{field}' is out of range (years {MIN_YEAR} to {MAX_YEAR})", field=field)
    if not MIN_YEAR <= dt.year <= MAX_YEAR:
        raise out_of_range
    try:
        return localize(dt, tz) if dt.tzinfo is None else dt.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise out_of_range from exc


def schedule_vars(value: Any) -> dict[str, Any]:
    """Schedule variables are run variables: the same checks as task and run vars."""
    try:
        return variables(value)
    except Invalid as exc:
        raise ValidationError(f"'vars' {exc}", field="vars") from None


def launch_values(task: Task, given: dict[str, Any], current: Schedule | None) -> tuple[dict[str, Any], bytes | None]:
    """(vars to store, encrypted secret values) of a schedule, checked against the task's
    declarations now (and again at every fire, by the request path). Secret values are kept
    only encrypted; ``********`` for one keeps the stored value."""
    from server.core.vault import vault

    stored = json.loads(vault().decrypt(current.secret_vars_enc) or "{}") if current and current.secret_vars_enc else {}
    public, hidden = launch.check_values(task.variables, given, stored)
    shown = launch.masked(public, hidden)  # what each fire's execution shows: its approval compares them
    if hidden == stored and current is not None:
        return shown, current.secret_vars_enc
    return shown, vault().encrypt(json.dumps(hidden)) if hidden else None


def _bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ValidationError(f"'{field}' must be true or false", field=field)


TIMING = {"cron", "timezone", "enabled", "start_at", "end_at"}
WRITABLE = ("cron", "timezone", "enabled", "start_at", "end_at", "misfire_grace_s", "vars")
READ_ONLY = ("id", "task", "task_id", "next_runs", "description", "next_fire_at", "last_fire_at",
             "approval_status", "suspended_reason", "created_by", "created_at", "updated_at", "recent_fires")


def clean_input(data: Any, *, current: Schedule | None = None, default_tz: str = "UTC") -> dict[str, Any]:
    """Checked values for a new schedule (``current`` None) or a change to ``current``."""
    if not isinstance(data, dict):
        raise ValidationError("request body must be a JSON object")
    unknown = sorted(k for k in data if k not in WRITABLE and k not in READ_ONLY)
    if unknown:
        raise ValidationError(f"unknown field '{unknown[0]}'", field=str(unknown[0])[:64])
    out: dict[str, Any] = {}
    if current is None or "cron" in data:
        out["cron"] = normalise_cron(data.get("cron"))
    if "timezone" in data or current is None:
        out["timezone"] = validate_timezone(data.get("timezone") or (default_tz if current is None else None))
    tz = out.get("timezone") or current.timezone
    if "enabled" in data:
        out["enabled"] = _bool(data["enabled"], "enabled")
    if "misfire_grace_s" in data:
        grace = data["misfire_grace_s"]
        if isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= MAX_GRACE_S:
            raise ValidationError(f"'misfire_grace_s' must be an integer from 0 to {MAX_GRACE_S}",
                                  field="misfire_grace_s")
        out["misfire_grace_s"] = grace
    if "vars" in data:
        out["vars"] = schedule_vars(data["vars"])
    for key in ("start_at", "end_at"):
        if key in data:
            out[key] = parse_instant(data[key], key, tz, end_of_day=key == "end_at")
    start = out.get("start_at", current.start_at if current else None)
    end = out.get("end_at", current.end_at if current else None)
    if start is not None and end is not None and end < start:
        raise ValidationError("'end_at' must not be before 'start_at'", field="end_at")
    return out


# ------------------------------------------------------------------ schedules


def _after_commit_notify(session: Session) -> None:
    """Wake sleeping schedulers once the change is committed (they poll anyway)."""
    if session.info.get("schedules_notify"):
        return
    session.info["schedules_notify"] = True

    @event.listens_for(session, "after_commit", once=True)
    def _publish(sess) -> None:
        sess.info.pop("schedules_notify", None)
        try:
            from server.core.redis_conn import redis

            redis().publish(CHANGED_CHANNEL, "1")
        except Exception:  # noqa: BLE001 - the scheduler polls at least every 30 s
            pass

    @event.listens_for(session, "after_rollback", once=True)
    def _reset(sess) -> None:
        sess.info.pop("schedules_notify", None)


def refresh_next(schedule: Schedule, now: datetime | None = None) -> None:
    """Recompute ``next_fire_at`` from now (used after any change to the definition)."""
    schedule.next_fire_at = next_fire(schedule, now or utcnow()) if schedule.enabled else None


def create_schedule(session: Session, task: Task, user: User | None, data: Any) -> Schedule:
    if user is not None:  # its fires run with his rights (scheduler re-checks): he must be able to run it
        access.require_task(session, user, task, "execute")
    values = clean_input(data, default_tz=(user.timezone if user and user.timezone in _zone_names() else "UTC"))
    values = {"misfire_grace_s": DEFAULT_GRACE_S, "enabled": True, "vars": {}, **values}
    values["vars"], values["secret_vars_enc"] = launch_values(task, values["vars"], None)
    schedule = Schedule(task_id=task.id, task=task, created_by_id=user.id if user else None, **values)
    refresh_next(schedule)
    session.add(schedule)
    session.flush()
    audit.record(session, "schedule.create", actor=user.username if user else None, target=schedule,
                 task=task.name, cron=schedule.cron, timezone=schedule.timezone, enabled=schedule.enabled)
    approvals.request_schedule_approval(session, schedule, user)  # when the task's policy requires it
    _after_commit_notify(session)
    return schedule


def update_schedule(session: Session, schedule: Schedule, user: User | None, data: Any) -> Schedule:
    values = clean_input(data, current=schedule)
    changes = {}
    if "vars" in values:
        values["vars"], enc = launch_values(schedule.task, values["vars"], schedule)
        if enc != schedule.secret_vars_enc:  # new secret values: a change to audit and to approve anew
            schedule.secret_vars_enc = enc
            changes["secret values"] = [launch.MASK, launch.MASK]
    for key, value in values.items():
        old = getattr(schedule, key)
        if old != value:
            changes[key] = [old, value]
            setattr(schedule, key, value)
    if changes:
        schedule.updated_at = utcnow()
        if changes.keys() & TIMING:
            refresh_next(schedule)  # instants of the old definition are no longer due
        session.flush()
        audit.record(session, "schedule.update", actor=user.username if user else None, target=schedule,
                     task=schedule.task.name, changes=changes)
        approvals.request_schedule_approval(session, schedule, user)  # a changed schedule is approved anew
        _after_commit_notify(session)
    return schedule


def delete_schedule(session: Session, schedule: Schedule, user: User | None) -> None:
    audit.record(session, "schedule.delete", actor=user.username if user else None, target=schedule,
                 task=schedule.task.name, cron=schedule.cron, timezone=schedule.timezone)
    session.delete(schedule)
    session.flush()
    _after_commit_notify(session)


def iso(value: datetime | None, tz: str | None = None) -> str | None:
    if value is None:
        return None
    return value.astimezone(zone(tz) if tz else UTC).isoformat()


def fire_dict(fire: ScheduleFire, tz: str | None = None) -> dict[str, Any]:
    return {
        "id": fire.id,
        "schedule": fire.schedule_id,
        "due_at": iso(fire.due_at, tz),
        "outcome": fire.outcome,
        "execution": fire.execution_id,
        "detail": fire.detail,
        "recorded_at": iso(fire.recorded_at),
    }


def recent_fires(session: Session, schedule_id: int, *, limit: int = 20, outcome: str | None = None,
                 before_id: int | None = None) -> list[ScheduleFire]:
    q = select(ScheduleFire).where(ScheduleFire.schedule_id == schedule_id)
    if outcome:
        q = q.where(ScheduleFire.outcome == outcome)
    if before_id:
        q = q.where(ScheduleFire.id < before_id)
    return list(session.execute(q.order_by(ScheduleFire.due_at.desc(), ScheduleFire.id.desc()).limit(limit)).scalars())


def schedule_dict(schedule: Schedule, *, now: datetime | None = None, fires: list[ScheduleFire] | None = None,
                  ) -> dict[str, Any]:
    tz = schedule.timezone
    body = {
        "id": schedule.id,
        "task": schedule.task.name if schedule.task else None,
        "task_id": schedule.task_id,
        "cron": schedule.cron,
        "timezone": tz,
        "enabled": schedule.enabled,
        "description": describe(schedule.cron, tz),
        "next_runs": [d.isoformat() for d in next_runs(schedule, now)],
        "start_at": iso(schedule.start_at, tz),
        "end_at": iso(schedule.end_at, tz),
        "misfire_grace_s": schedule.misfire_grace_s,
        "vars": schedule.vars or {},
        "next_fire_at": iso(schedule.next_fire_at, tz),
        "last_fire_at": iso(schedule.last_fire_at, tz),
        "approval_status": schedule.approval_status,
        "suspended_reason": schedule.suspended_reason,
        "created_by": schedule.created_by_id,
        "created_at": iso(schedule.created_at),
        "updated_at": iso(schedule.updated_at),
    }
    if fires is not None:
        body["recent_fires"] = [fire_dict(f, tz) for f in fires]
    return body


def preview(cron: Any, tz: Any, count: int = 5) -> dict[str, Any]:
    """Description and next fires of an unsaved definition (for the form)."""
    cron = normalise_cron(cron)
    tz = validate_timezone(tz)
    z = zone(tz)
    runs = []
    for inst in fire_times(cron, tz, utcnow()):
        runs.append(inst.astimezone(z).isoformat())
        if len(runs) >= count:
            break
    return {"cron": cron, "timezone": tz, "description": describe(cron, tz), "next_runs": runs}


# ------------------------------------------------------------------ pause and blackouts


def pause_state(session: Session) -> dict[str, Any]:
    row = session.get(Setting, PAUSE_KEY)
    value = row.value if row is not None else None
    if isinstance(value, dict):
        return {"paused": bool(value.get("paused")), "by": value.get("by"), "at": value.get("at"),
                "reason": value.get("reason")}
    return {"paused": bool(value), "by": None, "at": None, "reason": None}


def is_paused(session: Session) -> bool:
    return pause_state(session)["paused"]


def set_paused(session: Session, user: User, paused: bool, reason: Any = None) -> dict[str, Any]:
    if reason is not None and (not isinstance(reason, str) or len(reason) > 2000):
        raise ValidationError("'reason' must be a string of at most 2000 characters", field="reason")
    state = pause_state(session)
    if state["paused"] == paused:
        return state
    value = {"paused": paused, "by": user.username, "at": utcnow().isoformat(), "reason": (reason or "").strip() or None}
    row = session.get(Setting, PAUSE_KEY)
    if row is None:
        session.add(Setting(key=PAUSE_KEY, value=value))
    else:
        row.value = value
    session.flush()
    audit.record(session, "scheduler.pause" if paused else "scheduler.resume", actor=user.username,
                 target_type="setting", target_id=PAUSE_KEY, reason=value["reason"])
    _after_commit_notify(session)
    return pause_state(session)


def blackouts_at(session: Session, lo: datetime, hi: datetime) -> list[Blackout]:
    """Blackouts overlapping [lo, hi]."""
    return list(session.execute(
        select(Blackout).where(Blackout.starts_at <= hi, Blackout.ends_at > lo).order_by(Blackout.starts_at)
    ).scalars())


def in_blackout(blackouts: list[Blackout], at: datetime) -> Blackout | None:
    for b in blackouts:
        if b.starts_at <= at < b.ends_at:
            return b
    return None


BLACKOUT_NAME = text_check(200)  # its .schema documents the field (api/schedules.py)


def clean_blackout(data: Any, current: Blackout | None = None) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValidationError("request body must be a JSON object")
    allowed = {"name", "starts_at", "ends_at", "timezone", "id", "active", "created_by", "created_at"}
    unknown = sorted(k for k in data if k not in allowed)
    if unknown:
        raise ValidationError(f"unknown field '{unknown[0]}'", field=str(unknown[0])[:64])
    tz = validate_timezone(data.get("timezone") or "UTC")
    out: dict[str, Any] = {}
    if current is None or "name" in data:
        try:
            out["name"] = BLACKOUT_NAME(data.get("name"))
        except Invalid as exc:
            raise ValidationError(f"'name' {exc}", field="name") from None
    for key in ("starts_at", "ends_at"):
        if current is None or key in data:
            if data.get(key) in (None, ""):
                raise ValidationError(f"'{key}' is required (ISO 8601 date-time)", field=key)
            out[key] = parse_instant(data[key], key, tz)
    start = out.get("starts_at", current.starts_at if current else None)
    end = out.get("ends_at", current.ends_at if current else None)
    if end <= start:
        raise ValidationError("'ends_at' must be after 'starts_at'", field="ends_at")
    return out


def create_blackout(session: Session, user: User, data: Any) -> Blackout:
    values = clean_blackout(data)
    b = Blackout(created_by_id=user.id, **values)
    session.add(b)
    session.flush()
    audit.record(session, "blackout.create", actor=user.username, target=b, name=b.name,
                 starts_at=iso(b.starts_at), ends_at=iso(b.ends_at))
    _after_commit_notify(session)
    return b


def update_blackout(session: Session, b: Blackout, user: User, data: Any) -> Blackout:
    values = clean_blackout(data, b)
    changes = {k: [iso(getattr(b, k)) if isinstance(v, datetime) else getattr(b, k),
                   iso(v) if isinstance(v, datetime) else v]
               for k, v in values.items() if getattr(b, k) != v}
    for key, value in values.items():
        setattr(b, key, value)
    if changes:
        session.flush()
        audit.record(session, "blackout.update", actor=user.username, target=b, changes=changes)
        _after_commit_notify(session)
    return b


def delete_blackout(session: Session, b: Blackout, user: User) -> None:
    audit.record(session, "blackout.delete", actor=user.username, target=b, name=b.name,
                 starts_at=iso(b.starts_at), ends_at=iso(b.ends_at))
    session.delete(b)
    session.flush()
    _after_commit_notify(session)


def blackout_dict(b: Blackout, now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    return {
        "id": b.id,
        "name": b.name,
        "starts_at": iso(b.starts_at),
        "ends_at": iso(b.ends_at),
        "active": b.starts_at <= now < b.ends_at,
        "created_by": b.created_by_id,
        "created_at": iso(b.created_at),
    }


def scheduler_status(session: Session) -> dict[str, Any]:
    """Pause state, the next due instant, active blackouts and live scheduler processes."""
    now = utcnow()
    nxt = session.execute(
        select(func.min(Schedule.next_fire_at)).where(Schedule.enabled.is_(True), Schedule.next_fire_at.is_not(None))
    ).scalar()
    enabled = session.execute(select(func.count(Schedule.id)).where(Schedule.enabled.is_(True))).scalar()
    return {
        **pause_state(session),
        "next_fire_at": iso(nxt),
        "enabled_schedules": enabled,
        "active_blackouts": [blackout_dict(b, now) for b in blackouts_at(session, now, now)],
        "schedulers": live_schedulers(),
    }


HEARTBEAT_PREFIX = "taskmanager:scheduler:alive:"


def live_schedulers() -> list[dict[str, Any]]:
    """Scheduler processes that reported within their heartbeat TTL (from Redis)."""
    import json

    try:
        from server.core.redis_conn import redis

        r = redis()
        keys = sorted(r.scan_iter(HEARTBEAT_PREFIX + "*", count=100))
        out = []
        for raw in r.mget(keys) if keys else []:
            if raw:
                out.append(json.loads(raw))
        return out
    except Exception:  # noqa: BLE001 - status is best effort when Redis is down
        return []
