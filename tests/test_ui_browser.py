"""The analyst's UI in Debian chromium (Playwright) against the app over HTTP.

A running step's lines reach the page while it runs, colour codes rendered; failed hosts
first; styled 403/404 pages; and every main page without console errors, without sideways
scrolling on a 390 px phone and without serious axe-core violations (axe.min.js vendored
under tests/vendor/). One browser for the module; screenshots in test-output/screenshots/.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from server.core.models import Operation, Step, utcnow
from tests import conftest
from tests.conftest import ADMIN_PASSWORD
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, SHOTS, worker  # noqa: F401  (fixture)
from tests.test_execution_e2e import add_hosts, add_key_credential, add_task, start
from tests.test_robustness_reaper import make_execution, make_task

live_server = conftest.live_server
AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed (make test installs it)"),
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def new_page(browser, width: int = 1280):
    """A fresh context; every console error and uncaught exception lands in page.problems."""
    context = browser.new_context(viewport={"width": width, "height": 900}, timezone_id="Europe/Paris",
                                  bypass_csp=False)
    page = context.new_page()
    page.problems = []
    page.on("console", lambda msg: msg.type == "error" and page.problems.append(f"{page.url}: {msg.text}"))
    page.on("pageerror", lambda exc: page.problems.append(f"{page.url}: {exc}"))
    page.set_default_timeout(20_000)
    return page


def login(page, base: str, username: str = "admin", password: str = ADMIN_PASSWORD) -> None:
    page.goto(base + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"ui-{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def lab():
    from tests.sshlab import SSHLab

    with SSHLab(1) as lab:
        yield lab


def test_running_step_output_is_live_and_colours_are_rendered(api, lab, live_server, worker, browser):  # noqa: F811
    add_hosts(api, lab)
    cred = add_key_credential(api, lab)
    task = add_task(api, name="slow-lines", kind="commands", hosts=[lab.servers[0].name], credential=cred,
                    commands=["for i in 1 2 3 4 5 6 7 8 9 10 11 12; do printf 'line-%s \\033[1;32mgreen\\033[0m\\n' $i; "
                              "sleep 1; done"])
    ex_id = start(api, task)
    page = new_page(browser)
    login(page, live_server)
    page.goto(f"{live_server}/executions/{ex_id}")
    began = time.monotonic()
    page.wait_for_function("() => /line-2/.test((document.querySelector('pre.live') || {}).textContent || '')",
                           timeout=30_000)
    seen_after = time.monotonic() - began
    # the step still runs: its first lines came while it printed the rest
    assert page.locator("body[data-final='1']").count() == 0
    status, body = api.get(f"/api/v1/executions/{ex_id}")
    assert body["status"] == "running", body["status"]
    step = body["operations"][0]["steps"][0]
    assert step["status"] == "running" and "line-1" in step["stdout"]
    # the API serves only what comes after an offset, whole lines while the step runs
    offset = len(step["stdout"])
    status, part = api.get(f"/api/v1/executions/{ex_id}/steps/{step['id']}/output?stdout_offset={offset}")
    assert status == 200 and part["stdout"]["next_offset"] >= offset
    assert part["stdout"]["text"] == "" or part["stdout"]["text"].endswith("\n")
    assert "line-1" not in part["stdout"]["text"]
    # lines that come while the page watches carry the time they came (the first poll may be late)
    page.wait_for_selector("pre.live .ts", state="attached", timeout=20_000)
    shot(page, "live-output")

    page.wait_for_selector("body[data-final='1']", timeout=40_000)
    page.wait_for_selector("#summary .badge.status-succeeded")
    text = "\n".join(page.eval_on_selector_all("pre.output", "els => els.map(e => e.textContent)"))
    assert "line-8" in text
    assert "\x1b" not in text and "[1;32m" not in text and "[0m" not in text, text
    assert page.locator(".output .ansi-fg-green").count() >= 8
    assert page.locator(".badge.status-changed").count() == 0  # a command line is not "changed"
    assert page.problems == []
    shot(page, "live-output-finished")
    print(f"first lines on the page {seen_after:.1f} s after opening it")
    page.context.close()


def test_failed_hosts_first_with_their_error(api, session, live_server, browser):
    task = make_task(session, "mixed-results", hosts=("alpha", "bravo", "charlie", "delta"))
    ex = make_execution(session, task, "failed", started_at=utcnow(), finished_at=utcnow(),
                        message="1 failed, 1 unreachable of 4 hosts")
    ops = [Operation(execution_id=ex.id, host_name="alpha", status="succeeded", rc=0, stdout="ok\n"),
           Operation(execution_id=ex.id, host_name="bravo", status="succeeded", rc=0, stdout="ok\n"),
           Operation(execution_id=ex.id, host_name="charlie", status="unreachable",
                     message="connection refused by 10.0.0.3:22"),
           Operation(execution_id=ex.id, host_name="delta", status="failed", rc=2,
                     message="disk full (command 1: non-zero return code 2)", stderr="\x1b[31mdisk full\x1b[0m\n")]
    session.add_all(ops)
    session.flush()
    session.add(Step(operation_id=ops[3].id, seq=1, name="command 1: df", status="failed", rc=2,
                     stderr="\x1b[31mdisk full\x1b[0m\n", changed=False))
    session.commit()
    page = new_page(browser)
    login(page, live_server)
    page.goto(f"{live_server}/executions/{ex.id}")
    order = page.eval_on_selector_all(".host-block", "els => els.map(e => e.dataset.host)")
    assert order == ["delta", "charlie", "alpha", "bravo"]
    assert page.locator('.host-block[data-host="delta"]').get_attribute("open") is not None
    assert page.locator('.host-block[data-host="alpha"]').get_attribute("open") is None  # succeeded: collapsed
    assert "disk full" in page.inner_text('.host-block[data-host="delta"] > summary')
    assert page.locator("#copy-failed").get_attribute("data-hosts") == "charlie\ndelta"
    page.click("#copy-failed")
    page.wait_for_selector("#action-note:not(.hidden)")
    assert "\x1b" not in page.inner_text("main")
    assert page.problems == []
    shot(page, "failed-first")
    page.context.close()


def test_refusals_are_pages_with_navigation(session, live_server, browser):
    conftest.make_user(session, "olga", "operator")
    page = new_page(browser)
    login(page, live_server, "olga")
    resp = page.goto(f"{live_server}/admin/users")
    assert resp.status == 403
    assert page.locator("h1").inner_text() == "Not allowed"
    assert page.locator("header.topbar nav a").count() >= 3
    assert page.get_by_role("link", name="Go to the dashboard").is_visible()
    shot(page, "403")
    resp = page.goto(f"{live_server}/executions/987654")
    assert resp.status == 404 and page.locator("h1").inner_text() == "Not found"
    # links to what an operator may not use are not shown
    assert page.locator("header.topbar").get_by_text("Credentials").count() == 0
    shot(page, "404")
    page.click("text=Go to the dashboard")
    page.wait_for_url(re.compile(r".*/dashboard$"))
    page.context.close()


MAIN_PAGES = ["/dashboard", "/executions", "/tasks", "/tasks/new", "/schedules", "/schedules/new", "/approvals",
              "/hosts", "/hosts/new", "/credentials", "/credentials/new", "/reports/tasks", "/reports/hosts",
              "/account", "/admin/users", "/admin/policies", "/audit", "/notifications", "/blackouts"]
AXE_PAGES = {"/dashboard", "/executions", "/tasks", "/tasks/new", "/hosts", "/schedules/new", "/reports/tasks",
             "/audit"}


def test_every_page_clean_on_a_phone_and_accessible(api, session, live_server, browser):
    task = make_task(session, "phone-check", hosts=("p1", "p2"))
    ex = make_execution(session, task, "succeeded", started_at=utcnow(), finished_at=utcnow())
    session.add(Operation(execution_id=ex.id, host_name="p1", status="succeeded", rc=0, stdout="x" * 300))
    session.commit()
    pages = MAIN_PAGES + [f"/tasks/{task.id}", f"/executions/{ex.id}", f"/reports/tasks/{task.id}", "/nowhere"]
    axe = AXE.read_text()
    page = new_page(browser, width=390)
    login(page, live_server)
    wide, serious = {}, {}
    for path in pages:
        page.goto(live_server + path)
        page.wait_for_load_state("load")
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        if overflow > 1:  # name the element that sticks out, to fix it
            wide[path] = page.evaluate("""() => {
                const w = document.documentElement.clientWidth;
                const out = [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > w + 1
                    && e.parentElement.getBoundingClientRect().right <= w + 1);
                const e = out[0];
                return e ? e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right) : '?';
            }""")
            shot(page, "phone" + path.replace("/", "-"))
        if path in AXE_PAGES or path.startswith("/executions/"):
            page.evaluate(axe)
            found = page.evaluate("""async () => {
                const r = await axe.run(document, {resultTypes: ['violations']});
                return r.violations.filter(v => ['serious', 'critical'].includes(v.impact))
                    .map(v => v.id + ': ' + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(' | '));
            }""")
            if found:
                serious[path] = found
    shot(page, "phone-dashboard")
    assert wide == {}, wide
    assert serious == {}, serious
    assert page.problems == [] or all("404" in p for p in page.problems), page.problems
    page.context.close()


def test_hosts_bulk_select_sort_and_task_host_picker(api, live_server, browser):
    for i in range(6):
        status, body = api.post("/api/v1/hosts", {"name": f"node-{i}", "address": "127.0.0.1", "port": 1})
        assert status == 201, body
    page = new_page(browser)
    login(page, live_server)
    page.goto(live_server + "/hosts")
    page.click("#hosts th button.sort >> text=Name")
    page.click("#hosts th button.sort >> text=Name")  # descending
    names = page.eval_on_selector_all("#hosts tbody tr td:nth-child(2)", "els => els.map(e => e.textContent.trim())")
    assert names == [f"node-{i}" for i in reversed(range(6))]
    page.check("[data-select-all=host]")
    assert page.inner_text("[data-bulk-count]") == "6 ticked"
    page.fill("#bulk-group", "rack-1")
    page.click("button[name=action][value=group]")
    page.wait_for_selector(".flash.success")
    assert "Added 6 hosts to group rack-1" in page.inner_text(".flash.success")
    assert page.locator("#hosts tbody .badge", has_text="rack-1").count() == 6
    shot(page, "hosts-bulk")

    page.goto(live_server + "/tasks/new")
    page.fill(".picker input[type=search]", "node-3")
    page.click(".picker [data-pick=shown]")
    assert page.eval_on_selector("#t-hosts", "s => [...s.selectedOptions].map(o => o.value)") == ["node-3"]
    assert "1 of 6 selected" in page.inner_text(".picker")
    assert page.problems == []
    page.context.close()


def test_a_new_user_chooses_his_own_password_first(api, live_server, browser):
    """A user an admin created signs in with the given password and is held on his account
    page until he chooses his own; then the other pages open."""
    status, _ = api.post("/api/v1/users", {"username": "newbie", "role": "operator", "password": "given-Pass-1"})
    assert status == 201
    page = new_page(browser)
    login(page, live_server, "newbie", "given-Pass-1")
    page.goto(f"{live_server}/tasks")
    assert page.url.endswith("/account")
    assert "choose your own" in page.locator("#password").inner_text()
    page.fill("#password input[name=current_password]", "given-Pass-1")
    page.fill("#password input[name=new_password]", "own-Pass-22")
    page.fill("#password input[name=confirm]", "own-Pass-22")
    page.click("#password button[type=submit]")
    page.wait_for_load_state()
    page.goto(f"{live_server}/tasks")
    assert page.url.endswith("/tasks") and "choose your own" not in page.content()
    shot(page, "first-password")
    assert not page.problems, page.problems
    page.context.close()
