#!/usr/bin/env python3
"""One execution over 1,000 hosts: it completes, worker memory stays bounded, the page renders.

    .venv/bin/python bench/thousand_hosts.py --db sqlite
    .venv/bin/python bench/thousand_hosts.py --db postgresql   # private database on 127.0.0.1:5432
    .venv/bin/python bench/thousand_hosts.py --hosts 10000 --workers 3   # sliced over 3 workers

1,000 hosts with ``ansible_connection=local`` (every "host" runs on this machine, so the
test measures Task Manager and Ansible, not the network), one ``commands`` task with two
commands. A real worker process (``flask --app wsgi worker --burst``) runs the execution
while this script samples, every 0.25 s, the memory of the worker's whole process tree
(the worker, ansible-playbook and its fork workers, their children): the sum of RSS (what
``ps`` shows; shared pages of the forked workers are counted once per process, so this
overstates) and the sum of PSS (shared pages divided among their users: the memory
really used). Then it times the server side of the execution page ``/executions/<id>``
and of its live-update endpoint through the real app (WSGI, logged in as an admin).

With ``--workers N`` (N > 1) N long-running workers share the execution: it is split into
slices of ``--slice-hosts`` hosts (runs/slicing.py), each its own ansible-runner process on
whichever worker takes it; memory is then sampled per worker tree. The hosts are created
through ``POST /api/v1/hosts`` with a list (timed). Hosts per second are counted end to
end: from the request to the execution's final status.

Targets: every host gets its operation; peak PSS per worker tree <= 500 MB; page <= 300 ms
and <= 200 KB; with 10,000 hosts and 3 workers >= 100 hosts/s.
Results go to stdout and bench/results/thousand_hosts-<db>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
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
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--slice-hosts", type=int, default=1000)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tm-bench-1000-"))
    _url, drop = setup_env(args.db, tmp)
    try:
        from server import create_app
        from server.core import db
        from server.people.auth import create_user
        from server.core.db import Base
        from server.executions.request import request_execution
        from server.core.models import EXECUTION_FINAL, Execution, Host, Operation, Step, Task, User

        app = create_app({"TESTING": True})
        Base.metadata.create_all(db.engine())
        with app.app_context():
            session = db.session()
            admin = create_user(session, "admin", "admin", "bench-password-1", actor="bench")
            from server.people.auth import issue_token

            token = issue_token(session, admin, name="bench")
            session.commit()
            admin_id = admin.id
            client = app.test_client()
            t = time.perf_counter()
            resp = client.post("/api/v1/hosts", headers={"Authorization": f"Bearer {token}"}, json=[
                {"name": f"node{i:05d}", "address": "127.0.0.1", "protocol": "local"} for i in range(args.hosts)])
            bulk_s = time.perf_counter() - t
            assert resp.status_code == 201, resp.get_data(as_text=True)[:500]
            print(f"{args.hosts} hosts created with one POST /api/v1/hosts in {bulk_s:.1f} s", flush=True)
            session.rollback()
            hosts = list(session.query(Host).order_by(Host.name))
            task = Task(name="thousand", kind="commands", commands=["echo hello from $(hostname)", "uname -r"],
                        timeout_s=3600)
            task.hosts = hosts
            session.add(task)
            session.commit()

        env = {**os.environ, "TASKMANAGER_SLICE_HOSTS": str(args.slice_hosts), "TASKMANAGER_LOG_LEVEL": "INFO"}
        flask = [str(REPO / ".venv" / "bin" / "flask"), "--app", "wsgi", "worker"]
        burst = args.workers == 1
        workers = [subprocess.Popen(flask + (["--burst"] if burst else ["--name", f"bench-{i}-{os.getpid()}"]),
                                    cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for i in range(args.workers)]
        samplers = [Sampler(w.pid) for w in workers]
        for sampler in samplers:
            sampler.start()
        if not burst:  # every worker is up and listening before the run is requested
            from rq import Worker

            from server.core.redis_conn import redis

            with app.app_context():
                while len([w for w in Worker.all(connection=redis()) if w.name.startswith("bench-")]) < args.workers:
                    time.sleep(0.2)
        with app.app_context():
            session = db.session()
            admin = session.get(User, admin_id)
            task = session.query(Task).filter_by(name="thousand").one()
            t0 = time.perf_counter()
            ex = request_execution(session, task, admin, reason="benchmark")
            session.commit()  # enqueued after commit
            ex_id = ex.id
            if burst:
                out, _ = workers[0].communicate(timeout=3600)
            else:
                while True:
                    session.rollback()
                    if session.get(Execution, ex_id, populate_existing=True).status in EXECUTION_FINAL:
                        break
                    time.sleep(0.2)
        wall = time.perf_counter() - t0
        for w in workers[0:0 if burst else len(workers)]:
            w.terminate()
        outs = [w.communicate(timeout=120)[0] for w in workers] if not burst else [out]
        for sampler in samplers:
            sampler.stop.set()
            sampler.join()
        if any(w.returncode not in (0, -15) for w in workers):
            print(outs[0][-5000:])
            raise SystemExit(f"a worker exited with {[w.returncode for w in workers]}")
        sampler = max(samplers, key=lambda smp: smp.peak_pss)
        for line in "".join(outs).splitlines():  # the worker's own account of each run (runs/runner.py)
            if "events recorded" in line:
                print("  worker:", line[line.find("execution"):], flush=True)

        with app.app_context():
            session = db.session()
            ex = session.get(Execution, ex_id)
            statuses: dict[str, int] = {}
            for (st,) in session.query(Operation.status).filter_by(execution_id=ex_id):
                statuses[st] = statuses.get(st, 0) + 1
            n_steps = session.query(Step).join(Step.operation).filter_by(execution_id=ex_id).count()
            run_s = (ex.finished_at - ex.started_at).total_seconds()
            end_to_end_s = (ex.finished_at - ex.created_at).total_seconds()
            print(f"execution {ex_id}: {ex.status} in {run_s:.1f} s, request -> final {end_to_end_s:.1f} s = "
                  f"{args.hosts / end_to_end_s:.0f} hosts/s (observed {wall:.1f} s), operations {statuses}, "
                  f"{n_steps} steps, {args.workers} worker(s)", flush=True)
            from server.core.models import ExecutionSlice

            slices = session.query(ExecutionSlice).filter_by(execution_id=ex_id).order_by(ExecutionSlice.index).all()
            for sl in slices:
                print(f"  slice {sl.index}: {sl.hosts} hosts on {sl.worker_name} in "
                      f"{(sl.finished_at - sl.started_at).total_seconds():.1f} s ({sl.status})", flush=True)

            client = app.test_client()
            login = client.get("/login").get_data(as_text=True)
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', login).group(1)
            resp = client.post("/login", data={"username": "admin", "password": "bench-password-1", "csrf_token": csrf})
            assert resp.status_code == 302, resp.status_code
            page_ms, page_cpu_ms, live_ms, api_ms = [], [], [], []
            since = ex.finished_at.isoformat()  # what the page sends: its previous server_time
            for _ in range(args.page_runs):
                t, c = time.perf_counter(), time.process_time()
                resp = client.get(f"/executions/{ex_id}")
                page_ms.append((time.perf_counter() - t) * 1000)
                page_cpu_ms.append((time.process_time() - c) * 1000)
                assert resp.status_code == 200, resp.status_code
                t = time.perf_counter()
                live_url = re.search(r'data-live-url="([^"]+)"', resp.get_data(as_text=True)).group(1)
                resp2 = client.get(live_url, query_string={"since": since})  # what the page polls
                live_ms.append((time.perf_counter() - t) * 1000)
                assert resp2.status_code == 200, resp2.status_code
                t = time.perf_counter()
                resp3 = client.get(f"/api/v1/executions/{ex_id}", headers={"Authorization": f"Bearer {token}"})
                api_ms.append((time.perf_counter() - t) * 1000)
                assert resp3.status_code == 200, resp3.status_code
            html = resp.get_data(as_text=True)
            print(f"/executions/{ex_id}: {len(html) / 1024:.0f} kB, median {statistics.median(page_ms):.0f} ms "
                  f"(CPU {statistics.median(page_cpu_ms):.0f} ms), max {max(page_ms):.0f} ms; live poll median "
                  f"{statistics.median(live_ms):.0f} ms; API first page median {statistics.median(api_ms):.0f} ms "
                  f"({len(resp3.get_data()) / 1024:.0f} kB)", flush=True)

        result = {
            "db": args.db,
            "hosts": args.hosts,
            "status": ex.status,
            "operations": statuses,
            "steps": n_steps,
            "workers": args.workers,
            "slices": len(slices),
            "bulk_hosts_s": round(bulk_s, 1),
            "run_s": round(run_s, 1),
            "request_to_final_s": round(end_to_end_s, 1),
            "hosts_per_s": round(args.hosts / end_to_end_s, 1),
            "worker_wall_s": round(wall, 1),
            "peak_tree_rss_mb": round(sampler.peak_rss / 1024, 1),
            "peak_tree_pss_mb": round(sampler.peak_pss / 1024, 1),
            "peak_worker_process_rss_mb": round(sampler.peak_worker_rss / 1024, 1),
            "peak_processes": sampler.peak_procs,
            "memory_samples": sampler.samples,
            "page_ms": {"median": round(statistics.median(page_ms), 1), "max": round(max(page_ms), 1),
                        "first": round(page_ms[0], 1), "cpu_median": round(statistics.median(page_cpu_ms), 1)},
            "live_ms": {"median": round(statistics.median(live_ms), 1), "max": round(max(live_ms), 1)},
            "api_ms": {"median": round(statistics.median(api_ms), 1), "kb": round(len(resp3.get_data()) / 1024)},
            "page_kb": round(len(html) / 1024),
            "targets": {"memory_mb": 500, "page_ms": 300},
            "note": "2-core machine shared with other work while measuring",
        }
        print(json.dumps(result, indent=2))
        (REPO / "bench" / "results").mkdir(exist_ok=True)
        (REPO / "bench" / "results" / f"thousand_hosts-{args.db}-{args.hosts}x{args.workers}.json").write_text(json.dumps(result, indent=2) + "\n")
        ok = (ex.status == "succeeded" and statuses.get("succeeded") == args.hosts
              and sampler.peak_pss / 1024 <= 500 and statistics.median(page_ms) <= 300)
        raise SystemExit(0 if ok else 1)
    finally:
        drop()


if __name__ == "__main__":
    main()
