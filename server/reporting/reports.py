"""Reports: history queries, dashboard aggregates and CSV exports over executions/operations.

Built for large histories (a million operations): lists use keyset pagination on ids
(``before``/``after`` cursors, never OFFSET), aggregates are single GROUP BY queries over
indexed columns, and CSV exports are generators that walk the data in bounded batches,
so memory stays flat whatever the size.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, Mapping

from sqlalchemy import case, exists, false, func, or_, select
from sqlalchemy.orm import Session, joinedload

from server.people import access
from server.core.dates import parse_moment
from server.core.errors import ValidationError
from server.reporting import output
from server.core.models import (
    EXECUTION_FAILED,
    EXECUTION_OPEN,
    EXECUTION_RELAUNCHABLE,
    EXECUTION_STATUSES,
    OPERATION_FAILED,
    OPERATION_STATUSES,
    Execution,
    ExecutionStatus,
    Operation,
    OperationStatus,
    Schedule,
    Task,
    User,
    utcnow,
)

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
WINDOWS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
TRIGGERS = ("manual", "schedule")  # relaunches are manual runs with a parent
# Parameter lists in a fixed order (the sets' own order changes with each process's str hashes).
FAILED_EXECUTION = sorted(EXECUTION_FAILED)
FAILED_OPERATION = sorted(OPERATION_FAILED)
FINISHED_RUN = sorted(EXECUTION_RELAUNCHABLE)  # final and not a refused request: a run to count
IN_FLIGHT = sorted(EXECUTION_OPEN)
CSV_BATCH = 1000          # executions per query
CSV_OPS_PER_BATCH = 5000  # operations per query (batches of whole executions)


# --- filters --------------------------------------------------------------------------------

@dataclass
class Filters:
    """What a history page or export is restricted to. ``task_ids`` None = every task."""

    start: datetime | None = None
    end: datetime | None = None  # exclusive
    task: Task | None = None
    host: str | None = None
    status: str | None = None
    trigger: str | None = None
    task_ids: set[int] | None = None  # the viewer's visible tasks (None: all)
    own_user_id: int | None = None  # ... plus executions this user requested
    args: dict[str, str] = field(default_factory=dict)  # the cleaned query, for links


def parse_when(value: str, name: str, *, end: bool = False) -> datetime:
    """An ISO date (whole day, UTC) or an ISO datetime (naive = UTC). ``end`` makes a date
    inclusive by moving to the next midnight (the bound itself is exclusive). Out of range
    (``to=9999-12-31``) is a 422 like a malformed value: see ``server.core.dates``."""
    return parse_moment(value, name, end=end)


def parse_filters(session: Session, user: User, args: Mapping[str, str],
                  statuses: tuple[str, ...] = EXECUTION_STATUSES) -> Filters:
    """Validate query parameters ``from, to, task, host, status, trigger`` into Filters."""
    f = Filters(task_ids=access.visible_task_ids(session, user), own_user_id=user.id)
    get = lambda k: (args.get(k) or "").strip()  # noqa: E731
    if get("from"):
        f.start = parse_when(get("from"), "from")
        f.args["from"] = get("from")
    if get("to"):
        f.end = parse_when(get("to"), "to", end=True)
        f.args["to"] = get("to")
    if f.start and f.end and f.start >= f.end:
        raise ValidationError("'from' must be before 'to'", field="from")
    if get("task"):
        raw = get("task")
        task = session.get(Task, int(raw)) if raw.isdigit() and len(raw) < 10 else None
        if task is None:
            task = session.execute(select(Task).where(Task.name == raw)).scalar_one_or_none()
        if task is None or (f.task_ids is not None and task.id not in f.task_ids):
            raise ValidationError(f"no task {raw!r}", field="task")
        f.task = task
        f.args["task"] = str(task.id)
    if get("host"):
        if len(get("host")) > 255:
            raise ValidationError("'host' is too long", field="host")
        f.host = get("host")
        f.args["host"] = f.host
    if get("status"):
        if get("status") not in statuses:
            raise ValidationError(f"'status' must be one of {', '.join(statuses)}", field="status")
        f.status = get("status")
        f.args["status"] = f.status
    if get("trigger"):
        if len(get("trigger")) > 20:
            raise ValidationError("'trigger' is too long", field="trigger")
        f.trigger = get("trigger")
        f.args["trigger"] = f.trigger
    return f


def _execution_conditions(f: Filters) -> list[Any]:
    conds: list[Any] = []
    if f.task_ids is not None:
        visible = [Execution.task_id.in_(sorted(f.task_ids))] if f.task_ids else []
        if f.own_user_id is not None:
            visible.append(Execution.requested_by_id == f.own_user_id)
        conds.append(or_(*visible) if visible else false())
    if f.start:
        conds.append(Execution.created_at >= f.start)
    if f.end:
        conds.append(Execution.created_at < f.end)
    if f.task:
        conds.append(Execution.task_id == f.task.id)
    if f.status:
        conds.append(Execution.status == f.status)
    if f.trigger:
        conds.append(Execution.trigger == f.trigger)
    if f.host:
        conds.append(
            exists().where(Operation.execution_id == Execution.id, Operation.host_name == f.host)
        )
    return conds


# --- keyset pages ---------------------------------------------------------------------------

@dataclass
class Page:
    items: list[Any]
    newer: int | None  # pass as ?after=  (None: this is the newest page)
    older: int | None  # pass as ?before= (None: this is the oldest page)


def parse_cursor(args: Mapping[str, str]) -> tuple[int | None, int | None, int]:
    def num(name: str) -> int | None:
        raw = (args.get(name) or "").strip()
        if not raw:
            return None
        if not raw.isdigit() or len(raw) > 18:
            raise ValidationError(f"'{name}' must be a positive integer", field=name)
        return int(raw)

    before, after, limit = num("before"), num("after"), num("limit") or PAGE_SIZE
    return before, after, max(1, min(limit, MAX_PAGE_SIZE))


def _keyset(session: Session, stmt, id_col, before: int | None, after: int | None, limit: int) -> Page:
    """Newest first by id. ``before``: the page of ids below it; ``after``: the page above it."""
    if after is not None:
        rows = list(session.execute(stmt.where(id_col > after).order_by(id_col.asc()).limit(limit + 1)).unique().scalars())
        more_newer = len(rows) > limit
        rows = list(reversed(rows[:limit]))
        newer = rows[0].id if rows and more_newer else None
        older = None
        if rows and session.execute(stmt.where(id_col < rows[-1].id).order_by(id_col.desc()).limit(1)).first():
            older = rows[-1].id
        return Page(rows, newer, older)
    if before is not None:
        stmt = stmt.where(id_col < before)
    rows = list(session.execute(stmt.order_by(id_col.desc()).limit(limit + 1)).unique().scalars())
    more_older = len(rows) > limit
    rows = rows[:limit]
    older = rows[-1].id if rows and more_older else None
    newer = rows[0].id if rows and before is not None else None
    return Page(rows, newer, older)


def execution_page(session: Session, f: Filters, before: int | None = None, after: int | None = None,
                   limit: int = PAGE_SIZE) -> Page:
    stmt = (
        select(Execution)
        .options(joinedload(Execution.task), joinedload(Execution.requested_by))
        .where(*_execution_conditions(f))
    )
    return _keyset(session, stmt, Execution.id, before, after, limit)


def host_operation_page(session: Session, host: str, f: Filters, before: int | None = None,
                        after: int | None = None, limit: int = PAGE_SIZE) -> Page:
    """One host's operations, newest first, with their execution and task loaded."""
    f2 = Filters(**{**f.__dict__, "host": None, "status": None})
    stmt = (
        select(Operation)
        .join(Execution, Execution.id == Operation.execution_id)
        .options(joinedload(Operation.execution).joinedload(Execution.task))
        .where(Operation.host_name == host, *_execution_conditions(f2))
    )
    if f.status:  # on a host's history the status is the operation's
        stmt = stmt.where(Operation.status == f.status)
    return _keyset(session, stmt, Operation.id, before, after, limit)


