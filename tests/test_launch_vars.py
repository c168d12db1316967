"""Launch variables and options end to end (server/catalog/launch.py, request.py, prepare.py,
plugins/action/tm_commands.py): typed declarations, values that reach the commands as data,
secret values that exist nowhere in clear, tickets, limits, tags, dry runs and rolling runs.

Real sshd servers (tests/sshlab.py), a real RQ worker process, real Ansible.
"""
from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from server.core.models import AuditLog, Execution, Schedule
from tests.procwatch import ProcessSampler
from tests.sshlab import SSHLab

pytestmark = pytest.mark.slow
CANARY = f"canary-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def lab():
    with SSHLab(4) as lab:
        yield lab


@pytest.fixture
def env(env, tmp_path, monkeypatch, private_redis_url, lab):
    monkeypatch.setenv("TASKMANAGER_REDIS_URL", private_redis_url)
    pb = tmp_path / "playbooks"
    pb.mkdir()
    for sub, name, content in (("group_vars", "all.yml", "GV: from group_vars\n"),
                               ("host_vars", f"{lab.servers[1].name}.yml", "HV: from host_vars\n")):
        (pb / sub).mkdir()
        (pb / sub / name).write_text(content)
    (pb / "site.yml").write_text(
        "- name: Task Manager launch values\n"  # a play named like the run's own: its steps still count
        "  hosts: all\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - name: message\n"
        "      ansible.builtin.debug: {msg: 'msg={{ MSG }}'}\n"
        "      tags: [show]\n"
        "    - name: secret\n"
        "      ansible.builtin.assert: {that: \"(PW | hash('sha256')) == SUM\"}\n"
        "      tags: [check]\n"
        "    - name: extra\n"
        "      ansible.builtin.debug: {msg: extra}\n"
        "      tags: [extra]\n"
        "    - name: beside\n"
        "      ansible.builtin.debug: {msg: \"{{ GV }}, {{ HV | default('no host_vars') }} in {{ playbook_dir | basename }}\"}\n"
        "      tags: [show]\n"
        "    - name: planned failure\n"
        "      ansible.builtin.fail: {msg: planned}\n"
        "      when: inventory_hostname == (FAIL_ON | default(''))\n"
        "      tags: [show]\n"
    )
    monkeypatch.setenv("TASKMANAGER_PLAYBOOK_DIR", str(pb))
    return {**env, "TASKMANAGER_REDIS_URL": private_redis_url, "TASKMANAGER_PLAYBOOK_DIR": str(pb)}


@pytest.fixture
def world(api, lab):
    names = []
    for srv in lab.servers:
        status, body = api.post("/api/v1/hosts", {"name": srv.name, "address": srv.address, "port": srv.port,
                                                   "groups": ["shop"] if srv.index < 3 else ["db"]})
        assert status == 201, body
        names.append(srv.name)
    status, body = api.post("/api/v1/credentials", {"name": "key", "kind": "ssh_key", "username": lab.user,
                                                     "secret": lab.private_key})
    assert status == 201, body
    return names


def make_task(api, **fields) -> dict:
    status, body = api.post("/api/v1/tasks", {"credential": "key", **fields})
    assert status == 201, body
    return body


def run(api, task: dict, expect: int = 202, **body):
    status, resp = api.post(f"/api/v1/tasks/{task['id']}/executions", body)
    assert status == expect, resp
    return resp


def finished(api, run_worker, ex_id: int) -> dict:
    proc = run_worker()
    assert proc.returncode == 0, proc.stderr[-3000:]
    body = api.get(f"/api/v1/executions/{ex_id}")[1]
    assert body["status"] not in ("queued", "running"), proc.stderr[-3000:]
    return body


HOSTILE = "a b 'q' \"dq\" $(touch {m}) `touch {m}` ; touch {m} && echo x\nsecond line ünïcødé ✓ [#N#]"


