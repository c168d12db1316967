"""Inventories: the one generated per execution (parsed by real Ansible) and importing
existing inventory files (``flask --app wsgi hosts import FILE``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from server.runs import inventory
from server.core.errors import ValidationError
from server.core.models import AuditLog, Credential, Group, Host

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ANSIBLE_ENV = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": "/root", "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_INVENTORY_ENABLED": "yaml", "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
               "LANG": "C.UTF-8"}


def make_hosts(session):
    web = Group(name="web", vars={"tier": "front", "motd": "{{ lookup('pipe', 'id') }}"})
    db = Group(name="db-servers", vars={"ansible_connection": "local"})
    hosts = [
        Host(name="web1", address="10.0.0.1", port=2222, protocol="ssh",
             vars={"note": "{{ 7*7 }}", "flag": "true", "count": 3, "nested": {"list": ["{% raw %}", "x"]},
                   "ansible_python_interpreter": "/usr/bin/python3",
                   "ansible_ssh_common_args": "-o ProxyCommand=evil", "ansible_connection": "local"},
             groups=[web]),
        Host(name="db[1:3]", address="10.0.0.2", protocol="ssh", vars={}, groups=[web, db]),
        Host(name="here", address="localhost", protocol="local", vars={}),
    ]
    cred = Credential(name="c", kind="password", username="deploy", become_method="sudo", become_user="root",
                      version=1, options={})
    session.add_all(hosts + [cred])
    session.commit()
    return hosts, cred


def test_build_inventory_shape(session):
    hosts, cred = make_hosts(session)
    inv = inventory.build_inventory(hosts, cred)
    root = inv["all"]
    odd = hosts[1]
    assert set(root["hosts"]) == {"web1", f"tm-host-{odd.id}", "here"}  # [1:3] would be a range to Ansible
    assert inv["_meta"]["names"][f"tm-host-{odd.id}"] == "db[1:3]"
    web1 = root["hosts"]["web1"]
    assert web1["ansible_host"] == "10.0.0.1" and web1["ansible_port"] == 2222
    assert web1["ansible_user"] == "deploy" and web1["ansible_connection"] == "ssh"
    # user data never changes how the controller connects, nor the interpreter it runs
    assert "ansible_ssh_common_args" not in web1
    assert "ansible_python_interpreter" not in web1
    assert isinstance(web1["note"], inventory.Unsafe) and web1["count"] == 3
    assert root["hosts"]["here"]["ansible_connection"] == "local"
    assert root["children"]["web"]["hosts"] == {"web1": None, f"tm-host-{odd.id}": None}
    assert root["children"]["web"]["vars"]["tier"] == "front"
    assert "vars" not in root["children"]["db-servers"]  # its only var was a connection setting
    assert root["vars"] == {"ansible_become_method": "sudo", "ansible_become_user": "root"}
    text = inventory.dump_inventory(inv)
    assert "!unsafe '{{ 7*7 }}'" in text and "flag: 'true'" in text
    assert "deploy" in text and "password" not in text.lower()


def test_generated_inventory_parses_and_is_never_templated(session, tmp_path):
    hosts, cred = make_hosts(session)
    marker = tmp_path / "templated"
    hosts[2].vars = {"note": f"{{{{ lookup('pipe', 'touch {marker}') }}}}", "flag": "yes", "empty": ""}
    session.commit()
    inv_file = tmp_path / "hosts.yml"
    inv_file.write_text(inventory.dump_inventory(inventory.build_inventory(hosts, cred)))
    listed = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(inv_file), "--list"], env=ANSIBLE_ENV,
                            capture_output=True, text=True, check=True)
    data = json.loads(listed.stdout, object_hook=lambda d: d.get("__ansible_unsafe", d) if len(d) == 1 else d)
    hv = data["_meta"]["hostvars"]
    assert hv["web1"]["note"] == "{{ 7*7 }}" and hv["web1"]["flag"] == "true" and hv["web1"]["count"] == 3
    assert hv["web1"]["nested"] == {"list": ["{% raw %}", "x"]}
    assert sorted(data["web"]["hosts"]) == sorted(["web1", f"tm-host-{hosts[1].id}"])
    play = tmp_path / "show.yml"
    play.write_text("- hosts: here\n  gather_facts: false\n  tasks:\n"
                    "    - ansible.builtin.debug:\n        msg: '{{ note }}|{{ flag }}|{{ empty }}|{{ motd | default(\"-\") }}'\n")
    out = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inv_file), str(play)], env=ANSIBLE_ENV,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"lookup('pipe', 'touch {marker}')" in out.stdout
    assert "|yes||-" in out.stdout  # strings stay strings ('yes' is not a boolean, '' is not null)
    assert not marker.exists()


def test_unknown_protocol_without_protocol_module(session):
    host = Host(name="odd", address="x", protocol="nonsense", vars={})
    session.add(host)
    session.commit()
    with pytest.raises(ValidationError):
        inventory.build_inventory([host], None)


INI = """
[web]
web1 ansible_host=192.0.2.10 ansible_port=2200 app_role=frontend
web2 ansible_host=192.0.2.11 ansible_user=root ansible_ssh_pass=hunter2

[db]
db1 ansible_host=192.0.2.20

[prod:children]
web
db

[prod:vars]
env_name=production
ansible_ssh_common_args='-o ProxyCommand=nc %h %p'

