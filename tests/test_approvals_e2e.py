"""The approval path end to end with a real RQ worker process and a real sshd server:
request with a dry run → the worker runs it in check mode with diffs (nothing changes on
the host) → the approver sees what would change → approval → the real run changes it.
Then a change between approval and run makes the worker refuse the run."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from server.core.models import AuditLog, Execution
from tests.sshlab import SSHLab

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab():
    with SSHLab(1) as lab:
        yield lab


@pytest.fixture
def target_dir():
    """A directory the lab's ssh user may write to."""
    path = Path("/tmp") / f"tm-dryrun-{uuid.uuid4().hex[:10]}"
    path.mkdir(mode=0o777)
    path.chmod(0o777)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@pytest.fixture
def env(env, tmp_path, monkeypatch):
    pb = tmp_path / "playbooks"
    pb.mkdir()
    (pb / "motd.yml").write_text(
        "- name: motd\n"
        "  hosts: all\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - name: write the message of the day\n"
        "      ansible.builtin.copy:\n"
        "        dest: \"{{ target }}\"\n"
        "        content: \"maintenance tonight\\n\"\n"
        "        mode: \"0644\"\n"
    )
    monkeypatch.setenv("TASKMANAGER_PLAYBOOK_DIR", str(pb))
    return {**env, "TASKMANAGER_PLAYBOOK_DIR": str(pb)}


def test_dry_run_then_approval_then_the_real_run(api, api_as, session, lab, run_worker, target_dir, app):
    srv = lab.servers[0]
    assert api.post("/api/v1/hosts", {"name": srv.name, "address": srv.address, "port": srv.port})[0] == 201
    assert api.post("/api/v1/credentials", {"name": "lab", "kind": "ssh_key", "username": lab.user,
                                            "secret": lab.private_key})[0] == 201
    target = target_dir / "motd"
    target.write_text("welcome\n")
    target.chmod(0o666)
    status, task = api.post("/api/v1/tasks", {"name": "motd", "kind": "playbook", "playbook": "motd.yml",
                                              "hosts": [srv.name], "credential": "lab",
                                              "vars": {"target": str(target)}})
    assert status == 201, task
    olga = api_as("olga", "operator")
    ann = api_as("ann", "approver")
    assert api.post("/api/v1/policies", {"name": "motd", "users": ["olga"], "tasks": ["motd"],
                                         "permissions": ["execute"], "requires_approval": True,
                                         "approvers": [{"user": "ann", "level": 1}]})[0] == 201

    status, run = olga.post(f"/api/v1/tasks/{task['id']}/executions", {"dry_run": True, "reason": "CHG-7"})
    assert status == 202 and run["status"] == "waiting_approval"
    proc = run_worker()
    assert proc.returncode == 0, proc.stderr[-3000:]

    status, req = ann.get(f"/api/v1/executions/{run['id']}/approval")
    assert status == 200
    dry = req["dry_run"]
    assert dry["status"] == "succeeded", dry
    [hostres] = dry["hosts"]
    assert hostres["host"] == srv.name and hostres["changed"] == 1
    diff = hostres["steps"][0]["diff"]
    assert "-welcome" in diff and "+maintenance tonight" in diff
    assert target.read_text() == "welcome\n"  # check mode changed nothing

    status, done = ann.post(f"/api/v1/executions/{run['id']}/approve", {"comment": "diff looks right"})
    assert status == 200 and done["status"] == "queued"
    proc = run_worker()
    assert proc.returncode == 0, proc.stderr[-3000:]
    session.expire_all()
    assert session.get(Execution, run["id"]).status == "succeeded"
    assert target.read_text() == "maintenance tonight\n"


def test_worker_refuses_a_run_whose_task_changed_after_approval(api, api_as, session, lab, run_worker, target_dir):
    srv = lab.servers[0]
    assert api.post("/api/v1/hosts", {"name": srv.name, "address": srv.address, "port": srv.port})[0] == 201
    assert api.post("/api/v1/credentials", {"name": "lab", "kind": "ssh_key", "username": lab.user,
                                            "secret": lab.private_key})[0] == 201
    target = target_dir / "motd"
    status, task = api.post("/api/v1/tasks", {"name": "motd", "kind": "playbook", "playbook": "motd.yml",
                                              "hosts": [srv.name], "credential": "lab",
                                              "vars": {"target": str(target)}})
    assert status == 201
    olga = api_as("olga", "operator")
    ann = api_as("ann", "approver")
    assert api.post("/api/v1/policies", {"name": "motd", "users": ["olga"], "tasks": ["motd"],
                                         "permissions": ["execute"], "requires_approval": True,
                                         "approvers": [{"user": "ann", "level": 1}]})[0] == 201
    status, run = olga.post(f"/api/v1/tasks/{task['id']}/executions", {"reason": "CHG-8"})
    assert ann.post(f"/api/v1/executions/{run['id']}/approve")[1]["status"] == "queued"
    # Between approval and run, someone points the task at another file.
    assert api.patch(f"/api/v1/tasks/{task['id']}", {"vars": {"target": "/etc/motd"}})[0] == 200
    proc = run_worker()
    assert proc.returncode == 0, proc.stderr[-3000:]
    session.expire_all()
    ex = session.get(Execution, run["id"])
    assert ex.status == "failed" and "task variables changed" in ex.message and "new approval" in ex.message
    assert not target.exists()
    assert [op.status for op in ex.operations] == ["skipped"]
    refused = session.execute(select(AuditLog).where(AuditLog.action == "execution.refused")).scalar_one()
    assert refused.target_id == str(ex.id)