def test_values_reach_the_commands_literally(api, world, run_worker, tmp_path):
    marker = Path("/tmp") / f"tm-marker-{uuid.uuid4().hex}"
    value = HOSTILE.format(m=marker)
    task = make_task(api, name="say", kind="commands", hosts=world[:1], commands=[
        "printf '%s|' [#MSG#]", "printf '<%s>' [#ITEMS#]", "echo $(( [#N#] + 1 )) [#FLAG#]"], variables=[
        {"name": "MSG", "type": "text", "required": True},
        {"name": "ITEMS", "type": "multichoice", "choices": ["x y", "$(id)", "z"], "default": ["z"]},
        {"name": "N", "type": "integer", "min": 1, "max": 10, "default": 3},
        {"name": "FLAG", "type": "boolean", "default": False}])
    ex = run(api, task, vars={"MSG": value, "ITEMS": ["x y", "$(id)"], "N": 4})
    body = finished(api, run_worker, ex["id"])
    assert body["status"] == "succeeded", body
    steps = body["operations"][0]["steps"]
    assert [s["stdout"] for s in steps] == [value + "|", "<x y><$(id)>", "5 false\n"]
    assert steps[0]["name"].endswith("printf '%s|' [#MSG#]")  # the placeholder, not the value
    assert body["vars"] == {"MSG": value, "ITEMS": ["x y", "$(id)"], "N": 4, "FLAG": False}
    assert not marker.exists()


def test_declarations_and_launches_are_checked(api, world):
    def bad_task(variables, commands=("true",), needle=""):
        status, body = api.post("/api/v1/tasks", {"name": f"t{uuid.uuid4().hex[:6]}", "kind": "commands",
                                                  "hosts": world[:1], "commands": list(commands),
                                                  "variables": variables})
        assert status == 422, body
        assert needle in body["error"]["message"], body
        return body

    bad_task([{"name": "1x"}], needle="1x")
    bad_task([{"name": "ansible_host"}], needle="ansible_host")
    bad_task([{"name": "A", "type": "colour"}], needle="'A'")
    bad_task([{"name": "C", "type": "choice"}], needle="'C'")
    bad_task([{"name": "D", "type": "integer", "max": 5, "default": 9}], needle="'D'")
    bad_task([{"name": "P", "type": "text", "pattern": "^[a-z]+$", "default": "A1"}], needle="'P'")
    bad_task([{"name": "S", "type": "secret", "default": "x"}], needle="'S'")
    bad_task([{"name": "E"}, {"name": "E"}], needle="'E'")
    body = bad_task([{"name": "A"}], commands=["echo [#B#]"], needle="B")
    assert body["error"]["field"] == "commands"

    task = make_task(api, name="typed", kind="commands", hosts=world[:1], commands=["echo [#SVC#] [#N#]"],
                     variables=[{"name": "SVC", "type": "choice", "choices": ["nginx", "redis"], "required": True},
                                {"name": "N", "type": "number", "min": 0, "max": 1.5},
                                {"name": "T", "type": "text", "pattern": "^[a-z]+$"}])
    for values, field in (({}, "vars.SVC"), ({"SVC": "sshd"}, "vars.SVC"), ({"SVC": 3}, "vars.SVC"),
                          ({"SVC": "nginx", "N": 2}, "vars.N"), ({"SVC": "nginx", "N": "1"}, "vars.N"),
                          ({"SVC": "nginx", "T": "A;B"}, "vars.T"), ({"SVC": "nginx", "OTHER": 1}, "vars.OTHER"),
                          ({"SVC": "nginx", "ansible_host": "x"}, "vars")):
        status, err = api.post(f"/api/v1/tasks/{task['id']}/executions", {"vars": values})
        assert status == 422 and err["error"]["field"] == field, (values, err)
    for body, field in (({"limit": "nowhere"}, "limit"), ({"limit": ["shop", "!shop"]}, "hosts"),
                        ({"tags": ["x"]}, "tags"), ({"dry_run": 1}, "dry_run"), ({"ticket": 5}, "ticket")):
        status, err = api.post(f"/api/v1/tasks/{task['id']}/executions", {"vars": {"SVC": "nginx"}, **body})
        assert status == 422 and err["error"]["field"] == field, (body, err)


