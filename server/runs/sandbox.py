"""The per-run sandbox: every ``ansible-playbook`` runs inside bubblewrap.

A playbook (and a ``commands`` line on a ``local`` host, an API-protocol module, a plugin
shipped in a project) is user code running on the Task Manager machine. It must never
reach ``instance/`` (vault key, secret key, SQLite file, Redis socket, known hosts), the
worker's environment or another run. As AWX did with bubblewrap before it moved to
containers, each run gets:

* its own mount namespace built from an allow-list: the system (``/usr`` and the few
  ``/etc`` files programs need), the Python and Ansible installation, the shipped plugins,
  the project checkout — all read-only — and the run's private directory, read-only
  except the few sub-directories Ansible writes (``WRITABLE``); ``/tmp`` is a fresh tmpfs,
  so ssh-agent and ControlPersist sockets are the run's alone;
* a PID namespace (``/proc`` shows the run's own processes), IPC and UTS namespaces;
* an unprivileged uid: a root worker drops to ``nobody`` inside (``setpriv``), a non-root
  worker maps its uid to ``nobody`` in a user namespace; no new privileges either way
  (sudo on the controller cannot work);
* the network of the machine: targets must be reached.

There is no fallback: a run whose sandbox cannot be made fails with bubblewrap's reason.
Why the parent's own files stay outside the writable set: ansible-runner (running as the
worker) writes ``status``/``rc`` into the artifact directory after the run; were that
directory writable inside, a symlink planted there would make the worker overwrite any file.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ansible_runner.utils import open_fifo_write

from server.runs import procs

SANDBOX_UID = 65534  # nobody
SANDBOX_GID = 65534  # nogroup
# Sub-directories of a run's private directory that Ansible (inside) writes.
WRITABLE = ("tmp", "home", "cp", "ssh", "agent")
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# /etc, by allow-list: name resolution, TLS trust, time zones, the dynamic linker, Kerberos.
ETC_FILES = ("passwd", "group", "nsswitch.conf", "hosts", "host.conf", "resolv.conf", "gai.conf", "services",
             "protocols", "localtime", "timezone", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl",
             "ca-certificates", "ca-certificates.conf", "pki", "alternatives", "krb5.conf", "krb5.conf.d",
             "os-release", "debian_version", "mime.types", "python3", "python3.11", "hostname")
PROBE_TIMEOUT_S = 10
_probed = False  # a sandbox was made once in this process (check)


class SandboxError(RuntimeError):
    """The sandbox could not be made: the run fails with this reason, never unconfined."""


@dataclass
class Layout:
    """What one run sees besides the system: its private directory and read-only extras."""

    private_dir: Path
    cwd: Path
    readonly: list[Path] = field(default_factory=list)  # project checkout, shipped plugins, ...
    writable: list[Path] = field(default_factory=list)  # beyond WRITABLE (e.g. artifact event dirs)
    sockets: list[Path] = field(default_factory=list)  # e.g. the X11 display socket
    overlays: list[tuple[Path, Path]] = field(default_factory=list)  # (file, the path it stands in for), read-only


def _privileged() -> bool:
    return os.geteuid() == 0


def _runs_parent() -> Path:
    """Memory (``/dev/shm``) when the machine has it, else the temporary directory.

    A run's event files are written there: ansible-runner's callback creates one per event
    inside the sandbox, and the worker reads, rewrites and deletes it. On ext4, creating
    them cost ansible-playbook about 2 ms of CPU per host of a 1,000-host run."""
    shm = Path("/dev/shm")
    if shm.is_dir() and not shm.is_symlink() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def runs_dir() -> Path:
    """A 0700 directory owned by the worker for the runs' private directories.

    Inside it a private directory can be 0755 (the sandbox's uid must read it) without any
    other local user reaching it. A squatted or widened directory is refused.
    """
    base = _runs_parent() / f"tm-runs-{os.geteuid()}"
    try:
        base.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = base.lstat()
    if not base.is_dir() or base.is_symlink() or st.st_uid != os.geteuid():
        raise SandboxError(f"{base} is not a directory owned by this user")
    if st.st_mode & 0o077:
        os.chmod(base, 0o700)
    return base


def remove_stale_dirs(max_age_s: float = 3600.0) -> list[Path]:
    """Remove private directories that a worker killed with ``kill -9`` left behind.

    A directory is stale when no process on this machine names it on its command line (a
    run's or a warm process's bubblewrap does, for as long as it lives) and nothing in its
    top three levels changed for ``max_age_s``: a run being prepared is not yet named, and
    one whose bubblewrap just ended has its status and rc freshly written."""
    base = runs_dir()
    now = time.time()
    candidates = [d for d in base.iterdir() if d.name.startswith("tm-run-") and d.is_dir() and not d.is_symlink()
                  and now - _newest_change(d) > max_age_s]
    if not candidates:
        return []
    cmdlines = procs.command_lines()
    removed = []
    for d in candidates:
        name = str(d).encode()
        if not any(name in line for line in cmdlines):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _newest_change(path: Path, depth: int = 3) -> float:
    newest = path.lstat().st_mtime
    if depth > 1 and path.is_dir() and not path.is_symlink():
        try:
            for entry in path.iterdir():
                newest = max(newest, _newest_change(entry, depth - 1))
        except OSError:
            pass
    return newest


def new_private_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="tm-run-", dir=runs_dir()))
    os.chmod(path, 0o755)
    for name in WRITABLE:
        make_writable(path / name)
    return path


def make_writable(path: Path) -> None:
    """A directory the sandbox's uid owns (a root worker chowns it to ``nobody``)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if _privileged():
        os.chown(path, SANDBOX_UID, SANDBOX_GID)


def open_up(private_dir: Path) -> None:
    """Let the sandbox's uid read what the worker wrote (the 0700 base keeps others out)."""
    for root, dirs, files in os.walk(private_dir):
        for d in dirs:
            p = Path(root) / d
            if not p.is_symlink() and p.stat().st_uid == os.geteuid():
                os.chmod(p, 0o755)
        for f in files:
            p = Path(root) / f
            if p.is_file() and not p.is_symlink() and p.stat().st_uid == os.geteuid():
                os.chmod(p, 0o644)


def _python_dirs() -> list[Path]:
    dirs = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(sys.base_exec_prefix),
            Path(sys.executable).resolve().parent.parent}
    return sorted(d for d in dirs if d.exists())


