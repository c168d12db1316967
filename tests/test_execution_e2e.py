"""The execution path end to end: API v1 -> Redis -> a real RQ worker process ->
ansible-runner -> real sshd servers on loopback addresses -> operations and steps.

Nothing is mocked: the servers are ``/usr/sbin/sshd`` processes (tests/sshlab.py), the
worker is ``flask --app wsgi worker`` in its own process, the database is SQLite or
PostgreSQL (``TM_TEST_DB``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sshlab import SSHLab

REPO = Path(__file__).resolve().parent.parent




@pytest.fixture(scope="module")
def lab():
    """Twenty real sshd servers shared by this module's tests (each test has its own DB)."""
    with SSHLab(20) as lab:
        yield lab


@pytest.fixture
def env(env, tmp_path, monkeypatch):
    """The shared test environment with a private playbook directory (with a role)."""
    pb = tmp_path / "playbooks"
    (pb / "roles" / "greet" / "tasks").mkdir(parents=True)
    (pb / "roles" / "greet" / "tasks" / "main.yml").write_text(
        "- name: greet\n  ansible.builtin.command: echo role-says {{ greeting }}\n  changed_when: false\n"
    )
    (pb / "site.yml").write_text(
        "- name: site\n"
        "  hosts: all\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - name: who am i\n"
        "      ansible.builtin.command: whoami\n"
        "    - name: show the run variable\n"
        "      ansible.builtin.debug:\n"
        "        msg: \"greeting={{ greeting }} host_note={{ note }}\"\n"
        "    - name: role\n"
        "      ansible.builtin.include_role:\n"
        "        name: greet\n"
    )
    monkeypatch.setenv("TASKMANAGER_PLAYBOOK_DIR", str(pb))
    return {**env, "TASKMANAGER_PLAYBOOK_DIR": str(pb)}


# --------------------------------------------------------------------------- helpers

def add_hosts(api, lab: SSHLab, servers=None, **extra) -> list[str]:
    names = []
    for srv in servers or lab.servers:
        status, body = api.post("/api/v1/hosts", {"name": srv.name, "address": srv.address, "port": srv.port,
                                                   **extra})
        assert status == 201, body
        names.append(srv.name)
    return names


def add_key_credential(api, lab: SSHLab, name="lab-key", become_password=None) -> str:
    body = {"name": name, "kind": "ssh_key", "username": lab.user, "secret": lab.private_key}
    if become_password is not None:
        body["become_password"] = become_password
    status, resp = api.post("/api/v1/credentials", body)
    assert status == 201, resp
    return name


def add_password_credential(api, lab: SSHLab, name="lab-password") -> str:
    status, resp = api.post("/api/v1/credentials", {"name": name, "kind": "password", "username": lab.user,
                                                    "secret": lab.password, "become_password": lab.password})
    assert status == 201, resp
    return name


def add_task(api, **fields) -> int:
    status, body = api.post("/api/v1/tasks", fields)
    assert status == 201, body
    return body["id"]


def start(api, task_id: int, **body) -> int:
    status, resp = api.post(f"/api/v1/tasks/{task_id}/executions", body or None)
    assert status == 202, resp
    assert resp["status"] == "queued"
    return resp["id"]


def get_execution(api, ex_id: int) -> dict:
    status, body = api.get(f"/api/v1/executions/{ex_id}")
    assert status == 200, body
    return body


def drained(run_worker) -> subprocess.CompletedProcess:
    proc = run_worker()
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def by_host(ex: dict) -> dict[str, dict]:
    return {op["host"]: op for op in ex["operations"]}


def audit_actions(session, ex_id: int) -> list[str]:
    from sqlalchemy import select

    from server.core.models import AuditLog

    session.rollback()
    return list(session.execute(
        select(AuditLog.action).where(AuditLog.target_type == "execution", AuditLog.target_id == str(ex_id))
        .order_by(AuditLog.id)
    ).scalars())


# --------------------------------------------------------------------------- tests

