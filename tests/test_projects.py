"""Playbook projects: validation, sync with real git (file://, the sshd lab), the webhook, and
runs of the exact approved commit (a real RQ worker and sshd)."""
from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
from sqlalchemy import select

from server.core.models import AuditLog, Project
from tests.gitrepo import PLAY, Upstream, role_tarball


@pytest.fixture
def upstream():
    repo = Upstream()
    repo.commit({"site.yml": PLAY.format(name="site", msg="version-one"),
                 "tasks/extra.yml": "- name: a task file\n  ansible.builtin.debug: {}\n",
                 "handlers/main.yml": "- name: h\n  ansible.builtin.debug: {}\n",
                 "requirements.yml": "roles: []\ncollections: []\n",
                 "roles/web/tasks/main.yml": "- name: role task\n  ansible.builtin.debug: {}\n",
                 "plays/db.yaml": PLAY.format(name="db", msg="db"),
                 "README.md": "docs\n"}, "first")
    yield repo
    repo.remove()


def _sync(app, session, name: str) -> Project:
    from server.catalog import projects

    project = session.execute(select(Project).where(Project.name == name)).scalar_one()
    return projects.sync(session, project, instance_dir=app.config["TM"].instance_dir, actor="test")


def _audit(session, action: str) -> list[AuditLog]:
    session.rollback()
    return list(session.execute(select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.id)).scalars())


def test_project_input_is_checked_field_by_field(api, api_as, session, upstream):
    cases = [
        ({"name": "p", "url": "ftp://example.test/x.git"}, "url"),
        ({"name": "p", "url": "ext::sh -c touch% /tmp/pwned"}, "url"),
        ({"name": "p", "url": "https://bob:secret@example.test/x.git"}, "url"),
        ({"name": "p", "url": "-oProxyCommand=x@host:path"}, "url"),
        ({"name": "p", "url": "ssh://git@example.test:notaport/x.git"}, "url"),
        ({"name": "p", "url": "https://example.test/x.git", "branch": "../x"}, "branch"),
        ({"name": "p", "url": "https://example.test/x.git", "branch": "-f"}, "branch"),
        ({"name": "p", "url": "https://example.test/x.git", "credential": "nope"}, "credential"),
        ({"name": "local", "url": "https://example.test/x.git"}, "name"),
        ({"url": "https://example.test/x.git"}, "name"),
        ({"name": "p", "url": "https://example.test/x.git", "webhook_secret": "short"}, "webhook_secret"),
    ]
    for body, field in cases:
        status, resp = api.post("/api/v1/projects", body)
        assert 400 <= status < 500 and resp["error"].get("field", field) == field, (body, status, resp)
        assert field in json.dumps(resp), (body, resp)
    assert api.post("/api/v1/credentials", {"name": "k", "kind": "ssh_key", "secret": _KEY})[0] == 201
    status, resp = api.post("/api/v1/projects", {"name": "p", "url": "https://example.test/x.git", "credential": "k"})
    assert status == 422 and "credential" in json.dumps(resp)
    author = api_as("alice", "author")
    status, resp = author.post("/api/v1/projects", {"name": "p", "url": upstream.url})
    assert status == 403 and "url" in json.dumps(resp)  # file:// reads this machine: admins only
    operator = api_as("olga", "operator")
    assert operator.post("/api/v1/projects", {"name": "p", "url": "https://example.test/x.git"})[0] == 403

    status, local = api.get("/api/v1/projects")
    local_row = next(p for p in local["items"] if p["name"] == "local")
    assert api.patch(f"/api/v1/projects/{local_row['id']}", {"branch": "x"})[0] == 409
    assert api.delete(f"/api/v1/projects/{local_row['id']}")[0] == 409

    status, made = api.post("/api/v1/projects", {"name": "p", "url": "https://example.test/x.git",
                                                 "webhook_secret": "s" * 20})
    assert status == 201 and made["sync_status"] == "syncing" and made["has_webhook_secret"] is True
    assert "webhook_secret" not in made and "s" * 20 not in json.dumps(api.get(f"/api/v1/projects/{made['id']}")[1])
    assert [a.target_id for a in _audit(session, "project.create")] == [str(made["id"])]
    status, resp = api.post("/api/v1/tasks", {"name": "t", "kind": "playbook", "project": "p", "playbook": "site.yml"})
    assert status == 422 and resp["error"]["field"] == "project" and "not been synced" in resp["error"]["message"]
    status, resp = api.post("/api/v1/tasks", {"name": "t", "kind": "playbook", "project": "ghost",
                                              "playbook": "site.yml"})
    assert status == 422 and "unknown project" in json.dumps(resp)


