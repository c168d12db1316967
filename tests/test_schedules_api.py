"""The schedules API: CRUD, validation naming the bad field, permissions, pause/resume,
blackouts, fire history, audit."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from server.core.models import AuditLog, Host, Policy, Schedule, Task, User
from server.scheduling.scheduler import tick
from server.scheduling.schedules import next_fire

U = timezone.utc


@pytest.fixture
def task(session):
    t = Task(name="restart", kind="commands", commands=["true"], hosts=[Host(name="web1", address="127.0.0.1")])
    session.add(t)
    session.commit()
    return t


def audit_actions(session) -> list[str]:
    return list(session.execute(select(AuditLog.action).order_by(AuditLog.id)).scalars())


def grant(session, username: str, task: Task, *perms: str) -> None:
    user = session.execute(select(User).where(User.username == username)).scalar_one()
    session.add(Policy(name=f"{username}-{task.id}-{'-'.join(perms)}", permissions=list(perms), users=[user],
                       tasks=[task]))
    session.commit()


def test_create_read_update_delete(api, session, task):
    status, body = api.post(f"/api/v1/tasks/{task.id}/schedules",
                            {"cron": "0 6 * * *", "timezone": "America/Sao_Paulo"})
    assert status == 201, body
    sid = body["id"]
    assert body["task"] == "restart" and body["task_id"] == task.id and body["enabled"] is True
    assert body["cron"] == "0 6 * * *" and body["timezone"] == "America/Sao_Paulo"
    assert body["description"] == "At 06:00 every day, America/Sao_Paulo"
    assert len(body["next_runs"]) == 5
    runs = [datetime.fromisoformat(r) for r in body["next_runs"]]
    assert all(r.utcoffset() == timedelta(hours=-3) and (r.hour, r.minute) == (6, 0) for r in runs)
    assert runs == sorted(runs) and runs[0] > datetime.now(U)
    assert body["misfire_grace_s"] == 600

    status, listing = api.get(f"/api/v1/tasks/{task.id}/schedules")
    assert status == 200 and [s["id"] for s in listing["items"]] == [sid] and listing["total"] == 1
    status, listing = api.get("/api/v1/schedules")
    assert status == 200 and [s["id"] for s in listing["items"]] == [sid]

    status, body = api.patch(f"/api/v1/schedules/{sid}", {"cron": "@hourly", "timezone": "Europe/Berlin",
                                                          "misfire_grace_s": 120, "vars": {"level": 2}})
    assert status == 200, body
    assert body["cron"] == "0 * * * *" and body["misfire_grace_s"] == 120 and body["vars"] == {"level": 2}
    assert datetime.fromisoformat(body["next_runs"][0]).minute == 0

    status, body = api.patch(f"/api/v1/schedules/{sid}", {"enabled": False})
    assert status == 200 and body["enabled"] is False and body["next_runs"] == [] and body["next_fire_at"] is None

    status, body = api.get(f"/api/v1/schedules/{sid}")
    assert status == 200 and body["recent_fires"] == []
    assert api.delete(f"/api/v1/schedules/{sid}")[0] == 204
    assert api.get(f"/api/v1/schedules/{sid}")[0] == 404
    actions = audit_actions(session)
    assert actions.count("schedule.create") == 1 and actions.count("schedule.update") == 2
    assert actions.count("schedule.delete") == 1


def test_start_and_end_dates_through_the_api(api, task):
    status, body = api.post(f"/api/v1/tasks/{task.id}/schedules", {
        "cron": "30 2 * * *", "timezone": "Europe/Berlin", "start_at": "2031-03-29", "end_at": "2031-04-01"})
    assert status == 201, body
    assert body["start_at"] == "2031-03-29T00:00:00+01:00" and body["end_at"] == "2031-04-01T23:59:59+02:00"
    # 2031-03-30 is the last Sunday of March: 02:30 does not exist there and runs at 03:00
    assert body["next_runs"] == ["2031-03-29T02:30:00+01:00", "2031-03-30T03:00:00+02:00",
                                 "2031-03-31T02:30:00+02:00", "2031-04-01T02:30:00+02:00"]


@pytest.mark.parametrize("payload,field", [
    ({"cron": "0 6 * *"}, "cron"),
    ({"cron": "0 6 * * * *"}, "cron"),
    ({"cron": "61 6 * * *"}, "cron"),
    ({"cron": "0 0 31 2 *"}, "cron"),
    ({"cron": "rm -rf /"}, "cron"),
    ({"cron": ""}, "cron"),
    ({"cron": 5}, "cron"),
    ({}, "cron"),
    ({"cron": "0 6 * * *", "timezone": "Mars/Olympus"}, "timezone"),
    ({"cron": "0 6 * * *", "timezone": "../../etc/passwd"}, "timezone"),
    ({"cron": "0 6 * * *", "timezone": 3}, "timezone"),
    ({"cron": "0 6 * * *", "enabled": "yes"}, "enabled"),
    ({"cron": "0 6 * * *", "misfire_grace_s": -1}, "misfire_grace_s"),
    ({"cron": "0 6 * * *", "misfire_grace_s": 10**9}, "misfire_grace_s"),
    ({"cron": "0 6 * * *", "start_at": "tomorrow"}, "start_at"),
    ({"cron": "0 6 * * *", "start_at": "2031-02-01", "end_at": "2031-01-01"}, "end_at"),
    ({"cron": "0 6 * * *", "vars": ["x"]}, "vars"),
    ({"cron": "0 6 * * *", "vars": {"ansible_host": "evil"}}, "vars"),
    ({"cron": "0 6 * * *", "colour": "blue"}, "colour"),
])
def test_invalid_input_is_a_422_naming_the_field(api, session, task, payload, field):
    status, body = api.post(f"/api/v1/tasks/{task.id}/schedules", payload)
    assert status == 422, body
    assert body["error"]["field"] == field and body["error"]["message"]
    assert session.execute(select(Schedule)).first() is None


def test_patch_validation_and_malformed_bodies(api, task):
    sid = api.post(f"/api/v1/tasks/{task.id}/schedules", {"cron": "0 6 * * *"})[1]["id"]
    status, body = api.patch(f"/api/v1/schedules/{sid}", {"timezone": "Nowhere/Land"})
    assert status == 422 and body["error"]["field"] == "timezone"
    status, body = api.patch(f"/api/v1/schedules/{sid}", {"timezone": None})
    assert status == 422 and body["error"]["field"] == "timezone"
    status, body = api.call("PATCH", f"/api/v1/schedules/{sid}", data="{not json", headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"]["code"]
    assert api.post("/api/v1/tasks/999999/schedules", {"cron": "0 6 * * *"})[0] == 404
    assert api.get("/api/v1/schedules/99999999999")[0] == 404
    assert api.get("/api/v1/schedules?enabled=maybe")[0] == 422
    assert api.get(f"/api/v1/schedules/{sid}/fires?outcome=exploded")[0] == 422


def test_default_timezone_is_the_users_zone(api, session, task, admin_user):
    admin_user.timezone = "Asia/Tokyo"
    session.commit()
    status, body = api.post(f"/api/v1/tasks/{task.id}/schedules", {"cron": "0 9 * * 1-5"})
    assert status == 201 and body["timezone"] == "Asia/Tokyo"
    assert body["next_runs"][0].endswith("T09:00:00+09:00")


def test_preview(api):
    status, body = api.get("/api/v1/schedules/preview?cron=30+2+*+*+*&timezone=Europe/Berlin")
    assert status == 200 and body["description"] == "At 02:30 every day, Europe/Berlin" and len(body["next_runs"]) == 5
    status, body = api.get("/api/v1/schedules/preview?cron=bogus")
    assert status == 422 and body["error"]["field"] == "cron"


def test_permissions(api, api_as, session, task):
    operator = api_as("olga", "operator")
    auditor = api_as("audrey", "auditor")
    sid = api.post(f"/api/v1/tasks/{task.id}/schedules", {"cron": "0 6 * * *"})[1]["id"]
    # no policy: the task and its schedules are invisible
    assert operator.post(f"/api/v1/tasks/{task.id}/schedules", {"cron": "0 7 * * *"})[0] == 404
    assert operator.get(f"/api/v1/schedules/{sid}")[0] == 404
    assert operator.get("/api/v1/schedules")[1]["items"] == []
    # view (or execute) does not allow scheduling
    grant(session, "olga", task, "execute")
    assert operator.get(f"/api/v1/schedules/{sid}")[0] == 200
    status, body = operator.post(f"/api/v1/tasks/{task.id}/schedules", {"cron": "0 7 * * *"})
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert operator.patch(f"/api/v1/schedules/{sid}", {"enabled": False})[0] == 403
    assert operator.delete(f"/api/v1/schedules/{sid}")[0] == 403
    # the schedule permission does
    grant(session, "olga", task, "schedule")
    status, body = operator.post(f"/api/v1/tasks/{task.id}/schedules", {"cron": "0 7 * * *"})
    assert status == 201, body
    assert operator.patch(f"/api/v1/schedules/{sid}", {"enabled": False})[0] == 200
    # auditors read, never write; nobody but admins pauses or defines blackouts
    assert auditor.get(f"/api/v1/schedules/{sid}")[0] == 200
    assert auditor.post(f"/api/v1/tasks/{task.id}/schedules", {"cron": "0 7 * * *"})[0] == 403
    for client in (operator, auditor):
        assert client.post("/api/v1/scheduler/pause")[0] == 403
        assert client.post("/api/v1/blackouts", {"name": "x", "starts_at": "2031-01-01T00:00:00Z",
                                                 "ends_at": "2031-01-02T00:00:00Z"})[0] == 403
        assert client.get("/api/v1/scheduler")[0] == 200


def test_pause_resume_and_status(api, session, task):
    status, body = api.get("/api/v1/scheduler")
    assert status == 200 and body["paused"] is False
    status, body = api.post("/api/v1/scheduler/pause", {"reason": "quarter-end freeze"})
    assert status == 200 and body["paused"] is True and body["by"] == "admin" and body["reason"] == "quarter-end freeze"
    assert api.post("/api/v1/scheduler/pause")[1]["paused"] is True  # idempotent, audited once
    # a due instant while paused is recorded, not run
    s = session.get(Schedule, api.post(f"/api/v1/tasks/{task.id}/schedules", {"cron": "0 * * * *"})[1]["id"])
    s.next_fire_at = datetime(2030, 1, 1, 10, tzinfo=U)
    session.commit()
    assert [f.outcome for f in tick(session, datetime(2030, 1, 1, 10, tzinfo=U))] == ["paused"]
    status, body = api.post("/api/v1/scheduler/resume")
    assert status == 200 and body["paused"] is False
    actions = audit_actions(session)
    assert actions.count("scheduler.pause") == 1 and actions.count("scheduler.resume") == 1
    status, fires = api.get(f"/api/v1/schedules/{s.id}/fires?outcome=paused")
    assert status == 200 and [f["outcome"] for f in fires["items"]] == ["paused"]


def test_blackouts_crud_and_effect(api, session, task):
    status, body = api.post("/api/v1/blackouts", {"name": "DC move", "starts_at": "2030-01-01T09:00:00+01:00",
                                                  "ends_at": "2030-01-01T12:00:00+01:00"})
    assert status == 201, body
    bid = body["id"]
    assert body["starts_at"] == "2030-01-01T08:00:00+00:00" and body["active"] is False
    # naive times are read in the given zone
    status, other = api.post("/api/v1/blackouts", {"name": "local", "starts_at": "2030-02-01T01:00",
                                                   "ends_at": "2030-02-01T02:00", "timezone": "Asia/Kolkata"})
    assert status == 201 and other["starts_at"] == "2030-01-31T19:30:00+00:00"
    for bad, field in [({"name": "", "starts_at": "2030-01-01T00:00Z", "ends_at": "2030-01-02T00:00Z"}, "name"),
                       ({"name": "x", "starts_at": "2030-01-02T00:00Z", "ends_at": "2030-01-01T00:00Z"}, "ends_at"),
                       ({"name": "x", "starts_at": "soon", "ends_at": "2030-01-01T00:00Z"}, "starts_at"),
                       ({"name": "x", "ends_at": "2030-01-01T00:00Z"}, "starts_at")]:
        status, err = api.post("/api/v1/blackouts", bad)
        assert status == 422 and err["error"]["field"] == field
    status, body = api.patch(f"/api/v1/blackouts/{bid}", {"name": "DC move (extended)",
                                                          "ends_at": "2030-01-01T13:00:00+01:00"})
    assert status == 200 and body["ends_at"] == "2030-01-01T12:00:00+00:00"
    listing = api.get("/api/v1/blackouts")[1]
    assert {b["name"] for b in listing["items"]} == {"DC move (extended)", "local"}

    s = session.get(Schedule, api.post(f"/api/v1/tasks/{task.id}/schedules", {"cron": "0 * * * *"})[1]["id"])
    s.next_fire_at = next_fire(s, datetime(2030, 1, 1, 9, 30, tzinfo=U))
    session.commit()
    assert [f.outcome for f in tick(session, datetime(2030, 1, 1, 10, tzinfo=U))] == ["blackout"]
    body = api.get(f"/api/v1/schedules/{s.id}")[1]
    assert body["recent_fires"][0]["outcome"] == "blackout" and "DC move" in body["recent_fires"][0]["detail"]
    assert body["recent_fires"][0]["due_at"] == "2030-01-01T10:00:00+00:00"

    assert api.delete(f"/api/v1/blackouts/{bid}")[0] == 204
    assert api.get(f"/api/v1/blackouts/{bid}")[0] == 404
    actions = audit_actions(session)
    assert {"blackout.create", "blackout.update", "blackout.delete", "schedule.blackout"} <= set(actions)


def test_misses_are_visible_in_the_api(api, session, task):
    s = session.get(Schedule, api.post(f"/api/v1/tasks/{task.id}/schedules", {"cron": "0 * * * *"})[1]["id"])
    s.next_fire_at = datetime(2030, 1, 1, 10, tzinfo=U)
    session.commit()
    tick(session, datetime(2030, 1, 1, 12, 5, tzinfo=U))  # down since before 10:00; back at 12:05
    body = api.get(f"/api/v1/schedules/{s.id}")[1]
    assert [(f["due_at"][11:16], f["outcome"]) for f in body["recent_fires"]] == [
        ("12:00", "fired"), ("11:00", "missed"), ("10:00", "missed")]
    assert body["recent_fires"][0]["execution"] is not None
    fires = api.get(f"/api/v1/schedules/{s.id}/fires?outcome=missed&per_page=1")[1]
    assert fires["total"] == 2 and len(fires["items"]) == 1
    ex = api.get(f"/api/v1/executions/{body['recent_fires'][0]['execution']}")[1]
    assert ex["trigger"] == "schedule"


def test_openapi_lists_the_schedule_endpoints(api):
    status, doc = api.get("/api/v1/openapi.json")
    assert status == 200
    for path in ("/api/v1/tasks/{task_id}/schedules", "/api/v1/schedules/{schedule_id}", "/api/v1/scheduler/pause",
                 "/api/v1/blackouts", "/api/v1/schedules/{schedule_id}/fires"):
        assert path in doc["paths"], path
