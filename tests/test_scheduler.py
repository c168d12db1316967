"""The scheduler core with an injected clock: DST, grace windows, backlog, blackouts, pause,
exactly-once under two concurrent schedulers (SQLite and PostgreSQL)."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from server.core import db
from server.executions.jobs import queue
from server.core.models import AuditLog, Blackout, Execution, Host, ScheduleFire, Setting, Task
from server.scheduling.scheduler import MAX_BACKLOG, next_due_at, tick
from server.scheduling.schedules import create_schedule, fire_times, next_fire, next_runs, update_schedule

U = timezone.utc


def at(*args) -> datetime:
    return datetime(*args, tzinfo=U)


@pytest.fixture
def task(session):
    host = Host(name="web1", address="127.0.0.1", port=22)
    t = Task(name="restart", kind="commands", commands=["true"], hosts=[host])
    session.add(t)
    session.commit()
    return t


def make(session, task, cron, tz="UTC", now=None, **extra):
    """A schedule created as the API would, as if at the instant ``now``."""
    s = create_schedule(session, task, None, {"cron": cron, "timezone": tz, **extra})
    if now is not None and s.enabled:
        s.next_fire_at = next_fire(s, now)
    session.commit()
    return s


def run_until(session, end: datetime) -> list[ScheduleFire]:
    """Drive the scheduler as its loop does: wake at each next due instant, up to ``end``."""
    fires = []
    while True:
        due = next_due_at(session)
        session.commit()
        if due is None or due > end:
            return fires
        fires += tick(session, due)


def executions(session, schedule) -> list[Execution]:
    return list(session.execute(
        select(Execution).where(Execution.schedule_id == schedule.id).order_by(Execution.scheduled_for)
    ).scalars())


def fires_of(session, schedule) -> list[ScheduleFire]:
    return list(session.execute(
        select(ScheduleFire).where(ScheduleFire.schedule_id == schedule.id).order_by(ScheduleFire.due_at)
    ).scalars())


# ---------------------------------------------------------------- firing


def test_fire_creates_one_queued_execution_through_the_manual_path(session, task):
    s = make(session, task, "*/5 * * * *", now=at(2030, 1, 1, 10, 1), vars={"who": "cron"})
    assert s.next_fire_at == at(2030, 1, 1, 10, 5)
    assert tick(session, at(2030, 1, 1, 10, 4, 59)) == []
    fires = tick(session, at(2030, 1, 1, 10, 5))
    assert [(f.outcome, f.due_at) for f in fires] == [("fired", at(2030, 1, 1, 10, 5))]
    ex = session.get(Execution, fires[0].execution_id)
    assert (ex.trigger, ex.status, ex.schedule_id, ex.scheduled_for) == ("schedule", "queued", s.id, at(2030, 1, 1, 10, 5))
    assert ex.vars == {"who": "cron"} and ex.queued_at is not None and ex.host_count == 1
    assert f"execution-{ex.id}" in queue().get_job_ids()
    audit = session.execute(select(AuditLog).where(AuditLog.action == "execution.request")).scalars().all()
    assert audit[-1].actor == "scheduler" and audit[-1].detail["trigger"] == "schedule"
    # the same instant again (a second loop pass, a restart): nothing new
    assert tick(session, at(2030, 1, 1, 10, 5, 30)) == []
    session.refresh(s)
    assert s.next_fire_at == at(2030, 1, 1, 10, 10) and s.last_fire_at == at(2030, 1, 1, 10, 5)
    assert len(executions(session, s)) == 1


def test_stored_values_are_checked_again_at_fire_time(session, task):
    """A schedule's launch values were valid when saved; a declaration changed since makes the
    fire an error naming the variable, with no execution."""
    task.variables = [{"name": "svc", "type": "choice", "label": "svc", "required": True, "choices": ["nginx", "redis"]}]
    task.commands = ["systemctl restart [#svc#]"]
    s = make(session, task, "*/5 * * * *", now=at(2030, 1, 1, 10, 1), vars={"svc": "redis"})
    task.variables = [{**task.variables[0], "choices": ["nginx"]}]
    session.commit()
    fires = tick(session, at(2030, 1, 1, 10, 5))
    assert [f.outcome for f in fires] == ["error"] and "vars.svc" in str(fires[0].detail), fires[0].detail
    assert executions(session, s) == []


def test_disabled_schedule_never_fires_and_reenabling_starts_from_now(session, task):
    s = make(session, task, "* * * * *", now=at(2030, 1, 1, 0, 0), enabled=False)
    assert s.next_fire_at is None and next_due_at(session) is None
    assert tick(session, at(2030, 1, 1, 5, 0)) == []
    update_schedule(session, s, None, {"enabled": True})
    session.commit()
    assert s.next_fire_at > datetime.now(U) - timedelta(minutes=1)  # no catch-up of the disabled time
    assert fires_of(session, s) == []


# ---------------------------------------------------------------- DST


def test_berlin_fall_back_fixed_time_fires_once(session, task):
    s = make(session, task, "30 2 * * *", "Europe/Berlin", now=at(2025, 10, 24, 12))
    run_until(session, at(2025, 10, 28))
    got = [e.scheduled_for for e in executions(session, s)]
    assert got == [at(2025, 10, 25, 0, 30), at(2025, 10, 26, 0, 30), at(2025, 10, 27, 1, 30)]
    # ticking every minute through the repeated hour changes nothing
    for minute in range(0, 180):
        tick(session, at(2025, 10, 26, 0, 0) + timedelta(minutes=minute))
    assert len(executions(session, s)) == 3


def test_new_york_fall_back_fixed_time_fires_once(session, task):
    s = make(session, task, "30 1 * * *", "America/New_York", now=at(2025, 11, 1, 12))
    run_until(session, at(2025, 11, 3, 12))
    assert [e.scheduled_for for e in executions(session, s)] == [at(2025, 11, 2, 5, 30), at(2025, 11, 3, 6, 30)]


def test_berlin_spring_forward_nonexistent_time_fires_once_at_0300(session, task):
    s = make(session, task, "30 2 * * *", "Europe/Berlin", now=at(2025, 3, 28, 12))
    run_until(session, at(2025, 3, 31, 12))
    got = [e.scheduled_for for e in executions(session, s)]
    assert got == [at(2025, 3, 29, 1, 30), at(2025, 3, 30, 1, 0), at(2025, 3, 31, 0, 30)]
    assert got[1].astimezone(s_zone("Europe/Berlin")).isoformat() == "2025-03-30T03:00:00+02:00"


def test_new_york_spring_forward_nonexistent_time_fires_once(session, task):
    s = make(session, task, "30 2 * * *", "America/New_York", now=at(2025, 3, 8, 12))
    run_until(session, at(2025, 3, 10, 12))
    got = [e.scheduled_for.astimezone(s_zone("America/New_York")).isoformat() for e in executions(session, s)]
    assert got == ["2025-03-09T03:00:00-04:00", "2025-03-10T02:30:00-04:00"]


def s_zone(name):
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


@pytest.mark.parametrize("tz,start,expected", [
    # hourly schedules follow real time: both 02:00 in the repeated hour, nothing invented in the gap
    ("Europe/Berlin", at(2025, 10, 25, 23, 30), ["02:00:00+02:00", "02:00:00+01:00", "03:00:00+01:00"]),
    ("Europe/Berlin", at(2025, 3, 30, 0, 30), ["03:00:00+02:00", "04:00:00+02:00", "05:00:00+02:00"]),
    ("America/New_York", at(2025, 11, 2, 4, 30), ["01:00:00-04:00", "01:00:00-05:00", "02:00:00-05:00"]),
    ("America/New_York", at(2025, 3, 9, 6, 30), ["03:00:00-04:00", "04:00:00-04:00", "05:00:00-04:00"]),
])
def test_hourly_schedules_follow_real_time_across_dst(tz, start, expected):
    z = s_zone(tz)
    got = [t.astimezone(z).isoformat()[11:] for t, _ in zip(fire_times("0 * * * *", tz, start), range(3), strict=False)]
    assert got == expected


def test_every_15_minutes_across_spring_forward_keeps_real_15_minute_steps():
    got = [t for t, _ in zip(fire_times("*/15 * * * *", "Europe/Berlin", at(2025, 3, 30, 0, 30)), range(4), strict=False)]
    assert got == [at(2025, 3, 30, 0, 45), at(2025, 3, 30, 1, 0), at(2025, 3, 30, 1, 15), at(2025, 3, 30, 1, 30)]


def test_next_runs_are_iso_with_the_zone_offset(session, task):
    s = make(session, task, "30 2 * * *", "Europe/Berlin", now=at(2025, 3, 28, 12))
    runs = next_runs(s, at(2025, 3, 28, 12))
    assert [r.isoformat() for r in runs] == [
        "2025-03-29T02:30:00+01:00", "2025-03-30T03:00:00+02:00", "2025-03-31T02:30:00+02:00",
        "2025-04-01T02:30:00+02:00", "2025-04-02T02:30:00+02:00"]


# ---------------------------------------------------------------- start and end dates


def test_start_and_end_dates_bound_the_fires(session, task):
    s = make(session, task, "0 6 * * *", "America/Sao_Paulo", now=at(2030, 1, 1),
             start_at="2030-01-10", end_at="2030-01-12")
    assert s.start_at == at(2030, 1, 10, 3) and s.end_at == at(2030, 1, 13, 2, 59, 59)
    assert s.next_fire_at == at(2030, 1, 10, 9)
    run_until(session, at(2030, 2, 1))
    assert [e.scheduled_for for e in executions(session, s)] == [at(2030, 1, 10, 9), at(2030, 1, 11, 9), at(2030, 1, 12, 9)]
    session.refresh(s)
    assert s.next_fire_at is None and next_runs(s, at(2030, 1, 20)) == []


# ---------------------------------------------------------------- downtime and the grace window


def test_restart_inside_grace_runs_the_missed_instant_once(session, task):
    s = make(session, task, "0 * * * *", now=at(2030, 1, 1, 9, 30))  # grace 600 s
    fires = tick(session, at(2030, 1, 1, 10, 9, 59))  # scheduler was down from 09:30 to 10:09:59
    assert [(f.outcome, f.due_at) for f in fires] == [("fired", at(2030, 1, 1, 10))]
    assert [e.scheduled_for for e in executions(session, s)] == [at(2030, 1, 1, 10)]


def test_restart_outside_grace_records_the_miss_and_audits_it(session, task):
    s = make(session, task, "0 * * * *", now=at(2030, 1, 1, 9, 30))
    fires = tick(session, at(2030, 1, 1, 10, 10, 1))
    assert [(f.outcome, f.due_at, f.execution_id) for f in fires] == [("missed", at(2030, 1, 1, 10), None)]
    assert "grace window is 600 s" in fires[0].detail
    assert executions(session, s) == []
    row = session.execute(select(AuditLog).where(AuditLog.action == "schedule.missed")).scalar_one()
    assert row.actor == "scheduler" and row.target_id == str(s.id) and row.outcome == "missed"
    session.refresh(s)
    assert s.next_fire_at == at(2030, 1, 1, 11)


def test_backlog_runs_at_most_once(session, task):
    s = make(session, task, "0 * * * *", now=at(2030, 1, 1, 9, 30))
    fires = tick(session, at(2030, 1, 1, 13, 5))  # down for 10:00, 11:00, 12:00, 13:00
    assert [(f.due_at.hour, f.outcome) for f in sorted(fires, key=lambda f: f.due_at)] == [
        (10, "missed"), (11, "missed"), (12, "missed"), (13, "fired")]
    assert [e.scheduled_for for e in executions(session, s)] == [at(2030, 1, 1, 13)]
    s2 = make(session, task, "*/10 * * * *", now=at(2030, 1, 2, 9, 55), misfire_grace_s=60)
    fires = tick(session, at(2030, 1, 2, 11, 5))  # every instant outside its grace: nothing runs
    assert {f.outcome for f in fires if f.schedule_id == s2.id} == {"missed"}
    assert executions(session, s2) == []


def test_long_outage_of_a_minute_schedule_is_capped_and_runs_once(session, task):
    s = make(session, task, "* * * * *", now=at(2030, 1, 1, 0, 0, 30))
    fires = tick(session, at(2030, 1, 4, 0, 0, 30))  # three days down
    outcomes = [f.outcome for f in fires]
    assert outcomes.count("fired") == 1 and len(fires) <= MAX_BACKLOG + 11
    assert [e.scheduled_for for e in executions(session, s)] == [at(2030, 1, 4, 0, 0)]
    assert any("not listed" in (f.detail or "") for f in fires)
    session.refresh(s)
    assert s.next_fire_at == at(2030, 1, 4, 0, 1)


# ---------------------------------------------------------------- pause, blackouts, suspension, errors


def test_blackout_window_blocks_and_records(session, task):
    s = make(session, task, "0 * * * *", now=at(2030, 1, 1, 9, 30))
    session.add(Blackout(name="db freeze", starts_at=at(2030, 1, 1, 9, 55), ends_at=at(2030, 1, 1, 11, 0)))
    session.commit()
    assert [f.outcome for f in tick(session, at(2030, 1, 1, 10))] == ["blackout"]
    assert [f.outcome for f in tick(session, at(2030, 1, 1, 11))] == ["fired"]  # the window is half-open
    assert [e.scheduled_for for e in executions(session, s)] == [at(2030, 1, 1, 11)]
    row = session.execute(select(AuditLog).where(AuditLog.action == "schedule.blackout")).scalar_one()
    assert "db freeze" in row.detail["detail"]


def test_pause_records_paused_and_resume_fires_again(session, task, admin_user):
    from server.scheduling.schedules import set_paused

    s = make(session, task, "*/30 * * * *", now=at(2030, 1, 1, 9, 50))
    set_paused(session, admin_user, True, "change freeze")
    session.commit()
    assert [f.outcome for f in tick(session, at(2030, 1, 1, 10))] == ["paused"]
    set_paused(session, admin_user, False)
    session.commit()
    assert [f.outcome for f in tick(session, at(2030, 1, 1, 10, 30))] == ["fired"]
    assert len(executions(session, s)) == 1
    actions = session.execute(select(AuditLog.action).order_by(AuditLog.id)).scalars().all()
    assert {"scheduler.pause", "schedule.paused", "scheduler.resume"} <= set(actions)
    assert session.get(Setting, "schedules_paused").value["paused"] is False


def test_suspended_schedule_is_skipped(session, task):
    s = make(session, task, "0 * * * *", now=at(2030, 1, 1, 9, 30))
    s.suspended_reason = "task definition changed since approval"
    session.commit()
    fires = tick(session, at(2030, 1, 1, 10))
    assert [f.outcome for f in fires] == ["suspended"] and "since approval" in fires[0].detail
    assert executions(session, s) == []


def test_refused_run_is_recorded_as_error_and_the_schedule_moves_on(session, task):
    empty = Task(name="no hosts", kind="commands", commands=["true"])
    session.add(empty)
    session.commit()
    s = make(session, empty, "0 * * * *", now=at(2030, 1, 1, 9, 30))
    ok = make(session, task, "0 * * * *", now=at(2030, 1, 1, 9, 30))
    fires = {f.schedule_id: f for f in tick(session, at(2030, 1, 1, 10))}
    assert fires[s.id].outcome == "error" and "no target hosts" in fires[s.id].detail
    assert fires[ok.id].outcome == "fired"
    session.refresh(s)
    assert s.next_fire_at == at(2030, 1, 1, 11)


# ---------------------------------------------------------------- exactly once under concurrency


def test_two_schedulers_1000_fires_exactly_once(app, session, task):
    """Two scheduler threads tick the same instants on the same database."""
    schedules = [make(session, task, "* * * * *", now=at(2030, 1, 1, 0, 0, 30)) for _ in range(20)]
    instants = [at(2030, 1, 1, 0, 1) + timedelta(minutes=m) for m in range(50)]  # 20 x 50 = 1000 fires
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    counts = [0, 0]

    def scheduler(index: int) -> None:
        with app.app_context():
            s = db.session()
            try:
                for now in instants:
                    barrier.wait()
                    counts[index] += sum(1 for f in tick(s, now, batch_size=7) if f.outcome == "fired")
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                barrier.abort()
            finally:
                db.session.remove()

    threads = [threading.Thread(target=scheduler, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    total = session.execute(select(func.count(Execution.id)).where(Execution.trigger == "schedule")).scalar()
    distinct = session.execute(
        select(func.count()).select_from(select(Execution.schedule_id, Execution.scheduled_for).distinct().subquery())
    ).scalar()
    fired = session.execute(select(func.count(ScheduleFire.id)).where(ScheduleFire.outcome == "fired")).scalar()
    assert total == distinct == fired == sum(counts) == 1000
    assert session.execute(select(func.count(ScheduleFire.id)).where(ScheduleFire.outcome != "fired")).scalar() == 0
    assert len(set(queue().get_job_ids())) == 1000
    assert len(schedules) == 20


def test_a_scheduler_with_a_stale_view_cannot_fire_twice(session, task):
    """The unique fire row, not a lock, is what makes it exactly once."""
    s = make(session, task, "0 * * * *", now=at(2030, 1, 1, 9, 30))
    assert [f.outcome for f in tick(session, at(2030, 1, 1, 10))] == ["fired"]
    s.next_fire_at = at(2030, 1, 1, 10)  # as if another process had not seen the first one's commit
    session.commit()
    assert tick(session, at(2030, 1, 1, 10, 0, 1)) == []
    assert len(executions(session, s)) == 1 and len(fires_of(session, s)) == 1


def test_a_miss_notifies_channels_subscribed_to_schedule_missed(session, task):
    from server.reporting import notify
    from server.core.models import NotificationDelivery

    notify.create_channel(session, {"name": "ops", "url": "json://127.0.0.1:9/hook", "events": ["schedule.missed"]},
                          actor="test")
    session.commit()
    make(session, task, "0 * * * *", now=at(2030, 1, 1, 9, 30))
    tick(session, at(2030, 1, 1, 11, 30))  # 10:00 and 11:00 both missed: one notification
    rows = session.execute(select(NotificationDelivery)).scalars().all()
    assert [(r.event, r.status) for r in rows] == [("schedule.missed", "pending")]
    assert "restart" in rows[0].title and "2030-01-01T10:00:00+00:00" in rows[0].body


def test_a_broken_schedule_is_recorded_and_does_not_block_the_others(session, task, caplog):
    good = make(session, task, "0 * * * *", now=at(2030, 1, 1, 9, 30))
    bad = make(session, task, "0 * * * *", now=at(2030, 1, 1, 9, 30))
    bad.cron = "not a cron"  # corrupted behind the API's back
    session.commit()
    fires = {f.schedule_id: f for f in tick(session, at(2030, 1, 1, 10))}
    assert fires[good.id].outcome == "fired"
    assert fires[bad.id].outcome == "error" and "parked" in fires[bad.id].detail
    session.refresh(bad)
    assert bad.next_fire_at is None
    assert tick(session, at(2030, 1, 1, 11)) != []  # the loop keeps going
    assert session.execute(select(AuditLog).where(AuditLog.action == "schedule.error")).scalar_one().target_id == str(bad.id)


# ---------------------------------------------------------------- burst cost


def test_a_burst_of_50_fires_costs_a_few_inserts_and_keeps_the_audit_chain(app, session, task):
    """One batch: its executions and their audit rows go out as multi-row INSERTs, not two
    statements per fire; a refused fire in the batch is recorded and the others still run."""
    from collections import Counter

    from sqlalchemy import event

    from server.core import audit

    empty = Task(name="no hosts", kind="commands", commands=["true"])
    session.add(empty)
    session.commit()
    ok = [make(session, task, "0 * * * *", now=at(2030, 1, 1, 9, 30), vars={"n": i}) for i in range(49)]
    refused = make(session, empty, "0 * * * *", now=at(2030, 1, 1, 9, 30))
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement.lstrip())

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", count)
    try:
        fires = tick(session, at(2030, 1, 1, 10), batch_size=100)
    finally:
        event.remove(engine, "before_cursor_execute", count)

    outcomes = {f.schedule_id: f.outcome for f in fires}
    assert [outcomes[s.id] for s in ok] == ["fired"] * 49 and outcomes[refused.id] == "error"
    rows = session.execute(select(Execution).where(Execution.trigger == "schedule")).scalars().all()
    assert sorted(ex.vars["n"] for ex in rows) == list(range(49))
    assert {f"execution-{ex.id}" for ex in rows} <= set(queue().get_job_ids())
    inserts = Counter(s.split()[2] for s in statements if s.upper().startswith("INSERT"))
    # Before: one INSERT per execution and one per audit row, > 100 statements.
    # audit_log: at most the transaction's first row (SQLite), the execution.request rows, the schedule.error row.
    assert inserts["schedule_fires"] == 1 and inserts["audit_log"] <= 3, inserts
    if session.get_bind().dialect.name == "postgresql":
        assert inserts["executions"] == 1 and len(statements) <= 25, inserts
    else:
        # SQLAlchemy cannot match SQLite's RETURNING rows to the objects in one statement
        # (no ordering guarantee), so the ORM inserts executions one by one there: in process,
        # not round trips.
        assert inserts["executions"] == 49 and len(statements) <= 25 + 48, inserts
    requests = session.execute(select(AuditLog).where(AuditLog.action == "execution.request")).scalars().all()
    assert len(requests) == 49 and {r.actor for r in requests} == {"scheduler"}
    assert session.execute(select(AuditLog).where(AuditLog.action == "schedule.error")).scalar_one().target_id \
        == str(refused.id)
    check = audit.verify_trail(session)
    assert check.ok, check.why


def test_a_batch_that_fails_to_write_falls_back_to_one_by_one_and_keeps_the_audit_chain(session, task, caplog):
    """A clash on the executions' unique key sinks the batch's one INSERT: the batch is
    rolled back and retried schedule by schedule, so only the clashing fire is an error."""
    from server.core import audit

    schedules = [make(session, task, "0 * * * *", now=at(2030, 1, 1, 9, 30)) for _ in range(5)]
    clash = schedules[2]
    # A run for that instant exists already (behind the scheduler's back: no fire row).
    session.add(Execution(task_id=task.id, trigger="schedule", schedule_id=clash.id, scheduled_for=at(2030, 1, 1, 10),
                          status="queued", vars={}, host_count=1))
    session.commit()
    fires = {f.schedule_id: f for f in tick(session, at(2030, 1, 1, 10))}
    assert [fires[s.id].outcome for s in schedules] == ["fired", "fired", "error", "fired", "fired"]
    assert "internal error" in fires[clash.id].detail
    assert "retrying them one by one" in caplog.text
    for s in schedules:
        assert len(executions(session, s)) == 1
    requests = session.execute(select(AuditLog).where(AuditLog.action == "execution.request")).scalars().all()
    assert len(requests) == 4
    check = audit.verify_trail(session)
    assert check.ok, check.why