def _system_args() -> list[str]:
    args: list[str] = []
    for d in SYSTEM_DIRS:
        p = Path(d)
        if p.is_symlink():  # merged /usr: /bin -> usr/bin
            args += ["--symlink", os.readlink(p), d]
        elif p.exists():
            args += ["--ro-bind", d, d]
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args


def _bind(kind: str, path: Path | str, made: set[str]) -> list[str]:
    """``kind path path``, after its missing parents as 0755 directories.

    bubblewrap would make them 0700 and root-owned: the sandbox's uid could not traverse.
    """
    args: list[str] = []
    for parent in reversed(Path(path).parents[:-1]):
        if str(parent) not in made:
            made.add(str(parent))
            args += ["--perms", "0755", "--dir", str(parent)]
    made.add(str(path))
    return args + [kind, str(path), str(path)]


def argv(layout: Layout, command: list[str]) -> list[str]:
    """``command`` wrapped in bubblewrap (and, for a root worker, setpriv) for ``layout``."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxError("bubblewrap (bwrap) is not installed on this worker; runs are never started unconfined")
    private = str(layout.private_dir)
    args = [bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "taskmanager-run"]
    if not _privileged():
        args += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID)]
    args += _system_args()
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp",
             "--perms", "1777", "--tmpfs", "/dev/shm"]
    made = {"/", "/tmp", "/usr", "/etc", "/proc", "/dev", "/dev/shm"}
    for d in _python_dirs() + [p for p in layout.readonly if p.exists()]:
        args += _bind("--ro-bind", d, made)
    args += _bind("--ro-bind", private, made)
    for p in [f"{private}/{name}" for name in WRITABLE] + layout.writable:
        args += ["--bind", str(p), str(p)]
    for p in layout.sockets:
        if p.exists():
            args += _bind("--bind", p, made)
    for src, dest in layout.overlays:
        args += ["--ro-bind", str(src), str(dest)]
    args += ["--chdir", str(layout.cwd)]
    args += ["--"] if _privileged() else ["--disable-userns", "--"]
    if _privileged():
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        args += [setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_GID}", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    return args + list(command)


def check(layout: Layout) -> None:
    """Make a throw-away sandbox like the run's; raise SandboxError with bubblewrap's words.

    Only success is remembered: a worker whose namespaces are refused keeps failing its runs
    with the reason until someone fixes the machine, then recovers without a restart.
    """
    global _probed
    if _probed:
        return
    proc = subprocess.run(argv(layout, ["/bin/true"]), capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                          env={"PATH": "/usr/bin:/bin"}, check=False)
    if proc.returncode != 0:
        raise SandboxError(f"could not create the run's sandbox: {(proc.stderr or proc.stdout).strip()[:500]}")
    _probed = True


def write_key(fifo: str, key: str) -> None:
    """The ssh key, into a fifo that only ssh-agent inside the sandbox can open (a writer thread)."""
    open_fifo_write(fifo, key)
    if os.geteuid() == 0:
        os.chown(fifo, SANDBOX_UID, SANDBOX_GID)


def drain_fifo(path: str) -> None:
    """Unblock ansible-runner's key-writer thread if ssh-add never read the fifo."""
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            if not chunk:
                break
    finally:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
