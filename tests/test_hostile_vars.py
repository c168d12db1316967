"""Hostile variables get nowhere: reserved names (``ansible_*``, ``tm_*``) refused everywhere
variables are saved, ignored where old rows still hold them (and reported by migration
0003), protocol options checked by type and value, ``ca_bundle`` confined to the CA
directories without a file-existence oracle, ``local`` hosts for admins only, bounded
nesting, clean text in schedule vars and 422 for dates out of range.

Everything goes through the real app: the JSON API, the web forms with CSRF, the real
inventory builder and the real Alembic migration.
"""
from __future__ import annotations

import html
import logging
import os

import pytest
from sqlalchemy import select

from conftest import make_user
from resource_factories import host, task
from server.runs import inventory
from server.core.models import Execution, Group, Host, Schedule, Task
from test_web_resources import Browser, field_error

# What the C2 and H1 findings abused, and case variants of it.
REFUSED = [
    "ansible_become", "ansible_become_user", "ansible_become_exe", "ansible_become_flags",
    "ansible_become_method", "ansible_python_interpreter", "ansible_winrm_kinit_cmd", "ansible_shell_type",
    "ansible_ssh_host_key_checking", "ansible_remote_tmp", "ansible_connection", "ANSIBLE_BECOME",
    "Ansible_Python_Interpreter", "tm_base_url", "tm_ldap_url", "tm_tls_verify", "tm_address", "tm_port",
    "TM_BASE_URL",
]
ALLOWED = {"app_version": "1.2", "my_ansible_thing": True, "tmux_conf": "x", "ansibleish": 1,
           "config": {"ansible_become": "nested keys are data", "tm_base_url": "also data"}}


def deep(levels: int) -> object:
    value: object = "leaf"
    for _ in range(levels):
        value = [value]
    return value


def assert_refused(status: int, body: dict, name: str, field: str = "vars") -> None:
    assert status == 422, body
    assert body["error"]["field"] == field, body
    assert repr(name) in body["error"]["message"], body


@pytest.fixture
def a_task(api):
    host(api, "web1")
    return task(api, "restart", hosts=["web1"])


# --------------------------------------------------------------------------- reserved names


@pytest.mark.parametrize("name", REFUSED)
def test_reserved_name_refused_for_host_task_schedule_and_run(api, a_task, name):
    status, body = api.post("/api/v1/hosts", {"name": "h-new", "vars": {name: "x"}})
    assert_refused(status, body, name)
    web1 = api.get("/api/v1/hosts?q=web1")[1]["items"][0]
    assert_refused(*api.patch(f"/api/v1/hosts/{web1['id']}", {"vars": {name: "x"}}), name)
    status, body = api.post("/api/v1/tasks", {"name": "t-new", "kind": "commands", "commands": ["true"],
                                              "vars": {name: "x"}})
    assert_refused(status, body, name)
    assert_refused(*api.patch(f"/api/v1/tasks/{a_task['id']}", {"vars": {name: "x"}}), name)
    status, body = api.post(f"/api/v1/tasks/{a_task['id']}/schedules", {"cron": "0 6 * * *", "vars": {name: "x"}})
    assert_refused(status, body, name)
    assert_refused(*api.post(f"/api/v1/tasks/{a_task['id']}/executions", {"vars": {name: "x"}}), name)


def test_nothing_was_saved_by_refused_requests(api, a_task, session):
    for name in REFUSED:
        api.post("/api/v1/hosts", {"name": "h-new", "vars": {name: "x"}})
        api.post(f"/api/v1/tasks/{a_task['id']}/executions", {"vars": {name: "x"}})
    assert session.execute(select(Host).where(Host.name == "h-new")).first() is None
    assert session.execute(select(Execution)).first() is None


def test_allowed_names_pass_everywhere(api, a_task, session):
    h = host(api, "h-ok", vars=ALLOWED)
    assert h["vars"] == ALLOWED
    t = task(api, "t-ok", hosts=["h-ok"], vars=ALLOWED)
    assert t["vars"] == ALLOWED
    status, s = api.post(f"/api/v1/tasks/{a_task['id']}/schedules", {"cron": "0 6 * * *", "vars": ALLOWED})
    assert status == 201 and s["vars"] == ALLOWED
    status, ex = api.post(f"/api/v1/tasks/{a_task['id']}/executions", {"vars": ALLOWED})
    assert status == 202, ex
    assert session.get(Execution, ex["id"]).vars == ALLOWED


