"""Web pages for hosts, credentials and tasks: render, forms post with CSRF, inline errors,
secrets never shown, Run redirects to the execution page."""
from __future__ import annotations

import html
import re

import pytest
from flask import g
from sqlalchemy import select

from conftest import ADMIN_PASSWORD, make_user
from resource_factories import credential, csrf_token, ed25519_key, host, make_playbook_dir, task
from server.core.models import Credential, Execution, Host, Task
from server.core.vault import vault


class Browser:
    """A logged-in test client that submits forms the way a browser does (token from the page)."""

    def __init__(self, app, username: str, password: str = ADMIN_PASSWORD):
        self.client = app.test_client()
        page = self.get("/login")[1]
        resp = self.client.post("/login", data={"username": username, "password": password,
                                                "csrf_token": csrf_token(page)})
        assert resp.status_code == 302, resp.get_data(as_text=True)

    def get(self, path: str):
        # The fixtures keep one app context open, so requests share ``g`` — where Flask-WTF
        # caches the CSRF token. Drop it so each client gets the token of its own session.
        g.pop("csrf_token", None)
        resp = self.client.get(path)
        return resp.status_code, resp.get_data(as_text=True)

    def submit(self, page: str, action: str | None = None, data: dict | None = None):
        """GET ``page``, take its CSRF token, POST ``data`` to ``action`` (default: the page)."""
        status, body = self.get(page)
        assert status == 200, body[-2000:]
        form = {"csrf_token": csrf_token(body), **(data or {})}
        resp = self.client.post(action or page, data=form)
        return resp.status_code, resp.get_data(as_text=True), resp.headers.get("Location")


def field_error(page: str, slot_id: str) -> str:
    match = re.search(rf'<div class="field-error" data-for="{slot_id}" role="alert">(.*?)</div>', page, re.S)
    assert match, f"no error slot for {slot_id}"
    return html.unescape(match.group(1)).strip()


@pytest.fixture
def admin(app, admin_user):
    return Browser(app, "admin")


def test_pages_render_with_empty_states(admin):
    status, page = admin.get("/hosts")
    assert status == 200 and "No hosts yet" in page and "flask --app wsgi hosts import FILE" in page
    status, page = admin.get("/credentials")
    assert status == 200 and "No credentials yet" in page
    status, page = admin.get("/tasks")
    assert status == 200 and "No tasks yet" in page
    for path in ("/hosts/new", "/credentials/new", "/tasks/new"):
        status, page = admin.get(path)
        assert status == 200 and 'name="csrf_token"' in page, path


def test_forms_refuse_posts_without_csrf(admin, session):
    resp = admin.client.post("/hosts/new", data={"name": "sneaky"})
    assert resp.status_code == 400
    assert session.execute(select(Host)).first() is None


def test_host_create_edit_delete(admin, session):
    status, page, location = admin.submit("/hosts/new", data={
        "name": "web1", "address": "10.0.0.1", "port": "2222", "protocol": "ssh", "groups": "web, prod",
        "vars": "tier: gold\nopened: 2024-01-02\nports: [80, 443]\n"})
    assert status == 302 and location.endswith("/hosts"), page
    h = session.execute(select(Host).where(Host.name == "web1")).scalar_one()
    assert h.port == 2222 and [g.name for g in h.groups] == ["prod", "web"]
    assert h.vars == {"tier": "gold", "opened": "2024-01-02", "ports": [80, 443]}  # dates stay text

    status, page = admin.get("/hosts")
    assert "web1" in page and "10.0.0.1" in page and "Host web1 added." in page
    status, page = admin.get(f"/hosts/{h.id}/edit")
    assert 'value="web, prod"' in page or 'value="prod, web"' in page
    assert "tier: gold" in page

    status, page, _ = admin.submit(f"/hosts/{h.id}/edit", data={"name": "web1", "address": "", "port": "70000",
                                                                "protocol": "ssh", "groups": "", "vars": ""})
    assert status == 422 and "between 1 and 65535" in field_error(page, "h-port")
    assert 'value="70000"' in page  # what was typed comes back

    status, page, _ = admin.submit(f"/hosts/{h.id}/edit", data={"name": "web1", "port": "", "vars": "a: [1,\n"})
    assert status == 422 and "not valid YAML or JSON" in field_error(page, "h-vars")
    status, page, _ = admin.submit(f"/hosts/{h.id}/edit", data={"name": "web1", "vars": "a: &x [1]\nb: *x\n"})
    assert status == 422 and "aliases" in field_error(page, "h-vars")
    status, page, _ = admin.submit(f"/hosts/{h.id}/edit", data={"name": "web1", "vars": "- just\n- a list\n"})
    assert status == 422 and "must be an object" in field_error(page, "h-vars")

    status, page, _ = admin.submit(f"/hosts/{h.id}/edit", data={"name": "web1", "address": "web1.example.com",
                                                                "protocol": "winrm", "groups": "web", "vars": ""})
    assert status == 302
    session.expire_all()
    h = session.get(Host, h.id)
    assert h.address == "web1.example.com" and h.protocol == "winrm" and h.port is None and h.vars == {}

    status, _, location = admin.submit("/hosts", f"/hosts/{h.id}/delete")
    assert status == 302 and location.endswith("/hosts")
    session.expire_all()
    assert session.get(Host, h.id) is None


