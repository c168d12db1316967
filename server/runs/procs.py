"""The local processes of a run: find them, and end them all when the run ends.

Why this exists: ``ansible-playbook``'s fork workers call ``setsid()``, so the
``killpg`` that ansible-runner uses on cancel and timeout kills only the main process.
Its workers and their ``ssh`` clients would live on as orphans (holding the pty open, so
ansible-runner then also waits 5 s for EOF). Here a run is ended as a whole tree.

Every process of a run carries ``TM_EXECUTION_RUN=<execution>:<worker pid>:<worker start
time>`` in its environment (inherited by every descendant, nothing secret). That lets a
worker find the processes of runs whose worker died (``kill -9``) and end them, instead of
letting an orphaned ``ansible-playbook`` keep working on hosts after its execution was
declared lost.

ssh ControlPersist masters (``ssh: <path> [mux]``) are left alone on purpose: they are a
connection cache shared by every run that uses the same credential version and host,
carry no session once the run's ssh clients are gone, and exit by themselves after
``ControlPersist`` seconds idle. Closing them would break concurrent runs that share them
and would not stop anything on the target either: a command started without a TTY keeps
running on the target until it ends, whether or not the connection closes (OpenSSH
behaviour; the same in AWX).
"""
from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

MARK_ENV = "TM_EXECUTION_RUN"
_MARK = MARK_ENV.encode() + b"="


@dataclass
class Proc:
    pid: int
    ppid: int
    start: int  # clock ticks since boot: (pid, start) names a process uniquely
    state: str
    cmdline: str

    @property
    def is_ssh_master(self) -> bool:
        return self.cmdline.startswith("ssh: ") and self.cmdline.rstrip().endswith("[mux]")


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode(errors="replace")
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0], int(fields[19])


def _proc(pid: int) -> Proc | None:
    st = _stat(pid)
    if st is None:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    return Proc(pid, st[0], st[2], st[1], cmd)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def command_lines() -> list[bytes]:
    """The raw command line (NUL-separated arguments) of every local process that is readable."""
    lines = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                lines.append(fh.read())
        except OSError:
            pass
    return lines


def marker(execution_id: int) -> str:
    """The environment marker for a run of ``execution_id`` by this process."""
    me = os.getpid()
    st = _stat(me)
    return f"{execution_id}:{me}:{st[2] if st else 0}"


def _marker_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = fh.read()
    except OSError:  # gone, or another user's process
        return None
    for item in env.split(b"\0"):
        if item.startswith(_MARK):
            return item[len(_MARK):].decode(errors="replace")
    return None


def marked(mark: str | None = None) -> dict[str, list[Proc]]:
    """Local processes carrying a run marker (all, or only ``mark``), by marker."""
    found: dict[str, list[Proc]] = {}
    me = os.getpid()
    for pid in _pids():
        if pid == me:
            continue
        m = _marker_of(pid)
        if m is None or (mark is not None and m != mark):
            continue
        p = _proc(pid)
        if p is not None and p.state != "Z":
            found.setdefault(m, []).append(p)
    return found


def descendants(pid: int) -> list[Proc]:
    children: dict[int, list[Proc]] = {}
    for p in filter(None, (_proc(q) for q in _pids())):
        children.setdefault(p.ppid, []).append(p)
    out: list[Proc] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child.pid)
    return out


def _signal_all(procs: list[Proc], sig: int) -> None:
    for p in procs:
        st = _stat(p.pid)
        if st is None or st[2] != p.start:  # gone, or the pid was reused
            continue
        try:
            os.kill(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _end(collect, rounds: int = 5) -> int:
    """Freeze then kill what ``collect()`` returns, until it returns nothing new.

    SIGSTOP first so that no process forks a new child between listing and killing.
    """
    seen: dict[tuple[int, int], Proc] = {}
    for _ in range(rounds):
        new = [p for p in collect() if (p.pid, p.start) not in seen and not p.is_ssh_master]
        if not new:
            break
        _signal_all(new, signal.SIGSTOP)
        seen.update({(p.pid, p.start): p for p in new})
    victims = list(seen.values())
    _signal_all(victims, signal.SIGKILL)
    _signal_all(victims, signal.SIGCONT)
    return len(victims)


def kill_tree(pid: int) -> int:
    """Kill ``pid`` and everything below it, except ssh ControlPersist masters."""
    root = _proc(pid)

    def collect() -> list[Proc]:
        return ([root] if root is not None and _stat(pid) else []) + descendants(pid)

    n = _end(collect)
    try:  # what ansible-runner did: the process group, in case anything escaped the walk
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (OSError, ProcessLookupError):
        pass
    return n


def kill_marked(mark: str) -> int:
    """Kill every local process of the run ``mark`` (except ssh masters)."""
    return _end(lambda: marked(mark).get(mark, []))


def _alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] != "Z" and st[2] == start


def orphaned_runs() -> dict[str, int]:
    """Markers of local runs whose worker process is gone -> execution id."""
    out: dict[str, int] = {}
    for m, procs in marked().items():
        try:
            ex_id, wpid, wstart = (int(x) for x in m.split(":"))
        except ValueError:
            continue
        if any(not p.is_ssh_master for p in procs) and not _alive(wpid, wstart):
            out[m] = ex_id
    return out


def reap_orphans() -> list[int]:
    """End the leftovers of runs whose worker died; returns their execution ids."""
    ended = []
    for m, ex_id in orphaned_runs().items():
        n = kill_marked(m)
        if n:
            log.warning("killed %d orphaned processes of execution %s (its worker is gone)", n, ex_id)
            ended.append(ex_id)
    return ended


def install_tree_termination() -> None:
    """Make ansible-runner end the whole process tree on cancel and timeout.

    ansible-runner calls ``Runner.handle_termination(child.pid)`` (through the class, so a
    subclass cannot override it); it only ``killpg``s the child's group, which misses
    ansible's setsid()'d fork workers and their ssh clients.
    """
    from ansible_runner.runner import Runner

    if getattr(Runner.handle_termination, "_tm_tree", False):
        return

    def handle_termination(cls, pid, pidfile=None):
        started = time.monotonic()
        n = kill_tree(pid)
        log.info("ended run process tree of %s (%d processes) in %.3f s", pid, n, time.monotonic() - started)
        if pidfile:
            try:
                os.remove(pidfile)
            except OSError:
                pass

    handle_termination._tm_tree = True  # type: ignore[attr-defined]
    Runner.handle_termination = classmethod(handle_termination)  # type: ignore[method-assign]
