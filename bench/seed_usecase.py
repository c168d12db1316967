#!/usr/bin/env python3
"""The seed use case: 3 commands on 20 servers. Task Manager vs plain ssh vs ansible-playbook.

    .venv/bin/python bench/seed_usecase.py [--runs 5] [--hosts 20]

On 20 real loopback sshd servers (tests/sshlab.py, needs root), in ONE run, measures:

  (a) floor: 20 parallel plain ``ssh`` calls, each running the 3 commands
  (b) stock ``ansible-playbook`` with 3 ``ansible.builtin.command`` tasks, default
      settings as a user would run it (forks 5, linear, fact gathering on), host key
      checking off; (b') the same with ``gather_facts: false`` for reference
  (c) Task Manager: from the ``POST /api/v1/tasks/<id>/executions`` (real app, WSGI test
      client) until the last operation is final in the database, with a real
      ``flask --app wsgi worker`` process already running, the embedded Redis on a unix
      socket and SQLite, as ``make run`` sets them up.
  (d) the user's view: ``flask --app wsgi serve`` (what ``make run`` starts: gunicorn, worker,
      scheduler, embedded Redis, SQLite) in its own instance directory; over HTTP, from the
      ``POST`` until ``GET /api/v1/executions/<id>`` answers a final status (polled every
      10 ms). (a) and (d) run interleaved, one of each per round; target d <= 0.6 a.

Each is run once to warm up (ControlPersist masters, page cache) and then ``--runs``
times; medians are reported with the ratios c/a and c/b (targets: c <= 1.3 a and
c <= 0.25 b). Results go to stdout and bench/results/seed_usecase.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent
COMMANDS = ["hostname", "echo $SSH_CONNECTION", "id -un"]


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def measure(label: str, fn, runs: int) -> dict:
    cold = fn()
    times = [fn() for _ in range(runs)]
    result = {"cold_s": round(cold, 3), "runs_s": [round(t, 3) for t in times], "median_s": median(times)}
    print(f"{label:<44} median {result['median_s']:6.3f} s   runs {result['runs_s']}  (first/cold {result['cold_s']} s)",
          flush=True)
    return result


# --------------------------------------------------------------------------- (a) plain ssh

def plain_ssh(lab) -> float:
    script = "; ".join(COMMANDS)
    start = time.perf_counter()
    procs = [subprocess.Popen(lab.ssh_command(s.index, script), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for s in lab.servers]
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"ssh failed: {err.decode()}")
    return time.perf_counter() - start


# --------------------------------------------------------------------------- (b) ansible-playbook

def stock_ansible(lab, workdir: Path, gather_facts: bool) -> float:
    inv = workdir / "inventory.ini"
    inv.write_text("[lab]\n" + "".join(f"{s.name} ansible_host={s.address}\n" for s in lab.servers) +
                   f"\n[lab:vars]\nansible_user={lab.user}\nansible_ssh_private_key_file={lab.key_path}\n"
                   f"ansible_python_interpreter=/usr/bin/python3\n")
    play = workdir / f"play-{gather_facts}.yml"
    # ansible.builtin.command, as asked (it does not expand $SSH_CONNECTION: same work, literal output)
    tasks = "".join(f"    - ansible.builtin.command: {c!r}\n" for c in COMMANDS)
    play.write_text("- hosts: all\n" + ("" if gather_facts else "  gather_facts: false\n") + "  tasks:\n" + tasks)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "TASKMANAGER_"))}
    env.update(ANSIBLE_HOST_KEY_CHECKING="False", PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}")
    start = time.perf_counter()
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inv), str(play)], cwd=workdir, env=env,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or "failed=0" not in proc.stdout:
        raise RuntimeError(f"ansible-playbook failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


# --------------------------------------------------------------------------- (c) Task Manager

class TaskManager:
    """A real app (WSGI test client), embedded Redis, SQLite, and a running worker process."""

    def __init__(self, lab, workdir: Path) -> None:
        self.lab = lab
        self.instance = workdir / "instance"
        os.environ.pop("TASKMANAGER_REDIS_URL", None)
        os.environ.update(TASKMANAGER_INSTANCE_DIR=str(self.instance), TASKMANAGER_QUEUE="bench")
        os.environ.pop("TASKMANAGER_DATABASE_URL", None)
        from server import create_app
        from server.core import db
        from server.core.config import load_settings
        from server.core.redis_conn import ensure_embedded_redis

        settings = load_settings()
        self.redis_proc = ensure_embedded_redis(settings.instance_dir, settings.embedded_redis_socket)
        self.app = create_app()
        from server.core.db import Base

        Base.metadata.create_all(db.engine())
        self.ctx = self.app.app_context()
        self.ctx.push()
        from server.people.auth import create_user, issue_token

        s = db.session()
        admin = create_user(s, "bench", "admin", "bench-password-1", actor="bench")
        s.commit()
        self.token = issue_token(s, admin, name="bench")
        s.commit()
        self.client = self.app.test_client()
        self.timings: list[dict] = []
        for srv in lab.servers:
            self.call("POST", "/api/v1/hosts", {"name": srv.name, "address": srv.address})
        self.call("POST", "/api/v1/credentials", {"name": "lab", "kind": "ssh_key", "username": lab.user,
                                                  "secret": lab.private_key})
        self.task_id = self.call("POST", "/api/v1/tasks", {
            "name": "seed", "kind": "commands", "commands": COMMANDS, "credential": "lab",
            "hosts": [s.name for s in lab.servers]})["id"]
        self.worker = subprocess.Popen([str(BIN / "flask"), "--app", "wsgi", "worker", "--name", "bench-worker"],
                                       cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT)
        time.sleep(2)  # the worker imports and connects before the clock starts

    def call(self, method: str, path: str, body=None) -> dict:
        resp = self.client.open(path, method=method, json=body, headers={"Authorization": f"Bearer {self.token}"})
        if resp.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {resp.status_code} {resp.get_data(as_text=True)}")
        return resp.get_json()

    def run(self) -> float:
        from sqlalchemy import func, select

        from server.core import db
        from server.core.models import OPERATION_FINAL, Execution, Operation

        start = time.perf_counter()
        ex_id = self.call("POST", f"/api/v1/tasks/{self.task_id}/executions", {})["id"]
        n = len(self.lab.servers)
        with db.engine().connect() as conn:
            while True:
                done = conn.execute(select(func.count()).select_from(Operation).where(
                    Operation.execution_id == ex_id, Operation.status.in_(OPERATION_FINAL))).scalar()
                conn.rollback()
                if done == n:
                    break
                if time.perf_counter() - start > 120:
                    raise RuntimeError("execution did not finish in 120 s")
                time.sleep(0.005)
        elapsed = time.perf_counter() - start
        # Check the result (outside the clock): every host succeeded with 3 steps.
        s = db.session()
        for _ in range(200):
            ex = s.get(Execution, ex_id, populate_existing=True)
            if ex.status != "running":
                break
            s.rollback()
            time.sleep(0.05)
        ops = s.execute(select(Operation).where(Operation.execution_id == ex_id)).scalars().all()
        bad = [(o.host_name, o.status, o.message) for o in ops if o.status != "succeeded" or len(o.steps) != 3]
        if bad or ex.status != "succeeded":
            raise RuntimeError(f"Task Manager run failed: {ex.status} {ex.message} {bad[:3]}")
        first_step = min(st.started_at for o in ops for st in o.steps)
        last_op = max(o.finished_at for o in ops)
        self.timings.append({
            "post_to_claim_s": (ex.started_at - ex.created_at).total_seconds(),
            "claim_to_first_step_s": (first_step - ex.started_at).total_seconds(),
            "first_step_to_last_operation_s": (last_op - first_step).total_seconds(),
            "last_operation_to_execution_final_s": (ex.finished_at - last_op).total_seconds(),
        })
        s.rollback()
        return elapsed

    def breakdown(self) -> dict:
        """Where the time goes (medians over the measured runs, from database timestamps)."""
        runs = self.timings[1:]  # without the warm-up run
        out = {k: round(statistics.median(t[k] for t in runs), 3) for k in runs[0]}
        print("    (c) breakdown: " + ", ".join(f"{k} {v}" for k, v in out.items()), flush=True)
        return out

    def close(self) -> None:
        self.worker.terminate()
        try:
            self.worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait()
        self.ctx.pop()
        if self.redis_proc is not None:
            self.redis_proc.terminate()
            self.redis_proc.wait(timeout=10)


# --------------------------------------------------------------------------- (d) make run, over HTTP

class Served:
    """``flask --app wsgi serve`` in a fresh instance directory, driven over HTTP like a user."""

    def __init__(self, lab, workdir: Path) -> None:
        import socket

        self.lab = lab
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMANAGER_") or k == "TASKMANAGER_WARM"}
        self.env.update(TASKMANAGER_INSTANCE_DIR=str(workdir / "served"), TASKMANAGER_BIND=f"127.0.0.1:{port}",
                        TASKMANAGER_LOG_LEVEL="INFO")  # the worker's account of each run (runs/runner.py)
        self.log = workdir / "serve.log"
        flask = [str(BIN / "flask"), "--app", "wsgi"]
        subprocess.run(flask + ["db", "upgrade"], cwd=REPO, env=self.env, check=True, capture_output=True)
        subprocess.run(flask + ["users", "create", "bench", "--role", "admin", "--password-stdin"], cwd=REPO,
                       env=self.env, input="bench-password-1\n", text=True, check=True, capture_output=True)
        self.token = subprocess.run(flask + ["users", "token", "bench"], cwd=REPO, env=self.env, check=True,
                                    capture_output=True, text=True).stdout.strip().splitlines()[-1]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(flask + ["serve"], cwd=REPO, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.call("GET", "/api/v1/hosts")
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("make run did not come up in 60 s") from None
                time.sleep(0.2)
        for srv in lab.servers:
            self.call("POST", "/api/v1/hosts", {"name": srv.name, "address": srv.address})
        self.call("POST", "/api/v1/credentials", {"name": "lab", "kind": "ssh_key", "username": lab.user,
                                                  "secret": lab.private_key})
        self.task_id = self.call("POST", "/api/v1/tasks", {
            "name": "seed", "kind": "commands", "commands": COMMANDS, "credential": "lab",
            "hosts": [s.name for s in lab.servers]})["id"]
        time.sleep(2)  # the worker is up before the clock starts
        self.timings: list[dict] = []

    def call(self, method: str, path: str, body=None) -> dict:
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def run(self) -> float:
        from server.core.models import EXECUTION_FINAL

        final = {str(getattr(v, "value", v)) for v in EXECUTION_FINAL}
        start = time.perf_counter()
        ex_id = self.call("POST", f"/api/v1/tasks/{self.task_id}/executions", {})["id"]
        while True:
            ex = self.call("GET", f"/api/v1/executions/{ex_id}")
            if ex["status"] in final:
                break
            if time.perf_counter() - start > 120:
                raise RuntimeError("execution did not finish in 120 s")
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        if ex["status"] != "succeeded" or any(len(op["steps"]) != 3 for op in ex["operations"]):
            raise RuntimeError(f"make run execution failed: {ex['status']} {ex.get('message')}")
        from datetime import datetime

        def at(value: str) -> datetime:
            return datetime.fromisoformat(value)

        first_step = min(at(st["started_at"]) for op in ex["operations"] for st in op["steps"])
        last_op = max(at(op["finished_at"]) for op in ex["operations"])
        self.timings.append({
            "post_to_claim_s": (at(ex["started_at"]) - at(ex["created_at"])).total_seconds(),
            "claim_to_first_step_s": (first_step - at(ex["started_at"])).total_seconds(),
            "first_step_to_last_operation_s": (last_op - first_step).total_seconds(),
            "last_operation_to_execution_final_s": (at(ex["finished_at"]) - last_op).total_seconds(),
            "final_to_client_s": elapsed - (at(ex["finished_at"]) - at(ex["created_at"])).total_seconds(),
        })
        return elapsed

    def close(self) -> None:
        import signal

        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def interleaved(lab, served: Served, runs: int) -> dict:
    """(a) and (d) one after the other per round, so both see the same machine load."""
    served.run()  # warm-up: the connection holder starts, masters come up
    plain_ssh(lab)
    a, d = [], []
    for _ in range(runs):
        a.append(plain_ssh(lab))
        d.append(served.run())
    out = {"a_runs_s": [round(x, 3) for x in a], "d_runs_s": [round(x, 3) for x in d],
           "a_median_s": median(a), "d_median_s": median(d), "d/a": round(median(d) / median(a), 2)}
    print(f"(a) 20 parallel plain ssh (interleaved)      median {out['a_median_s']:6.3f} s   runs {out['a_runs_s']}")
    print(f"(d) make run over HTTP, POST -> final status median {out['d_median_s']:6.3f} s   runs {out['d_runs_s']}")
    print(f"d/a = {out['d/a']:.2f} (target <= 0.6)", flush=True)
    runs = served.timings[1:]  # without the warm-up run
    out["d_breakdown"] = {k: round(statistics.median(t[k] for t in runs), 3) for k in runs[0]}
    print("    (d) breakdown: " + ", ".join(f"{k} {v}" for k, v in out["d_breakdown"].items()), flush=True)
    worker = worker_account(served.log.read_text(errors="replace"))[1:]  # without the warm-up run
    if worker:
        out["d_worker"] = {k: round(statistics.median(w[k] for w in worker), 3) for k in worker[0]}
        print("    (d) the worker's account: " + ", ".join(f"{k} {v} s" for k, v in out["d_worker"].items()), flush=True)
    return out


def worker_account(log: str) -> list[dict[str, float]]:
    """Per run, what the worker logs of it (runs/runner.py): prepare, ansible start to first
    event, the run, recording, and how long before ansible-playbook's exit it was final."""
    found = []
    for m in re.finditer(r"prepare ([0-9.]+) s, \w+ ansible start to first event ([0-9.]+) s, run ([0-9.]+) s, "
                         r"\d+ events recorded in ([0-9.]+) s \(\d+ commits\)(?:; final ([0-9.]+) s before)?", log):
        found.append({"prepare": float(m[1]), "start_to_first_event": float(m[2]), "run": float(m[3]),
                      "recording": float(m[4]), "final_before_exit": float(m[5] or 0)})
    return found


