"""Warm start (server/runs/warm.py): runs start from a sandboxed ansible-playbook already
imported, each with its own configuration, and no run sees another run's process state.

Two playbooks in different directories run one after the other on one real worker; each run
is served by its own warm process (seen in the run's process list), reads its own roles path
(the role ``greet`` exists in both directories with different output) and its own Ansible
settings (pipelining is on for runs, off in a warm process before its run), and a filter plugin
that remembers, in the interpreter's builtins, every play it templated sees only its own run.
Cancel of a warm run, and a cold start with ``TASKMANAGER_WARM=0``, are in
test_robustness_e2e.py and test_hostile_sandbox.py.
"""
from __future__ import annotations

import pytest
from sqlalchemy import select

from server.core.models import Execution

pytestmark = pytest.mark.slow

# Templated in the main ansible-playbook process (the play's host pattern): "all" only if no
# other run's play was templated in this interpreter before.
LEAK_FILTER = '''
import builtins


def first_run_only(name):
    seen = builtins.__dict__.setdefault("_tm_plays_seen", set())
    seen.add(name)
    return "all" if seen == {name} else "none-another-run-was-here"


class FilterModule:
    def filters(self):
        return {"first_run_only": first_run_only}
'''
PLAY = '''- hosts: "{{{{ '{name}' | first_run_only }}}}"
  gather_facts: false
  roles: [greet]
  tasks:
    - name: settings
      ansible.builtin.shell: "echo pipelining={{{{ lookup('config', 'ANSIBLE_PIPELINING') }}}}"
    - name: processes
      ansible.builtin.shell: "cat /proc/[0-9]*/cmdline | tr '\\\\0' ' '"
'''


@pytest.fixture
def env(env, tmp_path, monkeypatch):
    pb = tmp_path / "project"
    for name in ("a", "b"):
        (pb / name / "filter_plugins").mkdir(parents=True)
        (pb / name / "filter_plugins" / "leak.py").write_text(LEAK_FILTER)
        (pb / name / "roles" / "greet" / "tasks").mkdir(parents=True)
        (pb / name / "roles" / "greet" / "tasks" / "main.yml").write_text(
            f"- name: greet\n  ansible.builtin.shell: echo greet-from-{name}\n")
        (pb / name / "site.yml").write_text(PLAY.format(name=name))
    monkeypatch.setenv("TASKMANAGER_PLAYBOOK_DIR", str(pb))
    return {**env, "TASKMANAGER_PLAYBOOK_DIR": str(pb)}


def test_each_run_is_warm_with_its_own_settings_and_state(api, session, run_worker):
    assert api.post("/api/v1/hosts", {"name": "controller", "address": "localhost", "protocol": "local"})[0] == 201
    ids = []
    for name in ("a", "b"):
        status, task = api.post("/api/v1/tasks", {"name": f"play-{name}", "kind": "playbook",
                                                  "playbook": f"{name}/site.yml", "hosts": ["controller"]})
        assert status == 201, task
        status, ex = api.post(f"/api/v1/tasks/{task['id']}/executions", {})
        assert status == 202, ex
        ids.append(ex["id"])
    proc = run_worker()  # one worker, both runs: the second's warm process started after the first
    assert proc.returncode == 0, proc.stderr[-3000:]
    session.expire_all()
    for name, ex_id in zip(("a", "b"), ids, strict=True):
        ex = session.execute(select(Execution).where(Execution.id == ex_id)).scalar_one()
        [op] = ex.operations
        assert op.status == "succeeded", (op.message, [(s.name, s.stdout, s.stderr) for s in op.steps])
        out = {s.name: s.stdout or "" for s in op.steps}
        assert [k for k in out if "greet" in k] and out[next(k for k in out if "greet" in k)].strip() == \
            f"greet-from-{name}", out  # this run's roles path
        assert out["settings"].strip() == "pipelining=True", out  # this run's Ansible settings
        assert "warm_process.py" in out["processes"], out["processes"]  # served by a warm process
