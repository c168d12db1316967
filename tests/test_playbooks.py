"""The shipped playbooks, run for real with ansible-playbook against local hosts.

Two inventory aliases of this machine (``ansible_connection=local``, the system Python
like a Debian target) get different variables, so one run shows one host passing and
one failing. Every playbook also runs with ``--check``, which must change nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PLAYBOOKS = REPO / "playbooks"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
TARGET_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def ansible_env(tmp: Path) -> dict[str, str]:
    from server.runs.protocols import ansible_env as product_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(product_env())
    env.update(
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_RETRY_FILES_ENABLED="False",
        ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-local"),
        ANSIBLE_REMOTE_TEMP=str(tmp / "ansible-remote"),
    )
    return env


def write_inventory(tmp: Path, hosts: dict[str, dict]) -> Path:
    """A YAML-compatible JSON inventory: {alias: hostvars}, all on the local connection."""
    inv = {
        "all": {
            "hosts": {
                name: {"ansible_connection": "local", "ansible_python_interpreter": TARGET_PYTHON, **hv}
                for name, hv in hosts.items()
            }
        }
    }
    path = tmp / f"inventory-{uuid.uuid4().hex[:6]}.yml"
    path.write_text(json.dumps(inv))
    return path


def run_playbook(tmp: Path, playbook: str, hosts: dict[str, dict], extra: dict | None = None, check: bool = False):
    inv = write_inventory(tmp, hosts)
    cmd = [str(ANSIBLE_PLAYBOOK), "-i", str(inv), str(PLAYBOOKS / playbook)]
    if extra:
        ev = tmp / f"extra-{uuid.uuid4().hex[:6]}.json"
        ev.write_text(json.dumps(extra))
        cmd += ["-e", f"@{ev}"]
    if check:
        cmd.append("--check")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(tmp), timeout=120, cwd=tmp)
    return proc.returncode, proc.stdout + proc.stderr


def recap(out: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines → {host: {"ok": n, "failed": n, ...}}."""
    result = {}
    lines = out.split("PLAY RECAP", 1)[1].splitlines()[1:]
    for line in lines:
        if ":" not in line:
            continue
        host, counts = line.split(":", 1)
        result[host.strip()] = {k: int(v) for k, v in (p.split("=") for p in counts.split())}
    return result


def tree(path: Path) -> dict[str, tuple]:
    """Every entry under path with what a change would alter (type, size, mtime, link)."""
    out = {}
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(path))] = (st.st_mode, st.st_size, st.st_mtime_ns, os.readlink(p) if p.is_symlink() else None)
    return out


# --------------------------------------------------------------------------- syntax


def test_every_playbook_passes_syntax_check(tmp_path):
    books = sorted(p for p in PLAYBOOKS.rglob("*.yml") if "roles" not in p.relative_to(PLAYBOOKS).parts)
    assert {"service_restart.yml", "backup.yml", "log_cleanup.yml", "system_check.yml"} <= {p.name for p in books}
    inv = write_inventory(tmp_path, {"h1": {}})
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "--syntax-check", "-i", str(inv), *map(str, books)],
        capture_output=True, text=True, env=ansible_env(tmp_path), timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- service_restart

INIT_SCRIPT = """#!/bin/sh
# A minimal LSB init script: a sleep daemon with a pid file.
PIDFILE={pidfile}
case "$1" in
  start|restart)
    [ -f "$PIDFILE" ] && kill "$(cat "$PIDFILE")" 2>/dev/null
    {start}
    echo "restarted" ;;
  status)
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then echo "{name} is running"; exit 0; fi
    echo "{name} is not running"; exit 3 ;;
  *) echo "usage: $0 restart|status"; exit 2 ;;
esac
"""


