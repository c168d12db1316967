"""A rebuilt server: its new SSH host key is refused until an editor forgets the old one.

Real sshd (tests/sshlab.py), real worker, the real known_hosts file under instance/.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


from tests.conftest import ADMIN_PASSWORD, REPO
from tests.resource_factories import csrf_token


def fingerprint(pub: Path) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                          check=True).stdout.split()[1]


def run_once(api, run_worker, task_id: int) -> dict:
    status, body = api.post(f"/api/v1/tasks/{task_id}/executions")
    assert status == 202, body
    proc = run_worker()
    assert proc.returncode == 0, proc.stderr[-2000:]
    status, ex = api.get(f"/api/v1/executions/{body['id']}")
    assert status == 200
    return ex


def test_changed_host_key_is_refused_until_forgotten(app, api, api_as, session, sshlab, run_worker, env):
    lab = sshlab(1)
    srv = lab.servers[0]
    status, host = api.post("/api/v1/hosts", {"name": "rebuilt", "address": srv.address})
    assert status == 201, host
    api.post("/api/v1/credentials", {"name": "k", "kind": "ssh_key", "username": lab.user, "secret": lab.private_key})
    status, task = api.post("/api/v1/tasks", {"name": "t", "kind": "commands", "commands": ["hostname"],
                                              "credential": "k", "hosts": ["rebuilt"]})
    assert status == 201, task

    status, keys = api.get(f"/api/v1/hosts/{host['id']}/host-keys")
    assert status == 200 and keys == {"host": "rebuilt", "keys": []}
    assert run_once(api, run_worker, task["id"])["status"] == "succeeded"
    old = fingerprint(lab.dir / "host_ed25519.pub")
    status, keys = api.get(f"/api/v1/hosts/{host['id']}/host-keys")
    assert keys["keys"] == [{"name": srv.address, "type": "ED25519", "fingerprint": old}]

    new_key = lab.rekey_server(0)  # the server is rebuilt
    ex = run_once(api, run_worker, task["id"])
    op = ex["operations"][0]
    assert ex["status"] == "failed" and op["status"] == "unreachable"
    assert "Host key verification failed" in op["message"] and "forget its old key" in op["message"]

    # Forgetting is an edit of the host: an operator may not, an admin may (audited).
    status, body = api_as("oscar", "operator").delete(f"/api/v1/hosts/{host['id']}/host-keys")
    assert status == 403, body
    status, body = api.delete(f"/api/v1/hosts/{host['id']}/host-keys")
    assert status == 200 and body["forgotten"] == [{"name": srv.address, "type": "ED25519", "fingerprint": old}]
    status, trail = api.get("/api/v1/audit?action=host.forget_host_key")
    items = trail["items"]
    assert [(i["actor"], i["detail"]["fingerprints"]) for i in items] == [("admin", [old])], items

    assert run_once(api, run_worker, task["id"])["status"] == "succeeded"  # learns the new key
    status, keys = api.get(f"/api/v1/hosts/{host['id']}/host-keys")
    assert [k["fingerprint"] for k in keys["keys"]] == [fingerprint(new_key.with_suffix(".pub"))]
    instance = Path(env["TASKMANAGER_INSTANCE_DIR"])
    assert not (instance / "known_hosts.old").exists()

    # The host page shows the key and forgets it with a button; the CLI does the same.
    client = app.test_client()
    page = client.get("/login")
    client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD,
                                "csrf_token": csrf_token(page.get_data(as_text=True))})
    page = client.get(f"/hosts/{host['id']}/test")
    html = page.get_data(as_text=True)
    assert fingerprint(new_key.with_suffix(".pub")) in html and 'id="forget-host-key"' in html
    resp = client.post(f"/hosts/{host['id']}/host-keys/forget", data={"csrf_token": csrf_token(html)})
    assert resp.status_code in (302, 303)
    assert "Forgot 1 host key of rebuilt" in client.get(resp.headers["Location"]).get_data(as_text=True)
    status, keys = api.get(f"/api/v1/hosts/{host['id']}/host-keys")
    assert keys["keys"] == []

    # A connection test with the credential learns the key again (as a run would).
    status, body = api.post(f"/api/v1/hosts/{host['id']}/test", {"credential": "k"})
    assert status == 200 and body["ok"], body
    flask = str(Path(sys.executable).parent / "flask")
    out = subprocess.run([flask, "--app", "wsgi", "hosts", "forget-key", "rebuilt"], cwd=REPO,
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"forgot {srv.address} ED25519 SHA256:")
    status, keys = api.get(f"/api/v1/hosts/{host['id']}/host-keys")
    assert keys["keys"] == []


def test_host_keys_of_other_protocols(api):
    status, host = api.post("/api/v1/hosts", {"name": "tn", "address": "127.0.0.1", "protocol": "telnet"})
    assert status == 201, host
    status, keys = api.get(f"/api/v1/hosts/{host['id']}/host-keys")
    assert status == 200 and keys["keys"] == []
    status, body = api.delete(f"/api/v1/hosts/{host['id']}/host-keys")
    assert status == 422 and body["error"]["message"] == "telnet hosts have no SSH host key", body
    assert api.delete("/api/v1/hosts/999999/host-keys")[0] == 404
