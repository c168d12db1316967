"""The bulk hosts page: paste an inventory or a CSV, preview (hosts, groups, skipped variables
and why, literal Jinja, errors with their line) with nothing written, then import."""
from __future__ import annotations

import html
import io

import pytest
from sqlalchemy import select

from conftest import make_user
from resource_factories import csrf_token
from server.core.models import Group, Host
from test_web_resources import Browser

INVENTORY = "[web]\n" + "".join(f"web{i:02d} ansible_host=10.0.0.{i}\n" for i in range(1, 20)) + \
    "web20 ansible_port=http\n\n[prod:children]\nweb\n\n[prod:vars]\nmotd={{ inventory_hostname }}\n" \
    "ansible_user=root\n"


@pytest.fixture
def admin(app, admin_user):
    return Browser(app, "admin")


def _post(browser: Browser, data: dict, files: dict | None = None):
    status, page = browser.get("/hosts/bulk")
    assert status == 200
    form = {"csrf_token": csrf_token(page), "format": "auto", **data}
    if files:
        form.update(files)
    resp = browser.client.post("/hosts/bulk", data=form, content_type="multipart/form-data")
    return resp.status_code, html.unescape(resp.get_data(as_text=True)), resp.headers.get("Location")


def test_preview_shows_the_bad_line_and_writes_nothing_then_the_fixed_inventory_imports(admin, session):
    status, page, _ = _post(admin, {"inventory": INVENTORY, "action": "preview"})
    assert status == 200 and "20 hosts" not in page
    assert "line 21: host 'web20' has an invalid port 'http'" in page
    assert "Import 19 hosts" not in page  # no import while an error stands
    assert "prod" in page and "ansible_user" in page and "connection variable" in page
    assert "group prod: motd" in page  # kept literally, shown
    status, page, _ = _post(admin, {"inventory": INVENTORY, "action": "import"})
    assert status == 422
    session.rollback()
    assert session.execute(select(Host)).first() is None
    fixed = INVENTORY.replace("ansible_port=http", "ansible_port=2222")
    status, page, _ = _post(admin, {"inventory": fixed, "action": "preview"})
    assert status == 200 and "Import 20 hosts" in page
    status, page, location = _post(admin, {"inventory": fixed, "action": "import"})
    assert status == 302 and location.endswith("/hosts")
    session.rollback()
    hosts = {h.name: h for h in session.execute(select(Host)).scalars()}
    assert len(hosts) == 20 and hosts["web20"].port == 2222 and hosts["web01"].address == "10.0.0.1"
    prod = session.execute(select(Group).where(Group.name == "prod")).scalar_one()
    assert [c.name for c in prod.children] == ["web"] and prod.vars == {"motd": "{{ inventory_hostname }}"}


def test_a_pasted_inventory_is_read_only_inside_the_sandbox(admin, session, monkeypatch):
    """No bubblewrap, no reading: the text is never parsed unconfined in the web process."""
    monkeypatch.setenv("PATH", "/nonexistent")
    status, page, _ = _post(admin, {"inventory": INVENTORY, "action": "preview"})
    assert status == 200 and "bubblewrap (bwrap) is not installed" in page
    assert "Import 19 hosts" not in page and session.execute(select(Host)).first() is None


def test_csv_upload_with_per_line_errors(admin, session):
    text = ("name,address,port,protocol,groups,role\n"
            "db1,10.1.0.1,5432,ssh,db;prod,primary\n"
            "db 2,10.1.0.2,,ssh,db,replica\n"
            "db3,10.1.0.3,99999,ssh,db,replica\n"
            "db4,10.1.0.4,,carrier,db,\n"
            "db5,10.1.0.5,,ssh,db,db_password=x\n")
    status, page, _ = _post(admin, {"action": "preview"},
                            {"file": (io.BytesIO(text.encode()), "hosts.csv")})
    assert status == 200
    assert "line 3: 'name'" in page and "line 4: 'port'" in page and "line 5: 'protocol'" in page
    ok = "name,groups,role,db_password\ndb1,db,primary,\ndb5,db,replica,hunter2\n"
    status, page, location = _post(admin, {"inventory": ok, "action": "import", "format": "csv"})
    assert status == 302
    session.rollback()
    db5 = session.execute(select(Host).where(Host.name == "db5")).scalar_one()
    assert db5.vars == {"role": "replica"} and [g.name for g in db5.groups] == ["db"]


def test_local_hosts_need_an_admin_and_viewers_cannot_open_the_page(app, admin_user, session):
    make_user(session, "ed", "author")
    make_user(session, "vic", "auditor")
    author = Browser(app, "ed")
    status, page, _ = _post(author, {"inventory": "[lab]\nbox ansible_connection=local\n", "action": "import"})
    assert status == 403 and "only admins" in page
    session.rollback()
    assert session.execute(select(Host)).first() is None
    assert Browser(app, "vic").get("/hosts/bulk")[0] in (403, 404)


@pytest.mark.browser
def test_in_chromium_paste_20_hosts_with_one_bad_line_then_fix_and_import(admin_user, live_server, session):
    import os

    from test_browser import CHROMIUM, CHROMIUM_ARGS, SHOTS, shot

    from conftest import ADMIN_PASSWORD

    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.set_default_timeout(20_000)
        try:
            page.goto(live_server + "/login")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", ADMIN_PASSWORD)
            page.click("button[type=submit]")
            page.goto(live_server + "/hosts")
            page.click("text=Add in bulk")
            page.fill("#b-inventory", INVENTORY)
            page.click("button[value=preview]")
            page.wait_for_selector("#bulk-errors")
            assert "line 21" in page.inner_text("#bulk-errors")
            assert page.locator("button[value=import]").count() == 0
            shot(page, "hosts-bulk-preview-error")
            page.fill("#b-inventory", INVENTORY.replace("ansible_port=http", "ansible_port=2222"))
            page.click("button[value=preview]")
            page.click("button[value=import]")
            page.wait_for_url("**/hosts")
            assert "Imported 20 hosts" in page.inner_text("body")
            shot(page, "hosts-bulk-imported")
        finally:
            browser.close()
    assert errors == []
    session.rollback()
    assert len(session.execute(select(Host)).scalars().all()) == 20