def make_init_script(directory: Path, name: str, piddir: Path, works: bool = True) -> Path:
    pidfile = piddir / f"{name}.pid"
    start = "setsid sleep 600 >/dev/null 2>&1 & echo $! > \"$PIDFILE\"" if works else "rm -f \"$PIDFILE\""
    script = directory / name
    script.write_text(INIT_SCRIPT.format(pidfile=pidfile, start=start, name=name))
    script.chmod(0o755)
    return pidfile


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text())
    except (OSError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def daemons(tmp_path):
    """Pid files of the sleep daemons init scripts start; every one is killed afterwards."""
    piddir = tmp_path / "pids"
    piddir.mkdir()
    yield piddir
    for pidfile in piddir.glob("*.pid"):
        pid = read_pid(pidfile)
        if alive(pid):
            os.kill(pid, signal.SIGTERM)


def test_service_restart_initd_reports_each_service(tmp_path, daemons):
    init1, init2 = tmp_path / "init1", tmp_path / "init2"
    init1.mkdir()
    init2.mkdir()
    good1 = make_init_script(init1, "good", daemons)
    (daemons / "h2").mkdir()
    good2 = make_init_script(init2, "good", daemons / "h2")
    make_init_script(init2, "broken", daemons / "h2", works=False)
    # A running instance before the restart, to see that it really is replaced.
    subprocess.run([str(init1 / "good"), "start"], check=True, capture_output=True)
    before = read_pid(good1)
    assert alive(before)

    rc, out = run_playbook(
        tmp_path,
        "service_restart.yml",
        {
            "h1": {"service_init_dir": str(init1), "services": ["good"]},
            "h2": {"service_init_dir": str(init2), "services": "good, broken, missing"},
        },
        extra={"service_manager": "initd", "service_verify_retries": 1, "service_verify_delay": 1},
    )
    try:
        assert rc == 2, out
        stats = recap(out)
        assert stats["h1"]["failed"] == 0 and stats["h2"]["failed"] == 1, out
        after = read_pid(good1)
        assert after != before and alive(after) and not alive(before)
        assert alive(read_pid(good2))
        assert '"good: active (good is running)"' in out
        assert '"broken: not active after restart (broken is not running)"' in out
        assert '"missing: not found"' in out
        assert "2 of 3 service(s) failed: broken (not active after restart: broken is not running); missing (not found)" in out
    finally:
        for pid in (read_pid(good1), read_pid(good2), before):
            if alive(pid):
                os.kill(pid, signal.SIGTERM)


def test_service_restart_check_mode_restarts_nothing(tmp_path, daemons):
    init = tmp_path / "init"
    init.mkdir()
    pidfile = make_init_script(init, "good", daemons)
    subprocess.run([str(init / "good"), "start"], check=True, capture_output=True)
    before = read_pid(pidfile)
    rc, out = run_playbook(
        tmp_path, "service_restart.yml", {"h1": {}},
        extra={"services": ["good"], "service_manager": "initd", "service_init_dir": str(init)}, check=True,
    )
    assert rc == 0, out
    assert read_pid(pidfile) == before and alive(before)
    assert '"good: would restart (good is running)"' in out
    assert recap(out)["h1"]["changed"] == 0


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="systemd runs this machine: `service` would go to systemctl")
@pytest.mark.skipif(not Path("/usr/sbin/service").exists(), reason="the `service` command is not installed")
def test_service_restart_auto_uses_the_service_command_without_systemd(tmp_path, daemons):
    """No systemd here: auto-detection falls back to `service NAME restart|status`,
    which runs the real /etc/init.d script."""
    name = f"tm-test-{uuid.uuid4().hex[:8]}"
    pidfile = make_init_script(Path("/etc/init.d"), name, daemons)
    try:
        rc, out = run_playbook(tmp_path, "service_restart.yml", {"h1": {}}, extra={"services": [name]})
        assert rc == 0, out
        assert alive(read_pid(pidfile))
        assert f'"{name}: active ({name} is running)"' in out
    finally:
        Path("/etc/init.d", name).unlink()


def test_service_restart_rejects_bad_service_names(tmp_path):
    rc, out = run_playbook(tmp_path, "service_restart.yml", {"h1": {}}, extra={"services": ["ok", "../../bin/sh"]})
    assert rc == 2 and "'services' must name at least one service" in out, out


# --------------------------------------------------------------------------- backup


def make_source(root: Path) -> Path:
    src = root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n" * 1000)
    (src / "sub" / "b.bin").write_bytes(os.urandom(20000))
    return src