def test_host_duplicate_and_pagination(admin, api):
    for i in range(55):
        host(api, f"n{i:02d}")
    status, page, _ = admin.submit("/hosts/new", data={"name": "n00"})
    assert status == 409 and "already exists" in field_error(page, "h-name")
    status, page = admin.get("/hosts")
    assert "55 hosts · page 1 of 2" in page and "n49" in page and "n50" not in page
    status, page = admin.get("/hosts?page=2")
    assert "n54" in page and "n00" not in page
    status, page = admin.get("/hosts?q=n5")
    assert "n50" in page and "n49" not in page
    assert admin.get("/hosts?page=abc")[0] == 200  # a bad page number shows the first page


def test_credential_secret_is_never_shown(admin, session):
    key = ed25519_key()
    fragment = key.splitlines()[2]
    status, page, location = admin.submit("/credentials/new", data={
        "name": "deploy", "kind": "ssh_key", "username": "deploy", "secret_key": key,
        "secret_password": "", "become_method": "sudo", "become_user": "", "become_password": "sudo-pw-9"})
    assert status == 302, page
    cred = session.execute(select(Credential)).scalar_one()
    assert vault().decrypt(cred.secret_enc) == key.strip() + "\n"
    for path in ("/credentials", f"/credentials/{cred.id}/edit"):
        status, page = admin.get(path)
        assert status == 200 and fragment not in page and "sudo-pw-9" not in page
    assert "Leave empty to keep" in page

    # Saving with the secret fields empty keeps both secrets and the version.
    status, page, _ = admin.submit(f"/credentials/{cred.id}/edit", data={
        "name": "deploy", "kind": "ssh_key", "username": "deploy2", "secret_key": "", "secret_password": "",
        "become_method": "sudo", "become_user": "", "become_password": ""})
    assert status == 302
    session.expire_all()
    cred = session.get(Credential, cred.id)
    assert vault().decrypt(cred.secret_enc) == key.strip() + "\n" and vault().decrypt(cred.become_password_enc) == "sudo-pw-9"
    assert cred.username == "deploy2" and cred.version == 2

    # A bad key is refused next to the secret field and is not echoed back.
    status, page, _ = admin.submit(f"/credentials/{cred.id}/edit", data={
        "name": "deploy", "kind": "ssh_key", "secret_key": "not-a-key-XYZ", "become_password": ""})
    assert status == 422 and "not a valid private key" in field_error(page, "c-secret")
    assert "not-a-key-XYZ" not in page

    status, page, _ = admin.submit(f"/credentials/{cred.id}/edit", data={
        "name": "deploy", "kind": "ssh_key", "username": "deploy2", "clear_become_password": "on"})
    assert status == 302
    session.expire_all()
    assert session.get(Credential, cred.id).become_password_enc is None


def test_credential_password_kind_and_delete_refused_when_used(admin, api, session):
    status, page, _ = admin.submit("/credentials/new", data={"name": "pw", "kind": "password", "username": "ops",
                                                             "secret_key": "", "secret_password": "hunter2"})
    assert status == 302
    cred = session.execute(select(Credential)).scalar_one()
    assert vault().decrypt(cred.secret_enc) == "hunter2"
    task(api, "uses-pw", credential="pw")
    status, _, location = admin.submit("/credentials", f"/credentials/{cred.id}/delete")
    assert status == 302
    status, page = admin.get(location)
    assert "uses-pw" in page  # the flash names the task
    assert session.get(Credential, cred.id) is not None