# --- SQL helpers per dialect ------------------------------------------------------------------

def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def seconds_between(session: Session, start, end):
    if _dialect(session) == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def day_of(session: Session, col):
    """The UTC calendar day of a timestamp, as 'YYYY-MM-DD'."""
    if _dialect(session) == "postgresql":
        return func.to_char(func.timezone("UTC", col), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", col)


# --- dashboard --------------------------------------------------------------------------------

def status_counts(session: Session, task_ids: set[int] | None, now: datetime, task_id: int | None = None) -> dict[str, dict[str, int]]:
    """{window: {status: count}} for 24h, 7d and 30d in one query."""
    since = now - WINDOWS["30d"]
    cols = [Execution.status]
    for name, delta in WINDOWS.items():
        cols.append(func.sum(case((Execution.created_at >= now - delta, 1), else_=0)).label(name))
    f = Filters(task_ids=task_ids, start=since)
    stmt = select(*cols).where(*_execution_conditions(f)).group_by(Execution.status)
    if task_id is not None:
        stmt = stmt.where(Execution.task_id == task_id)
    out: dict[str, dict[str, int]] = {name: {} for name in WINDOWS}
    for row in session.execute(stmt):
        for name in WINDOWS:
            n = int(getattr(row, name) or 0)
            if n:
                out[name][row.status] = n
    return out


def task_success(session: Session, task_ids: set[int] | None, since: datetime, limit: int = 50) -> list[dict[str, Any]]:
    """Per task over the window: finished runs, successes, failures, rate, mean duration.

    The rate is successes over runs that succeeded or failed: a cancelled run says nothing
    about the task, so a task whose only run was cancelled has no rate, not "0 %"."""
    finished = Execution.status.in_(FINISHED_RUN)
    dur = seconds_between(session, Execution.started_at, Execution.finished_at)
    stmt = (
        select(
            Execution.task_id,
            Task.name,
            func.count().label("runs"),
            func.sum(case((Execution.status == ExecutionStatus.SUCCEEDED, 1), else_=0)).label("ok"),
            func.sum(case((Execution.status.in_(FAILED_EXECUTION), 1), else_=0)).label("bad"),
            func.avg(case((Execution.status == ExecutionStatus.SUCCEEDED, dur), else_=None)).label("avg_s"),
            func.max(Execution.id).label("last_id"),
        )
        .join(Task, Task.id == Execution.task_id)
        .where(finished, *_execution_conditions(Filters(task_ids=task_ids, start=since)))
        .group_by(Execution.task_id, Task.name)
    )
    rows = []
    for r in session.execute(stmt):
        decided = int(r.ok or 0) + int(r.bad or 0)
        rate = (r.ok or 0) / decided if decided else None
        rows.append({"task_id": r.task_id, "task": r.name, "runs": r.runs, "succeeded": int(r.ok or 0),
                     "failed": int(r.bad or 0), "rate": rate, "avg_s": float(r.avg_s) if r.avg_s is not None else None,
                     "last_id": r.last_id})
    rows.sort(key=lambda r: (r["rate"] if r["rate"] is not None else 2, -r["runs"], r["task"]))
    return rows[:limit]


def failing_hosts(session: Session, task_ids: set[int] | None, since: datetime, limit: int = 10,
                  task_id: int | None = None) -> list[dict[str, Any]]:
    """Hosts with the most failed or unreachable operations over the window."""
    f = Filters(task_ids=task_ids, start=since)
    executions = select(Execution.id).where(*_execution_conditions(f))
    if task_id is not None:
        executions = executions.where(Execution.task_id == task_id)
    # IN (subquery) rather than a join: the planner probes (execution_id, status) per
    # execution in the window instead of scanning every operation by host.
    stmt = (
        select(Operation.host_name, func.count().label("failures"), func.max(Operation.execution_id).label("last_id"))
        .where(Operation.status.in_(FAILED_OPERATION), Operation.execution_id.in_(executions))
        .group_by(Operation.host_name)
        .order_by(func.count().desc(), Operation.host_name)
        .limit(limit)
    )
    return [{"host": r.host_name, "failures": r.failures, "last_id": r.last_id} for r in session.execute(stmt)]


def duration_trend(session: Session, task_ids: set[int] | None, since: datetime, now: datetime,
                   task_id: int | None = None) -> list[dict[str, Any]]:
    """Per UTC day: runs, failures, mean and max duration of finished runs (every day listed)."""
    day = day_of(session, Execution.created_at)
    dur = seconds_between(session, Execution.started_at, Execution.finished_at)
    stmt = (
        select(
            day.label("day"),
            func.count().label("runs"),
            func.sum(case((Execution.status.in_(FAILED_EXECUTION), 1), else_=0)).label("bad"),
            func.avg(dur).label("avg_s"),
            func.max(dur).label("max_s"),
        )
        .where(*_execution_conditions(Filters(task_ids=task_ids, start=since)))
        .group_by(day)
    )
    if task_id is not None:
        stmt = stmt.where(Execution.task_id == task_id)
    found = {r.day: r for r in session.execute(stmt)}
    out = []
    d = since.astimezone(timezone.utc).date()
    while d <= now.astimezone(timezone.utc).date():
        r = found.get(d.isoformat())
        out.append({
            "day": d.isoformat(),
            "runs": r.runs if r else 0,
            "failed": int(r.bad or 0) if r else 0,
            "avg_s": float(r.avg_s) if r is not None and r.avg_s is not None else None,
            "max_s": float(r.max_s) if r is not None and r.max_s is not None else None,
        })
        d += timedelta(days=1)
    return out


def active_executions(session: Session, task_ids: set[int] | None, limit: int = 10) -> list[Execution]:
    stmt = (
        select(Execution)
        .options(joinedload(Execution.task))
        .where(Execution.status.in_(IN_FLIGHT),
               *_execution_conditions(Filters(task_ids=task_ids)))
        .order_by(Execution.id.desc())
        .limit(limit)
    )
    return list(session.execute(stmt).scalars())


def upcoming_runs(session: Session, task_ids: set[int] | None, limit: int = 8) -> list[Schedule]:
    """The next fires of enabled schedules, soonest first (suspended or unapproved ones do not fire)."""
    stmt = (
        select(Schedule).options(joinedload(Schedule.task))
        .where(Schedule.enabled.is_(True), Schedule.next_fire_at.is_not(None), Schedule.suspended_reason.is_(None),
               or_(Schedule.approval_status.is_(None), Schedule.approval_status == "approved"))
        .order_by(Schedule.next_fire_at, Schedule.id).limit(limit)
    )
    if task_ids is not None:
        stmt = stmt.where(Schedule.task_id.in_(sorted(task_ids)))
    return list(session.execute(stmt).scalars())


def recent_failures(session: Session, task_ids: set[int] | None, since: datetime, limit: int = 8) -> list[Execution]:
    """The latest runs that failed, timed out or were lost, newest first."""
    stmt = (
        select(Execution).options(joinedload(Execution.task))
        .where(Execution.status.in_(FAILED_EXECUTION), *_execution_conditions(Filters(task_ids=task_ids, start=since)))
        .order_by(Execution.id.desc()).limit(limit)
    )
    return list(session.execute(stmt).scalars())


def dashboard(session: Session, user: User, window: str = "7d", now: datetime | None = None) -> dict[str, Any]:
    if window not in WINDOWS:
        raise ValidationError(f"'window' must be one of {', '.join(WINDOWS)}", field="window")
    now = now or utcnow()
    task_ids = access.visible_task_ids(session, user)
    since = now - WINDOWS[window]
    trend_since = now - WINDOWS["30d"] if window != "24h" else now - WINDOWS["7d"]
    counts = status_counts(session, task_ids, now)
    return {
        "window": window,
        "now": now,
        "counts": counts,
        "totals": {w: sum(c.values()) for w, c in counts.items()},
        "tasks": task_success(session, task_ids, since),
        "hosts": failing_hosts(session, task_ids, since),
        "trend": duration_trend(session, task_ids, trend_since, now),
        "active": active_executions(session, task_ids),
        "upcoming": upcoming_runs(session, task_ids),
        "failures": recent_failures(session, task_ids, since),
    }


def task_report(session: Session, user: User, task: Task, window: str = "30d", now: datetime | None = None) -> dict[str, Any]:
    access.require_task(session, user, task, "view")
    if window not in WINDOWS:
        raise ValidationError(f"'window' must be one of {', '.join(WINDOWS)}", field="window")
    now = now or utcnow()
    since = now - WINDOWS[window]
    stats = task_success(session, {task.id}, since)
    return {
        "window": window,
        "counts": status_counts(session, {task.id}, now),
        "stats": stats[0] if stats else None,
        "hosts": failing_hosts(session, {task.id}, since),
        "trend": duration_trend(session, {task.id}, now - WINDOWS["30d"], now),
    }


def host_report(session: Session, user: User, host: str, window: str = "30d", now: datetime | None = None) -> dict[str, Any]:
    if window not in WINDOWS:
        raise ValidationError(f"'window' must be one of {', '.join(WINDOWS)}", field="window")
    now = now or utcnow()
    f = Filters(task_ids=access.visible_task_ids(session, user), own_user_id=user.id, start=now - WINDOWS[window])
    stmt = (
        select(Operation.status, func.count())
        .where(Operation.host_name == host,
               Operation.execution_id.in_(select(Execution.id).where(*_execution_conditions(f))))
        .group_by(Operation.status)
    )
    counts = {status: n for status, n in session.execute(stmt)}
    total = sum(counts.values())
    ok = counts.get(OperationStatus.SUCCEEDED, 0)
    bad = sum(counts.get(s, 0) for s in FAILED_OPERATION)
    return {"window": window, "counts": counts, "total": total, "succeeded": ok, "failed": bad,
            "rate": ok / (ok + bad) if ok + bad else None}


def _window_ids(session: Session, since: datetime) -> tuple[int, list[int]] | None:
    """Executions created since ``since`` as an id range: (first id, ids inside the range
    created before ``since``). Ids follow creation order, so the exception list is normally
    empty; None when there is nothing in the window or too many exceptions to list."""
    first = session.execute(select(func.min(Execution.id)).where(Execution.created_at >= since)).scalar()
    if first is None:
        return None
    late = session.execute(
        select(Execution.id).where(Execution.id >= first, Execution.created_at < since).limit(1001)
    ).scalars().all()
    return None if len(late) > 1000 else (first, list(late))


def host_summary(session: Session, user: User, since: datetime, limit: int = 200) -> list[dict[str, Any]]:
    """Operations per host over the window (failures first) for the hosts report page.

    For viewers who see every task, the window becomes an execution-id range and the
    counts come straight from the (host_name, status, execution_id) index, without
    joining executions row by row."""
    task_ids = access.visible_task_ids(session, user)
    stmt = select(Operation.host_name, Operation.status, func.count().label("n"),
                  func.max(Operation.execution_id).label("last_id"))
    window = _window_ids(session, since) if task_ids is None else None
    if task_ids is None and window is None and session.execute(
        select(Execution.id).where(Execution.created_at >= since).limit(1)
    ).first() is None:
        return []
    if window is not None:
        first, late = window
        stmt = stmt.where(Operation.execution_id >= first)
        if late:
            stmt = stmt.where(Operation.execution_id.not_in(late))
    else:
        f = Filters(task_ids=task_ids, own_user_id=user.id, start=since)
        stmt = stmt.join(Execution, Execution.id == Operation.execution_id).where(*_execution_conditions(f))
    per_host: dict[str, dict[str, Any]] = {}
    for r in session.execute(stmt.group_by(Operation.host_name, Operation.status)):
        h = per_host.setdefault(r.host_name, {"host": r.host_name, "runs": 0, "succeeded": 0, "failed": 0,
                                               "last_id": 0})
        h["runs"] += r.n
        h["last_id"] = max(h["last_id"], r.last_id or 0)
        if r.status == OperationStatus.SUCCEEDED:
            h["succeeded"] += r.n
        elif r.status in FAILED_OPERATION:
            h["failed"] += r.n
    rows = sorted(per_host.values(), key=lambda h: (-h["failed"], h["host"]))[:limit]
    for h in rows:
        decided = h["succeeded"] + h["failed"]
        h["rate"] = h["succeeded"] / decided if decided else None
    return rows


# --- CSV ----------------------------------------------------------------------------------------

EXECUTION_COLUMNS = ["id", "task", "status", "trigger", "requested_by", "created_at", "started_at", "finished_at",
                     "duration_s", "host_count", "hosts_done", "hosts_failed", "revision", "reason", "message",
                     "ticket", "vars"]  # vars: the launch values as JSON, secret ones as ********
OPERATION_COLUMNS = ["execution_id", "task", "host", "status", "rc", "started_at", "finished_at", "duration_s",
                     "execution_status", "trigger", "message"]


def _cell(value: Any) -> Any:
    """CSV-safe cell: ISO times, and no spreadsheet formulas from user-typed text."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


class _Line:
    """csv.writer target that hands back each written line."""

    def __init__(self) -> None:
        self.buf = io.StringIO()

    def take(self) -> str:
        value = self.buf.getvalue()
        self.buf.seek(0)
        self.buf.truncate()
        return value


def _writer() -> tuple[Any, _Line]:
    line = _Line()
    return csv.writer(line.buf, lineterminator="\r\n"), line


def _duration(a: datetime | None, b: datetime | None) -> float | None:
    return (b - a).total_seconds() if a and b else None


_UTC = timezone.utc
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _iso(value: datetime | None) -> str:
    if value is None:
        return ""
    return (value if value.tzinfo is _UTC else value.astimezone(_UTC)).isoformat()


def _text(value: str | None) -> str:
    """User-typed text: never a spreadsheet formula."""
    if not value:
        return ""
    return "'" + value if value[0] in _FORMULA else value


def _secs(a: datetime | None, b: datetime | None) -> str:
    return f"{(b - a).total_seconds():.3f}" if a and b else ""


def _execution_batches(session: Session, f: Filters, batch: int | None = None) -> Iterator[list[Any]]:
    """Rows (id, task, status, ...) of matching executions, oldest first, ``batch`` at a time."""
    batch = batch or CSV_BATCH
    last = 0
    stmt = (
        select(
            Execution.id, Task.name.label("task"), Execution.status, Execution.trigger,
            User.username.label("requested_by"), Execution.created_at, Execution.started_at,
            Execution.finished_at, Execution.host_count, Execution.hosts_done, Execution.revision,
            Execution.reason, Execution.message, Execution.ticket, Execution.vars,
        )
        .join(Task, Task.id == Execution.task_id)
        .outerjoin(User, User.id == Execution.requested_by_id)
        .where(*_execution_conditions(f))
    )
    while True:
        rows = session.execute(stmt.where(Execution.id > last).order_by(Execution.id).limit(batch)).all()
        if not rows:
            return
        yield rows
        last = rows[-1].id
        if len(rows) < batch:
            return


def iter_executions_csv(session: Session, f: Filters) -> Iterator[str]:
    w, line = _writer()
    w.writerow(EXECUTION_COLUMNS)
    yield line.take()
    for rows in _execution_batches(session, f):
        ids = [r.id for r in rows]
        failed = dict(session.execute(
            select(Operation.execution_id, func.count())
            .where(Operation.status.in_(FAILED_OPERATION), Operation.execution_id.in_(ids))
            .group_by(Operation.execution_id)
        ).all())
        for r in rows:
            w.writerow([_cell(v) for v in (
                r.id, r.task, r.status, r.trigger, r.requested_by, r.created_at, r.started_at, r.finished_at,
                _duration(r.started_at, r.finished_at), r.host_count, r.hosts_done, failed.get(r.id, 0),
                r.revision, r.reason, output.strip(r.message), r.ticket,
                json.dumps(r.vars, sort_keys=True, ensure_ascii=False) if r.vars else "",
            )])
        yield line.take()
        session.expunge_all()


def iter_operations_csv(session: Session, f: Filters) -> Iterator[str]:
    """Operations of matching executions, ordered by execution then host. Output is left
    out (it can be megabytes per host); the execution page has it."""
    w, line = _writer()
    w.writerow(OPERATION_COLUMNS)
    yield line.take()
    pending: list[Any] = []
    budget = 0

    def flush(execs: list[Any]) -> str:
        by_id = {r.id: r for r in execs}
        stmt = (
            select(Operation.execution_id, Operation.host_name, Operation.status, Operation.rc,
                   Operation.started_at, Operation.finished_at, Operation.message)
            .where(Operation.execution_id.in_(list(by_id)))
            .order_by(Operation.execution_id, Operation.host_name)
        )
        if f.host:
            stmt = stmt.where(Operation.host_name == f.host)
        tasks = {r.id: _text(r.task) for r in execs}
        # The hot loop (a million rows): plain tuples, formatting inlined.
        write = w.writerow
        for ex_id, host, status, rc, started, finished, message in session.connection().execute(stmt):
            ex = by_id[ex_id]
            write((ex_id, tasks[ex_id], _text(host), status, "" if rc is None else rc, _iso(started), _iso(finished),
                   _secs(started, finished), ex.status, ex.trigger, _text(output.strip(message))))
        return line.take()

    for rows in _execution_batches(session, f, batch=min(200, CSV_BATCH)):
        for r in rows:
            pending.append(r)
            budget += max(1, r.host_count or 1)
            if budget >= CSV_OPS_PER_BATCH:
                yield flush(pending)
                pending, budget = [], 0
    if pending:
        yield flush(pending)
    session.expunge_all()


__all__ = [
    "Filters", "Page", "parse_filters", "parse_cursor", "execution_page", "host_operation_page", "dashboard",
    "task_report", "host_report", "host_summary", "iter_executions_csv", "iter_operations_csv", "WINDOWS",
    "OPERATION_STATUSES",
]
