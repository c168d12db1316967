#!/usr/bin/env python3
"""Sync of a git project: first clone, a no-change re-sync, a new commit, and what a run adds.

    .venv/bin/python bench/project_sync.py [--files 2000] [--commits 500] [--runs 5]

Builds a repository of ``--files`` files (one in ten a playbook) and ``--commits`` commits
(git fast-import), serves it over ``file://`` and syncs it through the real code path
(``catalog.projects.sync``: git fetch into the bare mirror, playbook discovery, the database
row and its audit row, on SQLite). Then measures, median of ``--runs``:

  * first sync (empty mirror), no-change re-sync (target <= 0.3 s), re-sync after one commit;
  * the launch overhead of ``sync_on_launch`` on the seed use case (a one-playbook project):
    a no-change sync plus the checkout of the run's commit (git archive into a private dir),
    against the content hash a ``local`` task computes (target <= 0.2 s more).

Results go to stdout and bench/results/project_sync.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
GIT_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
PLAY = "- name: p{n}\n  hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.command: hostname\n"


def fast_import(bare: Path, files: int, commits: int) -> None:
    """``files`` files in the first commit, then ``commits - 1`` commits changing 4 files each."""
    out = []
    mark = 0

    def blob(data: str) -> int:
        nonlocal mark
        mark += 1
        raw = data.encode()
        out.append(b"blob\nmark :%d\ndata %d\n" % (mark, len(raw)) + raw + b"\n")
        return mark

    def commit(n: int, changes: list[tuple[str, int]]) -> None:
        msg = f"commit {n}".encode()
        head = b"commit refs/heads/main\ncommitter Dev <dev@example.test> %d +0000\ndata %d\n%s\n" % (
            1700000000 + n, len(msg), msg)
        out.append(head + b"".join(b"M 100644 :%d %s\n" % (m, p.encode()) for p, m in changes))

    def path(i: int) -> str:
        return f"plays/site{i}.yml" if i % 10 == 0 else f"roles/r{i % 50}/tasks/t{i}.yml"

    commit(0, [(path(i), blob(PLAY.format(n=i) if i % 10 == 0 else f"- debug: {{msg: {i}}}\n")) for i in range(files)])
    for n in range(1, commits):
        commit(n, [(path((n * 7 + k) % files), blob(f"- debug: {{msg: {n}-{k}}}\n")) for k in range(4)])
    subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(bare)], check=True, env=GIT_ENV)
    subprocess.run(["git", "--git-dir", str(bare), "fast-import", "--quiet"], input=b"".join(out), check=True,
                   env=GIT_ENV)


def add_commit(bare: Path, n: int) -> None:
    parent = subprocess.run(["git", "--git-dir", str(bare), "rev-parse", "main"], capture_output=True, text=True,
                            env=GIT_ENV, check=True).stdout.strip()
    msg = f"extra {n}"
    data = f"- debug: {{msg: extra-{n}}}\n"
    stream = (f"commit refs/heads/main\ncommitter Dev <dev@example.test> {1800000000 + n} +0000\n"
              f"data {len(msg)}\n{msg}\nfrom {parent}\nM 100644 inline extra/e{n}.yml\ndata {len(data)}\n{data}\n")
    subprocess.run(["git", "--git-dir", str(bare), "fast-import", "--quiet"], input=stream.encode(), check=True,
                   env=GIT_ENV)


def median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--commits", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tm-bench-sync-"))
    os.environ["TASKMANAGER_INSTANCE_DIR"] = str(work / "instance")
    os.environ["TASKMANAGER_DATABASE_URL"] = f"sqlite:///{work / 'tm.db'}"
    os.environ.setdefault("TASKMANAGER_PLAYBOOK_DIR", str(REPO / "playbooks"))
    from server import create_app
    from server.catalog import playbooks, projects
    from server.core import db
    from server.core.db import Base
    from server.core.models import Project
    from server.runs import gitsync

    from server.core.redis_conn import ensure_embedded_redis

    redis_proc = ensure_embedded_redis(work, work / "redis.sock")
    os.environ["TASKMANAGER_REDIS_URL"] = f"unix://{work / 'redis.sock'}"
    app = create_app({"TESTING": True})
    results: dict = {"files": args.files, "commits": args.commits}
    try:
        with app.app_context():
            Base.metadata.create_all(db.engine())
            session = db.session()
            instance = app.config["TM"].instance_dir
            big = work / "big.git"
            started = time.perf_counter()
            fast_import(big, args.files, args.commits)
            print(f"repository: {args.files} files, {args.commits} commits ({time.perf_counter() - started:.1f} s to build)")

            def fresh_project(name: str, url: str) -> Project:
                project = Project(name=name, url=url, branch="", sync_status="never", playbooks=[])
                session.add(project)
                session.commit()
                return project

            first = []
            for i in range(args.runs):
                project = fresh_project(f"big{i}", f"file://{big}")
                t0 = time.perf_counter()
                projects.sync(session, project, instance_dir=instance)
                first.append(time.perf_counter() - t0)
                assert project.sync_status == "ok", project.sync_error
            results["first_sync_s"] = median(first)
            results["playbooks_found"] = len(project.playbooks)
            nochange = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                projects.sync(session, project, instance_dir=instance)
                nochange.append(time.perf_counter() - t0)
            results["nochange_sync_s"] = median(nochange)
            one_commit = []
            for n in range(args.runs):
                add_commit(big, n)
                t0 = time.perf_counter()
                projects.sync(session, project, instance_dir=instance)
                one_commit.append(time.perf_counter() - t0)
            results["one_new_commit_sync_s"] = median(one_commit)
            big_checkout = []
            for _ in range(args.runs):
                dest = Path(tempfile.mkdtemp(dir=work))
                t0 = time.perf_counter()
                gitsync.checkout(projects.project_dir(instance, project), project.revision, dest)
                big_checkout.append(time.perf_counter() - t0)
                shutil.rmtree(dest)
            results["checkout_big_s"] = median(big_checkout)

            # The seed use case: one playbook in a small project, vs the same file as a local task.
            seed = work / "seed.git"
            seed_work = work / "seed"
            subprocess.run(["git", "init", "-q", "-b", "main", str(seed_work)], check=True, env=GIT_ENV)
            (seed_work / "restart.yml").write_text(PLAY.format(n="restart"))
            env = {**GIT_ENV, "GIT_AUTHOR_NAME": "d", "GIT_AUTHOR_EMAIL": "d@x", "GIT_COMMITTER_NAME": "d",
                   "GIT_COMMITTER_EMAIL": "d@x"}
            subprocess.run(["git", "-C", str(seed_work), "add", "-A"], check=True, env=env)
            subprocess.run(["git", "-C", str(seed_work), "commit", "-qm", "seed"], check=True, env=env)
            subprocess.run(["git", "clone", "-q", "--bare", str(seed_work), str(seed)], check=True, env=env)
            seed_project = fresh_project("seed", f"file://{seed}")
            projects.sync(session, seed_project, instance_dir=instance)
            launch, local = [], []
            for _ in range(args.runs):
                dest = Path(tempfile.mkdtemp(dir=work))
                t0 = time.perf_counter()
                projects.sync(session, seed_project, instance_dir=instance)
                gitsync.checkout(projects.project_dir(instance, seed_project), seed_project.revision, dest)
                launch.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                playbooks.content_hash(seed_work / "restart.yml", [seed_work / "roles", REPO / "roles"])
                playbooks.git_commit(seed_work)
                local.append(time.perf_counter() - t0)
                shutil.rmtree(dest)
            results["seed_launch_git_s"] = median(launch)
            results["seed_launch_local_s"] = median(local)
            results["seed_launch_overhead_s"] = round(results["seed_launch_git_s"] - results["seed_launch_local_s"], 4)
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
        shutil.rmtree(work, ignore_errors=True)
    for key, value in results.items():
        print(f"{key:<28} {value}")
    print(f"targets: no-change sync <= 0.3 s: {'met' if results['nochange_sync_s'] <= 0.3 else 'MISSED'}; "
          f"sync_on_launch overhead <= 0.2 s: {'met' if results['seed_launch_overhead_s'] <= 0.2 else 'MISSED'}")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "project_sync.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
