"""A ``commands`` run executes its hosts on threads of one ansible-playbook (strategy tm_threads).

The proof is the parent of each host's shell: with Ansible's forked workers every host's
command has its own parent (the worker forked for it); with threads every host's command
is started by ansible-playbook itself. A host whose commands outlast the hold-back of
progress lines still shows its finished steps while the next one runs, and a quick host's
steps come from its result alone, whole and in order.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_execution_e2e import REPO, add_task, by_host, drained, env, get_execution, start  # noqa: F401

pytestmark = pytest.mark.slow


def _local_hosts(api, count: int) -> list[str]:
    names = [f"thread-host-{i}" for i in range(count)]
    status, body = api.post("/api/v1/hosts", [{"name": n, "address": "localhost", "protocol": "local"}
                                              for n in names])
    assert status == 201, body
    return names


def test_every_host_runs_on_a_thread_of_one_ansible_playbook(api, run_worker):
    hosts = _local_hosts(api, 6)
    task = add_task(api, name="parents", kind="commands", hosts=hosts, commands=["echo $PPID", "echo second"])
    ex_id = start(api, task)
    drained(run_worker)
    ex = get_execution(api, ex_id)
    assert ex["status"] == "succeeded", ex["message"]
    ops = by_host(ex)
    assert set(ops) == set(hosts)
    for op in ops.values():  # every step whole and in order, from the result (no progress line was sent)
        assert [s["status"] for s in op["steps"]] == ["succeeded", "succeeded"]
        assert op["steps"][1]["stdout"] == "second\n"
    parents = {op["steps"][0]["stdout"].strip() for op in ops.values()}
    assert len(parents) == 1 and parents.pop().isdigit()


def test_a_finished_step_shows_while_a_long_one_runs(api, env):  # noqa: F811 (the imported fixture)
    hosts = _local_hosts(api, 2)
    task = add_task(api, name="held", kind="commands", hosts=hosts, commands=["echo first", "sleep 4", "echo last"])
    ex_id = start(api, task)
    flask = str(Path(sys.executable).parent / "flask")
    worker = subprocess.Popen([flask, "--app", "wsgi", "worker", "--burst"], cwd=REPO, env={**env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and worker.poll() is None:
            ex = get_execution(api, ex_id)
            steps = [[(s["name"][:9], s["status"], s["stdout"]) for s in op["steps"]] for op in ex["operations"]]
            if ex["status"] == "running" and all(
                    len(st) >= 2 and st[0] == ("command 1", "succeeded", "first\n") and st[1][:2] == ("command 2", "running")
                    for st in steps):
                seen = steps
                break
            time.sleep(0.1)
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert seen, "the first step never showed while the sleep ran"
    ex = get_execution(api, ex_id)
    assert ex["status"] == "succeeded", ex["message"]
    for op in ex["operations"]:
        assert [(s["status"], s["stdout"]) for s in op["steps"]] == [
            ("succeeded", "first\n"), ("succeeded", ""), ("succeeded", "last\n")]