def test_limit_patterns_stay_within_the_targets(api, world):
    task = make_task(api, name="shop", kind="commands", groups=["shop", "db"], commands=["true"])
    for limit, expected in (("shop", world[:3]), (f"shop:!{world[0]}", world[1:3]), ("shop:&db", None),
                            ("lab0*", world), ("db," + world[0], [world[0], world[3]]), ("~lab0[12]", world[1:3])):
        status, body = api.get(f"/api/v1/tasks/{task['id']}/targets?limit={limit}")
        if expected is None:
            assert status == 422 and body["error"]["field"] == "limit"
            continue
        assert status == 200 and [h["name"] for h in body["items"]] == sorted(expected), (limit, body)
    status, body = api.get(f"/api/v1/tasks/{task['id']}/targets?limit=elsewhere")
    assert status == 422 and "elsewhere" in body["error"]["message"]
    ex = run(api, task, limit=f"shop:!{world[0]}", dry_run=True)
    body = api.get(f"/api/v1/executions/{ex['id']}")[1]
    assert body["limit"] == world[1:3] and body["limit_pattern"] == f"shop:!{world[0]}" and body["dry_run"]


def test_a_secret_value_is_used_and_stored_nowhere_in_clear(api, app, session, world, run_worker,
                                                             private_redis_url):
    task = make_task(api, name="secret", kind="commands", hosts=world[:2], commands=[
        "printf %s [#PW#] | sha256sum", "echo [#PW#] [#WHO#]; sleep 1"], variables=[
        {"name": "PW", "type": "secret", "required": True, "min": 8}, {"name": "WHO", "type": "text"}])
    status, err = api.post(f"/api/v1/tasks/{task['id']}/executions", {"vars": {"PW": "short"}})
    assert status == 422 and err["error"]["field"] == "vars.PW" and "short" not in str(err)
    ex = run(api, task, vars={"PW": CANARY, "WHO": "ann"}, reason="rotate")
    row = session.get(Execution, ex["id"])
    assert row.secret_vars_enc and CANARY.encode() not in bytes(row.secret_vars_enc)
    assert row.vars == {"PW": "********", "WHO": "ann"}
    session.rollback()  # no read transaction held while the worker writes
    with ProcessSampler() as sampler:
        proc = run_worker()
    assert proc.returncode == 0 and CANARY not in proc.stdout + proc.stderr  # nor in the worker's log
    body = api.get(f"/api/v1/executions/{ex['id']}")[1]
    assert body["status"] == "succeeded", body
    digest = hashlib.sha256(CANARY.encode()).hexdigest()
    for op in body["operations"]:
        assert op["steps"][0]["stdout"].startswith(digest)  # the command got the value
        assert op["steps"][1]["stdout"] == "******** ann\n"  # and its output hides it
    assert sampler.saw("ansible-playbook")  # the sampler saw the run
    assert not sampler.saw(CANARY)  # in no process's command line or environment
    session.expire_all()
    assert session.get(Execution, ex["id"]).secret_vars_enc is None  # erased once final
    # nowhere: database rows (every table, as text), API, audit, CSV, pages, Redis
    for table in ("executions", "operations", "steps", "audit_log", "schedules"):
        dump = "\n".join(str(tuple(r)) for r in session.execute(text(f"SELECT * FROM {table}")))
        assert CANARY not in dump, table
    for path in (f"/api/v1/executions/{ex['id']}", "/api/v1/executions", "/api/v1/audit",
                 "/api/v1/reports/executions.csv", "/api/v1/reports/operations.csv"):
        status, resp = api.get(path)
        assert status == 200 and CANARY not in str(resp), path
    import redis as redis_lib

    r = redis_lib.Redis.from_url(private_redis_url)
    assert not any(CANARY.encode() in (r.dump(k) or b"") for k in r.keys("*"))
    # a relaunch needs the secret again
    status, err = api.post(f"/api/v1/executions/{ex['id']}/relaunch", {"failed_only": False})
    assert status == 422 and err["error"]["field"] == "vars.PW"
    status, again = api.post(f"/api/v1/executions/{ex['id']}/relaunch",
                             {"failed_only": False, "vars": {"PW": CANARY + "2"}})
    assert status == 202 and api.get(f"/api/v1/executions/{again['id']}")[1]["vars"]["WHO"] == "ann"
    # and so does the web page's relaunch: a form asks for it again and keeps the other values
    from tests.test_web_resources import Browser, field_error

    web = Browser(app, "admin")
    status, page = web.get(f"/executions/{ex['id']}")
    form_url = f"/executions/{ex['id']}/relaunch"
    assert f'href="{form_url}"' in page and 'data-action="relaunch"' not in page
    status, page = web.get(form_url)
    assert status == 200 and 'id="rv-PW" name="vars.PW" type="password"' in page and '"WHO": "ann"' in page
    status, page, _ = web.submit(form_url, data={"failed_only": "", "reason": "again"})
    assert status == 422 and "required" in field_error(page, "rv-PW")
    status, page, where = web.submit(form_url, data={"failed_only": "", "reason": "again", "vars.PW": CANARY + "3"})
    assert status == 302, page
    child = session.get(Execution, int(where.rsplit("/", 1)[1]))
    assert child.parent_id == ex["id"] and child.vars == {"PW": "********", "WHO": "ann"} and child.reason == "again"
    assert child.secret_vars_enc and CANARY not in web.get(where)[1]