def test_web_host_form_refuses_a_reserved_name(app, admin_user, session):
    browser = Browser(app, "admin")
    status, page, _ = browser.submit("/hosts/new", data={
        "name": "h-web", "protocol": "ssh", "vars": "ansible_become_exe: 'id > /tmp/x; sudo'\n"})
    assert status == 422 and "'ansible_become_exe'" in field_error(page, "h-vars")
    assert session.execute(select(Host).where(Host.name == "h-web")).first() is None


def test_web_run_form_refuses_a_tm_name(app, admin_user, api, a_task, session):
    browser = Browser(app, "admin")
    status, page, _ = browser.submit(f"/tasks/{a_task['id']}", f"/tasks/{a_task['id']}/run",
                                     data={"vars": "tm_base_url: http://attacker\n"})
    assert status == 422 and "'tm_base_url'" in html.unescape(page)
    assert session.execute(select(Execution)).first() is None


def test_group_vars_with_reserved_names_are_skipped_on_import(session, tmp_path):
    path = tmp_path / "hosts.ini"
    path.write_text("[web]\nweb1 ansible_host=10.0.0.1 app=shop Tm_Port=1\n\n[web:vars]\n"
                    "ansible_become_exe=id\ntm_base_url=http://attacker\ntier=front\nca_bundle=/etc/passwd\n")
    result = inventory.import_inventory(session, str(path), actor="tester")
    session.commit()
    assert {"ansible_become_exe", "tm_base_url", "Tm_Port", "ca_bundle"} <= set(result["skipped_vars"])
    group = session.execute(select(Group).where(Group.name == "web")).scalar_one()
    web1 = session.execute(select(Host).where(Host.name == "web1")).scalar_one()
    assert group.vars == {"tier": "front"}
    assert web1.vars == {"app": "shop"}


# --------------------------------------------------------------------------- stored rows


def plant(session):
    """Rows written behind the API's back (or before the allow-list) holding reserved names."""
    evil = {"ansible_become": True, "ansible_become_exe": "id > /tmp/x; sudo", "ANSIBLE_BECOME_USER": "root",
            "ansible_python_interpreter": "/tmp/evil", "tm_base_url": "http://attacker.invalid", "keep": 1}
    group = Group(name="apis", vars={"ansible_remote_tmp": "/tmp/evil", "tm_tls_verify": False, "tier": "gold"})
    api_host = Host(name="api1", address="192.0.2.10", protocol="https", vars=dict(evil), groups=[group])
    ssh_host = Host(name="ssh1", address="192.0.2.11", protocol="ssh", vars={"ansible_shell_type": "cmd", "ok": 2})
    t = Task(name="planted", kind="playbook", playbook="site.yml", hosts=[api_host, ssh_host],
             vars={"tm_address": "203.0.113.9", "fine": "yes"})
    session.add_all([group, api_host, ssh_host, t])
    session.flush()
    session.add_all([
        Schedule(task_id=t.id, cron="0 6 * * *", timezone="UTC", vars={"ansible_winrm_kinit_cmd": "id"}),
        Execution(task_id=t.id, status="queued", vars={"tm_ldap_url": "ldap://attacker.invalid"}),
        Execution(task_id=t.id, status="waiting_approval", vars={"ansible_ssh_host_key_checking": False}),
        Execution(task_id=t.id, status="succeeded", vars={"tm_port": 1}),  # finished: not reported
    ])
    session.commit()
    return api_host, ssh_host, t


