"""The fingerprint an approval binds, and its per-component parts (server/executions/fingerprint.py).

Fingerprints are stored and compared with fresh ones across deploys, so the formula is pinned
here with the digests of the released code: a change would refuse every approved run.
"""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from server.core.models import Credential, Host, Task
from server.executions import fingerprint as fp


def _inputs(kind: str = "commands"):
    cred = Credential(id=3, name="c", kind="ssh_key", version=2)
    task = Task(id=7, name="t", kind=kind, commands=["uptime", "df -h"] if kind == "commands" else [],
                playbook="site.yml" if kind == "playbook" else None, vars={"a": 1, "b": [1, 2]},
                become=True, timeout_s=60, credential=cred)
    hosts = [Host(name="web-1", address="10.0.0.1", port=22, protocol="ssh", vars={"x": "y"}),
             Host(name="db-1", address="10.0.0.2", port=None, protocol="winrm", vars={})]
    return task, "abc123", {"v": "é"}, hosts


def test_fingerprint_and_parts_are_the_released_digests():
    assert fp.fingerprint(*_inputs("commands")) == "fd2f6636e14098d2811a997a452629be00ee6beaca7bee686b9e1d3e3f24fc8f"
    assert fp.fingerprint(*_inputs("playbook")) == "7ee0b1092019894836662636b80770da5fba0ad4b5f9c501570afbdbb4b1575a"
    assert fp.parts(*_inputs("commands")) == {
        "task definition": "c7085898d9b2f6f3", "commands": "31da0da68a70e97e", "task variables": "e6f20bdc3757e5e7",
        "run variables": "06bdcfd24347e0ec", "target hosts": "45552a3f4f88b925", "credential": "5e34ab3ad90f5903",
    }
    assert fp.parts(*_inputs("playbook"))["playbook content"] == "d86a70513994b085"


def test_every_input_belongs_to_one_part_or_is_the_task_identity():
    covered = [key for keys in fp.PARTS.values() for key in keys] + list(fp.IDENTITY)
    # launch and files: only when set
    assert sorted(covered) == sorted(fp._inputs(*_inputs(), launch={"tags": ["x"]}, files="f" * 64))
    assert len(covered) == len(set(covered))


CHANGES = {
    "task definition": lambda t, c, v, h: setattr(t, "timeout_s", 61),
    "commands": lambda t, c, v, h: t.commands.append("id"),
    "task variables": lambda t, c, v, h: t.vars.update(a=2),
    "run variables": lambda t, c, v, h: v.update(v="e"),
    "target hosts": lambda t, c, v, h: setattr(h[0], "port", 2222),
    "credential": lambda t, c, v, h: setattr(t.credential, "version", 3),
}


@pytest.mark.parametrize("part", sorted(CHANGES))
def test_a_change_moves_the_fingerprint_and_exactly_its_part(part):
    before_args = _inputs()
    before_fp, before_parts = fp.fingerprint(*before_args), fp.parts(*before_args)
    args = _inputs()
    args = (args[0], args[1], copy.deepcopy(args[2]), args[3])
    CHANGES[part](*args)
    assert fp.fingerprint(*args) != before_fp
    after = fp.parts(*args)
    assert [name for name in after if after[name] != before_parts[name]] == [part]
    assert fp.explain_change(before_parts, after) == part


def test_launch_options_are_a_part_of_their_own_and_absent_ones_keep_the_released_formula():
    args = _inputs()
    assert fp.fingerprint(*args, {}) == fp.fingerprint(*args) == fp.fingerprint(*_inputs())
    assert "launch options" not in fp.parts(*args)
    before = fp.parts(*args, {"secrets": "a" * 64, "tags": ["x"]})
    after = fp.parts(*args, {"secrets": "b" * 64, "tags": ["x"]})
    assert fp.explain_change(before, after) == "launch options"
    assert fp.fingerprint(*args, {"secrets": "a" * 64}) != fp.fingerprint(*args, {"secrets": "b" * 64})


def test_project_files_are_a_part_of_their_own_and_absent_ones_keep_the_released_formula():
    args = _inputs("playbook")
    assert fp.fingerprint(*args, None, None) == fp.fingerprint(*args)
    assert "project files" not in fp.parts(*args)
    before, after = fp.parts(*args, files="a" * 64), fp.parts(*args, files="b" * 64)
    assert fp.explain_change(before, after) == "project files"
    assert fp.explain_change(fp.parts(*args), before) == "project files"  # approved before they counted


def test_tree_hash_covers_every_file_but_the_skipped_ones(tmp_path):
    from server.catalog.playbooks import tree_hash

    base = tmp_path / "pb"
    (base / "roles" / "r").mkdir(parents=True)
    (base / "site.yml").write_text("- hosts: all\n")
    (base / "roles" / "r" / "main.yml").write_text("x\n")
    skip = [base / "site.yml", base / "roles"]
    assert tree_hash(base, skip) is None  # nothing else: the released formula applies
    (base / ".git").mkdir()
    (base / ".git" / "HEAD").write_text("ref\n")
    assert tree_hash(base, skip) is None  # nothing Ansible loads
    (base / "filter_plugins").mkdir()
    (base / "filter_plugins" / "f.py").write_text("a = 1\n")
    first = tree_hash(base, skip)
    (base / "filter_plugins" / "f.py").write_text("a = 2\n")
    second = tree_hash(base, skip)
    (base / "group_vars").mkdir()
    (base / "group_vars" / "all.yml").symlink_to("/etc/hostname")  # hashed by its target, not followed
    third = tree_hash(base, skip)
    (base / "roles" / "r" / "main.yml").write_text("y\n")  # covered by the content part
    assert len({first, second, third}) == 3 and None not in {first, second, third}
    assert tree_hash(base, skip) == third


def test_new_content_changes_the_content_part():
    task, _c, run_vars, hosts = _inputs("playbook")
    before = fp.parts(task, "abc123", run_vars, hosts)
    after = fp.parts(task, "def456", run_vars, hosts)
    assert fp.explain_change(before, after) == "playbook content"
    assert fp.fingerprint(task, "abc123", run_vars, hosts) != fp.fingerprint(task, "def456", run_vars, hosts)


def test_explain_change_without_stored_parts_names_everything():
    assert fp.explain_change(None, fp.parts(*_inputs())).startswith("the task definition, playbook content")


@pytest.mark.parametrize("first", ["server.executions.approvals", "server.executions.request",
                                   "server.executions.fingerprint", "server.executions.reaper"])
def test_each_module_imports_first_in_a_fresh_interpreter(first):
    """No import cycle: whichever of these a process imports first, it loads."""
    done = subprocess.run([sys.executable, "-c", f"import {first}; print('ok')"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
