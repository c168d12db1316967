"""The approval, user, policy, audit and account pages: through the test client for the
details, and the approval flow once in a real browser (Debian chromium via Playwright)."""
from __future__ import annotations

import re

import pytest
from flask import g
from flask.testing import FlaskClient
from sqlalchemy import select

from conftest import ADMIN_PASSWORD, make_user
from resource_factories import csrf_token, host, task
from server.core.models import ApiToken, Execution, Policy, User


class IsolatedClient(FlaskClient):
    """The tests keep one app context open, so ``g`` outlives a request: flask-login's cached
    user and flask-wtf's cached CSRF token would leak from one browser (client) to another."""

    def open(self, *args, **kwargs):
        for key in ("_login_user", "csrf_token"):
            g.pop(key, None)
        return super().open(*args, **kwargs)


@pytest.fixture(autouse=True)
def _isolated_clients(app):
    app.test_client_class = IsolatedClient


def web_login(app, username: str, password: str = ADMIN_PASSWORD):
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    resp = client.post("/login", data={"username": username, "password": password, "csrf_token": csrf_token(page)})
    assert resp.status_code == 302, resp.data
    return client


def form_token(client, path: str = "/account") -> str:
    return csrf_token(client.get(path).get_data(as_text=True))


@pytest.fixture
def flow(api, api_as, session):
    host(api, "app1")
    t = task(api, "deploy", hosts=["app1"], commands=["echo deploy"])
    olga = api_as("olga", "operator")
    api_as("ann", "approver")
    api_as("ben", "approver")
    status, _ = api.post("/api/v1/policies", {"name": "deploys", "users": ["olga"], "tasks": ["deploy"],
                                              "permissions": ["execute"], "requires_approval": True,
                                              "approvers": [{"user": "ann", "level": 1}, {"user": "ben", "level": 2}]})
    assert status == 201
    status, run = olga.post(f"/api/v1/tasks/{t['id']}/executions", {"reason": "release 4.2"})
    assert status == 202 and run["status"] == "waiting_approval"
    return {"task": t, "ex": run["id"]}


def test_approval_pages_and_form_decisions(app, flow, session):
    ex_id = flow["ex"]
    ann = web_login(app, "ann")
    inbox = ann.get("/approvals").get_data(as_text=True)
    assert f"Run #{ex_id}" in inbox and "release 4.2" in inbox and "Review" in inbox
    detail = ann.get(f"/approvals/{ex_id}").get_data(as_text=True)
    assert "echo deploy" in detail and "app1" in detail and "Approve level 1" in detail
    # Level 2's approver sees it coming but cannot decide yet.
    ben = web_login(app, "ben")
    assert "you are not an approver for level 1" in ben.get(f"/approvals/{ex_id}").get_data(as_text=True)
    # A form post without the CSRF token is refused.
    assert ann.post(f"/approvals/{ex_id}/decide", data={"decision": "approve"}).status_code == 400
    token = form_token(ann, f"/approvals/{ex_id}")
    resp = ann.post(f"/approvals/{ex_id}/decide", data={"decision": "approve", "comment": "ok", "csrf_token": token})
    assert resp.status_code == 302
    session.expire_all()
    assert session.get(Execution, ex_id).approval_level == 2
    token = form_token(ben, f"/approvals/{ex_id}")
    ben.post(f"/approvals/{ex_id}/decide", data={"decision": "reject", "comment": "freeze", "csrf_token": token})
    session.expire_all()
    assert session.get(Execution, ex_id).status == "rejected"
    page = ben.get(f"/approvals/{ex_id}").get_data(as_text=True)
    assert "freeze" in page and "Your decision" not in page
    # The requester's "My requests" shows the outcome; an unrelated operator cannot open it.
    olga = web_login(app, "olga")
    mine = olga.get("/requests").get_data(as_text=True)
    assert f"#{ex_id}" in mine and "rejected" in mine
    make_user(session, "otto", "operator")
    assert web_login(app, "otto").get(f"/approvals/{ex_id}").status_code == 404


