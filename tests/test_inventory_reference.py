"""Importing inventories = what ``ansible-inventory`` says: the Ansible documentation's example
inventories are imported, the per-run inventory is generated from the database, and
``ansible-inventory --list`` of both agrees on every host's groups and every kept variable."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from server.core.models import Group, Host
from server.runs import inventory

# Nothing here depends on the database kind: the SQLite run covers it (tests/run.sh).
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
ENV = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": "/root", "ANSIBLE_NOCOLOR": "1", "LANG": "C.UTF-8",
       "ANSIBLE_INVENTORY_ENABLED": "ini,yaml", "ANSIBLE_DEPRECATION_WARNINGS": "False"}


def listed(path: Path) -> dict:
    """``ansible-inventory --list`` (what a play sees), ``!unsafe`` markers removed."""
    out = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(path), "--list"], env=ENV,
                         capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout, object_hook=lambda d: d["__ansible_unsafe"] if set(d) == {"__ansible_unsafe"} else d)


def members(data: dict, group: str) -> set[str]:
    body = data.get(group) or {}
    out = set(body.get("hosts") or [])
    for child in body.get("children") or []:
        out |= members(data, child)
    return out


def kept(hostvars: dict, skipped: set[str]) -> dict:
    return {k: v for k, v in hostvars.items() if not k.startswith("ansible_") and k not in skipped}


def round_trip(session, source: Path, tmp_path: Path) -> tuple[dict, dict, dict]:
    """Import ``source``, generate the run inventory of every host, list both."""
    result = inventory.import_inventory(session, str(source), actor="tester")
    session.commit()
    hosts = list(session.execute(select(Host).order_by(Host.name)).scalars())
    generated = tmp_path / "generated.yml"
    generated.write_text(inventory.dump_inventory(inventory.build_inventory(hosts, None)))
    return result, listed(source), listed(generated)


def assert_same(result: dict, original: dict, ours: dict) -> None:
    skipped = set(result["skipped_vars"])
    want, got = original["_meta"]["hostvars"], ours["_meta"]["hostvars"]
    assert set(got) == set(members(original, "all"))
    for host in got:
        assert kept(got[host], skipped) == kept(want.get(host, {}), skipped), host
    for group in original:
        if group not in ("_meta", "all", "ungrouped"):
            assert members(ours, group) == members(original, group), group


DOCS_INI = """\
mail.example.com

[webservers]
foo.example.com http_port=8080
bar.example.com

[dbservers]
one.example.com
two.example.com
three.example.com ansible_user=admin

[east]
foo.example.com
one.example.com
two.example.com

[west]
bar.example.com
three.example.com

[prod:children]
east

[test:children]
west

[all:vars]
ntp_server=ntp.atlanta.example.com
proxy=proxy.atlanta.example.com

[prod:vars]
ntp_server=ntp.prod.example.com
motd={{ inventory_hostname }} is prod

[east:vars]
ntp_server=ntp.east.example.com
ansible_ssh_pass=hunter2
"""


def test_docs_children_and_all_vars_keep_ansibles_precedence(session, tmp_path):
    source = tmp_path / "hosts.ini"
    source.write_text(DOCS_INI)
    result, original, ours = round_trip(session, source, tmp_path)
    assert_same(result, original, ours)
    hv = ours["_meta"]["hostvars"]
    # the child's value beats the parent's, and both beat [all:vars]; a host's own beats all
    assert hv["foo.example.com"]["ntp_server"] == "ntp.east.example.com"
    assert hv["bar.example.com"]["ntp_server"] == "ntp.atlanta.example.com"
    assert hv["foo.example.com"]["http_port"] == 8080 and hv["foo.example.com"]["motd"] == "{{ inventory_hostname }} is prod"
    prod = session.execute(select(Group).where(Group.name == "prod")).scalar_one()
    assert [c.name for c in prod.children] == ["east"]
    reasons = {(s["scope"], s["name"]): s["reason"] for s in result["skipped"]}
    assert reasons[("host three.example.com", "ansible_user")].startswith("connection variable")
    assert reasons[("group east", "ansible_ssh_pass")].startswith("secret")
    assert result["literal_jinja"] == [{"scope": "group prod", "name": "motd"}]
    assert "hunter2" not in json.dumps([g.vars for g in session.execute(select(Group)).scalars()])


def test_docs_ranges_and_strides(session, tmp_path):
    source = tmp_path / "ranges.ini"
    source.write_text("[webservers]\nwww[01:50].example.com\n\n[databases]\ndb-[a:f].example.com\n\n"
                      "[strided]\nwww[01:50:2].example.com\n\n[strided:vars]\nodd=true\n")
    result, original, ours = round_trip(session, source, tmp_path)
    assert_same(result, original, ours)
    assert result["hosts"] == 56 and len(members(ours, "strided")) == 25
    assert "www49.example.com" in members(ours, "strided") and "db-f.example.com" in members(ours, "databases")


def test_docs_group_and_host_vars_directories_and_group_priority(session, tmp_path):
    inv = tmp_path / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "host_vars").mkdir()
    (inv / "hosts.yml").write_text("""\
