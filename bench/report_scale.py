#!/usr/bin/env python3
"""Report pages and CSV exports at scale: 10,000 executions x 100 hosts = 1,000,000 operations.

    .venv/bin/python bench/report_scale.py --db sqlite
    .venv/bin/python bench/report_scale.py --db postgresql   # private database on 127.0.0.1:5432

Seeds a private database fast (executemany on SQLite, COPY on PostgreSQL), then times the
server side of each page through the real app (WSGI test client: routing, queries,
templates) and streams both CSV exports while sampling the process RSS. Target: each page
<= 300 ms. Results go to stdout and bench/results/report_scale-<db>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PG_ADMIN = os.environ.get("TM_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
STATUSES = ["succeeded"] * 90 + ["failed"] * 7 + ["timed_out", "lost", "cancelled"]


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def setup_env(kind: str, tmp: Path) -> tuple[str, callable]:
    os.environ["TASKMANAGER_INSTANCE_DIR"] = str(tmp / "instance")
    os.environ.setdefault("TASKMANAGER_REDIS_URL", "redis://127.0.0.1:6379/13")
    os.environ["TASKMANAGER_QUEUE"] = f"bench-{uuid.uuid4().hex[:6]}"
    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'bench.db'}"
        os.environ["TASKMANAGER_DATABASE_URL"] = url
        return url, lambda: None
    from sqlalchemy import create_engine, text

    name = f"tm_bench_{os.getpid()}"
    admin = create_engine("postgresql+psycopg://" + PG_ADMIN.split("://", 1)[1], isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    os.environ["TASKMANAGER_DATABASE_URL"] = url

    def drop() -> None:
        from server.core import db

        db.init_engine("sqlite://")
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def seed(engine, n_exec: int, n_hosts: int, n_tasks: int) -> dict:
    """Bulk-load hosts, tasks, executions and operations; returns what the timings need."""
    rng = random.Random(42)
    now = datetime.now(timezone.utc)
    dialect = engine.dialect.name
    span = timedelta(days=60)
    hosts = [f"srv-{i:04d}.example.net" for i in range(n_hosts)]
    flaky = set(rng.sample(hosts, max(3, n_hosts // 20)))  # these fail more often

    def ts(dt: datetime):
        if dialect == "sqlite":
            return dt.astimezone(timezone.utc).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        return dt

    executions, operations = [], []
    op_id = 0
    for i in range(1, n_exec + 1):
        created = now - span + span * (i / n_exec)
        status = rng.choice(STATUSES)
        started = created + timedelta(seconds=2)
        dur = rng.uniform(20, 600)
        finished = started + timedelta(seconds=dur)
        task_id = 1 + (i % n_tasks)
        trigger = "schedule" if i % 3 else "manual"
        executions.append((i, task_id, status, trigger, 1 if trigger == "manual" else None, ts(created), ts(created),
                           ts(started), ts(finished), n_hosts, n_hosts, "abc123", False, False, 1, "{}"))
        bad_hosts = set()
        if status in ("failed", "timed_out"):
            bad_hosts = set(rng.sample(sorted(flaky), 2)) | {rng.choice(hosts)}
        for h_index, host in enumerate(hosts):
            op_id += 1
            op_status = "succeeded"
            if host in bad_hosts:
                op_status = "unreachable" if h_index % 2 else "failed"
            message = "ssh: connect to host port 22: Connection timed out" if op_status == "unreachable" else None
            operations.append((op_id, i, h_index + 1, host, op_status, 0 if op_status == "succeeded" else 2,
                               "ok\n", "" if op_status == "succeeded" else "E: something broke\n", message,
                               ts(started), ts(finished)))
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        host_rows = [(i + 1, h, f"10.0.{i // 250}.{i % 250 + 1}", 22, "ssh", "{}", ts(now), ts(now))
                     for i, h in enumerate(hosts)]
        task_rows = [(t, f"task-{t:03d}", "", "commands", '["uptime"]', "{}", False, 3600, False, 1, 10, False,
                      ts(now), ts(now)) for t in range(1, n_tasks + 1)]
        ph = "?" if dialect == "sqlite" else "%s"

        def many(sql: str, rows: list) -> None:
            cur.executemany(sql.replace("?", ph), rows)

        many("INSERT INTO hosts (id, name, address, port, protocol, vars, created_at, updated_at) "
             "VALUES (?,?,?,?,?,?,?,?)", host_rows)
        many("INSERT INTO tasks (id, name, description, kind, commands, vars, become, timeout_s, allow_simultaneous, "
             "retry_attempts, retry_delay_s, retry_on_lost, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
             task_rows)
        exec_cols = ("id, task_id, status, trigger, requested_by_id, created_at, queued_at, started_at, finished_at, "
                     "host_count, hosts_done, revision, check_mode, cancel_requested, attempt, vars")
        op_cols = "id, execution_id, host_id, host_name, status, rc, stdout, stderr, message, started_at, finished_at"
        if dialect == "sqlite":
            many(f"INSERT INTO executions ({exec_cols}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", executions)
            many(f"INSERT INTO operations ({op_cols}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", operations)
        else:
            with cur.copy(f"COPY executions ({exec_cols}) FROM STDIN") as cp:
                for row in executions:
                    cp.write_row(row)
            with cur.copy(f"COPY operations ({op_cols}) FROM STDIN") as cp:
                for row in operations:
                    cp.write_row(row)
            for table in ("hosts", "tasks", "executions", "operations"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        raw.commit()
        cur.execute("ANALYZE")
        raw.commit()
        if dialect == "sqlite":
            # Steady state: the bulk load is checkpointed out of the WAL (as SQLite does on its own).
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()
    return {"hosts": hosts, "flaky": sorted(flaky), "executions": n_exec, "operations": len(operations)}


def timed(client, path: str, runs: int = 5) -> dict:
    times = []
    size = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        resp = client.get(path)
        body = resp.get_data()
        times.append((time.perf_counter() - t0) * 1000)
        assert resp.status_code == 200, (path, resp.status_code, body[:300])
        size = len(body)
    return {"path": path, "median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1),
            "bytes": size}


def stream_csv(client, path: str) -> dict:
    base = rss_mb()
    peak = base
    rows = 0
    t0 = time.perf_counter()
    resp = client.get(path, buffered=False)
    assert resp.status_code == 200
    for i, chunk in enumerate(resp.response):
        rows += chunk.count(b"\n") if isinstance(chunk, bytes) else chunk.count("\n")
        if i % 20 == 0:
            peak = max(peak, rss_mb())
    resp.close()
    return {"path": path, "seconds": round(time.perf_counter() - t0, 2), "rows": rows - 1,
            "rss_before_mb": round(base, 1), "rss_peak_mb": round(peak, 1), "rss_growth_mb": round(peak - base, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--executions", type=int, default=10_000)
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--tasks", type=int, default=25)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tm-bench-"))
    url, cleanup = setup_env(args.db, tmp)
    try:
        from server import create_app
        from server.core import db
        from server.people.auth import create_user
        from server.core.db import Base

        app = create_app({"TESTING": True})
        engine = db.engine()
        Base.metadata.create_all(engine)
        with app.app_context():
            create_user(db.session(), "admin", "admin", "bench-password-1", actor="bench")
            db.session.commit()
        t0 = time.perf_counter()
        info = seed(engine, args.executions, args.hosts, args.tasks)
        seed_s = time.perf_counter() - t0
        print(f"[{args.db}] seeded {info['executions']:,} executions / {info['operations']:,} operations "
              f"in {seed_s:.1f} s", flush=True)

        client = app.test_client()
        page = client.get("/login").get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        assert client.post("/login", data={"username": "admin", "password": "bench-password-1",
                                           "csrf_token": token}).status_code == 302
        host = info["flaky"][0]
        mid = args.executions // 2
        pages = [
            "/dashboard?window=24h", "/dashboard?window=7d", "/dashboard?window=30d",
            "/executions", f"/executions?before={mid}", "/executions?before=60",
            "/executions?task=task-007&status=failed", f"/executions?host={host}",
            f"/executions?host={host}&status=failed&before={mid}",
            "/executions?from=" + (datetime.now(timezone.utc) - timedelta(days=45)).date().isoformat()
            + "&to=" + (datetime.now(timezone.utc) - timedelta(days=40)).date().isoformat(),
            f"/executions/{args.executions}",
            "/reports/tasks?window=30d", "/reports/tasks/7?window=30d", "/reports/tasks/7?before=" + str(mid),
            "/reports/hosts?window=7d", "/reports/hosts?window=30d",
            f"/reports/hosts/{host}", f"/reports/hosts/{host}?before={mid * args.hosts}",
            f"/reports/hosts/{host}?status=failed", "/metrics",
        ]
        results = {"db": args.db, "executions": info["executions"], "operations": info["operations"],
                   "seed_s": round(seed_s, 1), "pages": [], "csv": []}
        for p in pages:
            r = timed(client, p, args.runs)
            results["pages"].append(r)
            flag = "" if r["median_ms"] <= 300 else "   <-- over 300 ms"
            print(f"  {r['median_ms']:8.1f} ms median {r['max_ms']:8.1f} max  {p}{flag}", flush=True)
        for p in ("/api/v1/reports/executions.csv", "/api/v1/reports/operations.csv",
                  "/api/v1/reports/operations.csv?task=task-007"):
            r = stream_csv(client, p)
            results["csv"].append(r)
            print(f"  {r['seconds']:8.2f} s  {r['rows']:>9,} rows  RSS {r['rss_before_mb']} -> {r['rss_peak_mb']} MB"
                  f" (+{r['rss_growth_mb']})  {p}", flush=True)
        out = REPO / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"report_scale-{args.db}.json").write_text(json.dumps(results, indent=2))
        slow = [p for p in results["pages"] if p["median_ms"] > 300]
        print(f"[{args.db}] {len(pages) - len(slow)}/{len(pages)} pages within 300 ms")
        return 0
    finally:
        cleanup()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