def test_playbook_values_are_unsafe_extra_vars_and_tags_are_checked(api, world, run_worker):
    """One rolling playbook run (serial 2, no failure allowed) with a secret variable: the values
    arrive as data, the group_vars/ and host_vars/ beside the playbook still apply, and the first
    batch's failing host stops the run, the next batch skipped."""
    task = make_task(api, name="pb", kind="playbook", playbook="site.yml", hosts=world,
                     allowed_tags=["show", "check", "extra"], serial=2, max_fail_percentage=0,
                     vars={"SUM": hashlib.sha256(CANARY.encode()).hexdigest(), "FAIL_ON": world[0]},
                     variables=[{"name": "MSG", "type": "text"}, {"name": "PW", "type": "secret"}])
    status, err = api.post(f"/api/v1/tasks/{task['id']}/executions", {"tags": ["deploy"]})
    assert status == 422 and err["error"]["field"] == "tags"
    ex = run(api, task, vars={"MSG": "{{ 7 * 7 }}{% raw %}", "PW": CANARY}, skip_tags=["extra"])
    body = finished(api, run_worker, ex["id"])
    assert body["status"] == "failed", body
    ops = {op["host"]: op for op in body["operations"]}
    assert ops[world[0]]["status"] == "failed", ops[world[0]]
    assert ops[world[1]]["status"] == "succeeded", ops[world[1]]
    steps = {s["name"]: s for s in ops[world[1]]["steps"]}
    assert "msg={{ 7 * 7 }}{% raw %}" in steps["message"]["stdout"] and "49" not in steps["message"]["stdout"]
    assert steps["secret"]["status"] == "succeeded" and CANARY not in str(body)
    assert "extra" not in steps and body["skip_tags"] == ["extra"]
    assert list(steps)[0] == "message"  # setting the secret values is no step of the host
    assert "from group_vars, from host_vars in playbooks" in steps["beside"]["stdout"], steps["beside"]
    assert "from group_vars, no host_vars" in {s["name"]: s for s in ops[world[0]]["steps"]}["beside"]["stdout"]
    for name in world[2:]:
        assert ops[name]["status"] == "skipped" and "rolling run stopped" in ops[name]["message"], ops[name]


def test_ticket_pattern_and_curated_reasons(api, api_as, session, world):
    task = make_task(api, name="gov", kind="commands", hosts=world[:1], commands=["true"])
    olga = api_as("olga", "operator")
    status, policy = api.post("/api/v1/policies", {
        "name": "change", "users": ["olga"], "tasks": ["gov"], "permissions": ["view", "execute"],
        "requires_ticket": True, "ticket_pattern": "^(CHG|INC)[0-9]{6}$", "reasons": ["maintenance", "incident"]})
    assert status == 201 and policy["ticket_pattern"] == "^(CHG|INC)[0-9]{6}$", policy
    assert api.post("/api/v1/policies", {"name": "bad", "ticket_pattern": "("})[1]["error"]["field"] == \
        "ticket_pattern"
    for body, field in (({"reason": "maintenance"}, "ticket"), ({"reason": "maintenance", "ticket": "CHG12"}, "ticket"),
                        ({"reason": "because", "ticket": "CHG123456"}, "reason")):
        status, err = olga.post(f"/api/v1/tasks/{task['id']}/executions", body)
        assert status == 422 and err["error"]["field"] == field, (body, err)
    status, ex = olga.post(f"/api/v1/tasks/{task['id']}/executions", {"reason": "incident", "ticket": "INC000042"})
    assert status == 202, ex
    assert api.get(f"/api/v1/executions/{ex['id']}")[1]["ticket"] == "INC000042"
    status, csv = api.get("/api/v1/reports/executions.csv")
    assert "INC000042" in str(csv)
    audit = session.execute(select(AuditLog).where(AuditLog.action == "execution.request")).scalars().all()
    assert any("INC000042" in str(a.detail) for a in audit)
    assert api.post(f"/api/v1/tasks/{task['id']}/executions", {})[0] == 202  # the policy names olga only


