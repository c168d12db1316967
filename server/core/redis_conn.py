"""Redis: transport only (RQ jobs carry execution ids). The database stays the truth.

When ``TASKMANAGER_REDIS_URL`` is unset, a private ``redis-server`` listens on a unix
socket under ``instance/``; ``ensure_embedded_redis`` starts it if nobody has.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from redis import Redis

_conn: Redis | None = None
_url: str | None = None


def init_redis(url: str) -> Redis:
    global _conn, _url
    if _conn is None or _url != url:
        _conn = Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
        _url = url
    return _conn


def redis() -> Redis:
    if _conn is None:
        raise RuntimeError("redis not initialised")
    return _conn


def ensure_embedded_redis(instance_dir: Path, socket_path: Path) -> subprocess.Popen | None:
    """Start the private redis-server unless one already answers on the socket.

    Returns the process we started (the caller stops it), or None if one was running.
    """
    if socket_path.exists():
        try:
            Redis(unix_socket_path=str(socket_path), socket_connect_timeout=1).ping()
            return None
        except Exception:
            socket_path.unlink(missing_ok=True)
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(binary):
        raise RuntimeError("redis-server is not installed; run `make run` or set TASKMANAGER_REDIS_URL")
    data_dir = instance_dir / "redis"
    data_dir.mkdir(exist_ok=True, mode=0o700)
    proc = subprocess.Popen(
        [
            binary,
            "--port", "0",
            "--unixsocket", str(socket_path),
            "--unixsocketperm", "700",
            "--dir", str(data_dir),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(data_dir / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            Redis(unix_socket_path=str(socket_path), socket_connect_timeout=1).ping()
            return proc
        except Exception:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}; see {data_dir / 'redis.log'}") from None
            time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("redis-server did not start within 10 s")
