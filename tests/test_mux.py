"""Connections held between runs (server/runs/mux.py), end to end with real sshd servers.

The proof of reuse is the client port in ``$SSH_CONNECTION``: two runs whose commands see
the same port on a host used the same TCP connection (the same ssh master). A run sees
only the control sockets of its own credential and its own hosts.
"""
from __future__ import annotations

import pytest

from server.runs.mux import socket_name
from tests.sshlab import SSHLab
from tests.test_execution_e2e import add_hosts, add_task, by_host, drained, env, get_execution, start  # noqa: F401

# Nothing here depends on the database kind: the SQLite run covers it (tests/run.sh).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab():
    with SSHLab(2) as lab:
        yield lab


def _ports(api, ex_id: int) -> dict[str, str]:
    ex = get_execution(api, ex_id)
    assert ex["status"] == "succeeded", ex["message"]
    return {name: op["steps"][0]["stdout"].split()[1] for name, op in by_host(ex).items() if op["steps"]}


def _key_credential(api, lab: SSHLab, name: str) -> None:
    status, body = api.post("/api/v1/credentials", {"name": name, "kind": "ssh_key", "username": lab.user,
                                                    "secret": lab.private_key})
    assert status == 201, body


def test_connections_reused_across_runs_never_across_credentials(api, lab, run_worker):
    hosts = add_hosts(api, lab)
    assert api.post("/api/v1/hosts", {"name": "controller", "address": "localhost", "protocol": "local"})[0] == 201
    _key_credential(api, lab, "key-a")
    _key_credential(api, lab, "key-b")  # the same key, another credential: its own connections
    conn = ["echo $SSH_CONNECTION"]
    a1 = add_task(api, name="a1", kind="commands", hosts=hosts, credential="key-a", commands=conn)
    a2 = add_task(api, name="a2", kind="commands", hosts=hosts, credential="key-a", commands=conn)
    b = add_task(api, name="b", kind="commands", hosts=[hosts[0], "controller"], credential="key-b",
                 commands=["echo $SSH_CONNECTION; for f in $(find /tmp /dev/shm 2>/dev/null); do [ -S $f ] && echo $f; done; true"])
    ids = [start(api, a1), start(api, a2), start(api, b)]
    drained(run_worker)  # one worker process runs the three, one after the other

    first, second = _ports(api, ids[0]), _ports(api, ids[1])
    assert set(first) == set(hosts)
    assert first == second  # the second run went through the first run's connections
    ex_b = by_host(get_execution(api, ids[2]))
    assert ex_b[hosts[0]]["status"] == "succeeded"
    assert ex_b[hosts[0]]["steps"][0]["stdout"].split()[1] != first[hosts[0]]  # key-b: a connection of its own
    # what the run of key-b sees on the controller: the socket of its one held host, nothing of key-a's
    visible = ex_b["controller"]["steps"][0]["stdout"].split()
    sockets = [p for p in visible if not p.startswith("/tmp/ssh-")]  # ssh-agent's own socket is the run's
    srv0, srv1 = lab.servers
    assert [p.rsplit("/", 1)[1].removeprefix("held-") for p in sockets] == [socket_name(srv0.address, srv0.port,
                                                                                        lab.user)]
    assert socket_name(srv1.address, srv1.port, lab.user) not in ex_b["controller"]["steps"][0]["stdout"]



def test_a_new_credential_version_closes_the_old_connections(app, session, api, lab):
    from sqlalchemy import select

    from server.core.models import Credential, Host
    from server.runs import mux

    add_hosts(api, lab)
    _key_credential(api, lab, "key-c")
    session.rollback()
    cred = session.execute(select(Credential).where(Credential.name == "key-c")).scalar_one()
    hosts = list(session.execute(select(Host).order_by(Host.name)).scalars())
    settings = app.config["TM"]
    try:
        first = mux.held(cred, hosts, settings, wait_s=10)
        assert sorted(first) == sorted(h.name for h in hosts) and all(mux.alive(p) for p in first.values())
        assert mux.held(cred, hosts, settings) == first  # still up: nothing new started
        cred.version += 1  # what saving a new secret does
        second = mux.held(cred, hosts, settings, wait_s=10)
        assert all(mux.alive(p) for p in second.values()) and sorted(second) == sorted(first)
        assert not any(p.exists() for p in first.values())  # the old holder and its masters are gone
    finally:
        mux.close_all()
    assert not any(p.exists() for p in second.values())
