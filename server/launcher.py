"""``flask --app wsgi serve``: web UI + API, one worker and the scheduler, in the foreground.

Each role runs as its own child process (as they would on separate machines); the
launcher starts the private redis-server first when no ``TASKMANAGER_REDIS_URL`` is set,
restarts nothing silently, and stops everything on Ctrl-C or when any child dies.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from server.core import db
from server.people.auth import ensure_first_admin, first_admin_banner
from server.core.config import REPO_ROOT, Settings
from server.core.redis_conn import ensure_embedded_redis


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def child_commands(settings: Settings) -> dict[str, list[str]]:
    flask = [_bin("flask"), "--app", "wsgi"]
    return {
        "web": [
            _bin("gunicorn"),
            "--bind", settings.bind,
            "--worker-class", "gthread",
            "--workers", os.environ.get("TASKMANAGER_WEB_WORKERS", "2"),
            "--threads", "8",
            "--timeout", "120",
            "--access-logfile", "-",
            "wsgi:app",
        ],
        "worker": flask + ["worker"],
        "scheduler": flask + ["scheduler"],
    }


def serve(settings: Settings) -> None:
    redis_proc = None
    if not settings.redis_url:
        redis_proc = ensure_embedded_redis(settings.instance_dir, settings.embedded_redis_socket)
        print(f"redis: private server on unix://{settings.embedded_redis_socket}", flush=True)
    password = ensure_first_admin(db.session())  # after Redis is up: the audit anchor goes there too
    if password:
        print(first_admin_banner(password), flush=True)
    children: dict[str, subprocess.Popen] = {}
    stopping = False

    def stop(*_args) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for name, cmd in child_commands(settings).items():
            children[name] = subprocess.Popen(cmd, cwd=REPO_ROOT)
            print(f"{name}: started (pid {children[name].pid})", flush=True)
        print(f"Task Manager is running at http://{settings.bind}/  (Ctrl-C stops it)", flush=True)
        while not stopping:
            for name, proc in children.items():
                if proc.poll() is not None:
                    print(f"{name} exited with status {proc.returncode}; stopping", file=sys.stderr, flush=True)
                    stopping = True
            time.sleep(0.5)
    finally:
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in children.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        if redis_proc is not None:
            redis_proc.terminate()
            try:
                redis_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                redis_proc.kill()
        print("stopped", flush=True)