def test_planted_reserved_names_are_ignored_in_the_inventory(session):
    api_host, ssh_host, t = plant(session)
    inv = inventory.build_inventory([api_host, ssh_host], None)
    hv = inv["all"]["hosts"]
    assert hv["api1"]["tm_base_url"] == "https://192.0.2.10"  # the protocol's, not the row's
    assert hv["api1"]["keep"] == 1 and hv["ssh1"]["ok"] == 2
    for name in ("ansible_become", "ansible_become_exe", "ANSIBLE_BECOME_USER"):
        assert name not in hv["api1"]
    assert hv["api1"]["ansible_python_interpreter"] != "/tmp/evil"
    assert "ansible_shell_type" not in hv["ssh1"]
    assert inv["all"]["children"]["apis"]["vars"] == {"tier": "gold"}
    text = inventory.dump_inventory(inv)
    assert "attacker" not in text and "/tmp/evil" not in text and "sudo" not in text
    # Task and run variables go through the same filter before they become extra vars.
    assert inventory.user_vars({**t.vars, "tm_base_url": "http://attacker.invalid"}) == {"fine": "yes"}


def test_planted_run_and_task_vars_never_reach_ansible(app, session):
    """What the runner writes for ansible-playbook (inventory and extra-vars file) keeps
    the protocol's tm_base_url and no reserved name from the task's or the run's rows."""
    import shutil

    from server.runs import prepare, sandbox

    api_host, _, t = plant(session)
    t.kind, t.playbook, t.commands = "commands", None, ["true"]
    t.hosts = [h for h in t.hosts if h.protocol == "ssh"]  # commands do not run on API hosts
    ex = Execution(task_id=t.id, status="queued",
                   vars={"tm_base_url": "http://attacker.invalid", "ansible_become_exe": "id; sudo", "run_ok": 3})
    session.add(ex)
    session.commit()
    private = sandbox.new_private_dir()  # the runner's own layout
    try:
        prepare.prepare(private, ex, t, list(t.hosts), app.config["TM"])
        written = "\n".join(f.read_text() for f in private.rglob("*.yml"))
    finally:
        shutil.rmtree(private, ignore_errors=True)
    assert "run_ok: 3" in written and "fine: 'yes'" in written and "ok: 2" in written
    for needle in ("attacker", "tm_address: 203.0.113.9", "ansible_become_exe", "ansible_shell_type", "sudo"):
        assert needle not in written, needle


def migrate_to_0003():
    from alembic import command

    from server.core import db
    from server.core.migrate import alembic_config

    with db.engine().begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.stamp(cfg, "0002")
        command.upgrade(cfg, "0003")


@pytest.fixture
def alembic_table(app):
    """Migration tests stamp the schema; leave no alembic_version behind for the next test."""
    from server.core import db

    yield
    with db.engine().begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")


def test_migration_0003_reports_planted_rows(session, caplog, alembic_table):
    plant(session)
    session.close()
    with caplog.at_level(logging.WARNING, logger="alembic.runtime.migration"):
        migrate_to_0003()
    lines = [r.getMessage() for r in caplog.records if r.name == "alembic.runtime.migration"]
    text = "\n".join(lines)
    assert any(line.startswith("hosts api1 ") and "ansible_become, ansible_become_exe, ANSIBLE_BECOME_USER, "
               "ansible_python_interpreter, tm_base_url" in line for line in lines), text
    assert "hosts ssh1 holds reserved variable name(s) ansible_shell_type" in text
    assert "groups apis holds reserved variable name(s) ansible_remote_tmp, tm_tls_verify" in text
    assert "tasks planted holds reserved variable name(s) tm_address" in text
    assert "schedules 1 holds reserved variable name(s) ansible_winrm_kinit_cmd" in text
    assert "executions 1 holds reserved variable name(s) tm_ldap_url" in text
    assert "executions 2 holds reserved variable name(s) ansible_ssh_host_key_checking" in text
    assert "executions 3" not in text  # finished runs never start again
    assert "7 row(s) hold variable names starting with ansible_ or tm_" in text
    # Nothing is rewritten: the rows are ignored at run time, not changed.
    assert session.execute(select(Host).where(Host.name == "ssh1")).scalar_one().vars["ansible_shell_type"] == "cmd"


def test_migration_0003_is_silent_on_an_empty_database(app, caplog, alembic_table):
    with caplog.at_level(logging.DEBUG, logger="alembic.runtime.migration"):
        migrate_to_0003()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# --------------------------------------------------------------------------- protocol options


