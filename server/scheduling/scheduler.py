"""The scheduler: due schedule instants become executions, exactly once, never silently lost.

All state is in the database. ``Schedule.next_fire_at`` (indexed) is the first instant not
handled yet; handling an instant inserts its ``ScheduleFire`` row with INSERT ... ON CONFLICT
DO NOTHING, so when two schedulers see the same instant only the one whose row went in acts
on it (the unique key on executions (schedule_id, scheduled_for) backs this up). On
PostgreSQL the due rows are also taken with FOR UPDATE SKIP LOCKED so that concurrent
schedulers share the work instead of colliding.

``tick(session, now)`` is the whole policy and takes its clock as an argument (tests pass
chosen instants); ``run_scheduler`` calls it with the real clock and sleeps until the
earliest ``next_fire_at`` — or until the API publishes a change — instead of polling.

Policy for each due schedule, given every instant due since it was last handled:

* only the latest instant may run, and only within ``misfire_grace_s`` of it; earlier ones
  (and a latest one past its grace) are recorded as ``missed`` — a backlog never runs;
* a suspended schedule, a paused scheduler or a blackout window (at the due instant or
  now) records ``suspended`` / ``paused`` / ``blackout`` instead of running;
* a schedule acts with its owner's rights, checked at each fire: an owner who no longer
  exists, is disabled or lost ``execute``/``schedule`` on the task records ``suspended``
  with the reason (the schedule fires again once the rights are back);
* a run the task refuses (e.g. no target hosts) is recorded as ``error``.
Every such record is also written to the audit log.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from flask import Flask, current_app
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, selectinload
from sqlalchemy.orm.attributes import set_committed_value

from server.people import access
from server.executions import approvals, jobs
from server.core import audit, db
from server.reporting import notify
from server.executions.request import RunRequest, request_executions
from server.core.models import ExecutionStatus, Group, Schedule, ScheduleFire, Task, TZDateTime, utcnow
from server.scheduling.schedules import (
    CHANGED_CHANNEL,
    HEARTBEAT_PREFIX,
    blackouts_at,
    fire_times,
    in_blackout,
    is_paused,
    iso,
)

log = logging.getLogger(__name__)

ACTOR = "scheduler"
BATCH_SIZE = 100  # schedules per transaction: one burst commits (and enqueues) in steps
MAX_BACKLOG = 100  # missed instants recorded one by one after an outage; the rest summarised
MAX_IDLE_S = 30.0  # re-read the database at least this often even without a notification
_MICRO = timedelta(microseconds=1)
# Errors that say nothing about a schedule (lost connection, lock timeout, deadlock).
_TRANSIENT = (OperationalError, InterfaceError, DisconnectionError)

_schedules = Schedule.__table__
_advance = (
    update(_schedules)
    .where(_schedules.c.id == bindparam("sid"), _schedules.c.next_fire_at == bindparam("old", type_=TZDateTime()))
    .values(
        next_fire_at=bindparam("new", type_=TZDateTime()),
        last_fire_at=bindparam("last", type_=TZDateTime()),
        updated_at=_schedules.c.updated_at,  # the scheduler's bookkeeping is not an edit
    )
)

_fires = ScheduleFire.__table__
_link = update(_fires).where(_fires.c.id == bindparam("fid")).values(execution_id=bindparam("eid"))


@dataclass
class _Plan:
    """What to record for one schedule at this tick."""

    schedule: Schedule
    rows: list[dict[str, Any]] = field(default_factory=list)
    next_fire_at: datetime | None = None
    last_fire_at: datetime | None = None


def _due_instants(schedule: Schedule, now: datetime) -> tuple[list[datetime], bool, datetime | None]:
    """Every instant from ``next_fire_at`` up to ``now`` (capped after a long outage), whether
    the cap was hit, and the first instant after ``now`` (the new ``next_fire_at``)."""
    return _instants(schedule.cron, schedule.timezone, schedule.next_fire_at, schedule.start_at, schedule.end_at,
                     schedule.misfire_grace_s, now)


@lru_cache(maxsize=1024)
def _instants(cron: str, tz: str, first: datetime, start_at: datetime | None, end_at: datetime | None,
              grace_s: int, now: datetime) -> tuple[list[datetime], bool, datetime | None]:
    # A pure function of its arguments, remembered: a burst's schedules mostly share their
    # cron line and zone (1,000 schedules due at one minute: a handful of distinct calls).
    # Callers must not modify the list.
    dues = [first]
    overflow = False
    after: datetime | None = None
    for inst in fire_times(cron, tz, first, start_at=start_at, end_at=end_at):
        if inst > now:
            after = inst
            break
        if len(dues) >= MAX_BACKLOG:
            overflow = True
            break
        dues.append(inst)
    if overflow:
        # Skip to the grace window: only its instants may still matter individually.
        resume = max(dues[-1], now - timedelta(seconds=grace_s) - _MICRO)
        for inst in fire_times(cron, tz, resume, start_at=start_at, end_at=end_at):
            if inst > now:
                after = inst
                break
            dues.append(inst)
    return dues, overflow, after


def _plan(schedule: Schedule, now: datetime, paused: bool, blackouts: list) -> _Plan:
    dues, overflow, after = _due_instants(schedule, now)
    latest = dues[-1]
    grace = schedule.misfire_grace_s
    runnable = (now - latest).total_seconds() <= grace
    plan = _Plan(schedule, next_fire_at=after, last_fire_at=schedule.last_fire_at)
    for i, due in enumerate(dues):
        if schedule.suspended_reason:
            outcome, detail = "suspended", f"schedule suspended: {schedule.suspended_reason}"
        elif paused:
            outcome, detail = "paused", "all schedules are paused"
        elif due == latest and runnable:
            b = in_blackout(blackouts, due) or in_blackout(blackouts, now)
            if b is not None:
                outcome, detail = "blackout", f"blackout window '{b.name}' ({iso(b.starts_at)} to {iso(b.ends_at)})"
            else:
                outcome, detail = "fired", None
                plan.last_fire_at = due
        else:
            b = in_blackout(blackouts, due)
            if b is not None:
                outcome, detail = "blackout", f"blackout window '{b.name}' ({iso(b.starts_at)} to {iso(b.ends_at)})"
            elif runnable:
                outcome, detail = "missed", f"superseded by the later instant {iso(latest)}: a backlog never runs"
            else:
                late = int((now - due).total_seconds())
                outcome, detail = "missed", f"scheduler was not running: {late} s late, grace window is {grace} s"
        if overflow and i == MAX_BACKLOG - 1:
            detail = f"{detail}; further missed instants up to {iso(now)} are not listed one by one"
        plan.rows.append({
            "schedule_id": schedule.id, "due_at": due, "outcome": outcome, "detail": detail, "recorded_at": now,
        })
    return plan


def _fires_now(plan: _Plan) -> bool:
    return any(r["outcome"] == "fired" for r in plan.rows)


def _claim(session: Session, rows: list[dict[str, Any]]) -> dict[tuple[int, datetime], ScheduleFire]:
    """Insert fire rows, skipping any another scheduler already inserted; returns ours."""
    if not rows:
        return {}
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(ScheduleFire).on_conflict_do_nothing().returning(ScheduleFire)
    fires = session.scalars(stmt, rows, execution_options={"populate_existing": True}).all()
    return {(f.schedule_id, f.due_at): f for f in fires}


def _due_batch(session: Session, now: datetime, after_id: int, limit: int) -> list[Schedule]:
    q = (
        select(Schedule)
        .where(Schedule.enabled.is_(True), Schedule.next_fire_at.is_not(None), Schedule.next_fire_at <= now,
               Schedule.id > after_id)
        .order_by(Schedule.id)
        .limit(limit)
        .options(
            selectinload(Schedule.task).selectinload(Task.hosts),
            selectinload(Schedule.task).selectinload(Task.groups).selectinload(Group.hosts),
            selectinload(Schedule.task).selectinload(Task.credential),
        )
        .execution_options(populate_existing=True)
    )
    if session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True, of=Schedule)
    return list(session.execute(q).scalars())


def _notify_missed(session: Session, schedule: Schedule, fires: list[ScheduleFire]) -> None:
    notify.emit(session, "schedule.missed", schedule=schedule, due_at=", ".join(iso(f.due_at) for f in fires[:10]),
                message=fires[-1].detail)


def _process(session: Session, schedules: list[Schedule], now: datetime,
             paused: bool) -> tuple[list[ScheduleFire], list[tuple[int, int]]]:
    """Record (and run) the due instants of ``schedules`` in the caller's transaction.

    Returns the fire rows this call inserted and the (execution id, timeout) to enqueue."""
    earliest = min(s.next_fire_at for s in schedules)
    blackouts = blackouts_at(session, earliest, now)
    plans = [_plan(s, now, paused, blackouts) for s in schedules]
    ours = _claim(session, [row for p in plans for row in p.rows])
    fires: list[ScheduleFire] = []
    to_enqueue: list[tuple[int, int]] = []  # (execution id, task timeout)
    links: list[dict[str, int]] = []  # fire id -> execution id, written in one statement
    advances = []
    gated = access.tasks_under_approval(session, {p.schedule.task_id for p in plans})
    owners = access.schedule_owner_problems(session, [p.schedule for p in plans if _fires_now(p)])
    mine_by_plan: list[list[ScheduleFire]] = []
    runs: list[tuple[_Plan, ScheduleFire]] = []  # fires to turn into executions, in one batch
    for plan in plans:
        s = plan.schedule
        mine = [ours[(s.id, r["due_at"])] for r in plan.rows if (s.id, r["due_at"]) in ours]
        if len(mine) < len(plan.rows):
            log.info("schedule %s: %d instant(s) already handled by another scheduler", s.id,
                     len(plan.rows) - len(mine))
        mine_by_plan.append(mine)
        for fire in mine:
            if fire.outcome != "fired":
                continue
            refused = owners.get(s.id)
            if refused:
                refused = f"suspended: {refused}; the schedule runs with its owner's rights"
            elif s.task_id in gated:
                refused = approvals.check_schedule_fire(session, s)
            if refused:  # not approved, or the approved definition changed since
                fire.outcome = "suspended"
                fire.detail = refused
                plan.last_fire_at = s.last_fire_at
                continue
            runs.append((plan, fire))
    # Every run of the batch through the one request path: one INSERT for the executions,
    # one for their audit rows (request_execution per fire cost two round trips each).
    results = request_executions(session, [
        RunRequest(plan.schedule.task, None, trigger="schedule", schedule_id=plan.schedule.id,
                   scheduled_for=fire.due_at, run_vars=plan.schedule.vars, secret_enc=plan.schedule.secret_vars_enc)
        for plan, fire in runs
    ], enqueue=False)
    for (plan, fire), ex in zip(runs, results, strict=True):
        if isinstance(ex, Exception):  # refused: recorded, the others go ahead
            fire.outcome = "error"
            fire.detail = getattr(ex, "message", None) or f"{type(ex).__name__}: {ex}"
            plan.last_fire_at = plan.schedule.last_fire_at
            continue
        links.append({"fid": fire.id, "eid": ex.id})
        set_committed_value(fire, "execution_id", ex.id)
        if ex.status == ExecutionStatus.QUEUED:
            to_enqueue.append((ex.id, plan.schedule.task.timeout_s or 3600))
    entries: list[tuple[str, dict[str, Any]]] = []  # the schedules' audit rows, appended together
    for plan, mine in zip(plans, mine_by_plan, strict=True):
        s = plan.schedule
        by_outcome: dict[str, list[ScheduleFire]] = {}
        for fire in mine:
            if fire.outcome != "fired":
                by_outcome.setdefault(fire.outcome, []).append(fire)
        for outcome, group in by_outcome.items():
            entries.append((f"schedule.{outcome}", {
                "actor": ACTOR, "target": s, "outcome": outcome, "task": s.task.name if s.task else None,
                "due": [iso(f.due_at) for f in group[:MAX_BACKLOG]], "count": len(group), "detail": group[-1].detail,
            }))
            if outcome == "missed":
                _notify_missed(session, s, group)
        if mine:
            advances.append({"sid": s.id, "old": s.next_fire_at, "new": plan.next_fire_at,
                             "last": plan.last_fire_at})
        fires.extend(mine)
    audit.record_many(session, entries)
    if links:
        session.execute(_link, links)
    if advances:
        session.execute(_advance, advances)
        advanced = {a["sid"] for a in advances}
        for plan in plans:
            if plan.schedule.id in advanced:
                set_committed_value(plan.schedule, "next_fire_at", plan.next_fire_at)
                set_committed_value(plan.schedule, "last_fire_at", plan.last_fire_at)
    session.flush()
    return fires, to_enqueue


def _enqueue(items: list[tuple[int, int]]) -> None:
    """Push committed executions to RQ in one round trip; a failure leaves them queued in the
    database, where the reaper finds and re-enqueues them."""
    try:
        jobs.enqueue_many(items)
    except Exception:  # noqa: BLE001 - the database row is the truth
        log.exception("could not enqueue executions %s; the reaper will retry", [i for i, _ in items])


def _commit_batch(session: Session, schedules: list[Schedule], now: datetime, paused: bool) -> list[ScheduleFire]:
    fires, to_enqueue = _process(session, schedules, now, paused)
    session.commit()
    _enqueue(to_enqueue)
    return fires


def _record_failure(session: Session, schedule_id: int, now: datetime, exc: BaseException) -> list[ScheduleFire]:
    """Last resort for a schedule whose processing keeps failing: record it and move on."""
    s = session.get(Schedule, schedule_id, populate_existing=True)
    if s is None or s.next_fire_at is None or s.next_fire_at > now:
        return []
    detail = f"internal error: {type(exc).__name__}: {str(exc)[:500]}"
    try:
        dues, _, after = _due_instants(s, now)
    except Exception:  # noqa: BLE001 - its definition cannot be evaluated: park it until edited
        dues, after = [s.next_fire_at], None
        detail += "; the schedule is parked until it is edited"
    rows = [{"schedule_id": s.id, "due_at": d, "outcome": "error", "detail": detail, "recorded_at": now}
            for d in dues]
    fires = list(_claim(session, rows).values())
    audit.record(session, "schedule.error", actor=ACTOR, target=s, outcome="error", due=[iso(d) for d in dues],
                 count=len(dues), detail=detail)
    session.execute(_advance, [{"sid": s.id, "old": s.next_fire_at, "new": after, "last": s.last_fire_at}])
    session.commit()
    return fires


def tick(session: Session, now: datetime, *, batch_size: int = BATCH_SIZE) -> list[ScheduleFire]:
    """Handle every schedule instant due at ``now``; returns the fire rows this call recorded."""
    paused = is_paused(session)
    fires: list[ScheduleFire] = []
    after_id = 0
    while True:
        batch = _due_batch(session, now, after_id, batch_size)
        if not batch:
            session.commit()  # end the read transaction
            return fires
        after_id = batch[-1].id
        ids = [s.id for s in batch]
        try:
            fires += _commit_batch(session, batch, now, paused)
        except _TRANSIENT:
            session.rollback()
            raise  # database unreachable or contended: the loop retries the whole tick
        except Exception as exc:  # noqa: BLE001 - one broken schedule must not stop the others
            session.rollback()
            log.exception("batch of %d schedule(s) failed; retrying them one by one", len(ids))
            for sid in ids:
                fires += _tick_one(session, sid, now, paused, first_error=exc if len(ids) == 1 else None)
        if len(batch) < batch_size:
            session.commit()
            return fires


def _tick_one(session: Session, sid: int, now: datetime, paused: bool,
              first_error: BaseException | None = None) -> list[ScheduleFire]:
    exc: BaseException | None = first_error
    if exc is None:
        try:
            q = (select(Schedule)
                 .where(Schedule.id == sid, Schedule.enabled.is_(True), Schedule.next_fire_at <= now)
                 .execution_options(populate_existing=True))
            if session.get_bind().dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            s = session.execute(q).scalar_one_or_none()
            if s is None:
                session.commit()
                return []
            return _commit_batch(session, [s], now, paused)
        except _TRANSIENT:
            session.rollback()
            raise
        except Exception as err:  # noqa: BLE001
            session.rollback()
            exc = err
    log.error("schedule %s failed: %s", sid, exc)
    return _record_failure(session, sid, now, exc)


def next_due_at(session: Session) -> datetime | None:
    """The earliest pending instant of any enabled schedule (one indexed lookup)."""
    return session.execute(
        select(func.min(Schedule.next_fire_at)).where(Schedule.enabled.is_(True), Schedule.next_fire_at.is_not(None))
    ).scalar()


# ------------------------------------------------------------------ the process


class _Stop(Exception):
    pass


class _Waker:
    """Sleeps until a deadline or until the API publishes a schedule change (Redis pub/sub)."""

    def __init__(self) -> None:
        self.pubsub = None

    def _subscribe(self) -> None:
        from server.core.redis_conn import redis

        self.pubsub = redis().pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(CHANGED_CHANNEL)

    def wait(self, seconds: float) -> bool:
        """True if woken by a change notification."""
        deadline = time.monotonic() + seconds
        try:
            if self.pubsub is None:
                self._subscribe()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                msg = self.pubsub.get_message(timeout=left)
                if msg is not None and msg.get("type") == "message":
                    while self.pubsub.get_message(timeout=0) is not None:
                        pass  # several changes, one wake-up
                    return True
        except _Stop:
            raise
        except Exception:  # noqa: BLE001 - without Redis, fall back to short sleeps
            self.close()
            time.sleep(max(0.0, min(deadline - time.monotonic(), 5.0)))
            return False

    def close(self) -> None:
        if self.pubsub is not None:
            try:
                self.pubsub.close()
            except Exception:  # noqa: BLE001
                pass
        self.pubsub = None


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection during a tick.

    A burst allocates hundreds of thousands of short-lived objects, which sets off full
    collections that walk the whole heap (the app, SQLAlchemy's mappers and caches), a large
    share of a burst's CPU. A tick leaves almost no cycles (reference counting frees the
    rest), so collection simply waits until the tick is over.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _heartbeat(name: str, now: datetime, next_due: datetime | None, fired: int) -> None:
    try:
        from server.core.redis_conn import redis

        redis().set(HEARTBEAT_PREFIX + name,
                    json.dumps({"name": name, "seen_at": iso(now), "next_fire_at": iso(next_due), "last_tick_fires": fired}),
                    ex=int(MAX_IDLE_S * 3))
    except Exception:  # noqa: BLE001 - liveness reporting is best effort
        pass


def run_scheduler(app: Flask | None = None, *, max_idle_s: float = MAX_IDLE_S) -> None:
    """The scheduler process: tick at each due instant until SIGTERM/SIGINT."""
    app = app or current_app._get_current_object()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s scheduler %(levelname)s %(message)s")
    name = f"{socket.gethostname()}:{os.getpid()}"
    state = {"stop": False, "sleeping": False}

    def _on_signal(signum, _frame) -> None:
        state["stop"] = True
        if state["sleeping"]:
            raise _Stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    notify.start_thread(app)  # notification deliveries run in the scheduler process (see notify.py)
    waker = _Waker()
    log.info("scheduler %s started", name)
    errors = 0
    with app.app_context():
        while not state["stop"]:
            now = utcnow()
            session = db.session()
            try:
                with _gc_paused():
                    fires = tick(session, now)
                next_due = next_due_at(session)
                session.commit()
                errors = 0
            except Exception:  # noqa: BLE001 - e.g. the database restarting: retry with backoff
                session.rollback()
                db.session.remove()
                errors += 1
                log.exception("tick failed (attempt %d)", errors)
                fires, next_due = [], None
                delay = min(30.0, 0.5 * 2 ** min(errors, 6))
            else:
                if fires:
                    counts: dict[str, int] = {}
                    for f in fires:
                        counts[f.outcome] = counts.get(f.outcome, 0) + 1
                    log.info("tick %s: %s", iso(now), ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
                if next_due is None:
                    delay = max_idle_s
                else:
                    delay = min(max_idle_s, (next_due - utcnow()).total_seconds())
                    if delay <= 0 and not fires:
                        delay = 0.05  # another scheduler holds those rows; don't spin
            _heartbeat(name, now, next_due, len(fires))
            if state["stop"]:
                break
            if delay > 0:
                state["sleeping"] = True
                try:
                    waker.wait(delay + 0.001)
                except _Stop:
                    break
                finally:
                    state["sleeping"] = False
    waker.close()
    log.info("scheduler %s stopped", name)
