"""Hostile playbooks and commands get nowhere: each run is confined to its sandbox.

A real RQ worker runs a playbook from the project directory whose every task is an attack
delegated to the controller (``delegate_to: localhost``), and a ``commands`` task on an
admin's ``local`` host does the same. Each attack must fail inside the run: the vault and
secret keys, the SQLite file, the Redis unix socket, another ssh-agent's socket, other
processes' environments (the worker's holds a canary), writes outside the run's own
directory, root files and sudo.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from server.core.models import Execution
from tests.sshlab import SSHLab

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CANARY = f"worker-canary-{uuid.uuid4().hex}"
WARM_PROBE = "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"  # the command lines of the run's processes


@pytest.fixture(scope="module")
def lab():
    with SSHLab(1) as lab:
        yield lab


@pytest.fixture
def env(env, tmp_path, monkeypatch):
    pb = tmp_path / "project"
    pb.mkdir()
    monkeypatch.setenv("TASKMANAGER_PLAYBOOK_DIR", str(pb))
    return {**env, "TASKMANAGER_PLAYBOOK_DIR": str(pb)}


@pytest.fixture
def decoy_agent(tmp_path):
    """An ssh-agent of someone else on this machine, holding a key."""
    sock = Path("/tmp") / f"tm-decoy-agent-{uuid.uuid4().hex[:8]}.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    key = tmp_path / "decoy"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    for _ in range(50):
        if sock.exists():
            break
        subprocess.run(["sleep", "0.1"])
    subprocess.run(["ssh-add", str(key)], env={**os.environ, "SSH_AUTH_SOCK": str(sock)}, check=True,
                   capture_output=True)
    yield sock
    proc.terminate()
    proc.wait(timeout=10)
    sock.unlink(missing_ok=True)


def attacks(instance: Path, db_file: Path, redis_sock: str, agent_sock: Path, escape: Path) -> dict[str, str]:
    """name → a shell line that prints SUCCEEDED only if the attack worked (or leaves ``escape``)."""
    return {
        "vault key": f"cat {instance}/vault_key && echo SUCCEEDED",
        "secret key": f"cat {instance}/secret_key && echo SUCCEEDED",
        "database": f"head -c 16 {db_file} && echo SUCCEEDED",
        "instance dir": f"ls {instance} && echo SUCCEEDED",
        "redis socket": f"python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.connect('{redis_sock}'); "
                        f"s.sendall(b'PING\\r\\n'); print(s.recv(10))\" && echo SUCCEEDED",
        "other agent": f"SSH_AUTH_SOCK={agent_sock} ssh-add -l && echo SUCCEEDED",
        "worker environ": f"cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep {CANARY} && echo SUCCEEDED",
        "other processes": "ps -eo comm | grep -E 'flask|redis-server|sshd|rq' && echo SUCCEEDED",
        "write outside": f"touch {escape}",  # lands in the run's own /tmp: checked from outside
        "write repo": f"touch {REPO}/playbooks/pwned && echo SUCCEEDED",
        "write instance": f"touch {instance}/pwned && echo SUCCEEDED",
        "shadow": "cat /etc/shadow && echo SUCCEEDED",
        "sudo": "sudo -n id && echo SUCCEEDED",
        "root": "[ \"$(id -u)\" = 0 ] && echo SUCCEEDED",
    }


def _targets(env: dict[str, str]) -> tuple[Path, Path, str]:
    instance = Path(env["TASKMANAGER_INSTANCE_DIR"])
    return instance, instance / "taskmanager.db", env["TASKMANAGER_REDIS_URL"].removeprefix("unix://")


def _assert_all_failed(session, ex_id: int, names: list[str], escape: Path) -> None:
    session.expire_all()
    ex = session.get(Execution, ex_id)
    [op] = ex.operations
    steps = {s.name: s for s in op.steps}
    seen = 0
    for name in names:
        step = next((s for n, s in steps.items() if name in n), None)
        assert step is not None, (name, list(steps))
        assert "SUCCEEDED" not in (step.stdout or ""), (name, step.stdout, step.stderr)
        seen += 1
    assert seen == len(names)
    assert not escape.exists()
    assert not (REPO / "playbooks" / "pwned").exists()


@pytest.mark.skipif(os.environ.get("TM_TEST_DB") == "postgresql", reason="attacks the SQLite file")
def test_hostile_playbook_is_confined(api, session, lab, run_worker, env, decoy_agent):
    instance, db_file, redis_sock = _targets(env)
    assert (instance / "vault_key").exists() and db_file.exists() and Path(redis_sock).exists()
    escape = Path("/tmp") / f"tm-escape-{uuid.uuid4().hex[:8]}"
    found = attacks(instance, db_file, redis_sock, decoy_agent, escape)
    tasks = "".join(
        f"    - name: \"attack: {name}\"\n"
        f"      ansible.builtin.shell: {json.dumps(line)}\n"
        f"      delegate_to: localhost\n"
        f"      ignore_errors: true\n"
        for name, line in found.items())
    (Path(env["TASKMANAGER_PLAYBOOK_DIR"]) / "evil.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n" + tasks)
    srv = lab.servers[0]
    assert api.post("/api/v1/hosts", {"name": srv.name, "address": srv.address, "port": srv.port})[0] == 201
    assert api.post("/api/v1/credentials", {"name": "lab", "kind": "ssh_key", "username": lab.user,
                                            "secret": lab.private_key})[0] == 201
    status, task = api.post("/api/v1/tasks", {"name": "evil", "kind": "playbook", "playbook": "evil.yml",
                                              "hosts": [srv.name], "credential": "lab"})
    assert status == 201, task
    status, ex = api.post(f"/api/v1/tasks/{task['id']}/executions", {})
    assert status == 202, ex
    proc = run_worker(extra_env={"TM_WORKER_CANARY": CANARY})
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_all_failed(session, ex["id"], [f"attack: {n}" for n in found], escape)
    # The run itself worked: every attack ran on the controller and failed (ignore_errors), none unreachable.
    [op] = session.get(Execution, ex["id"]).operations
    assert op.status == "succeeded", op.message
    # failed under ignore_errors: recorded as "ignored" (shown "failed (ignored)")
    assert {s.status for s in op.steps if "write outside" not in s.name} == {"ignored"}


@pytest.mark.skipif(os.environ.get("TM_TEST_DB") == "postgresql", reason="attacks the SQLite file")
def test_local_commands_are_confined(api, session, run_worker, env, decoy_agent):
    instance, db_file, redis_sock = _targets(env)
    escape = Path("/tmp") / f"tm-escape-{uuid.uuid4().hex[:8]}"
    found = attacks(instance, db_file, redis_sock, decoy_agent, escape)
    assert api.post("/api/v1/hosts", {"name": "controller", "address": "localhost", "protocol": "local"})[0] == 201
    names = list(found)
    status, task = api.post("/api/v1/tasks", {"name": "evil-local", "kind": "commands", "hosts": ["controller"],
                                              "commands": [f"{found[n]}; true" for n in names] + [WARM_PROBE]})
    assert status == 201, task
    status, ex = api.post(f"/api/v1/tasks/{task['id']}/executions", {})
    assert status == 202, ex
    # started cold (warm start turned off): the attacks fail the same way as warm (the playbook test)
    proc = run_worker(extra_env={"TM_WORKER_CANARY": CANARY, "TASKMANAGER_WARM": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    session.expire_all()
    run = session.get(Execution, ex["id"])
    [op] = run.operations
    assert op.status == "succeeded", (op.message, [(s.name, s.stdout, s.stderr) for s in op.steps])
    assert len(op.steps) == len(names) + 1
    for name, step in zip(names, op.steps, strict=False):
        assert "SUCCEEDED" not in (step.stdout or ""), (name, step.stdout, step.stderr)
    assert not escape.exists()
    assert "warm_process.py" not in op.steps[-1].stdout and "ansible-playbook" in op.steps[-1].stdout
    # It ran as nobody, in a PID namespace of its own; started warm.
    status, task = api.post("/api/v1/tasks", {"name": "whoami", "kind": "commands", "hosts": ["controller"],
                                              "commands": ["id -u", "ls /proc | grep -c '^[0-9]'", WARM_PROBE]})
    status, ex = api.post(f"/api/v1/tasks/{task['id']}/executions", {})
    assert run_worker().returncode == 0
    session.expire_all()
    steps = session.execute(select(Execution).where(Execution.id == ex["id"])).scalar_one().operations[0].steps
    assert steps[0].stdout.strip() == "65534"
    assert int(steps[1].stdout.strip()) < 30  # the run's own few processes, not the machine's
    assert "warm_process.py" in steps[2].stdout  # the run's ansible-playbook is the warm process (warm.py)


def test_sandbox_failure_fails_the_run(api, session, run_worker, env, tmp_path):
    """No bubblewrap on PATH: the run fails with the reason, nothing runs unconfined."""
    marker = tmp_path / "ran"
    assert api.post("/api/v1/hosts", {"name": "controller", "address": "localhost", "protocol": "local"})[0] == 201
    status, task = api.post("/api/v1/tasks", {"name": "t", "kind": "commands", "hosts": ["controller"],
                                              "commands": [f"touch {marker}"]})
    status, ex = api.post(f"/api/v1/tasks/{task['id']}/executions", {})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ssh", "ssh-agent", "ansible-playbook", "python3", "sh", "setpriv"):
        found = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        if found:
            (bin_dir / tool).symlink_to(found)
    venv_bin = Path(os.sys.executable).parent
    assert run_worker(extra_env={"PATH": f"{venv_bin}:{bin_dir}"}).returncode == 0
    session.expire_all()
    run = session.get(Execution, ex["id"])
    assert run.status == "failed" and "bubblewrap" in (run.message or ""), run.message
    assert not marker.exists()


def test_private_dirs_left_by_a_killed_worker_are_removed():
    """Only a directory that is old and named by no live process goes; a run's (named by its
    bubblewrap) and one being prepared (recent) stay."""
    from server.runs import sandbox

    stale, fresh, running = (sandbox.new_private_dir() for _ in range(3))
    hours_ago = time.time() - 7200
    for d in (stale, running):
        for p in [d, *d.iterdir()]:
            os.utime(p, (hours_ago, hours_ago))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(running)])
    try:
        while str(running).encode() not in Path(f"/proc/{holder.pid}/cmdline").read_bytes():
            time.sleep(0.01)  # exec'd
        removed = sandbox.remove_stale_dirs()
        assert stale in removed and not stale.exists()
        assert fresh.exists() and running.exists() and {fresh, running}.isdisjoint(removed)
    finally:
        holder.kill()
        holder.wait()
        for d in (fresh, running):
            shutil.rmtree(d, ignore_errors=True)
