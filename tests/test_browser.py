"""The UI in a real browser: Debian chromium driven by Playwright, against the real app
served over HTTP, a real RQ worker process and real sshd servers.

Log in, create a task, schedule it, run it, watch the live page finish, open the
dashboard and the reports, download the CSV. Screenshots go to test-output/screenshots/.
"""
from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ADMIN_PASSWORD
from tests.sshlab import SSHLab

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "test-output" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed (make test installs it)"),
]


@pytest.fixture(scope="module")
def lab():
    with SSHLab(2) as lab:
        yield lab


@pytest.fixture
def worker(app, env):
    """One real RQ worker process (`flask --app wsgi worker`) on this test's queue."""
    flask = str(REPO / ".venv" / "bin" / "flask")
    (REPO / "test-output").mkdir(exist_ok=True)  # run.sh makes it; a bare pytest run may not have
    log = open(REPO / "test-output" / "browser-worker.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([flask, "--app", "wsgi", "worker", "--name", f"browser-{os.getpid()}"], cwd=REPO,
                            env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture
def browser_page():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="Europe/Paris",
                                      accept_downloads=True)
        # Every Content-Security-Policy violation, as the page's event and as the console line.
        context.add_init_script("window.__csp = []; document.addEventListener('securitypolicyviolation', "
                                "function (e) { window.__csp.push(e.violatedDirective + ' ' + e.blockedURI); });")
        page = context.new_page()
        page.csp_console = []
        page.on("console", lambda msg: "Content Security Policy" in msg.text and page.csp_console.append(msg.text))
        page.set_default_timeout(20_000)
        try:
            yield page
        finally:
            context.close()
            browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def assert_no_csp_violation(page) -> None:
    """Nothing the page needed was blocked by the Content-Security-Policy."""
    assert page.evaluate("window.__csp") == [], page.url
    assert page.csp_console == []


def test_login_create_schedule_run_watch_report_download(api, lab, live_server, worker, browser_page):
    page = browser_page
    started = time.monotonic()
    # Inventory through the API (the hosts/credentials pages have their own tests).
    for srv in lab.servers:
        status, body = api.post("/api/v1/hosts", {"name": srv.name, "address": srv.address, "port": srv.port})
        assert status == 201, body
    status, body = api.post("/api/v1/credentials", {"name": "lab-key", "kind": "ssh_key", "username": lab.user,
                                                    "secret": lab.private_key})
    assert status == 201, body

    # Log in: an empty dashboard says what to do next.
    page.goto(live_server + "/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/dashboard"))
    assert page.locator(".empty").first.is_visible()
    shot(page, "01-empty-dashboard")

    # Create a task in the form; a missing field gets an inline message first.
    page.goto(live_server + "/tasks/new")
    page.click("#task-form button[type=submit]")
    assert page.locator(".field-error").first.is_visible()
    page.fill("#t-name", "browser check")
    page.fill("#t-commands", "hostname\necho hello-from-$(hostname)-$(whoami)")
    page.select_option("#t-hosts", [s.name for s in lab.servers])
    page.select_option("#t-credential", "lab-key")
    page.click("#task-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/tasks/\d+$"))
    task_id = int(page.url.rsplit("/", 1)[1])
    shot(page, "02-task")

    # Schedule it every day at 06:00 Paris time.
    page.goto(f"{live_server}/schedules/new?task={task_id}")
    page.fill("#sch-cron", "0 6 * * *")
    page.fill("#sch-timezone", "Europe/Paris")
    # The preview (schedule_preview.js, under the CSP) describes it and lists the next runs.
    # (wait for the preview of the zone typed last: an earlier one may still be on screen)
    page.wait_for_function("() => /T06:00:00\\+0[12]:00$/.test((document.querySelector('#sch-next-runs li time')"
                           " || {getAttribute: () => ''}).getAttribute('datetime'))")
    assert "06:00" in page.inner_text("#sch-next-runs")
    assert page.inner_text("#sch-description").strip()
    page.fill("#sch-cron", "61 * * * *")
    page.wait_for_selector("#sch-cron.invalid")  # the server's message, next to the field
    page.fill("#sch-cron", "0 6 * * *")
    page.wait_for_selector("#sch-next-runs li")
    assert_no_csp_violation(page)
    page.click("form button[type=submit].primary")
    page.wait_for_url(re.compile(r".*/schedules/\d+$"))
    assert "06:00" in page.content() or "6:00" in page.content()
    shot(page, "03-schedule")

    # Run it and watch the live page: the progress bar and hosts update without a reload.
    page.goto(f"{live_server}/tasks/{task_id}")
    page.click("#run-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/executions/\d+$"))
    execution_id = int(page.url.rsplit("/", 1)[1])
    assert page.locator(".progress").first.is_visible()
    shot(page, "04-execution-started")
    page.wait_for_selector("#summary .badge.status-succeeded, #summary .badge.status-failed", timeout=45_000)
    assert page.url.endswith(f"/executions/{execution_id}")  # updated in place, no reload
    page.wait_for_selector("body[data-final='1']")
    page.wait_for_selector("#summary .badge.status-succeeded")
    assert page.locator("#actions").get_by_text("Relaunch on all hosts").is_visible()
    assert page.locator("#actions").get_by_text("Cancel").count() == 0
    for srv in lab.servers:
        block = page.locator(f'.host-block[data-host="{srv.name}"]')
        assert block.get_attribute("data-status") == "succeeded"
    assert page.get_by_text("hello-from-").first.is_visible() or "hello-from-" in page.content()
    assert f"{len(lab.servers)} of {len(lab.servers)} hosts done" in page.inner_text("#summary")
    # times are shown in the viewer's zone by app.js
    assert "Europe/Paris" in page.inner_text("footer")
    assert_no_csp_violation(page)
    shot(page, "05-execution-finished")

    # The dashboard and the task report count it.
    page.goto(live_server + "/dashboard")
    assert page.locator("#task-success").get_by_text("browser check").is_visible()
    shot(page, "06-dashboard")
    page.goto(f"{live_server}/reports/tasks/{task_id}")
    assert "100.0 %" in page.inner_text("main")
    shot(page, "07-task-report")

    # Download the CSV from the history page.
    page.goto(f"{live_server}/executions?task={task_id}")
    assert page.locator(f'tr[data-href="/executions/{execution_id}"]').is_visible()
    shot(page, "08-history")
    with page.expect_download() as info:
        page.click("text=Export executions CSV")
    download = info.value
    path = REPO / "test-output" / download.suggested_filename
    download.save_as(str(path))
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [(r["id"], r["task"], r["status"]) for r in rows] == [(str(execution_id), "browser check", "succeeded")]
    assert rows[0]["hosts_failed"] == "0" and rows[0]["host_count"] == str(len(lab.servers))
    assert_no_csp_violation(page)

    # rq-dashboard (its own, relaxed CSP: inline scripts) still shows the queues and workers.
    page.goto(live_server + "/admin/rq/")
    page.wait_for_selector("#queues tbody tr[data-role=queue]")  # drawn by its scripts from the JSON
    assert page.locator("#queues tbody tr[data-role=loading-placeholder]").count() == 0
    assert_no_csp_violation(page)
    assert time.monotonic() - started < 90