def test_task_forms_run_and_delete(admin, api, app, session, tmp_path):
    make_playbook_dir(app, tmp_path)
    host(api, "t1")
    host(api, "t2", groups=["db"])
    credential(api, "ops")
    status, page = admin.get("/tasks/new")
    assert "web/restart.yaml" in page and "site.yml" in page and "README.txt" not in page

    status, page, location = admin.submit("/tasks/new", data={
        "name": "restart", "description": "", "kind": "commands", "commands": "systemctl restart nginx\r\n\r\nuptime\r\n",
        "playbook": "site.yml", "hosts": ["t1"], "groups": ["db"], "credential": "ops", "timeout_s": "120",
        "retry_attempts": "2", "retry_delay_s": "5", "become": "on", "vars": '{"svc": "nginx"}'})
    assert status == 302, page
    t = session.execute(select(Task).where(Task.name == "restart")).scalar_one()
    assert t.commands == ["systemctl restart nginx", "uptime"] and t.playbook is None
    assert [h.name for h in t.hosts] == ["t1"] and [g.name for g in t.groups] == ["db"]
    assert t.credential.name == "ops" and t.become and t.timeout_s == 120 and t.retry_attempts == 2
    assert location.endswith(f"/tasks/{t.id}")

    status, page = admin.get(f"/tasks/{t.id}")
    assert status == 200 and "systemctl restart nginx" in page and "Run on 2 hosts" in page
    status, page = admin.get("/tasks")
    assert "restart" in page and "never" in page

    # Switch to a playbook; an invalid timeout is reported next to its field.
    status, page, _ = admin.submit(f"/tasks/{t.id}/edit", data={
        "name": "restart", "kind": "playbook", "playbook": "web/restart.yaml", "hosts": ["t1"],
        "timeout_s": "0"})
    assert status == 422 and "between 1 and 86400" in field_error(page, "t-timeout")
    status, page, _ = admin.submit(f"/tasks/{t.id}/edit", data={
        "name": "restart", "kind": "playbook", "playbook": "web/restart.yaml", "hosts": ["t1", "t2"]})
    assert status == 302
    session.expire_all()
    t = session.get(Task, t.id)
    assert t.kind == "playbook" and t.commands == [] and t.credential is None and not t.become

    # Run: bad vars stay on the page with the message; good input redirects to the live page.
    status, page, _ = admin.submit(f"/tasks/{t.id}", f"/tasks/{t.id}/run", {"reason": "r", "vars": "[1, 2]"})
    assert status == 422 and field_error(page, "r-vars")
    status, page, location = admin.submit(f"/tasks/{t.id}", f"/tasks/{t.id}/run",
                                          {"reason": "deploy 1.2", "vars": "version: '1.2'"})
    assert status == 302
    ex = session.execute(select(Execution)).scalar_one()
    assert location.endswith(f"/executions/{ex.id}")
    assert ex.status == "queued" and ex.reason == "deploy 1.2" and ex.vars == {"version": "1.2"}
    assert ex.requested_by.username == "admin"
    status, page = admin.get(f"/tasks/{t.id}")
    assert f"/executions/{ex.id}" in page

    # Delete is refused while the run is queued, then allowed.
    status, _, location = admin.submit(f"/tasks/{t.id}", f"/tasks/{t.id}/delete")
    assert status == 302 and location.endswith(f"/tasks/{t.id}")
    assert "cancel it first" in admin.get(location)[1]
    assert api.post(f"/api/v1/executions/{ex.id}/cancel")[0] == 200
    status, _, location = admin.submit(f"/tasks/{t.id}", f"/tasks/{t.id}/delete")
    assert status == 302 and location.endswith("/tasks")
    session.expire_all()
    assert session.get(Task, t.id) is None


def test_task_form_reports_unknown_names_and_missing_commands(admin, api, session):
    status, page, _ = admin.submit("/tasks/new", data={"name": "x", "kind": "commands", "commands": "  \n"})
    assert status == 422 and "at least one command" in field_error(page, "t-commands")
    status, page, _ = admin.submit("/tasks/new", data={"name": "x", "kind": "playbook", "playbook": "../etc.yml"})
    assert status == 422 and field_error(page, "t-playbook")
    assert session.execute(select(Task)).first() is None


def test_roles_see_what_they_may(app, session, api):
    host(api, "r1")
    task(api, "secret-task", hosts=["r1"])
    make_user(session, "olga", "operator")
    make_user(session, "aud", "auditor")
    operator = Browser(app, "olga")
    status, page = operator.get("/tasks")
    assert status == 200 and "No tasks are shared with you yet" in page and "secret-task" not in page
    assert operator.get("/hosts/new")[0] == 403
    assert operator.get("/credentials")[0] == 403
    assert operator.get("/tasks/new")[0] == 403
    tid = api.get("/api/v1/tasks")[1]["items"][0]["id"]
    assert operator.get(f"/tasks/{tid}")[0] == 404
    auditor = Browser(app, "aud")
    status, page = auditor.get(f"/tasks/{tid}")
    assert status == 200 and "Run now" not in page and "Edit" not in page
    status, page = auditor.get("/hosts")
    assert status == 200 and "r1" in page and "Add host" not in page