@pytest.mark.parametrize("protocol,name,value,needle", [
    ("https", "tls_verify", "maybe", "must be true or false, not 'maybe'"),
    ("https", "tls_verify", [True], "must be true or false"),
    ("https", "tls_verify", None, "must be true or false, not null"),
    ("x11", "x11_trusted", "perhaps", "must be true or false"),
    ("winrm", "winrm_transport", "digest", "must be one of ntlm, kerberos, credssp, basic"),
    ("winrm", "winrm_transport", ["ntlm"], "must be one of ntlm, kerberos, credssp, basic"),
    ("winrm", "winrm_scheme", "ftp", "must be one of http, https"),
    ("telnet", "telnet_mode", "fancy", "must be one of posix, raw"),
    ("telnet", "telnet_prompt", "([", "is not a valid regular expression"),
    ("telnet", "telnet_login_prompt", 7, "must be a string, not 7"),
    ("telnet", "telnet_password_prompt", "x" * 201, "must be at most 200 characters"),
    ("https", "https_auth", "oauth", "must be one of bearer, basic, none"),
    ("https", "https_test_path", "status", "must be a URL path starting with '/'"),
    ("https", "https_test_path", "/a b", "must be a URL path starting with '/'"),
    ("ldaps", "ldap_base_dn", {"dc": "example"}, "must be a string"),
    ("ldaps", "ldap_base_dn", "dc=x\ndc=y", "must not contain control characters"),
    ("https", "ca_bundle", 5, "must be a string"),
    ("https", "ca_bundle", "certs/ca.pem", "must be an absolute path"),
    ("ssh", "tls_verify", "sometimes", "must be true or false"),  # checked whatever the protocol
])
def test_protocol_option_of_wrong_type_or_value_is_a_422(api, protocol, name, value, needle):
    status, body = api.post("/api/v1/hosts", {"name": "opt", "protocol": protocol, "vars": {name: value}})
    assert_refused(status, body, name)
    assert needle in body["error"]["message"], body


def test_protocol_options_of_the_right_type_pass_and_reach_the_inventory(api, session):
    hv = {"tls_verify": "no", "https_auth": "Basic", "https_test_path": "/health?x=1", "note": "free text"}
    host(api, "api-ok", protocol="https", vars=hv)
    host(api, "tn-ok", protocol="telnet", vars={"telnet_mode": "raw", "telnet_prompt": r"sw[>#]\s*$"})
    host(api, "win-ok", protocol="winrm", port=5985, vars={"winrm_transport": "kerberos", "x11_trusted": 0})
    rows = [session.execute(select(Host).where(Host.name == n)).scalar_one() for n in ("api-ok", "tn-ok", "win-ok")]
    inv = inventory.build_inventory(rows, None)["all"]["hosts"]
    assert inv["api-ok"]["tm_tls_verify"] is False and inv["api-ok"]["tm_auth"] == "basic"
    assert inv["tn-ok"]["ansible_telnet_mode"] == "raw"
    assert inv["win-ok"]["ansible_winrm_transport"] == ["kerberos"]


def test_protocol_option_checked_in_the_web_form_and_on_patch(app, admin_user, api, session):
    h = host(api, "api2", protocol="https")
    status, body = api.patch(f"/api/v1/hosts/{h['id']}", {"vars": {"https_auth": "token"}})
    assert_refused(status, body, "https_auth")
    status, body = api.patch(f"/api/v1/hosts/{h['id']}", {"port": 5985, "protocol": "winrm",
                                                          "vars": {"winrm_transport": "basic"}})
    assert status == 422 and "basic authentication over http" in body["error"]["message"]
    browser = Browser(app, "admin")
    status, page, _ = browser.submit(f"/hosts/{h['id']}/edit", data={"name": "api2", "protocol": "https",
                                                                     "vars": "tls_verify: perhaps\n"})
    assert status == 422 and "'tls_verify' must be true or false" in field_error(page, "h-vars")


# --------------------------------------------------------------------------- ca_bundle


def ca_message(api, path: str) -> tuple[int, str]:
    status, body = api.post("/api/v1/hosts", {"name": "ca", "protocol": "https", "vars": {"ca_bundle": path}})
    return status, body["error"]["message"] if status != 201 else ""