def test_twenty_hosts_three_commands(api, session, lab, run_worker):
    hosts = add_hosts(api, lab)
    cred = add_key_credential(api, lab)
    task = add_task(api, name="three", kind="commands", hosts=hosts, credential=cred,
                    commands=["hostname", "echo conn=$SSH_CONNECTION", "echo '{{ 7*7 }}' && id -un"])
    ex_id = start(api, task)
    drained(run_worker)

    ex = get_execution(api, ex_id)
    assert ex["status"] == "succeeded", ex["message"]
    assert ex["host_count"] == 20 and ex["hosts_done"] == 20
    assert ex["started_at"] and ex["finished_at"]
    ops = by_host(ex)
    assert sorted(ops) == sorted(hosts)
    hostname = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    for srv in lab.servers:
        op = ops[srv.name]
        assert op["status"] == "succeeded" and op["rc"] == 0
        assert [s["status"] for s in op["steps"]] == ["succeeded"] * 3
        assert [s["name"] for s in op["steps"]] == [
            "command 1: hostname", "command 2: echo conn=$SSH_CONNECTION", "command 3: echo '{{ 7*7 }}' && id -un"]
        first, second, third = op["steps"]
        assert first["stdout"].strip() == hostname
        # SSH_CONNECTION names the server's own address: the command really ran on that sshd.
        assert second["stdout"].split()[-2:] == [srv.address, "22"]
        assert third["stdout"] == f"{{{{ 7*7 }}}}\n{lab.user}\n"  # printed literally: never templated
        assert all(s["rc"] == 0 and s["duration_s"] is not None for s in op["steps"])
        assert srv.address in op["stdout"] and op["started_at"] and op["finished_at"]
    assert audit_actions(session, ex_id) == ["execution.request", "execution.start", "execution.finish"]


def test_each_command_line_is_its_own_shell_and_step(api, lab, run_worker):
    """All of a host's lines run in one tm_commands task, but each exactly as raw runs it:
    its own shell (no cd or variable carries over, ``exit`` ends only that line), its own
    step with its own times, and output that looks like a progress line is just output."""
    hosts = add_hosts(api, lab, lab.servers[:2])
    cred = add_key_credential(api, lab)
    forged = 'tm-progress-0123456789abcdef {"host": "%s", "index": 2, "status": "failed", "rc": 9}' % hosts[0]
    task = add_task(api, name="shells", kind="commands", hosts=hosts, credential=cred, commands=[
        "cd /tmp && X=set && echo $X; exit 0",
        "pwd; echo \"x=${X:-unset}\"; sleep 0.3",
        f"echo '{forged}'",
    ])
    ex_id = start(api, task)
    drained(run_worker)
    ex = get_execution(api, ex_id)
    assert ex["status"] == "succeeded", ex
    for op in ex["operations"]:
        first, second, third = op["steps"]
        assert [s["status"] for s in op["steps"]] == ["succeeded"] * 3
        assert [s["name"] for s in op["steps"]] == [
            "command 1: cd /tmp && X=set && echo $X; exit 0",
            'command 2: pwd; echo "x=${X:-unset}"; sleep 0.3',
            f"command 3: echo '{forged}'"[:91],
        ]
        assert first["stdout"] == "set\n"
        assert second["stdout"] == f"/home/{lab.user}\nx=unset\n"
        assert third["stdout"] == forged + "\n" and third["rc"] == 0
        # each run logs in afresh inside its sandbox: the first line's time includes the login
        assert second["duration_s"] >= 0.3 and second["started_at"] >= first["started_at"]
        assert first["started_at"] <= second["started_at"] <= third["started_at"]


def test_one_server_down_is_unreachable(api, lab, run_worker):
    hosts = add_hosts(api, lab)
    cred = add_key_credential(api, lab)
    task = add_task(api, name="down", kind="commands", hosts=hosts, credential=cred, commands=["true", "uptime"])
    victim = lab.servers[7]
    lab.stop_server(victim.index)
    try:
        ex_id = start(api, task)
        drained(run_worker)
    finally:
        lab.start_server(victim.index)
    ex = get_execution(api, ex_id)
    assert ex["status"] == "failed"
    assert "1 unreachable" in ex["message"]
    ops = by_host(ex)
    down = ops[victim.name]
    assert down["status"] == "unreachable"
    assert "Connection refused" in down["message"] or "connect" in down["message"].lower()
    assert down["finished_at"]
    others = [op for name, op in ops.items() if name != victim.name]
    assert len(others) == 19 and all(op["status"] == "succeeded" for op in others)
    assert all(len(op["steps"]) == 2 for op in others)


