"""H1/H2 end to end: an operator with only ``execute`` cannot point a run (or its dry run)
at his own listener to steal the task's API token.

A real listener on loopback stands in for the attacker; a real worker runs the shipped
HTTPS playbook. Run variables naming ``tm_*``/``ansible_*`` are refused with a 422, and a
row planted in the database with such a name (as older versions could store) is ignored:
the listener never hears from the run and the token appears nowhere in its output.
"""
from __future__ import annotations

import socket
import uuid

import pytest
from sqlalchemy import update

from server.core.models import Execution
from tests.loopback import Listener

pytestmark = pytest.mark.slow
TOKEN = f"api-token-canary-{uuid.uuid4().hex}"


@pytest.fixture
def listener():
    lst = Listener()
    lst.start()
    yield lst
    lst.stop()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def world(api, api_as):
    assert api.post("/api/v1/credentials", {"name": "api-token", "kind": "token", "secret": TOKEN})[0] == 201
    status, host = api.post("/api/v1/hosts", {"name": "api1", "address": "127.0.0.1", "port": _closed_port(),
                                              "protocol": "https", "vars": {"tls_verify": False}})
    assert status == 201, host
    status, task = api.post("/api/v1/tasks", {"name": "status", "kind": "playbook",
                                              "playbook": "https/api_request.yml", "hosts": ["api1"],
                                              "credential": "api-token", "vars": {"api_path": "/status"}})
    assert status == 201, task
    olga = api_as("olga", "operator")
    assert api.post("/api/v1/policies", {"name": "olga", "users": ["olga"], "tasks": ["status"],
                                         "permissions": ["view", "execute"]})[0] == 201
    return {"task": task, "olga": olga}


@pytest.mark.parametrize("name", ["tm_base_url", "tm_address", "tm_port", "tm_tls_verify", "ansible_host",
                                  "ansible_connection", "TM_BASE_URL"])
def test_operator_cannot_redirect_the_run(world, listener, name):
    olga, task = world["olga"], world["task"]
    evil = {name: f"http://127.0.0.1:{listener.port}" if "url" in name.lower() else "127.0.0.1"}
    status, body = olga.post(f"/api/v1/tasks/{task['id']}/executions", {"vars": evil})
    assert status == 422 and name in body["error"]["message"], body
    status, body = olga.post(f"/api/v1/tasks/{task['id']}/executions", {"vars": evil, "dry_run": True})
    assert status == 422, body


def test_a_planted_override_never_reaches_ansible(world, listener, session, run_worker):
    olga, task = world["olga"], world["task"]
    status, ex = olga.post(f"/api/v1/tasks/{task['id']}/executions", {})
    assert status == 202, ex
    session.execute(update(Execution).where(Execution.id == ex["id"]).values(
        vars={"tm_base_url": f"http://127.0.0.1:{listener.port}", "tm_tls_verify": False}))
    session.commit()
    proc = run_worker()
    assert proc.returncode == 0, proc.stderr[-3000:]
    session.expire_all()
    run = session.get(Execution, ex["id"])
    assert run.status == "failed", run.message  # the real target's port is closed
    [op] = run.operations  # the run really went to the host's own address, whose port is closed
    assert op.status == "unreachable" and [s.name for s in op.steps] == ["Validate parameters", "GET /status"], \
        [(s.name, s.status, s.stdout, s.stderr) for s in op.steps]
    assert listener.received == []
    texts = [run.message or ""] + [f"{op.message} {s.stdout} {s.stderr}" for op in run.operations for s in op.steps]
    assert not any(TOKEN in t for t in texts)
    assert TOKEN not in proc.stdout + proc.stderr