[all:vars]
ntp_server=ntp.example.com
"""


def test_import_ini_inventory(session, tmp_path):
    path = tmp_path / "inv.ini"
    path.write_text(INI)
    result = inventory.import_inventory(session, str(path), actor="tester")
    session.commit()
    assert result["hosts"] == 3 and result["groups"] == 3
    assert set(result["skipped_vars"]) == {"ansible_user", "ansible_ssh_pass", "ansible_ssh_common_args"}
    hosts = {h.name: h for h in session.execute(select(Host)).scalars()}
    assert set(hosts) == {"web1", "web2", "db1"}
    assert hosts["web1"].address == "192.0.2.10" and hosts["web1"].port == 2200 and hosts["web1"].protocol == "ssh"
    assert hosts["web1"].vars == {"app_role": "frontend"}  # [all:vars] stays on the all group
    assert session.execute(select(Group).where(Group.name == "all")).scalar_one().vars == {
        "ntp_server": "ntp.example.com"}
    assert "ansible_ssh_pass" not in hosts["web2"].vars and "hunter2" not in json.dumps(hosts["web2"].vars)
    assert [g.name for g in hosts["web1"].groups] == ["web"]  # the tree is kept, not flattened
    assert [g.name for g in hosts["db1"].groups] == ["db"]
    prod = session.execute(select(Group).where(Group.name == "prod")).scalar_one()
    assert prod.vars == {"env_name": "production"} and [c.name for c in prod.children] == ["db", "web"]
    actions = [a for a in session.execute(select(AuditLog.action)).scalars()]
    assert actions.count("host.create") == 3 and actions.count("group.create") == 4  # all, db, prod, web
    assert actions[-1] == "inventory.import"
    # Importing again updates in place: nothing new, changed address recorded.
    path.write_text(INI.replace("192.0.2.20", "192.0.2.21"))
    again = inventory.import_inventory(session, str(path), actor="tester")
    session.commit()
    assert again["hosts"] == 3
    assert session.execute(select(Host).where(Host.name == "db1")).scalar_one().address == "192.0.2.21"
    assert len(session.execute(select(Host)).scalars().all()) == 3
    updates = session.execute(select(AuditLog).where(AuditLog.action == "host.update")).scalars().all()
    assert [u.detail["changed"] for u in updates] == [["address"]]


def test_import_yaml_inventory_with_local_connection(session, tmp_path):
    path = tmp_path / "inv.yml"
    path.write_text("all:\n  hosts:\n    box:\n      ansible_connection: local\n      greeting: '{{ hi }}'\n"
                    "      raw: !unsafe '{{ lookup(\"pipe\", \"id\") }}'\n"
                    "      token: !vault |\n        $ANSIBLE_VAULT;1.1;AES256\n        6162636465\n"
                    "  children:\n    lab:\n      hosts:\n        box: {}\n")
    result = inventory.import_inventory(session, str(path), actor="tester")
    session.commit()
    assert (result["hosts"], result["groups"], result["skipped_vars"]) == (1, 1, ["token"])
    assert result["skipped"] == [{"scope": "host box", "name": "token",
                                  "reason": "vault-encrypted value: secrets belong in a credential"}]
    assert result["literal_jinja"] == [{"scope": "host box", "name": "greeting"}, {"scope": "host box", "name": "raw"}]
    box = session.execute(select(Host).where(Host.name == "box")).scalar_one()
    assert box.protocol == "local" and box.address == "box"
    assert box.vars == {"greeting": "{{ hi }}", "raw": '{{ lookup("pipe", "id") }}'}


def test_import_refuses_bad_files_and_scripts(session, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("all:\n  hosts: [unbalanced\n")
    with pytest.raises(ValidationError) as err:
        inventory.import_inventory(session, str(bad), actor="tester")
    assert err.value.status == 422 and "not a valid Ansible inventory" in err.value.message
    with pytest.raises(ValidationError):
        inventory.import_inventory(session, str(tmp_path / "missing.ini"), actor="tester")
    marker = tmp_path / "script-ran"
    script = tmp_path / "dynamic.py"
    script.write_text(f"#!/bin/sh\ntouch {marker}\necho '{{\"all\": {{\"hosts\": [\"x\"]}}}}'\n")
    script.chmod(0o755)
    with pytest.raises(ValidationError):
        inventory.import_inventory(session, str(script), actor="tester")
    assert not marker.exists()  # an inventory script would run code on this machine: never executed
    empty = tmp_path / "empty.ini"
    empty.write_text("[web]\n")
    with pytest.raises(ValidationError) as err:
        inventory.import_inventory(session, str(empty), actor="tester")
    assert "no hosts" in err.value.message
    session.rollback()
    assert session.execute(select(Host)).first() is None


def test_cli_hosts_import(app, session, env, tmp_path):
    path = tmp_path / "inv.ini"
    path.write_text(INI)
    cmd = [str(BIN / "flask"), "--app", "wsgi", "hosts", "import"]
    run_env = {**os.environ, **env}
    ok = subprocess.run(cmd + [str(path)], cwd=REPO, env=run_env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert f"imported 3 hosts and 3 groups from {path}" in ok.stdout
    session.rollback()
    assert {h.name for h in session.execute(select(Host)).scalars()} == {"web1", "web2", "db1"}
    bad = tmp_path / f"bad-{uuid.uuid4().hex}.yml"
    bad.write_text("all: [\n")
    failed = subprocess.run(cmd + [str(bad)], cwd=REPO, env=run_env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2
    assert failed.stderr.startswith("error: not a valid Ansible inventory")
    assert "Traceback" not in failed.stderr