def test_failing_command_keeps_rc_and_stderr(api, lab, run_worker):
    hosts = add_hosts(api, lab, lab.servers[:2])
    cred = add_key_credential(api, lab)
    task = add_task(api, name="fails", kind="commands", hosts=hosts, credential=cred,
                    commands=["echo before", "echo oops >&2; echo partial; exit 3", "echo never"])
    ex_id = start(api, task)
    drained(run_worker)
    ex = get_execution(api, ex_id)
    assert ex["status"] == "failed"
    assert "2 failed" in ex["message"]
    for op in ex["operations"]:
        assert op["status"] == "failed"
        assert op["rc"] == 3
        assert "oops" in op["stderr"]
        assert "before" in op["stdout"] and "partial" in op["stdout"] and "never" not in op["stdout"]
        assert [s["status"] for s in op["steps"]] == ["succeeded", "failed"]  # the 3rd never ran
        failed = op["steps"][1]
        assert failed["rc"] == 3 and failed["stderr"] == "oops\n" and failed["stdout"] == "partial\n"
        assert "non-zero return code" in op["message"]


def test_password_login_and_become_with_password(api, lab, run_worker):
    hosts = add_hosts(api, lab, lab.servers[:3])
    cred = add_password_credential(api, lab)
    task = add_task(api, name="as-root", kind="commands", hosts=hosts, credential=cred, become=True,
                    commands=["whoami", "id -u"])
    ex_id = start(api, task)
    drained(run_worker)
    ex = get_execution(api, ex_id)
    assert ex["status"] == "succeeded", ex["message"]
    for op in ex["operations"]:
        assert [s["stdout"] for s in op["steps"]] == ["root\n", "0\n"]
    # Without become the same credential logs in as the lab user: the password login itself works.
    plain = add_task(api, name="as-user", kind="commands", hosts=hosts, credential=cred, commands=["whoami"])
    ex_id = start(api, plain)
    drained(run_worker)
    ex = get_execution(api, ex_id)
    assert ex["status"] == "succeeded", ex["message"]
    assert {op["stdout"] for op in ex["operations"]} == {f"{lab.user}\n"}


def test_become_with_wrong_password_fails(api, lab, run_worker):
    hosts = add_hosts(api, lab, lab.servers[:1])
    cred = add_key_credential(api, lab, become_password="not-the-password")
    task = add_task(api, name="bad-become", kind="commands", hosts=hosts, credential=cred, become=True,
                    commands=["whoami"])
    ex_id = start(api, task)
    drained(run_worker)
    ex = get_execution(api, ex_id)
    assert ex["status"] == "failed", ex
    op = ex["operations"][0]
    assert op["status"] == "failed"
    assert "root" not in op["stdout"]
    assert "password" in (op["message"] or "").lower() or "sudo" in (op["message"] or "").lower()


def test_playbook_task_with_role_vars_and_become(api, lab, run_worker, env):
    hosts = add_hosts(api, lab, lab.servers[:3], vars={"note": "{{ lookup('pipe', 'id') }}"})
    cred = add_key_credential(api, lab, become_password=lab.password)
    task = add_task(api, name="site", kind="playbook", playbook="site.yml", hosts=hosts, credential=cred,
                    become=True, vars={"greeting": "task-default"})
    ex_id = start(api, task, vars={"greeting": "{{ 7*7 }}"})
    requested = get_execution(api, ex_id)["revision"]
    # the directory changes before the run: the execution records what ran, not what was requested
    (Path(env["TASKMANAGER_PLAYBOOK_DIR"]) / "roles" / "greet" / "defaults").mkdir()
    (Path(env["TASKMANAGER_PLAYBOOK_DIR"]) / "roles" / "greet" / "defaults" / "main.yml").write_text("unused: 1\n")
    drained(run_worker)
    ex = get_execution(api, ex_id)
    assert ex["status"] == "succeeded", ex["message"]
    assert ex["revision"] and ex["revision"] != requested and ex["revision"] == ex["content_hash"][:12]
    for op in ex["operations"]:
        names = [s["name"] for s in op["steps"]]
        assert names[:2] == ["who am i", "show the run variable"]
        assert "greet : greet" in names
        steps = {s["name"]: s for s in op["steps"]}
        assert steps["who am i"]["stdout"] == "root"
        # run vars and host vars are data: the braces come out as typed
        assert steps["show the run variable"]["stdout"] == "greeting={{ 7*7 }} host_note={{ lookup('pipe', 'id') }}"
        assert steps["greet : greet"]["stdout"] == "role-says {{ 7*7 }}"


