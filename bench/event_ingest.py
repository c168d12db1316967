#!/usr/bin/env python3
"""Event ingestion: ansible-runner events per second into the database (steps/operations).

    .venv/bin/python bench/event_ingest.py --db sqlite
    .venv/bin/python bench/event_ingest.py --db postgresql   # private database on 127.0.0.1:5432

1. A REAL run: a commands task with ``--tasks`` commands over ``--hosts`` hosts with
   ``ansible_connection=local``, through the product's own ``runner.run`` (ansible-runner,
   ansible-playbook, the Recorder that writes Steps/Operations in batches). Every event the
   Recorder receives is recorded, and the time spent inside its handler is summed: that
   gives the ingestion capacity under real conditions, while the run's own rate is bounded
   by how fast ansible-playbook produces events on this machine.
2. REPLAY: the recorded event stream is fed again, as fast as possible, into a fresh
   execution's Recorder (the same code path the worker uses), ``--replays`` times; the
   wall time from the first event to the last commit gives events/s into the database.

Target >= 5,000 events/s (AWX documents ~1,100/s per 4-vCPU node). Results go to stdout
and bench/results/event_ingest-<db>.json. The machine may be shared: run it when idle.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.report_scale import setup_env  # noqa: E402  (private SQLite / PostgreSQL database)


def make_execution(session, task, hosts):
    from server.core.models import Execution, Operation, utcnow

    now = utcnow()
    ex = Execution(task_id=task.id, task=task, status="running", trigger="manual", created_at=now, queued_at=now,
                   started_at=now, heartbeat_at=now, vars={}, host_count=len(hosts), revision="bench")
    session.add(ex)
    session.flush()
    ops = {}
    for h in hosts:
        op = Operation(execution_id=ex.id, host_id=h.id, host_name=h.name, status="pending")
        session.add(op)
        ops[h.name] = op
    session.commit()
    return ex, ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--hosts", type=int, default=200)
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--replays", type=int, default=3)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tm-bench-ingest-"))
    _url, drop = setup_env(args.db, tmp)
    try:
        from server import create_app
        from server.core import db
        from server.runs import recorder, runner
        from server.core.db import Base
        from server.core.models import Host, Step, Task

        app = create_app()
        Base.metadata.create_all(db.engine())
        with app.app_context():
            session = db.session()
            settings = app.config["TM"]
            hosts = [Host(name=f"node{i:04d}", address="127.0.0.1", protocol="local", vars={}) for i in range(args.hosts)]
            session.add_all(hosts)
            task = Task(name="ingest", kind="commands", commands=[f"echo line-{i}" for i in range(args.tasks)],
                        timeout_s=3600)
            session.add(task)
            session.commit()

            # -- 1. a real run, recording every event the Recorder gets ----------------
            events: list[dict] = []
            handler_time = [0.0]
            original = recorder.Recorder.event_handler

            progress: list[str | None] = [None]  # the run's tm_commands progress prefix, for the replays

            def recording(self, event):
                progress[0] = self.progress
                events.append(copy.deepcopy(event))
                t0 = time.perf_counter()
                try:
                    return original(self, event)
                finally:
                    handler_time[0] += time.perf_counter() - t0

            recorder.Recorder.event_handler = recording
            ex, ops = make_execution(session, task, hosts)
            t0 = time.perf_counter()
            result = runner.run(session, ex, hosts, ops, settings)
            session.commit()
            live_wall = time.perf_counter() - t0
            recorder.Recorder.event_handler = original
            n_steps = session.query(Step).join(Step.operation).filter_by(execution_id=ex.id).count()
            assert result.status == "succeeded", result
            assert n_steps == args.hosts * args.tasks, n_steps
            live = {
                "events": len(events),
                "wall_s": round(live_wall, 2),
                "events_per_s_of_the_run": round(len(events) / live_wall),
                "time_in_recorder_s": round(handler_time[0], 3),
                "recorder_share_of_wall": round(handler_time[0] / live_wall, 3),
                # At a live run's low event rate the Recorder commits on time (every
                # 0.25 s) with small batches, so this is a floor, not its capacity.
                "events_per_recorder_busy_s": round(len(events) / handler_time[0]),
            }
            print(f"real run: {len(events)} events in {live_wall:.1f} s "
                  f"({live['events_per_s_of_the_run']}/s, bounded by ansible-playbook); "
                  f"the Recorder was busy {handler_time[0]:.2f} s = {100 * handler_time[0] / live_wall:.1f}% "
                  f"of the run", flush=True)

            # -- 2. replay as fast as possible ----------------------------------------
            rates = []
            for r in range(args.replays):
                ex, ops = make_execution(session, task, hosts)
                names = {h.name: h.name for h in hosts}
                rec = recorder.Recorder(session, ex, recorder.by_inventory_name(ops, names), names,
                                        list(task.commands), progress[0])
                t0 = time.perf_counter()
                for ev in events:
                    rec.event_handler(ev)
                res = rec.finish(None, 3600)
                session.commit()
                wall = time.perf_counter() - t0
                steps = session.query(Step).join(Step.operation).filter_by(execution_id=ex.id).count()
                assert steps == args.hosts * args.tasks and res.status == "succeeded", (steps, res)
                rates.append(len(events) / wall)
                print(f"replay {r + 1}: {len(events)} events in {wall:.2f} s = {rates[-1]:,.0f} events/s", flush=True)

        out = {
            "db": args.db, "hosts": args.hosts, "tasks": args.tasks, "cpus": os.cpu_count(),
            "real_run": live,
            "replay_events_per_s": [round(x) for x in rates],
            "replay_median_events_per_s": round(statistics.median(rates)),
            "target_events_per_s": 5000,
            "note": "2-core machine shared with other work while measuring",
        }
        print(json.dumps(out, indent=2))
        (REPO / "bench" / "results").mkdir(exist_ok=True)
        (REPO / "bench" / "results" / f"event_ingest-{args.db}.json").write_text(json.dumps(out, indent=2) + "\n")
    finally:
        drop()


if __name__ == "__main__":
    main()