def test_admin_pages_manage_users_and_policies(app, api, session, flow):
    admin = web_login(app, "admin")
    token = form_token(admin, "/admin/users")
    resp = admin.post("/admin/users", data={"username": "newbie", "role": "operator", "password": "short",
                                            "csrf_token": token})
    assert resp.status_code == 422 and b"at least 8 characters" in resp.data
    resp = admin.post("/admin/users", data={"username": "newbie", "role": "operator", "password": "long-enough-1",
                                            "csrf_token": token})
    assert resp.status_code == 302
    newbie = session.execute(select(User).where(User.username == "newbie")).scalar_one()
    resp = admin.post(f"/admin/users/{newbie.id}", data={"role": "approver", "email": "", "is_active": "on",
                                                         "csrf_token": token})
    assert resp.status_code == 302
    session.expire_all()
    assert session.get(User, newbie.id).role == "approver"

    page = admin.get("/admin/policies/new").get_data(as_text=True)
    assert "Level 3" in page
    data = {"name": "night ops", "users": ["newbie", "olga"], "tasks": ["deploy"], "perm_view": "on",
            "perm_execute": "on", "requires_approval": "on", "level1": ["ann"], "level2": ["ben", "newbie"],
            "approval_ttl_h": "2", "csrf_token": token}
    assert admin.post("/admin/policies/new", data=data).status_code == 302
    pol = session.execute(select(Policy).where(Policy.name == "night ops")).scalar_one()
    assert pol.approval_ttl_s == 7200 and sorted((a.user.username, a.level) for a in pol.approvers) == [
        ("ann", 1), ("ben", 2), ("newbie", 2)]
    resp = admin.post(f"/admin/policies/{pol.id}", data={**data, "approval_ttl_h": "0.001"})
    assert resp.status_code == 422 and b"approval_ttl_s" in resp.data
    # tickets and curated reasons: a bad pattern is refused next to its field, a good one kept
    resp = admin.post(f"/admin/policies/{pol.id}", data={**data, "requires_ticket": "on", "ticket_pattern": "^(CHG"})
    page = resp.get_data(as_text=True)
    assert resp.status_code == 422 and re.search(
        r'id="p-ticket-pattern"[^>]*value="\^\(CHG"[^>]*aria-invalid="true"', page), page
    assert re.search(r'data-for="p-ticket-pattern" role="alert">[^<]*not a valid regular expression', page)
    resp = admin.post(f"/admin/policies/{pol.id}", data={**data, "requires_ticket": "on",
                                                          "ticket_pattern": "^(CHG|INC)[0-9]{6}$",
                                                          "reasons": "maintenance\r\n\r\n incident \r\n"})
    assert resp.status_code == 302
    session.expire_all()
    pol = session.get(Policy, pol.id)
    assert pol.requires_ticket and pol.ticket_pattern == "^(CHG|INC)[0-9]{6}$" and pol.reasons == [
        "maintenance", "incident"]
    page = admin.get(f"/admin/policies/{pol.id}").get_data(as_text=True)
    assert 'value="^(CHG|INC)[0-9]{6}$"' in page and "maintenance\nincident</textarea>" in page
    assert 'name="requires_ticket" checked' in page
    # the operator's Run form offers the curated reasons and asks for the ticket
    olga = web_login(app, "olga")
    run_page = olga.get(f"/tasks/{flow['task']['id']}").get_data(as_text=True)
    assert '<select id="r-reason"' in run_page and "<option >incident</option>" in run_page.replace(
        "<option  ", "<option ") and "Ticket (required)" in run_page
    resp = olga.post(f"/tasks/{flow['task']['id']}/run", data={"reason": "incident", "ticket": "CHG12",
                                                             "csrf_token": form_token(olga)})
    assert resp.status_code == 422 and "must match ^(CHG|INC)[0-9]{6}$" in resp.get_data(as_text=True)
    listing = admin.get("/admin/policies").get_data(as_text=True)
    assert "ticket required" in listing and "2 reasons to choose from" in listing
    # emptying the list and the pattern from the form clears them
    assert admin.post(f"/admin/policies/{pol.id}", data=data).status_code == 302
    session.expire_all()
    pol = session.get(Policy, pol.id)
    assert not pol.requires_ticket and pol.ticket_pattern is None and pol.reasons == []
    listing = admin.get("/admin/policies").get_data(as_text=True)
    assert "night ops" in listing and "L2: ben, newbie" in listing
    assert admin.post(f"/admin/policies/{pol.id}/delete", data={"csrf_token": token}).status_code == 302
    assert session.execute(select(Policy).where(Policy.name == "night ops")).first() is None


@pytest.mark.parametrize("role", ["author", "operator", "approver"])
def test_admin_pages_are_closed_to_other_roles(app, session, role):
    make_user(session, f"x-{role}", role)
    client = web_login(app, f"x-{role}")
    for path in ("/admin/users", "/admin/policies/new", "/audit"):
        assert client.get(path).status_code == 403, path
    assert client.get("/approvals").status_code == 200 and client.get("/account").status_code == 200


def test_auditor_reads_the_audit_page_and_verifies(app, session, flow):
    make_user(session, "aud", "auditor")
    client = web_login(app, "aud")
    page = client.get("/audit?action=execution.*").get_data(as_text=True)
    assert "execution.request" in page and "auth.login" not in page
    page = client.get("/audit?verify=1").get_data(as_text=True)
    assert "Intact:" in page
    assert client.get("/admin/policies").status_code == 200  # read-only view
    assert client.get("/admin/policies/new").status_code == 403