def test_cancel_a_running_execution(api, session, lab, env):
    hosts = add_hosts(api, lab, lab.servers[:2])
    cred = add_key_credential(api, lab)
    task = add_task(api, name="slow", kind="commands", hosts=hosts, credential=cred,
                    commands=["echo started", "sleep 60", "echo never"])
    ex_id = start(api, task)
    flask = str(Path(sys.executable).parent / "flask")
    worker = subprocess.Popen([flask, "--app", "wsgi", "worker", "--burst"], cwd=REPO,
                              env={**os.environ, **env, "TASKMANAGER_HEARTBEAT_S": "0.5"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ex = get_execution(api, ex_id)
            steps = [s for op in ex["operations"] for s in op["steps"]]
            if any(s["name"].startswith("command 2") for s in steps):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"execution never reached the sleep: {ex}")
        assert ex["status"] == "running" and ex["hosts_done"] == 0
        time.sleep(1.2)  # a few heartbeats
        beat = get_execution(api, ex_id)
        status, body = api.post(f"/api/v1/executions/{ex_id}/cancel")
        assert status == 202, body
        asked = time.monotonic()
        worker.wait(timeout=30)
        assert time.monotonic() - asked < 10  # cancel is honoured within seconds, not after the sleep
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    ex = get_execution(api, ex_id)
    assert ex["status"] == "cancelled"
    assert all(op["status"] == "cancelled" for op in ex["operations"])
    for op in ex["operations"]:
        assert [s["status"] for s in op["steps"]] == ["succeeded", "cancelled"]
    from server.core.models import Execution

    session.rollback()
    row = session.get(Execution, ex_id)
    assert row.heartbeat_at > row.started_at  # refreshed while it ran
    assert row.worker_name
    assert beat["status"] == "running"


def test_timeout_marks_timed_out(api, lab, run_worker):
    hosts = add_hosts(api, lab, lab.servers[:1])
    cred = add_key_credential(api, lab)
    task = add_task(api, name="too-slow", kind="commands", hosts=hosts, credential=cred, timeout_s=3,
                    commands=["sleep 30"])
    ex_id = start(api, task)
    began = time.monotonic()
    drained(run_worker)
    assert time.monotonic() - began < 25
    ex = get_execution(api, ex_id)
    assert ex["status"] == "timed_out"
    op = ex["operations"][0]
    assert op["status"] == "failed" and "timed out" in op["message"]


def test_a_job_enqueued_twice_runs_once(api, session, lab, run_worker):
    from server.executions import jobs

    hosts = add_hosts(api, lab, lab.servers[:1])
    cred = add_key_credential(api, lab)
    task = add_task(api, name="once", kind="commands", hosts=hosts, credential=cred,
                    commands=["echo ok"])
    ex_id = start(api, task)
    # A second job for the same execution id (RQ re-enqueue, reaper, a duplicate push).
    jobs.queue().enqueue_call(jobs.JOB_FUNC, args=(ex_id,), job_id=f"execution-{ex_id}-dup")
    drained(run_worker)
    ex = get_execution(api, ex_id)
    assert ex["status"] == "succeeded"
    assert len(ex["operations"]) == 1 and len(ex["operations"][0]["steps"]) == 1
    assert audit_actions(session, ex_id).count("execution.start") == 1
    from rq.job import Job

    from server.core.redis_conn import redis

    results = {Job.fetch(j, connection=redis()).return_value() for j in (f"execution-{ex_id}", f"execution-{ex_id}-dup")}
    assert results == {"succeeded", "not queued (succeeded)"}


def test_missing_playbook_fails_cleanly(api, lab, run_worker, env):
    hosts = add_hosts(api, lab, lab.servers[:1])
    cred = add_key_credential(api, lab)
    task = add_task(api, name="gone", kind="playbook", playbook="site.yml", hosts=hosts, credential=cred)
    ex_id = start(api, task)
    Path(env["TASKMANAGER_PLAYBOOK_DIR"], "site.yml").unlink()  # removed after the request
    drained(run_worker)
    ex = get_execution(api, ex_id)
    assert ex["status"] == "failed"
    assert "does not exist" in ex["message"] or "could not prepare" in ex["message"]
    assert ex["operations"][0]["status"] == "failed"
