"""The execution page's Cancel and Relaunch buttons in a real browser (Debian chromium via
Playwright) against the app over HTTP; the buttons call the real API."""
from __future__ import annotations

import re

from sqlalchemy import select

from server.core.models import AuditLog, Execution, Operation, utcnow
from tests.conftest import ADMIN_PASSWORD
from tests.test_browser import CHROMIUM, browser_page, pytestmark, shot  # noqa: F401  (fixtures)
from tests.test_robustness_reaper import make_execution, make_task


def login(page, base: str) -> None:
    page.goto(base + "/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def test_relaunch_on_failed_hosts_button(api, session, live_server, browser_page):  # noqa: F811
    page = browser_page
    task = make_task(session, "web-relaunch")
    parent = make_execution(session, task, "failed", finished_at=utcnow(), started_at=utcnow())
    session.add_all([
        Operation(execution_id=parent.id, host_name="h1", status="succeeded", rc=0),
        Operation(execution_id=parent.id, host_name="h2", status="failed", rc=1),
        Operation(execution_id=parent.id, host_name="h3", status="unreachable"),
    ])
    session.commit()

    login(page, live_server)
    page.goto(f"{live_server}/executions/{parent.id}")
    page.click("button[data-action=relaunch][data-failed-only='1']")
    page.wait_for_url(re.compile(rf".*/executions/(?!{parent.id}$)\d+$"))
    shot(page, "robustness-relaunched")
    child_id = int(page.url.rsplit("/", 1)[1])
    session.rollback()
    child = session.get(Execution, child_id)
    assert child.parent_id == parent.id and child.limit_hosts == ["h2", "h3"] and child.status == "queued"
    assert session.execute(select(AuditLog).where(AuditLog.action == "execution.relaunch")).scalar_one()


def test_cancel_button(api, session, live_server, browser_page):  # noqa: F811
    page = browser_page
    task = make_task(session, "web-cancel")
    ex = make_execution(session, task, "queued")  # no worker: it waits in the queue
    login(page, live_server)
    page.goto(f"{live_server}/executions/{ex.id}")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[data-action=cancel]")
    page.wait_for_function("() => !document.querySelector('button[data-action=cancel]')")
    session.rollback()
    session.expire_all()
    assert session.get(Execution, ex.id).status == "cancelled"