def test_sync_follows_the_branch_pins_and_explains_failures(app, api, session, upstream):
    status, made = api.post("/api/v1/projects", {"name": "ops", "url": upstream.url})
    assert status == 201
    project = _sync(app, session, "ops")
    head = upstream.git(upstream.work, "rev-parse", "HEAD")
    assert (project.sync_status, project.revision, project.sync_error) == ("ok", head, None)
    # only files holding plays: not requirements.yml, tasks/, handlers/, roles/
    assert api.get(f"/api/v1/projects/{made['id']}/playbooks")[1] == {"items": ["plays/db.yaml", "site.yml"]}

    second = upstream.commit({"site.yml": PLAY.format(name="site", msg="version-two")}, "second")
    started = time.monotonic()
    assert _sync(app, session, "ops").revision == second
    third = upstream.commit({"new.yml": PLAY.format(name="new", msg="n")}, "third")
    assert _sync(app, session, "ops").revision == third
    assert "new.yml" in project.playbooks
    started = time.monotonic()
    _sync(app, session, "ops")  # nothing new
    assert time.monotonic() - started < 2

    upstream.rewind(second)  # a forced push drops "third"
    forced = upstream.commit({"other.yml": PLAY.format(name="o", msg="o")}, "rewritten", force=True)
    assert _sync(app, session, "ops").revision == forced
    assert "new.yml" not in project.playbooks

    stable = upstream.commit({"site.yml": PLAY.format(name="site", msg="stable")}, "stable", branch="stable")
    assert api.patch(f"/api/v1/projects/{made['id']}", {"branch": "stable"})[0] == 200
    assert _sync(app, session, "ops").revision == stable

    assert api.patch(f"/api/v1/projects/{made['id']}", {"branch": "nope"})[0] == 200
    project = _sync(app, session, "ops")
    assert project.sync_status == "failed" and "branch" in project.sync_error
    assert project.revision == stable  # the last good sync stays

    assert api.patch(f"/api/v1/projects/{made['id']}", {"branch": "", "url": f"file://{upstream.root}/none.git"})[0] == 200
    project = _sync(app, session, "ops")
    assert project.sync_status == "failed" and "URL" in project.sync_error, project.sync_error
    outcomes = [(a.outcome, (a.detail or {}).get("error", "")[:20]) for a in _audit(session, "project.sync")]
    assert [o for o, _ in outcomes].count("failed") == 2


def test_deploy_key_over_the_sshd_lab(app, api, session, sshlab):
    lab = sshlab(1)
    repo = Upstream()
    try:
        first = repo.commit({"site.yml": PLAY.format(name="s", msg="over ssh")})
        repo.serve_as(lab.user)
        srv = lab.servers[0]
        assert api.post("/api/v1/credentials", {"name": "deploy", "kind": "ssh_key", "secret": lab.private_key})[0] == 201
        url = f"ssh://{lab.user}@{srv.address}:{srv.port}{repo.bare}"
        assert api.post("/api/v1/projects", {"name": "viassh", "url": url, "credential": "deploy"})[0] == 201
        project = _sync(app, session, "viassh")
        assert (project.sync_status, project.revision) == ("ok", first), project.sync_error
        known = app.config["TM"].instance_dir / "projects" / str(project.id) / "known_hosts"
        assert known.read_text().strip()  # learnt on first contact
        # a rebuilt server with a new host key is refused, with what to do about it
        lab.rekey_server(0)
        project = _sync(app, session, "viassh")
        assert project.sync_status == "failed" and "host key" in project.sync_error
        assert api.delete(f"/api/v1/projects/{project.id}/host-keys")[0] == 204
        assert _sync(app, session, "viassh").sync_status == "ok"
        # no key: authentication refused, said so
        assert api.patch(f"/api/v1/projects/{project.id}", {"credential": None})[0] == 200
        project = _sync(app, session, "viassh")
        assert project.sync_status == "failed" and "authentication refused" in project.sync_error
    finally:
        repo.remove()


