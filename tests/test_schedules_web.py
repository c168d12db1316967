"""The schedule pages in a real browser (Debian chromium through Playwright)."""
from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from sqlalchemy import select

from server.core.models import Blackout, Host, Schedule, Setting, Task
from server.scheduling.scheduler import tick
from tests.conftest import ADMIN_PASSWORD, make_user

pytestmark = pytest.mark.browser
U = timezone.utc


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        yield b
        b.close()


def login(browser, base: str, username: str):
    page = browser.new_page()
    page.on("dialog", lambda d: d.accept())
    page.goto(base + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return page


@pytest.fixture
def task(session):
    t = Task(name="nightly restart", kind="commands", commands=["true"], hosts=[Host(name="web1", address="127.0.0.1")])
    session.add(t)
    session.commit()
    return t


def test_create_schedule_with_live_preview_pause_and_blackout(live_server, browser, session, admin_user, task):
    page = login(browser, live_server, "admin")
    page.click("nav >> text=Schedules")
    assert page.locator(".empty").is_visible()
    page.click("text=New schedule")
    page.select_option("#sch-task", str(task.id))
    page.fill("#sch-cron", "0 6 * * *")
    page.fill("#sch-timezone", "America/Sao_Paulo")
    page.wait_for_function("() => document.getElementById('sch-description').textContent.includes('Sao_Paulo')")
    assert page.text_content("#sch-description") == "At 06:00 every day, America/Sao_Paulo"
    runs = page.locator("#sch-next-runs li time").evaluate_all("els => els.map(e => e.getAttribute('datetime'))")
    assert len(runs) == 5 and all(r.endswith("T06:00:00-03:00") for r in runs)
    # shown in the viewer's zone (this browser's is UTC), never as raw ISO
    shown = page.locator("#sch-next-runs li").all_text_contents()
    assert all("09:00:00" in r and "T06" not in r for r in shown), shown
    # a broken expression is flagged next to its field while typing
    page.fill("#sch-cron", "0 6 * *")
    page.wait_for_function("() => document.querySelector('.field-error[data-for=\"sch-cron\"]').textContent.length > 0")
    assert "5 fields" in page.text_content(".field-error[data-for='sch-cron']")
    page.fill("#sch-cron", "30 2 * * *")
    page.fill("#sch-timezone", "Europe/Berlin")
    page.fill("#sch-start_at", "2031-03-29")
    page.click("button:has-text('Create schedule')")
    page.wait_for_url(re.compile(r"/schedules/\d+$"))
    assert page.text_content("#description") == "At 02:30 every day, Europe/Berlin"
    nxt = page.locator("#next-runs li").all_text_contents()
    # in the viewer's zone, then where the schedule lives: spring forward
    assert nxt[0].endswith("· 2031-03-29 02:30 CET (+01:00)") and nxt[1].endswith("· 2031-03-30 03:00 CEST (+02:00)")
    s = session.execute(select(Schedule)).scalar_one()
    assert (s.cron, s.timezone, s.enabled) == ("30 2 * * *", "Europe/Berlin", True)

    # the list shows it with its description and next run; pause all, then resume
    page.click("text=All schedules")
    row = page.locator("#schedules tbody tr")
    assert row.count() == 1 and "At 02:30 every day, Europe/Berlin" in row.text_content()
    assert "2031-03-29 02:30 CET" in row.text_content()
    page.fill("input[name=reason]", "quarter-end freeze")
    page.click("#pause-all")
    page.wait_for_selector("#resume-all")
    assert "All schedules are paused" in page.text_content("#scheduler-state")
    session.expire_all()
    assert session.get(Setting, "schedules_paused").value["paused"] is True
    page.click("#resume-all")
    page.wait_for_selector("#pause-all")

    # a blackout window, entered in a local zone
    page.click("text=Blackout windows")
    page.fill("#bo-name", "DC move")
    page.fill("#bo-starts_at", "2031-05-01T22:00")
    page.fill("#bo-ends_at", "2031-05-02T04:00")
    page.fill("#bo-timezone", "Europe/Berlin")
    page.click("button:has-text('Add blackout')")
    page.wait_for_selector("#blackouts")
    assert "DC move" in page.text_content("#blackouts")
    session.expire_all()
    b = session.execute(select(Blackout)).scalar_one()
    assert b.starts_at == datetime(2031, 5, 1, 20, tzinfo=U)


def test_edit_form_errors_and_history(live_server, browser, session, admin_user, task):
    s = Schedule(task=task, cron="0 * * * *", timezone="UTC", next_fire_at=datetime(2030, 1, 1, 10, tzinfo=U))
    session.add(s)
    session.commit()
    tick(session, datetime(2030, 1, 1, 12, 5, tzinfo=U))  # 10:00 and 11:00 missed, 12:00 fired
    page = login(browser, live_server, "admin")
    page.goto(f"{live_server}/schedules/{s.id}")
    rows = page.locator("#fires tbody tr").all_text_contents()
    assert [("fired" in r, "missed" in r) for r in rows] == [(True, False), (False, True), (False, True)]
    assert "superseded by the later instant" in rows[-1] and "backlog never runs" in rows[-1]
    page.click("#fires >> text=/#\\d+/")
    page.wait_for_url(re.compile(r"/executions/\d+"))
    # a server-side rejection comes back next to its field, nothing saved
    page.goto(f"{live_server}/schedules/{s.id}")
    page.fill("#sch-timezone", "Mars/Olympus_Mons")
    page.evaluate("document.getElementById('schedule-form').noValidate = true")
    page.click("button:has-text('Save')")
    assert "unknown IANA time zone" in page.text_content(".field-error[data-for='sch-timezone']")
    session.expire_all()
    assert session.get(Schedule, s.id).timezone == "UTC"
    page.fill("#sch-timezone", "Asia/Tokyo")
    page.uncheck("#sch-enabled")
    page.click("button:has-text('Save')")
    page.wait_for_selector(".flash.success")
    assert "No upcoming runs (disabled)" in page.text_content("#next-runs")
    session.expire_all()
    assert session.get(Schedule, s.id).enabled is False


def test_operator_without_schedule_permission_cannot_create(live_server, browser, session, task):
    make_user(session, "olga", "operator")
    page = login(browser, live_server, "olga")
    resp = page.goto(f"{live_server}/schedules/new?task={task.id}")
    assert resp.status == 403
    page.goto(f"{live_server}/schedules")
    assert page.locator("text=New schedule").count() == 0 and page.locator("#pause-all").count() == 0