def test_account_tokens_shown_once_and_password_change(app, session, admin_user):
    client = web_login(app, "admin")
    token = form_token(client)
    resp = client.post("/account/tokens", data={"name": "laptop", "csrf_token": token})
    assert resp.status_code == 201
    value = re.search(r'id="token-value">(tm_[^<]+)<', resp.get_data(as_text=True)).group(1)
    assert value not in "".join(resp.headers.getlist("Set-Cookie"))
    assert value not in client.get("/account").get_data(as_text=True)  # never again
    assert app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {value}"}).status_code == 200
    row = session.execute(select(ApiToken).where(ApiToken.name == "laptop")).scalar_one()
    client.post(f"/account/tokens/{row.id}/revoke", data={"csrf_token": token})
    assert app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {value}"}).status_code == 401

    resp = client.post("/account/password", data={"current_password": "wrong", "new_password": "n3w-password",
                                                  "confirm": "n3w-password", "csrf_token": token})
    assert resp.status_code == 422 and b"current password is wrong" in resp.data
    resp = client.post("/account/password", data={"current_password": ADMIN_PASSWORD, "new_password": "n3w-password",
                                                  "confirm": "n3w-password", "csrf_token": token})
    assert resp.status_code == 302
    web_login(app, "admin", "n3w-password")


def test_one_time_password_must_be_changed_first(app, session):
    user = make_user(session, "first", "admin")
    user.must_change_password = True
    session.commit()
    client = web_login(app, "first")
    resp = client.get("/executions")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/account")
    token = form_token(client)
    client.post("/account/password", data={"current_password": ADMIN_PASSWORD, "new_password": "my-own-password",
                                           "confirm": "my-own-password", "csrf_token": token})
    assert client.get("/executions").status_code == 200


# ---------------------------------------------------------------- in a real browser


@pytest.fixture
def live_url(live_server):
    """conftest's live server under this file's name."""
    return live_server


@pytest.mark.browser
def test_approver_decides_in_the_browser(live_url, flow, session):
    from playwright.sync_api import sync_playwright

    ex_id = flow["ex"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            for who, button, expect in (("ann", "Approve level 1", "waiting for level 2"),
                                        ("ben", "Approve level 2", "is queued")):
                page = browser.new_page()
                page.goto(live_url + "/login")
                page.fill("input[name=username]", who)
                page.fill("input[name=password]", ADMIN_PASSWORD)
                page.click("button[type=submit]")
                page.click("nav >> text=Approvals")
                page.click("#pending >> text=Review")
                page.wait_for_url(re.compile(rf"/approvals/{ex_id}$"))
                page.fill("textarea[name=comment]", f"checked by {who}")
                page.click(f"button:has-text('{button}')")
                page.wait_for_selector(".flash")
                assert expect in page.text_content(".flash")
                page.close()
        finally:
            browser.close()
    session.expire_all()
    ex = session.get(Execution, ex_id)
    assert ex.status == "queued"


def test_a_run_names_its_approvers_and_the_approval_page_shows_the_requested_hosts(app, api, flow, session):
    """Who must approve (level by level) while it waits, a badge for the approver whose turn it
    is, who approved once done; the hosts are the request's, not the task's current ones."""
    ex_id = flow["ex"]
    olga, ann, ben = (web_login(app, name) for name in ("olga", "ann", "ben"))

    def badge(client) -> str | None:
        found = re.search(r'id="approvals-waiting"[^>]*>(\d+)<', client.get("/tasks").get_data(as_text=True))
        return found.group(1) if found else None

    def levels(client) -> list[str]:
        page = client.get(f"/executions/{ex_id}").get_data(as_text=True)
        items = re.findall(r'<li data-level="\d">(.*?)</li>', page, re.S)
        return [" ".join(re.sub(r"<[^>]+>", " ", item).split()) for item in items]

    assert badge(ann) == "1" and badge(ben) is None and badge(olga) is None
    assert levels(olga) == ["Level 1: waiting for ann", "Level 2: then ben"]
    status, body = api.get(f"/api/v1/executions/{ex_id}")
    assert body["approval"]["hosts"] == ["app1"] and [lv["approvers"] for lv in body["approval"]["levels"]] == [
        ["ann"], ["ben"]] and body["approval"]["levels"][0]["decision"] is None

    # The task gains a host after the request: the approval page still shows what was asked.
    host(api, "app2")
    assert api.patch(f"/api/v1/tasks/{flow['task']['id']}", {"hosts": ["app1", "app2"]})[0] == 200
    page = ann.get(f"/approvals/{ex_id}").get_data(as_text=True)
    assert re.search(r'id="request-hosts">app1 \(1\)<', page), page
    assert api.patch(f"/api/v1/tasks/{flow['task']['id']}", {"hosts": ["app1"]})[0] == 200

    for client in (ann, ben):
        token = form_token(client, f"/approvals/{ex_id}")
        resp = client.post(f"/approvals/{ex_id}/decide", data={"decision": "approve", "csrf_token": token})
        assert resp.status_code == 302
    session.expire_all()
    assert session.get(Execution, ex_id).status == "queued"
    assert badge(ben) is None
    done = levels(olga)
    assert done[0].startswith("Level 1: approved by ann") and done[1].startswith("Level 2: approved by ben"), done
    status, body = api.get(f"/api/v1/executions/{ex_id}")
    assert [lv["decision"]["approver"] for lv in body["approval"]["levels"]] == ["ann", "ben"]
    assert body["approval"]["status"] == "approved"
