#!/usr/bin/env python3
"""One execution over 1,000 hosts: it completes, worker memory stays bounded, the page renders.

    .venv/bin/python bench/thousand_hosts.py --db sqlite
    .venv/bin/python bench/thousand_hosts.py --db postgresql   # private database on 127.0.0.1:5432

1,000 hosts with ``ansible_connection=local`` (every "host" runs on this machine, so the
test measures Task Manager and Ansible, not the network), one ``commands`` task with two
commands. A real worker process (``flask --app wsgi worker --burst``) runs the execution
while this script samples, every 0.25 s, the memory of the worker's whole process tree
(the worker, ansible-playbook and its fork workers, their children): the sum of RSS (what
``ps`` shows; shared pages of the forked workers are counted once per process, so this
overstates) and the sum of PSS (shared pages divided among their users: the memory
really used). Then it times the server side of the execution page ``/executions/<id>``
and of its live-update endpoint through the real app (WSGI, logged in as an admin).

Targets: every host gets its operation; peak memory <= 500 MB; page <= 300 ms.
Results go to stdout and bench/results/thousand_hosts-<db>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report_scale import setup_env  # noqa: E402
from server.runs import procs  # noqa: E402


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    return [pid] + [p.pid for p in procs.descendants(pid)]


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB (0, 0 if it is gone)."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stop = threading.Event()
        self.peak_rss = self.peak_pss = self.peak_worker_rss = self.peak_procs = 0
        self.samples = 0

    def run(self) -> None:
        while not self.stop.is_set():
            pids = tree(self.pid)
            mem = [memory_kb(p) for p in pids]
            self.peak_rss = max(self.peak_rss, sum(m[0] for m in mem))
            self.peak_pss = max(self.peak_pss, sum(m[1] for m in mem))
            self.peak_worker_rss = max(self.peak_worker_rss, mem[0][0] if mem else 0)
            self.peak_procs = max(self.peak_procs, len(pids))
            self.samples += 1
            self.stop.wait(0.25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--page-runs", type=int, default=10)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tm-bench-1000-"))
    _url, drop = setup_env(args.db, tmp)
    try:
        from server import create_app
        from server.core import db
        from server.people.auth import create_user
        from server.core.db import Base
        from server.executions.request import request_execution
        from server.core.models import Execution, Host, Operation, Step, Task

        app = create_app({"TESTING": True})
        Base.metadata.create_all(db.engine())
        with app.app_context():
            session = db.session()
            admin = create_user(session, "admin", "admin", "bench-password-1", actor="bench")
            hosts = [Host(name=f"node{i:04d}", address="127.0.0.1", protocol="local", vars={})
                     for i in range(args.hosts)]
            session.add_all(hosts)
            task = Task(name="thousand", kind="commands", commands=["echo hello from $(hostname)", "uname -r"],
                        timeout_s=3600)
            task.hosts = hosts
            session.add(task)
            session.commit()
            ex = request_execution(session, task, admin, reason="benchmark")
            session.commit()  # enqueued after commit
            ex_id, admin_id = ex.id, admin.id

        env = {**os.environ}
        t0 = time.perf_counter()
        worker = subprocess.Popen([str(REPO / ".venv" / "bin" / "flask"), "--app", "wsgi", "worker", "--burst"],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sampler = Sampler(worker.pid)
        sampler.start()
        out, _ = worker.communicate(timeout=3600)
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        if worker.returncode != 0:
            print(out[-5000:])
            raise SystemExit(f"worker exited with {worker.returncode}")

        with app.app_context():
            session = db.session()
            ex = session.get(Execution, ex_id)
            statuses: dict[str, int] = {}
            for (st,) in session.query(Operation.status).filter_by(execution_id=ex_id):
                statuses[st] = statuses.get(st, 0) + 1
            n_steps = session.query(Step).join(Step.operation).filter_by(execution_id=ex_id).count()
            run_s = (ex.finished_at - ex.started_at).total_seconds()
            print(f"execution {ex_id}: {ex.status} in {run_s:.1f} s (worker process {wall:.1f} s), "
                  f"operations {statuses}, {n_steps} steps", flush=True)

            client = app.test_client()
            with client.session_transaction() as sess:
                sess["_user_id"] = str(admin_id)
                sess["_fresh"] = True
            page_ms, page_cpu_ms, live_ms = [], [], []
            since = ex.finished_at.isoformat()  # what the page sends: its previous server_time
            for _ in range(args.page_runs):
                t, c = time.perf_counter(), time.process_time()
                resp = client.get(f"/executions/{ex_id}")
                page_ms.append((time.perf_counter() - t) * 1000)
                page_cpu_ms.append((time.process_time() - c) * 1000)
                assert resp.status_code == 200, resp.status_code
                t = time.perf_counter()
                resp2 = client.get(f"/executions/{ex_id}/live", query_string={"since": since})
                live_ms.append((time.perf_counter() - t) * 1000)
                assert resp2.status_code == 200, resp2.status_code
            html = resp.get_data(as_text=True)
            print(f"/executions/{ex_id}: {len(html) / 1024:.0f} kB, median {statistics.median(page_ms):.0f} ms "
                  f"(CPU {statistics.median(page_cpu_ms):.0f} ms), max {max(page_ms):.0f} ms; live poll median "
                  f"{statistics.median(live_ms):.0f} ms", flush=True)

        result = {
            "db": args.db,
            "hosts": args.hosts,
            "status": ex.status,
            "operations": statuses,
            "steps": n_steps,
            "run_s": round(run_s, 1),
            "worker_wall_s": round(wall, 1),
            "peak_tree_rss_mb": round(sampler.peak_rss / 1024, 1),
            "peak_tree_pss_mb": round(sampler.peak_pss / 1024, 1),
            "peak_worker_process_rss_mb": round(sampler.peak_worker_rss / 1024, 1),
            "peak_processes": sampler.peak_procs,
            "memory_samples": sampler.samples,
            "page_ms": {"median": round(statistics.median(page_ms), 1), "max": round(max(page_ms), 1),
                        "first": round(page_ms[0], 1), "cpu_median": round(statistics.median(page_cpu_ms), 1)},
            "live_ms": {"median": round(statistics.median(live_ms), 1), "max": round(max(live_ms), 1)},
            "page_kb": round(len(html) / 1024),
            "targets": {"memory_mb": 500, "page_ms": 300},
            "note": "2-core machine shared with other work while measuring",
        }
        print(json.dumps(result, indent=2))
        (REPO / "bench" / "results").mkdir(exist_ok=True)
        (REPO / "bench" / "results" / f"thousand_hosts-{args.db}.json").write_text(json.dumps(result, indent=2) + "\n")
        ok = (ex.status == "succeeded" and statuses.get("succeeded") == args.hosts
              and sampler.peak_pss / 1024 <= 500 and statistics.median(page_ms) <= 300)
        raise SystemExit(0 if ok else 1)
    finally:
        drop()


if __name__ == "__main__":
    main()