def test_approval_binds_the_values_and_schedules_keep_their_own(api, api_as, app, session, world):
    from server.executions import approvals
    from server.scheduling.scheduler import tick

    task = make_task(api, name="gated", kind="commands", hosts=world[:1], commands=["echo [#SVC#] [#PW#]"],
                     variables=[{"name": "SVC", "type": "choice", "choices": ["nginx", "redis"]},
                                {"name": "PW", "type": "secret"}])
    olga, ann = api_as("olga", "operator"), api_as("ann", "approver")
    assert api.post("/api/v1/policies", {"name": "gate", "users": ["olga", "ann"], "tasks": ["gated"],
                                         "permissions": ["view", "execute", "schedule"], "requires_approval": True,
                                         "approvers": [{"user": "ann", "level": 1}]})[0] == 201
    status, ex = olga.post(f"/api/v1/tasks/{task['id']}/executions", {"vars": {"SVC": "nginx", "PW": CANARY}})
    assert status == 202 and ex["status"] == "waiting_approval", ex
    status, item = ann.get(f"/api/v1/executions/{ex['id']}")
    assert item["vars"] == {"SVC": "nginx", "PW": "********"}
    from tests.test_web_resources import Browser

    status, page = Browser(app, "ann").get(f"/approvals/{ex['id']}")  # the approver's page: masked too
    assert status == 200 and "nginx" in page and "********" in page and CANARY not in page
    # the declared choices change while it waits: the approval no longer matches
    assert api.patch(f"/api/v1/tasks/{task['id']}", {"variables": [
        {"name": "SVC", "type": "choice", "choices": ["nginx", "redis", "mysql"]}, {"name": "PW", "type": "secret"}]})[0] == 200
    status, out = ann.post(f"/api/v1/executions/{ex['id']}/approve", {})
    assert "launch options" in str(out), out
    assert api.get(f"/api/v1/executions/{ex['id']}")[1]["status"] != "queued"
    # a schedule stores its own values (checked when saved), the secret one encrypted
    status, err = olga.post(f"/api/v1/tasks/{task['id']}/schedules", {"cron": "0 6 * * *", "vars": {"SVC": "x"}})
    assert status == 422 and err["error"]["field"] == "vars.SVC"
    status, sched = olga.post(f"/api/v1/tasks/{task['id']}/schedules",
                              {"cron": "0 6 * * *", "vars": {"SVC": "redis", "PW": CANARY}})
    assert status == 201 and sched["vars"] == {"SVC": "redis", "PW": "********"}, sched
    row = session.get(Schedule, sched["id"])
    assert row.secret_vars_enc and CANARY not in str(row.vars)
    assert CANARY not in str(ann.get("/api/v1/approvals?status=pending")[1])
    # approved, then fired: the execution gets the schedule's values (checked again at fire time)
    status, out = ann.post(f"/api/v1/schedules/{sched['id']}/approve", {})
    assert status == 200, out
    session.expire_all()
    row = session.get(Schedule, sched["id"])
    fires = tick(session, row.next_fire_at + timedelta(seconds=1))
    session.commit()
    assert fires and fires[0].outcome not in ("error", "suspended"), (fires[0].outcome, fires[0].detail)
    fired = session.execute(select(Execution).where(Execution.schedule_id == row.id)).scalar_one()
    assert fired.vars == {"SVC": "redis", "PW": "********"} and fired.secret_vars_enc == row.secret_vars_enc
    assert approvals.verify_before_run(session, fired) is None
    # an approver's preview of a playbook run carries the same launch options (and so the same binding)
    pb = make_task(api, name="gated-pb", kind="playbook", playbook="site.yml", hosts=world[:1], allowed_tags=["show"],
                   variables=[{"name": "PW", "type": "secret"}, {"name": "MSG", "type": "text"}])
    policy = api.get("/api/v1/policies")[1]["items"][0]
    assert api.patch(f"/api/v1/policies/{policy['id']}", {"tasks": ["gated", "gated-pb"]})[0] == 200
    status, ex = olga.post(f"/api/v1/tasks/{pb['id']}/executions",
                           {"vars": {"PW": CANARY, "MSG": "m"}, "tags": ["show"], "dry_run": True})
    assert status == 202 and ex["status"] == "waiting_approval", ex
    session.expire_all()
    dry = session.execute(select(Execution).where(Execution.parent_id == ex["id"])).scalar_one()
    assert dry.check_mode and dry.tags == ["show"] and approvals.verify_before_run(session, dry) is None