def test_ca_bundle_outside_the_ca_dirs_gives_one_answer_for_existing_and_missing_files(api, app, tmp_path,
                                                                                      monkeypatch):
    allowed = tmp_path / "cas"
    allowed.mkdir()
    (allowed / "good.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (allowed / "escape.pem").symlink_to("/etc/passwd")
    monkeypatch.setenv("TASKMANAGER_CA_DIRS", f"{allowed}:relative/ignored")
    vault_key = str(app.config["TM"].instance_dir / "vault_key")
    probes = ["/etc/passwd", "/etc/no-such-file-here", vault_key, vault_key + ".missing",
              "/etc/ssl/certs/../../passwd", "/etc/ssl/certs/../../no-such-file", f"{allowed}/escape.pem",
              "/root/.ssh/id_ed25519", "/root/.ssh/no_such_key", "/etc/ssl/certsX/ca.pem"]
    answers = {path: ca_message(api, path) for path in probes}
    assert {status for status, _ in answers.values()} == {422}
    messages = {message for _, message in answers.values()}
    assert len(messages) == 1, answers  # identical whether or not the file exists
    message = messages.pop()
    assert "'ca_bundle' must be a file under /etc/ssl/certs" in message and str(allowed) in message
    assert "relative" not in message
    assert ca_message(api, f"{allowed}/missing.pem")[1].endswith("does not exist on the Task Manager server "
                                                                 "(or is not a file)")
    assert ca_message(api, str(allowed / "good.pem")) == (201, "")


def test_ca_bundle_planted_outside_the_ca_dirs_fails_the_inventory(session):
    from server.core.errors import ValidationError

    h = Host(name="planted-ca", address="192.0.2.20", protocol="ldaps", vars={"ca_bundle": "/etc/shadow"})
    session.add(h)
    session.commit()
    with pytest.raises(ValidationError, match="ca_bundle must be a file under /etc/ssl/certs"):
        inventory.build_inventory([h], None)


def test_system_ca_bundle_is_accepted(api):
    bundle = next((p for p in ("/etc/ssl/certs/ca-certificates.crt",) if os.path.isfile(p)), None)
    if bundle is None:
        pytest.skip("no system CA bundle")
    assert ca_message(api, bundle) == (201, "")


# --------------------------------------------------------------------------- local hosts


def test_local_hosts_are_for_admins_only(api, api_as, session):
    author = api_as("alice", "author")
    status, body = author.post("/api/v1/hosts", {"name": "controller", "protocol": "local"})
    assert status == 403 and body["error"]["field"] == "protocol"
    assert "only admins may create, change or delete hosts with protocol 'local'" in body["error"]["message"]
    assert session.execute(select(Host).where(Host.name == "controller")).first() is None

    status, local = api.post("/api/v1/hosts", {"name": "controller", "protocol": "local"})
    assert status == 201 and local["protocol"] == "local"
    assert author.patch(f"/api/v1/hosts/{local['id']}", {"vars": {"note": "x"}})[0] == 403
    assert author.patch(f"/api/v1/hosts/{local['id']}", {"protocol": "ssh"})[0] == 403
    assert author.delete(f"/api/v1/hosts/{local['id']}")[0] == 403

    mine = host(author, "web9")
    assert author.patch(f"/api/v1/hosts/{mine['id']}", {"protocol": "local"})[0] == 403
    assert author.patch(f"/api/v1/hosts/{mine['id']}", {"port": 2200})[0] == 200  # other hosts: as before
    assert api.patch(f"/api/v1/hosts/{mine['id']}", {"protocol": "local"})[0] == 200
    assert api.patch(f"/api/v1/hosts/{local['id']}", {"vars": {"note": "admin"}})[0] == 200
    session.expire_all()
    assert session.get(Host, local["id"]).vars == {"note": "admin"}


def test_local_host_refused_in_the_web_form_for_an_author(app, session):
    make_user(session, "alice", "author")
    browser = Browser(app, "alice")
    status, page, _ = browser.submit("/hosts/new", data={"name": "controller", "protocol": "local"})
    assert status == 403 and "only admins may create, change or delete hosts" in html.unescape(page)
    assert session.execute(select(Host).where(Host.name == "controller")).first() is None


# --------------------------------------------------------------------------- depth, text, dates


def test_vars_nest_at_most_20_levels_everywhere(api, a_task):
    assert host(api, "deep-ok", vars={"v": deep(20)})["vars"] == {"v": deep(20)}
    for levels in (21, 400):
        status, body = api.post("/api/v1/hosts", {"name": "deep", "vars": {"v": deep(levels)}})
        assert_refused(status, body, "v")
        assert "nested more than 20 levels deep" in body["error"]["message"]
        status, body = api.post("/api/v1/tasks", {"name": "deep", "kind": "commands", "commands": ["true"],
                                                  "vars": {"v": {"a": deep(levels)}}})
        assert_refused(status, body, "v")
        status, body = api.post(f"/api/v1/tasks/{a_task['id']}/schedules", {"cron": "0 6 * * *",
                                                                            "vars": {"v": deep(levels)}})
        assert_refused(status, body, "v")
        assert_refused(*api.post(f"/api/v1/tasks/{a_task['id']}/executions", {"vars": {"v": deep(levels)}}), "v")


def test_deep_vars_refused_by_the_web_host_form(app, admin_user, api):
    browser = Browser(app, "admin")
    status, page, _ = browser.submit("/hosts/new", data={"name": "deep", "protocol": "ssh",
                                                         "vars": "v: " + "[" * 30 + "1" + "]" * 30 + "\n"})
    assert status == 422 and "nested more than 20 levels deep" in field_error(page, "h-vars")


def test_deep_vars_refused_by_the_web_schedule_form(app, admin_user, api, a_task, session):
    browser = Browser(app, "admin")
    for levels in (21, 100_000):  # the second is too deep even for Python's JSON parser
        status, page, _ = browser.submit(f"/schedules/new?task={a_task['id']}", "/schedules/new", data={
            "task": str(a_task["id"]), "cron": "0 6 * * *", "timezone": "UTC", "enabled": "on",
            "vars": '{"v": ' + "[" * levels + "]" * levels + "}"})
        assert status == 422 and "nested" in page
    assert session.execute(select(Schedule)).first() is None


@pytest.mark.parametrize("value", ["nul\x00byte", "lone \ud800 surrogate", {"inner": ["x\x00"]}])
def test_schedule_vars_refuse_nul_and_lone_surrogates(api, a_task, session, value):
    status, body = api.post(f"/api/v1/tasks/{a_task['id']}/schedules", {"cron": "0 6 * * *", "vars": {"v": value}})
    assert status == 422 and body["error"]["field"] == "vars", body
    status, s = api.post(f"/api/v1/tasks/{a_task['id']}/schedules", {"cron": "0 6 * * *"})
    assert status == 201
    status, body = api.patch(f"/api/v1/schedules/{s['id']}", {"vars": {"v": value}})
    assert status == 422 and body["error"]["field"] == "vars", body
    session.expire_all()
    assert session.get(Schedule, s["id"]).vars == {}


OUT_OF_RANGE = [
    ("start_at", "9999-12-31", "Etc/GMT+12"), ("end_at", "9999-12-31", "America/Los_Angeles"),
    ("start_at", "0001-01-01", "Pacific/Kiritimati"), ("end_at", "0001-01-01", "UTC"),
    ("start_at", "9999-12-31T23:59:59-12:00", "UTC"), ("end_at", "0001-01-01T00:00:00+14:00", "UTC"),
    ("start_at", "9999-12-31T23:59:59", "Etc/GMT+12"), ("end_at", "1970-01-01T00:00:00", "UTC"),
    ("start_at", "9999-12-31T23:59:59.999999+23:59", "UTC"),
]


@pytest.mark.parametrize("field,value,zone", OUT_OF_RANGE)
def test_schedule_dates_out_of_range_are_a_422(api, a_task, field, value, zone):
    status, body = api.post(f"/api/v1/tasks/{a_task['id']}/schedules",
                            {"cron": "0 6 * * *", "timezone": zone, field: value})
    assert status == 422 and body["error"]["field"] == field and "out of range" in body["error"]["message"], body
    status, s = api.post(f"/api/v1/tasks/{a_task['id']}/schedules", {"cron": "0 6 * * *", "timezone": zone})
    assert status == 201
    status, body = api.patch(f"/api/v1/schedules/{s['id']}", {field: value})
    assert status == 422 and body["error"]["field"] == field, body
    blackout_field = "starts_at" if field == "start_at" else "ends_at"
    other = {"starts_at": "2030-01-01T00:00Z", "ends_at": "2030-01-02T00:00Z"}
    status, body = api.post("/api/v1/blackouts", {"name": "b", "timezone": zone, **other, blackout_field: value})
    assert status == 422 and body["error"]["field"] == blackout_field, body


def test_dates_at_the_edges_of_the_range_still_work(api, a_task):
    status, s = api.post(f"/api/v1/tasks/{a_task['id']}/schedules",
                         {"cron": "0 0 1 1 *", "timezone": "Etc/GMT+12", "start_at": "9998-12-31",
                          "end_at": "9998-12-31"})
    assert status == 201 and s["next_runs"] == [], s
    status, s = api.post(f"/api/v1/tasks/{a_task['id']}/schedules",
                         {"cron": "0 0 1 1 *", "timezone": "Pacific/Kiritimati", "start_at": "9998-06-01"})
    assert status == 201 and s["next_fire_at"] == "9999-01-01T00:00:00+14:00", s
    status, s = api.post(f"/api/v1/tasks/{a_task['id']}/schedules",
                         {"cron": "0 0 1 1 *", "timezone": "Etc/GMT+12", "start_at": "9998-06-01"})
    assert status == 201 and s["next_fire_at"] == "9999-01-01T00:00:00-12:00", s
    assert api.get(f"/api/v1/schedules/{s['id']}")[0] == 200
    # The next 29 February after March 9996 would be in year 10000: no next run, not a 500.
    status, s = api.post(f"/api/v1/tasks/{a_task['id']}/schedules",
                         {"cron": "0 0 29 2 *", "timezone": "UTC", "start_at": "9996-03-01"})
    assert status == 201 and s["next_runs"] == [] and s["next_fire_at"] is None, s
    assert api.get("/api/v1/schedules")[0] == 200


def test_web_schedule_and_blackout_forms_answer_422_for_dates_out_of_range(app, admin_user, api, a_task, session):
    browser = Browser(app, "admin")
    status, page, _ = browser.submit(f"/schedules/new?task={a_task['id']}", "/schedules/new", data={
        "task": str(a_task["id"]), "cron": "0 6 * * *", "timezone": "Etc/GMT+12", "enabled": "on",
        "start_at": "9999-12-31", "vars": ""})
    assert status == 422 and "out of range" in page
    status, s = api.post(f"/api/v1/tasks/{a_task['id']}/schedules", {"cron": "0 6 * * *", "timezone": "UTC"})
    status, page, _ = browser.submit(f"/schedules/{s['id']}", data={
        "cron": "0 6 * * *", "timezone": "Pacific/Kiritimati", "enabled": "on", "end_at": "0001-01-01", "vars": ""})
    assert status == 422 and "out of range" in page
    status, page, _ = browser.submit("/blackouts", data={"name": "freeze", "starts_at": "9999-12-31T23:00",
                                                         "ends_at": "9999-12-31T23:59", "timezone": "Etc/GMT+12"})
    assert status == 422 and "out of range" in page
    status, page, _ = browser.submit(f"/schedules/{s['id']}", data={
        "cron": "0 6 * * *", "timezone": "UTC", "enabled": "on", "vars": '{"tm_base_url": "http://attacker"}'})
    assert status == 422 and "'tm_base_url'" in html.unescape(page)
    session.expire_all()
    assert session.get(Schedule, s["id"]).vars == {}


def test_web_forms_refuse_yaml_nested_beyond_the_parser():
    """YAML nested deeper than Python's recursion limit is a form error, not a 500."""
    from server.web.forms import FormError, parse_vars

    with pytest.raises(FormError, match="nested too deeply"):
        parse_vars("[" * 30000 + "]" * 30000)