def _signed(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_webhook_and_sync_job_on_a_real_worker(app, api, session, upstream, run_worker):
    secret = "w" * 24
    status, made = api.post("/api/v1/projects", {"name": "hooked", "url": upstream.url, "branch": "main",
                                                 "webhook_secret": secret})
    assert status == 201
    proc = run_worker()
    assert proc.returncode == 0, proc.stderr[-2000:]
    session.rollback()
    assert api.get(f"/api/v1/projects/{made['id']}")[1]["sync_status"] == "ok"
    new = upstream.commit({"site.yml": PLAY.format(name="s", msg="pushed")})
    body = json.dumps({"ref": "refs/heads/main", "after": new}).encode()
    hook = f"/api/v1/projects/{made['id']}/webhook"
    client = app.test_client()
    bad = client.post(hook, data=body, headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": _signed("x" * 24, body)})
    assert bad.status_code == 401
    assert client.post(hook, data=body, headers={"X-GitHub-Event": "push"}).status_code == 401
    assert client.post(hook, data=b"{", headers={"X-GitHub-Event": "push",
                                                 "X-Hub-Signature-256": _signed(secret, b"{")}).status_code == 400
    assert client.post(hook, data=body, headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "nope"}).status_code == 401
    ok = client.post(hook, data=body, headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": _signed(secret, body)})
    assert ok.status_code == 202, ok.get_json()
    gitlab = client.post(hook, data=body, headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret})
    assert gitlab.status_code == 202
    gitea = client.post(hook, data=body, headers={"X-Gitea-Event": "push",
                                                  "X-Gitea-Signature": _signed(secret, body)[7:]})
    assert gitea.status_code == 202
    refused = [a for a in _audit(session, "project.webhook") if a.outcome == "refused"]
    assert len(refused) == 4
    from rq import Queue

    from server.core.redis_conn import redis
    from server.runs.project_jobs import sync_job

    queued = Queue(app.config["TM"].queue_name, connection=redis()).jobs
    assert [j.func_name for j in queued] == ["server.runs.project_jobs.sync_job"] * 3
    assert sync_job(*queued[-1].args) == "ok"  # the job itself, in this process
    session.rollback()
    assert api.get(f"/api/v1/projects/{made['id']}")[1]["revision"] == new


_KEY = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACBdvPj2V3OFJsCH4/Ag4Ep9u9O8JO1mcNvO4BzhYZ8hKQAAAJAWJtcHFibX
BwAAAAtzc2gtZWQyNTUxOQAAACBdvPj2V3OFJsCH4/Ag4Ep9u9O8JO1mcNvO4BzhYZ8hKQ
AAAEBNjBPTf3xl6FAvJ1a7bq8d3yAnlBx+Vcb1y1Rl3g5RO128+PZXc4UmwIfj8CDgSn27
07wk7WZw287gHOFhnyEpAAAAB3Rlc3RrZXkBAgMEBQY=
-----END OPENSSH PRIVATE KEY-----
"""


RUN_PLAY = ("- name: site\n  hosts: all\n  gather_facts: false\n"
            "  vars_prompt:\n    - name: color\n      prompt: Which color\n      default: teal-default\n"
            "      private: false\n  tasks:\n"
            "    - name: prompt\n      ansible.builtin.debug:\n        msg: \"color={{{{ color }}}}\"\n"
            "    - name: say\n      ansible.builtin.debug:\n        msg: \"{msg} {{{{ greeting }}}}\"\n"
            "    - name: config\n      ansible.builtin.debug:\n"
            "        msg: \"become_user={{{{ lookup('ansible.builtin.config', 'DEFAULT_BECOME_USER') }}}}\"\n"
            "    - name: role\n      ansible.builtin.include_role:\n        name: hello\n"
            "    - name: required role\n      ansible.builtin.include_role:\n        name: greeter\n"
            "    - name: report\n      ansible.builtin.command: echo delegated-{msg}\n"
            "      delegate_to: localhost\n      run_once: true\n"
            "- name: controller\n  hosts: localhost\n  gather_facts: false\n  tasks:\n"
            "    - name: summary\n      ansible.builtin.command: echo controller-{msg}\n")


def test_a_run_uses_the_commit_it_was_approved_at(app, api, api_as, session, sshlab, run_worker):
    from tests.test_execution_e2e import add_hosts, add_key_credential, get_execution

    lab = sshlab(1)
    repo = Upstream()
    try:
        first = repo.commit({
            "site.yml": RUN_PLAY.format(msg="version-one"),
            # a secret launch value is set before the play: group_vars beside the playbook still apply
            "group_vars/all.yml": "greeting: \"from-group-vars {{ (TOKEN | default('')) | length }}\"\n",
            "ask.yml": "- hosts: all\n  vars_prompt:\n    - name: size\n      prompt: Size\n  tasks: []\n",
            "roles/hello/tasks/main.yml": "- name: hello role\n  ansible.builtin.debug:\n    msg: project-role\n",
            # installed at sync time from a path inside the project (in the sandbox)
            "roles/requirements.yml": "- src: ./vendor/greeter.tar.gz\n  name: greeter\n",
            "vendor/greeter.tar.gz": role_tarball("greeter", "- name: greeter\n  ansible.builtin.debug:\n"
                                                            "    msg: installed-from-requirements\n"),
            # ours win: no callback or connection setting of the project applies
            "ansible.cfg": "[defaults]\nstdout_callback = json\ncallbacks_enabled = tree\nforks = 3\n"
                           "[ssh_connection]\nssh_args = -o ProxyCommand=false\n"
                           "[privilege_escalation]\nbecome_user = cfg-user\n",  # the project's own: kept
        })
        hosts = add_hosts(api, lab)
        cred = add_key_credential(api, lab)
        status, made = api.post("/api/v1/projects", {"name": "ops", "url": repo.url})
        assert status == 201
        assert _sync(app, session, "ops").revision == first
        status, task = api.post("/api/v1/tasks", {"name": "deploy", "kind": "playbook", "project": "ops",
                                                  "playbook": "site.yml", "hosts": hosts, "credential": cred,
                                                  "variables": [{"name": "TOKEN", "type": "secret"}], "serial": 1})
        assert status == 201 and task["project"] == "ops", task
        status, resp = api.patch(f"/api/v1/tasks/{task['id']}", {"playbook": "../site.yml"})
        assert status == 422 and resp["error"]["field"] == "playbook"
        status, resp = api.patch(f"/api/v1/tasks/{task['id']}", {"playbook": "group_vars/all.yml"})
        assert status == 422 and resp["error"]["field"] == "playbook"
        status, resp = api.patch(f"/api/v1/tasks/{task['id']}", {"playbook": "ask.yml"})
        assert status == 422 and "'size'" in resp["error"]["message"] and "default" in resp["error"]["message"]
        status, resp = api.patch(f"/api/v1/tasks/{task['id']}", {"playbook": "ask.yml", "vars": {"size": "L"}})
        assert status == 200, resp
        assert api.patch(f"/api/v1/tasks/{task['id']}", {"playbook": "site.yml", "vars": {}})[0] == 200
        olga, ann = api_as("olga", "operator"), api_as("ann", "approver")
        assert api.post("/api/v1/policies", {"name": "p", "users": ["olga"], "tasks": ["deploy"],
                                             "permissions": ["view", "execute", "schedule"], "requires_approval": True,
                                             "approvers": [{"user": "ann", "level": 1}]})[0] == 201
        status, asked = olga.post(f"/api/v1/tasks/{task['id']}/executions",
                                  {"reason": "CHG-1", "vars": {"TOKEN": "t0ken-xyz"}})
        assert status == 202 and asked["status"] == "waiting_approval"

        status, sched = olga.post(f"/api/v1/tasks/{task['id']}/schedules", {"cron": "0 6 * * *"})
        assert status == 201, sched
        assert ann.post(f"/api/v1/schedules/{sched['id']}/approve")[0] == 200

        second = repo.commit({"site.yml": RUN_PLAY.format(msg="version-two")}, "moved on")
        assert _sync(app, session, "ops").revision == second
        from server.core.models import Schedule
        from server.executions.approvals import check_schedule_fire

        why = check_schedule_fire(session, session.get(Schedule, sched["id"]))
        session.commit()
        assert why and "project commit" in why and f"would run commit {second[:12]}" in why, why
        assert ann.post(f"/api/v1/executions/{asked['id']}/approve")[1]["status"] == "queued"
        status, now = api.post(f"/api/v1/tasks/{task['id']}/executions", {"reason": "later"})  # requested at B
        assert status == 202 and ann.post(f"/api/v1/executions/{now['id']}/approve")[0] == 200
        proc = run_worker()
        assert proc.returncode == 0, proc.stderr[-3000:]
        session.rollback()
        session.expire_all()  # rows the worker changed, loaded here by committed transactions
        approved, latest = get_execution(api, asked["id"]), get_execution(api, now["id"])
        assert approved["status"] == "succeeded", approved
        assert approved["revision"] == first and latest["revision"] == second
        text = json.dumps(approved["operations"])
        assert "version-one from-group-vars 9" in text and "project-role" in text and "version-two" not in text
        assert "t0ken-xyz" not in text
        assert "installed-from-requirements" in text and "color=teal-default" in text
        assert "become_user=cfg-user" in text  # the project's ansible.cfg applies
        # hosts: localhost runs on the controller (in the sandbox): an operation of its own, counted,
        # never taken for a host; a delegated task stays on its host and says where it ran
        [ctl] = [op for op in approved["operations"] if op["host_id"] is None]
        assert ctl["host"] == "localhost (controller)" and ctl["status"] == "succeeded", ctl
        assert [(s["name"], s["stdout"]) for s in ctl["steps"]] == [("summary", "controller-version-one")]
        assert approved["host_count"] == len(hosts) and approved["hosts_done"] == len(hosts)
        delegated = [s for op in approved["operations"] for s in op["steps"] if s["name"].startswith("report")]
        assert [(s["name"], s["stdout"]) for s in delegated] == [("report (on the controller)", "delegated-version-one")]
        from tests.test_web_resources import Browser

        status, page = Browser(app, "admin").get(f"/executions/{asked['id']}")
        assert status == 200 and 'data-host="localhost (controller)"' in page
        assert "version-two from-group-vars 0" in json.dumps(latest["operations"]), latest
    finally:
        repo.remove()


def test_projects_sync_on_the_command_line(app, api, session, env, upstream):
    from tests.test_cli import flask

    assert api.post("/api/v1/projects", {"name": "cli-proj", "url": upstream.url})[0] == 201
    done = flask(env, "projects", "sync", "cli-proj")
    head = upstream.git(upstream.work, "rev-parse", "HEAD")
    assert done.returncode == 0 and head in done.stdout, done.stderr
    session.rollback()
    assert session.execute(select(Project.sync_status).where(Project.name == "cli-proj")).scalar_one() == "ok"


def test_projects_page_lists_status_and_playbooks_and_adds_with_field_errors(app, api, session, admin_user, upstream):
    from tests.test_web_resources import Browser, field_error

    assert api.post("/api/v1/projects", {"name": "ops", "url": upstream.url})[0] == 201
    _sync(app, session, "ops")
    browser = Browser(app, "admin")
    status, page = browser.get("/projects")
    assert status == 200 and 'data-project="ops"' in page and 'data-project="local"' in page
    head = upstream.git(upstream.work, "rev-parse", "HEAD")
    assert head[:12] in page and "plays/db.yaml" in page and "requirements.yml" not in page
    status, page, _ = browser.submit("/projects", data={"name": "bad", "url": "ftp://x/y"})
    assert status == 422 and "git URL" in field_error(page, "p-url")
    status, _, location = browser.submit("/projects", f"/projects/{session.execute(select(Project.id).where(Project.name == 'ops')).scalar_one()}/sync")
    assert status == 302
    status, page = browser.get("/projects")
    assert "syncing" in page


def _vault_encrypt(text: str, password: str, vault_id: str, tmp_path) -> str:
    import subprocess
    import sys
    from pathlib import Path

    pw = tmp_path / "vault-pass"
    pw.write_text(password)
    src = tmp_path / "plain.yml"
    src.write_text(text)
    subprocess.run([str(Path(sys.executable).parent / "ansible-vault"), "encrypt", "--vault-id", f"{vault_id}@{pw}",
                    "--encrypt-vault-id", vault_id, str(src)], check=True, capture_output=True)
    pw.unlink()
    return src.read_text()


class ProcessWatch:
    """Reads every process's command line and environment while a run happens (the canary's ``ps``)."""

    def __init__(self) -> None:
        import threading

        self.seen: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import os

        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    for name in ("cmdline", "environ"):
                        try:
                            with open(f"/proc/{pid}/{name}", "rb") as fh:
                                self.seen.add(fh.read())
                        except OSError:
                            pass
            self._stop.wait(0.1)

    def __enter__(self) -> "ProcessWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def test_canary_deploy_key_and_vault_password_appear_nowhere(app, api, session, sshlab, run_worker, tmp_path):
    """An encrypted group_vars file decrypts with a vault_password credential; the deploy key, the
    vault password and the webhook secret are in no row, log, API answer, .git/config or process."""
    from tests.test_execution_e2e import add_hosts, add_key_credential, get_execution

    lab = sshlab(1)
    repo = Upstream()
    vault_password = "canary-VAULT-7f3a9c"
    hook_secret = "canary-HOOK-51e2b0aa"
    try:
        repo.commit({
            "site.yml": PLAY.format(name="site", msg="{{ greeting }} {{ secret_word }}")
            + "    - name: may fail\n      ansible.builtin.command: /bin/false\n      ignore_errors: true\n",
            "group_vars/all/main.yml": "greeting: hello\n",
            "group_vars/all/vault.yml": _vault_encrypt("secret_word: opened-by-vault\n", vault_password, "prod",
                                                       tmp_path),
        })
        repo.serve_as(lab.user)
        srv = lab.servers[0]
        hosts = add_hosts(api, lab)
        cred = add_key_credential(api, lab)
        assert api.post("/api/v1/credentials", {"name": "deploy", "kind": "ssh_key", "secret": lab.private_key})[0] == 201
        assert api.post("/api/v1/credentials", {"name": "vault", "kind": "vault_password", "username": "prod",
                                                "secret": vault_password})[0] == 201
        url = f"ssh://{lab.user}@{srv.address}:{srv.port}{repo.bare}"
        status, made = api.post("/api/v1/projects", {"name": "canary", "url": url, "credential": "deploy",
                                                     "webhook_secret": hook_secret})
        assert status == 201
        with ProcessWatch() as watch:
            sync_proc = run_worker()
            session.rollback()
            status, task = api.post("/api/v1/tasks", {"name": "vaulted", "kind": "playbook", "project": "canary",
                                                      "playbook": "site.yml", "hosts": hosts, "credential": cred,
                                                      "vault_credential": "vault"})
            assert status == 201, task
            status, started = api.post(f"/api/v1/tasks/{task['id']}/executions")
            assert status == 202
            run_proc = run_worker()
        assert run_proc.returncode == 0, run_proc.stderr[-2000:]
        session.rollback()
        ex = get_execution(api, started["id"])
        assert ex["status"] == "succeeded", ex
        assert "hello opened-by-vault" in json.dumps(ex["operations"])
        steps = {s["name"]: s["status"] for s in ex["operations"][0]["steps"]}
        assert steps["may fail"] == "ignored" and ex["operations"][0]["status"] == "succeeded"

        key_body = "".join(lab.private_key.strip().splitlines()[1:-1])  # the base64 of the deploy key
        canaries = {"deploy key": key_body[20:80], "vault password": vault_password, "webhook secret": hook_secret}
        places = {"worker logs": sync_proc.stdout + sync_proc.stderr + run_proc.stdout + run_proc.stderr}
        places["api"] = json.dumps([api.get(p)[1] for p in (
            "/api/v1/projects", f"/api/v1/projects/{made['id']}", "/api/v1/credentials", f"/api/v1/executions/{ex['id']}",
            "/api/v1/audit?per_page=200", f"/api/v1/tasks/{task['id']}")], default=str)
        from sqlalchemy import inspect, text

        engine = session.get_bind()
        rows = []
        for table in inspect(engine).get_table_names():
            rows += [repr(tuple(r)) for r in session.execute(text(f'SELECT * FROM "{table}"'))]
        places["database"] = "\n".join(rows)
        pdir = app.config["TM"].instance_dir / "projects" / str(made["id"])
        places["mirror config and files"] = "\n".join(
            p.read_text(errors="replace") for p in pdir.rglob("*") if p.is_file() and p.stat().st_size < 1_000_000
            and "objects" not in p.parts)
        places["processes"] = b"\n".join(watch.seen).decode(errors="replace")
        assert len(watch.seen) > 20
        for what, value in canaries.items():
            for where, content in places.items():
                assert value not in content, f"the {what} appears in {where}"
    finally:
        repo.remove()


def test_https_token_through_askpass_and_nowhere_else(app, api, session, monkeypatch, tmp_path):
    from tests.githttp import GitHTTPS
    from tests.protolab import PKI

    token = "canary-TOKEN-9d2c4e1b"
    pki = PKI(tmp_path / "pki")
    repo = Upstream()
    try:
        first = repo.commit({"site.yml": PLAY.format(name="s", msg="over https")})
        with GitHTTPS(pki, repo.root, "deployer", token) as server:
            assert api.post("/api/v1/credentials", {"name": "tok", "kind": "token", "username": "deployer",
                                                    "secret": token})[0] == 201
            status, made = api.post("/api/v1/projects", {"name": "web", "url": server.url("repo.git"),
                                                         "credential": "tok"})
            assert status == 201, made
            project = _sync(app, session, "web")  # the machine does not trust the test CA yet
            assert project.sync_status == "failed" and "certificate" in project.sync_error, project.sync_error
            monkeypatch.setenv("TASKMANAGER_GIT_CA_BUNDLE", str(pki.ca_file))
            with ProcessWatch() as watch:
                project = _sync(app, session, "web")
            assert (project.sync_status, project.revision) == ("ok", first), project.sync_error
            assert any("git-upload-pack" in line for line in server.seen)
            # a wrong token: refused, said so, and the token is not in the message either
            assert api.post("/api/v1/credentials", {"name": "bad", "kind": "token", "username": "deployer",
                                                    "secret": "wrong-token-0000"})[0] == 201
            assert api.patch(f"/api/v1/projects/{made['id']}", {"credential": "bad"})[0] == 200
            project = _sync(app, session, "web")
            assert project.sync_status == "failed" and "authentication refused" in project.sync_error
        pdir = app.config["TM"].instance_dir / "projects" / str(made["id"])
        from sqlalchemy import inspect, text

        places = {
            "processes": b"\n".join(watch.seen).decode(errors="replace"),
            "mirror": "\n".join(p.read_text(errors="replace") for p in pdir.rglob("*")
                                if p.is_file() and "objects" not in p.parts),
            "api": json.dumps([api.get(f"/api/v1/projects/{made['id']}")[1], api.get("/api/v1/audit?per_page=200")[1]]),
            "database": "\n".join(repr(tuple(r)) for t in inspect(session.get_bind()).get_table_names()
                                  for r in session.execute(text(f'SELECT * FROM "{t}"'))),
        }
        assert any("git" in line for line in places["processes"].splitlines())
        for where, content in places.items():
            assert token not in content, f"the https token appears in {where}"
    finally:
        repo.remove()


def test_task_form_picks_a_project_playbook(app, api, session, admin_user, upstream):
    from tests.test_web_resources import Browser

    assert api.post("/api/v1/projects", {"name": "ops", "url": upstream.url})[0] == 201
    _sync(app, session, "ops")
    browser = Browser(app, "admin")
    status, page = browser.get("/tasks/new")
    assert status == 200 and '<optgroup label="ops">' in page and "plays/db.yaml" in page
    status, _, location = browser.submit("/tasks/new", data={"name": "from-git", "kind": "playbook", "project": "ops",
                                                             "playbook": "plays/db.yaml", "timeout_s": "60"})
    assert status == 302, _
    body = api.get("/api/v1/tasks")[1]["items"][0]
    assert (body["project"], body["playbook"]) == ("ops", "plays/db.yaml")


def test_migration_moves_playbook_tasks_to_the_local_project(env):
    from sqlalchemy import text

    from server import create_app
    from server.core import db
    from server.core.db import Base
    from server.core.migrate import upgrade

    create_app({"TESTING": True})
    engine = db.engine()
    Base.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    upgrade("0003")
    with engine.begin() as conn:
        for name, kind, playbook in (("pb", "playbook", "site.yml"), ("cmd", "commands", None)):
            conn.execute(text("INSERT INTO tasks (name, description, kind, commands, playbook, vars, become, timeout_s, "
                              "allow_simultaneous, retry_attempts, retry_delay_s, retry_on_lost, created_at, updated_at) "
                              "VALUES (:n, '', :k, '[]', :p, '{}', false, 60, false, 1, 10, false, :t, :t)"),
                         {"n": name, "k": kind, "p": playbook, "t": "2026-01-01 00:00:00"})
    upgrade("head")
    with engine.connect() as conn:
        local = conn.execute(text("SELECT id FROM projects WHERE name = 'local' AND url = ''")).scalar_one()
        rows = dict(conn.execute(text("SELECT name, project_id FROM tasks")).all())
    assert rows == {"pb": local, "cmd": None}