def test_rolling_run_stops_and_skips_the_rest(api, lab, world, run_worker):
    first = lab.servers[0]
    task = make_task(api, name="rolling", kind="commands", hosts=world, serial=2, max_fail_percentage=0,
                     commands=[f'case "$SSH_CONNECTION" in *" {first.address} {first.port}") exit 3;; esac; echo ok'])
    assert task["serial"] == 2
    assert api.patch(f"/api/v1/tasks/{task['id']}", {"serial": [1, "25%", "150%"]})[1]["error"]["field"] == "serial"
    ex = run(api, task)
    body = finished(api, run_worker, ex["id"])
    ops = {op["host"]: op for op in body["operations"]}
    assert body["status"] == "failed"
    assert ops[world[0]]["status"] == "failed" and ops[world[1]]["status"] == "succeeded"
    for name in world[2:]:
        assert ops[name]["status"] == "skipped" and "rolling run stopped" in ops[name]["message"], ops[name]


def test_the_run_form_has_a_typed_field_per_variable(app, api, world, session):
    from tests.test_web_resources import Browser

    task = make_task(api, name="form", kind="commands", hosts=world[:2], commands=["echo [#SVC#] [#N#] [#PW#]"],
                     variables=[{"name": "SVC", "type": "choice", "choices": ["nginx", "redis"], "required": True},
                                {"name": "N", "type": "integer", "min": 1, "max": 5, "default": 2},
                                {"name": "PW", "type": "secret"}, {"name": "ON", "type": "boolean"}])
    web = Browser(app, "admin")
    status, page = web.get(f"/tasks/{task['id']}")
    assert '<select id="rv-SVC" name="vars.SVC"' in page and 'type="number"' in page and 'type="password"' in page
    status, page = web.get(f"/tasks/{task['id']}?preview=1&limit={world[1]}")
    assert "Would run on 1 host" in page
    status, page, _ = web.submit(f"/tasks/{task['id']}", f"/tasks/{task['id']}/run",
                                 {"vars.SVC": "nginx", "vars.N": "9"})
    assert status == 422 and "at most 5" in page
    status, page, where = web.submit(f"/tasks/{task['id']}", f"/tasks/{task['id']}/run",
                                     {"vars.SVC": "redis", "vars.N": "3", "vars.PW": CANARY, "vars.ON.present": "1",
                                      "vars.ON": "on", "ticket": "T-1"})
    assert status == 302, page
    ex = session.execute(select(Execution).order_by(Execution.id.desc())).scalars().first()
    assert ex.vars == {"SVC": "redis", "N": 3, "PW": "********", "ON": True} and ex.ticket == "T-1"
    status, page = web.get(where)
    assert CANARY not in page and "T-1" in page


def test_rolling_settings_go_into_each_play_of_a_playbook_copy():
    from server.catalog.playbooks import for_run

    text = ("- hosts: web\n  serial: 5\n  vars: {v: !unsafe '{{ x }}'}\n  tasks: []\n"
            "- ansible.builtin.import_playbook: other.yml\n")
    out = for_run(text, [1, "50%"], 0)
    assert "!unsafe '{{ x }}'" in out  # Ansible's tags survive the copy
    assert "serial:\n  - 1\n  - 50%" in out and "max_fail_percentage: 0" in out
    assert out.count("serial") == 1  # the play's own value is replaced; the import is left alone