all:
  children:
    a_group:
      vars:
        testvar: a
        ansible_group_priority: 10
      hosts:
        shared.example.com:
    b_group:
      vars:
        testvar: b
      hosts:
        shared.example.com:
        only-b.example.com:
    webservers:
      hosts:
        foo.example.com:
      children:
        a_group:
""")
    (inv / "group_vars" / "all.yml").write_text("ntp_server: ntp.example.com\nlevel: all\n")
    (inv / "group_vars" / "webservers.yml").write_text("level: web\nports: [80, 443]\nsettings: {tls: true}\n")
    (inv / "host_vars" / "foo.example.com.yml").write_text("level: host\nansible_become_password: nope\n")
    result, original, ours = round_trip(session, inv, tmp_path)
    assert_same(result, original, ours)
    hv = ours["_meta"]["hostvars"]
    assert hv["shared.example.com"]["testvar"] == "a"  # ansible_group_priority 10 beats b_group
    assert hv["only-b.example.com"]["testvar"] == "b"
    assert hv["foo.example.com"]["level"] == "host" and hv["shared.example.com"]["level"] == "web"
    assert hv["shared.example.com"]["ports"] == [80, 443] and "ports" not in hv["only-b.example.com"]
    assert session.execute(select(Group.priority).where(Group.name == "a_group")).scalar_one() == 10
    assert {"ansible_become_password"} <= set(result["skipped_vars"])


def test_a_700_host_range_file(session, tmp_path):
    source = tmp_path / "fleet.ini"
    source.write_text("[fleet]\nnode[001:700].example.com\n\n[fleet:vars]\nrole=worker\n\n"
                      "[dc:children]\nfleet\n\n[dc:vars]\nrole=generic\nsite=fra\n")
    started = time.monotonic()
    result, original, ours = round_trip(session, source, tmp_path)
    elapsed = time.monotonic() - started
    assert result["hosts"] == 700
    assert_same(result, original, ours)
    assert ours["_meta"]["hostvars"]["node700.example.com"] == {
        "ansible_connection": "ssh", "ansible_host": "node700.example.com", "ansible_port": 22,
        "role": "worker", "site": "fra"}
    assert elapsed < 60


def test_cli_prints_every_skipped_variable_and_literal_jinja(app, session, env, tmp_path):
    import os

    source = tmp_path / "hosts.ini"
    source.write_text(DOCS_INI)
    out = subprocess.run([str(BIN / "flask"), "--app", "wsgi", "hosts", "import", str(source)],
                         cwd=Path(__file__).resolve().parent.parent, env={**os.environ, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "skipped host three.example.com: ansible_user: connection variable" in out.stdout
    assert "skipped group east: ansible_ssh_pass: secret" in out.stdout
    assert "kept literal (never templated) group prod: motd" in out.stdout


@pytest.mark.parametrize("text,error", [
    ("[web]\nweb1 ansible_port=http\n", "invalid port"),
    ("[web]\nweb1 ansible_connection=carrier_pigeon\n", "not supported"),
])
def test_plan_errors_name_the_host(tmp_path, text, error):
    source = tmp_path / "bad.ini"
    source.write_text(text)
    plan = inventory.read_plan(str(source))
    assert any(error in e and "web1" in e for e in plan.errors), plan.errors