# --------------------------------------------------------------------------- (w) RQ worker class

_WORKER_SCRIPT = """
import sys
from wsgi import app
from rq import Queue, Worker, SimpleWorker
from server.redis_conn import redis
from server import worker as w
cls = {"simple": SimpleWorker, "fork": Worker}[sys.argv[1]]
with app.app_context():
    w._get_app(); w._after_fork()
    cls([Queue(sys.argv[2], connection=redis())], connection=redis()).work(with_scheduler=False,
                                                                         logging_level="WARNING")
"""


def worker_latency(runs: int = 15) -> dict:
    """Enqueue -> finished for jobs that only claim (the id does not exist: one SELECT),
    with RQ's SimpleWorker (what run_worker uses) and with the forking Worker."""
    from rq import Queue

    from server.core.redis_conn import redis

    out = {}
    for kind in ("simple", "fork"):
        name = f"bench-latency-{kind}"
        q = Queue(name, connection=redis())
        proc = subprocess.Popen([sys.executable, "-c", _WORKER_SCRIPT, kind, name], cwd=REPO, env=dict(os.environ))
        try:
            time.sleep(3)
            lat = []
            for i in range(runs):
                start = time.perf_counter()
                job = q.enqueue_call("server.runs.worker.run_execution_job", args=(10_000_000 + i,))
                while job.get_status(refresh=True) not in ("finished", "failed"):
                    time.sleep(0.001)
                lat.append(time.perf_counter() - start)
        finally:
            proc.terminate()
            proc.wait(timeout=15)
        out[kind] = {"median_ms": round(statistics.median(lat) * 1000, 1), "runs_ms": [round(x * 1000) for x in lat]}
        print(f"(w) RQ {kind:<6} worker: enqueue -> job finished, median {out[kind]['median_ms']} ms", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--only", choices=["a", "b", "c", "d", "w"], action="append",
                        help="a: plain ssh, b: ansible-playbook, c: Task Manager, d: make run over HTTP "
                             "(interleaved with a), w: RQ worker class latency")
    args = parser.parse_args()
    only = set(args.only or ["a", "b", "c", "d"])
    from tests.sshlab import SSHLab

    workdir = Path(tempfile.mkdtemp(prefix="tm-bench-"))
    results: dict = {"hosts": args.hosts, "runs": args.runs, "commands": COMMANDS, "cpus": os.cpu_count()}
    try:
        with SSHLab(args.hosts) as lab:
            print(f"{args.hosts} sshd servers on 127.0.{lab.block}.10-{9 + args.hosts}, {os.cpu_count()} CPUs", flush=True)
            if "a" in only:
                results["a_plain_ssh"] = measure("(a) 20 parallel plain ssh", lambda: plain_ssh(lab), args.runs)
            if "b" in only:
                results["b_ansible_playbook"] = measure(
                    "(b) stock ansible-playbook (facts on)", lambda: stock_ansible(lab, workdir, True), args.runs)
                results["b2_ansible_playbook_no_facts"] = measure(
                    "(b') stock ansible-playbook, gather_facts off", lambda: stock_ansible(lab, workdir, False), args.runs)
            if "c" in only:
                tm = TaskManager(lab, workdir)
                try:
                    results["c_task_manager"] = measure("(c) Task Manager, POST -> last operation", tm.run, args.runs)
                    results["c_breakdown"] = tm.breakdown()
                    if "w" in only:
                        results["w_worker_latency"] = worker_latency()
                finally:
                    tm.close()
            if "d" in only:
                served = Served(lab, workdir)
                try:
                    results["d_make_run"] = interleaved(lab, served, args.runs)
                finally:
                    served.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if results.get("d_make_run") and not {"a", "b", "c"} <= only:
        out = REPO / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / "seed_usecase_d.json").write_text(json.dumps(results, indent=2) + "\n")
    if {"a", "b", "c"} <= only:
        a = results["a_plain_ssh"]["median_s"]
        b = results["b_ansible_playbook"]["median_s"]
        b2 = results["b2_ansible_playbook_no_facts"]["median_s"]
        c = results["c_task_manager"]["median_s"]
        results["ratios"] = {"c/a": round(c / a, 2), "c/b": round(c / b, 2), "c/b'": round(c / b2, 2)}
        print(f"c/a = {c / a:.2f} (target <= 1.3)   c/b = {c / b:.2f} (target <= 0.25)   c/b' = {c / b2:.2f}")
        out = REPO / "bench" / "results"
        out.mkdir(exist_ok=True)
        (out / "seed_usecase.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