def old_archives(directory: Path, name: str, count: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    made = []
    for day in range(1, count + 1):
        p = directory / f"{name}-202001{day:02d}T000000Z.tar.gz"
        p.write_bytes(b"old")
        (directory / (p.name + ".sha256")).write_text("x  " + p.name + "\n")
        made.append(p)
    return made


def test_backup_archives_checksums_and_applies_retention(tmp_path):
    src1 = make_source(tmp_path / "h1")
    out1, out2 = tmp_path / "h1" / "backups", tmp_path / "h2" / "backups"
    olds = old_archives(out1, "etc", 3)
    rc, out = run_playbook(
        tmp_path,
        "backup.yml",
        {
            "h1": {"backup_paths": [str(src1), str(tmp_path / "h1" / "gone")], "backup_missing_ok": True,
                   "backup_dir": str(out1), "backup_name": "etc", "backup_retention": 2},
            "h2": {"backup_paths": f"{tmp_path / 'h2' / 'gone'}", "backup_dir": str(out2)},
        },
    )
    assert rc == 2, out
    stats = recap(out)
    assert stats["h1"]["failed"] == 0 and stats["h2"]["failed"] == 1, out
    assert f"path(s) to back up do not exist: {tmp_path / 'h2' / 'gone'}" in out

    archives = sorted(out1.glob("etc-*.tar.gz"))
    # Retention 2: this run's archive plus the newest old one.
    assert [a.name for a in archives] == [olds[2].name, archives[1].name]
    assert archives[1].name.startswith("etc-20") and archives[1] != olds[2]
    new = archives[1]
    assert not olds[0].exists() and not Path(str(olds[0]) + ".sha256").exists() and not olds[1].exists()
    assert not list(out1.glob("*.partial"))
    digest = hashlib.sha256(new.read_bytes()).hexdigest()
    assert Path(str(new) + ".sha256").read_text() == f"{digest}  {new.name}\n"
    check = subprocess.run(["sha256sum", "-c", new.name + ".sha256"], cwd=out1, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    with tarfile.open(new) as tar:
        names = set(tar.getnames())
        rel = "." + str(src1)
        assert {f"{rel}/a.txt", f"{rel}/sub/b.bin"} <= names
        assert tar.extractfile(f"{rel}/a.txt").read() == b"alpha\n" * 1000
    assert f"to {new} ({new.stat().st_size / 1024:.2f} KB, sha256 {digest})" in out
    assert "removed 2 old archive(s); skipped missing: " + str(tmp_path / "h1" / "gone") in out
    assert not out2.exists()


def test_backup_check_mode_writes_nothing(tmp_path):
    src = make_source(tmp_path)
    dest = tmp_path / "backups"
    old_archives(dest, "backup", 3)
    before = tree(tmp_path)
    rc, out = run_playbook(
        tmp_path, "backup.yml", {"h1": {}},
        extra={"backup_paths": [str(src)], "backup_dir": str(dest), "backup_retention": 2}, check=True,
    )
    assert rc == 0, out
    after = {k: v for k, v in tree(tmp_path).items() if not k.startswith(("ansible-", "inventory-", "extra-"))}
    assert after == {k: v for k, v in before.items()}
    assert "would archive " + str(src) in out and "would remove 2 old archive(s)" in out


# --------------------------------------------------------------------------- log_cleanup

DAY = 86400


def age(path: Path, days: float) -> None:
    t = time.time() - days * DAY
    os.utime(path, (t, t), follow_symlinks=False)


def make_logs(root: Path) -> dict[str, Path]:
    logs, outside = root / "logs", root / "outside"
    (logs / "app").mkdir(parents=True)
    outside.mkdir()
    files = {
        "old": logs / "old.log",
        "old_rotated": logs / "app" / "app.log.3",
        "mid": logs / "app" / "app.log.1",
        "new": logs / "current.log",
        "other": logs / "data.db",
        "outside_old": outside / "secret.log",
        "outside_in_dir": outside / "deep.log",
    }
    for key, p in files.items():
        p.write_bytes(b"x" * (30000 if key != "mid" else 60000))
    (logs / "link.log").symlink_to(files["outside_old"])
    (logs / "linkdir").symlink_to(outside)
    for key in ("old", "old_rotated", "other", "outside_old", "outside_in_dir"):
        age(files[key], 45)
    age(files["mid"], 10)
    age(logs / "link.log", 45)
    return files


def test_log_cleanup_deletes_compresses_and_never_follows_symlinks(tmp_path):
    f1 = make_logs(tmp_path / "h1")
    real = tmp_path / "h2" / "real"
    real.mkdir(parents=True)
    (tmp_path / "h2" / "via-link").symlink_to(real)
    rc, out = run_playbook(
        tmp_path,
        "log_cleanup.yml",
        {
            "h1": {"log_paths": [str(tmp_path / "h1" / "logs")]},
            "h2": {"log_paths": str(tmp_path / "h2" / "via-link")},
        },
        extra={"log_delete_days": 30, "log_compress_days": 7},
    )
    assert rc == 2, out
    stats = recap(out)
    assert stats["h1"]["failed"] == 0 and stats["h2"]["failed"] == 1, out
    assert f"{tmp_path / 'h2' / 'via-link'} (a symlink to {real})" in out

    assert not f1["old"].exists() and not f1["old_rotated"].exists()
    mid_gz = Path(str(f1["mid"]) + ".gz")
    assert not f1["mid"].exists() and mid_gz.exists()
    assert subprocess.run(["gzip", "-dc", str(mid_gz)], capture_output=True).stdout == b"x" * 60000
    assert f1["new"].exists() and f1["other"].exists()  # too young / not a log name
    # Nothing outside the path, nor the links themselves, was touched.
    assert f1["outside_old"].read_bytes() == b"x" * 30000 and f1["outside_in_dir"].exists()
    logs = tmp_path / "h1" / "logs"
    assert (logs / "link.log").is_symlink() and (logs / "linkdir").is_symlink()
    freed = 60000 + 60000 - mid_gz.stat().st_size
    assert "deleted 2 file(s), compressed 1 file(s)" in out
    assert f"{freed / 1024:.2f} KB freed" in out


def test_log_cleanup_check_mode_changes_nothing(tmp_path):
    make_logs(tmp_path)
    before = tree(tmp_path / "logs"), tree(tmp_path / "outside")
    rc, out = run_playbook(tmp_path, "log_cleanup.yml", {"h1": {}}, extra={"log_paths": [str(tmp_path / "logs")]}, check=True)
    assert rc == 0, out
    assert (tree(tmp_path / "logs"), tree(tmp_path / "outside")) == before
    assert "would delete 2 file(s) (58.59 KB) and compress 1 file(s) (58.59 KB before compression)" in out


def test_log_cleanup_refuses_system_roots(tmp_path):
    rc, out = run_playbook(tmp_path, "log_cleanup.yml", {"h1": {}}, extra={"log_paths": ["/var/"]}, check=True)
    assert rc == 2 and "log_paths must be absolute directories" in out, out


# --------------------------------------------------------------------------- system_check


@pytest.mark.parametrize("check", [False, True], ids=["normal", "check-mode"])
def test_system_check_fails_only_the_host_over_thresholds(tmp_path, check):
    rc, out = run_playbook(
        tmp_path,
        "system_check.yml",
        {
            "h1": {"check_disk_max_percent": 100, "check_mem_min_available_percent": 0, "check_load_max_per_cpu": 1000},
            "h2": {"check_disk_max_percent": 0, "check_inode_max_percent": 0, "check_mem_min_available_percent": 100,
                   "check_load_max_per_cpu": 1000},
        },
        check=check,
    )
    assert rc == 2, out
    stats = recap(out)
    assert stats["h1"]["failed"] == 0 and stats["h2"]["failed"] == 1 and stats["h1"]["changed"] == 0, out
    assert "system check failed on h2: disk / is " in out
    assert "% full (limit 0%" in out and "inodes on / are " in out and "% of memory available (minimum 100%)" in out
    assert "system check failed on h1" not in out
    assert '"problems: none"' in out
    assert "load (1/5/15 min): " in out


def test_system_check_rejects_bad_thresholds(tmp_path):
    rc, out = run_playbook(tmp_path, "system_check.yml", {"h1": {}}, extra={"check_disk_max_percent": 150})
    assert rc == 2 and "thresholds out of range: check_disk_max_percent=150" in out, out
