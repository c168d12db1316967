"""Secrets never leak: plant unique canaries as the SSH login password, the become
password and an SSH private key, run real executions through the API and a real worker,
and look for the canaries everywhere they could end up.

Searched: the database (file bytes incl. WAL on SQLite; every row as text on
PostgreSQL), every Redis key and value of the test database (RQ job payloads are
zlib-compressed pickles: decompressed too), every file under instance/, files created
under the system temp dir and /dev/shm during the test, the test's captured logs, the
worker's stdout/stderr, every API response body, and the command lines AND environments
of all processes sampled while the executions ran.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path


from tests.procwatch import ProcessSampler
from tests.sshlab import SSHLab

REPO = Path(__file__).resolve().parent.parent


def _variants(data: bytes) -> list[bytes]:
    out = [data]
    try:
        out.append(zlib.decompress(data))
    except zlib.error:
        pass
    return out


def redis_dump(conn) -> list[bytes]:
    values: list[bytes] = []
    for key in conn.scan_iter(count=500):
        values.append(key)
        kind = conn.type(key).decode()
        if kind == "string":
            values += _variants(conn.get(key) or b"")
        elif kind == "hash":
            for k, v in conn.hgetall(key).items():
                values += [k, *_variants(v)]
        elif kind == "list":
            for v in conn.lrange(key, 0, -1):
                values += _variants(v)
        elif kind == "set":
            values += list(conn.smembers(key))
        elif kind == "zset":
            values += [m for m, _ in conn.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            for _id, fields in conn.xrange(key):
                for k, v in fields.items():
                    values += [k, *_variants(v)]
    return values


def files_under(root: Path, since: float | None = None) -> list[Path]:
    out = []
    for dirpath, _dirs, names in os.walk(root, onerror=lambda e: None):
        for name in names:
            path = Path(dirpath, name)
            try:
                st = path.lstat()
            except OSError:
                continue
            if not path.is_file() or path.is_symlink():
                continue  # sockets, fifos: no content
            if since is not None and max(st.st_mtime, st.st_ctime) < since:
                continue
            if st.st_size > 64 * 1024 * 1024:
                continue
            out.append(path)
    return out


def database_text(session) -> bytes:
    """Every row of every table, as text (PostgreSQL); SQLite is read as raw file bytes."""
    from sqlalchemy import text

    from server.core.db import Base

    session.rollback()
    chunks = []
    for table in Base.metadata.sorted_tables:
        for row in session.execute(text(f'SELECT t::text FROM "{table.name}" t')).scalars():
            chunks.append(row.encode())
    return b"\n".join(chunks)


def test_secrets_never_leak(api, session, env, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    started = time.time()
    tag = uuid.uuid4().hex[:10]
    login_pw = f"Cnry{tag}LoginPw"
    become_pw = f"Cnry{tag}BecomePw"
    responses: list[bytes] = []
    original_call = api.call

    def recording_call(method, path, json=None, **kw):
        status, body = original_call(method, path, json=json, **kw)
        responses.append(repr(body).encode())
        return status, body

    api.call = recording_call

    with SSHLab(3, user="tmcanary", password=login_pw, become_user="tmcanaryb", become_password=become_pw) as lab:
        # Lines of the private key material itself; not the first, which is the same for
        # every unencrypted OpenSSH ed25519 key ("openssh-key-v1, none, none, 1 key, ...").
        key_lines = [ln for ln in lab.private_key.splitlines() if ln and not ln.startswith("-----")][1:]
        canaries = {"login password": login_pw.encode(), "become password": become_pw.encode()}
        canaries.update({f"private key line {i + 2}": ln.encode() for i, ln in enumerate(key_lines)})

        for srv in lab.servers:
            status, body = api.post("/api/v1/hosts", {"name": srv.name, "address": srv.address})
            assert status == 201, body
        hosts = [srv.name for srv in lab.servers]
        status, body = api.post("/api/v1/credentials", {
            "name": "pw", "kind": "password", "username": lab.user, "secret": login_pw,
            "become_password": become_pw, "become_user": lab.become_user})
        assert status == 201, body
        status, body = api.post("/api/v1/credentials", {
            "name": "key", "kind": "ssh_key", "username": lab.user, "secret": lab.private_key,
            "become_password": become_pw, "become_user": lab.become_user})
        assert status == 201, body
        task_ids = []
        for cred in ("pw", "key"):
            status, body = api.post("/api/v1/tasks", {
                "name": f"whoami-{cred}", "kind": "commands", "hosts": hosts, "credential": cred, "become": True,
                "commands": ["whoami", "env | sort", "ps -eo args", "echo done"]})
            assert status == 201, body
            task_ids.append(body["id"])
        status, body = api.post("/api/v1/tasks", {
            "name": "fails", "kind": "commands", "hosts": hosts, "credential": "pw", "commands": ["exit 4"]})
        assert status == 201, body
        task_ids.append(body["id"])
        ex_ids = []
        for task_id in task_ids:
            status, body = api.post(f"/api/v1/tasks/{task_id}/executions", {"reason": "canary"})
            assert status == 202, body
            ex_ids.append(body["id"])

        sampler = ProcessSampler()
        sampler.start()
        try:
            flask = str(Path(sys.executable).parent / "flask")
            worker = subprocess.run([flask, "--app", "wsgi", "worker", "--burst"], cwd=REPO,
                                    env={**os.environ, **env}, capture_output=True, timeout=300)
        finally:
            sampler.stop()
        assert worker.returncode == 0, worker.stderr[-3000:]
        assert sampler.rounds >= 5

        results = []
        for ex_id in ex_ids:
            status, body = api.get(f"/api/v1/executions/{ex_id}")
            assert status == 200
            results.append(body)
        for path in ("/api/v1/credentials", "/api/v1/executions", "/api/v1/tasks", "/api/v1/hosts", "/api/v1/audit",
                     "/api/v1/credentials/1", "/api/v1/credentials/2"):
            status, _body = api.get(path)
            assert status == 200, path

    # The runs really used the secrets: logged in with the password and with the key, and
    # became the become user with the become password.
    pw_run, key_run, failing = results
    assert pw_run["status"] == "succeeded", pw_run["message"]
    assert key_run["status"] == "succeeded", key_run["message"]
    for run in (pw_run, key_run):
        assert {op["steps"][0]["stdout"] for op in run["operations"]} == {f"{lab.become_user}\n"}
    assert failing["status"] == "failed" and {op["rc"] for op in failing["operations"]} == {4}

    # Where to look.
    haystacks: dict[str, list[bytes]] = {
        "API responses": responses,
        "ps and /proc samples": sampler.samples,
        "worker stdout/stderr": [worker.stdout, worker.stderr],
        "test logs": [caplog.text.encode()],
    }
    from server.core.redis_conn import redis

    haystacks["Redis"] = redis_dump(redis())
    instance = Path(env["TASKMANAGER_INSTANCE_DIR"])
    haystacks["instance/ files"] = [p.read_bytes() for p in files_under(instance)]
    if session.get_bind().dialect.name == "postgresql":
        haystacks["database rows"] = [database_text(session)]
    else:
        db_files = [p for p in instance.iterdir() if p.name.startswith("taskmanager.db")]
        assert any(p.name.endswith("-wal") for p in db_files) or db_files
        haystacks["database files"] = [p.read_bytes() for p in db_files]
    # Positive control: a file planted now with all three canaries must be found by the scan.
    control = Path(tempfile.gettempdir()) / f"tm-canary-control-{tag}"
    control.write_bytes(b"\n".join(canaries.values()))
    try:
        temp_files = files_under(Path(tempfile.gettempdir()), since=started - 1)
        temp_files += files_under(Path("/dev/shm"), since=started - 1)
        assert control in temp_files
        haystacks["temp files"] = []
        for path in temp_files:
            if path == control:
                assert all(needle in path.read_bytes() for needle in canaries.values())
                continue
            try:
                blob = path.read_bytes()
            except OSError:
                continue
            haystacks["temp files"].append(blob)
            where = [what for what, needle in canaries.items() if needle in blob]
            if where:
                print(f"canary {where} in {path}")
    finally:
        control.unlink()

    leaks = [
        f"{what} found in {where}"
        for where, blobs in haystacks.items()
        for what, needle in canaries.items()
        if any(needle in blob for blob in blobs)
    ]
    assert not leaks, leaks
    assert all(haystacks[k] for k in ("API responses", "ps and /proc samples", "Redis", "instance/ files"))
