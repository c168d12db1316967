"""Warm start: the worker's next ansible-playbook, already imported, waiting in its sandbox.

Why: a cold ``ansible-playbook`` spends about 0.4 s of CPU importing Ansible and its plugins
before it reads the playbook; on a run of a few commands that is a third of the time from
claim to result. So the worker starts, for its next run, one process in the run's sandbox
(same bubblewrap layout, uid and scrubbed environment as a cold run: sandbox.py) that has
already imported all that (warm_process.py) and then waits for its run.

What keeps a run's guarantees:

* **one run per process**: a warm process serves one run and exits; the next run's is a new
  process, started after the run (its imports then take no CPU from the run), or, when jobs
  are already waiting, at the run's first event (the next run finds it ready). No run sees
  another run's state.
* **paths fixed in advance**: the sandbox is made before the run is known, so the run's
  private directory is allocated with it, and the read-only directories it shows are the
  shipped ones (playbooks, roles, plugins, CA directories). A run that needs more (a
  playbook overlay, an X11 socket, a directory outside those, the real pywinrm) starts cold.
* **configuration per run**: Ansible's settings and plugin paths are read again from the
  run's environment and ansible.cfg before it starts (``warm_process.configure``).
* **one process tree**: ansible-runner starts the attach client (warm_attach.py) as the
  run's command on the run's pty; it hands the pty over and relays the exit status. Killing
  it (cancel, timeout) closes its socket, which ends the warm process and its PID namespace;
  the run's marker (procs.py) is set on the warm process too, so the reaper finds it.
* **secrets**: only through prompts on the pty and the ssh key fifo, as a cold run; the
  warm process's argv and environment hold neither.

``TASKMANAGER_WARM=0`` turns warm start off (every run starts cold).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from server.core import ca_bundles
from server.core.config import Settings
from server.runs import procs, protocols, sandbox
from server.runs.prepare import IDENT, STUBS_DIR

log = logging.getLogger(__name__)

ENV = "TASKMANAGER_WARM"
PROCESS_SCRIPT = Path(__file__).resolve().parent / "warm_process.py"
ATTACH_SCRIPT = Path(__file__).resolve().parent / "warm_attach.py"
READY_WAIT_S = 10  # a warm process still importing is still sooner than a cold start
PATH_KEYS = ("ANSIBLE_LIBRARY", "ANSIBLE_MODULE_UTILS", "ANSIBLE_CONNECTION_PLUGINS", "ANSIBLE_ACTION_PLUGINS",
             "ANSIBLE_STRATEGY_PLUGINS", "ANSIBLE_ROLES_PATH")

_lock = threading.Lock()
_next: Warm | None = None


def _never() -> bool:
    return False


# Set by worker.run_worker: whether a warm process is kept ready after each run, and whether
# jobs are waiting (then the next one is started at this run's first event already).
keep_ready = False
jobs_waiting: Callable[[], bool] = _never


@dataclass
class Warm:
    """One warm process and the private directory of the run it will serve."""

    private_dir: Path
    layout: sandbox.Layout
    proc: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.private_dir / "tmp" / "warm.sock"

    def covers(self, layout: sandbox.Layout, env: dict[str, str]) -> bool:
        """Whether a run needing ``layout`` and ``env`` can run in this sandbox."""
        shown = [self.private_dir, *self.layout.readonly]
        return (layout.private_dir == self.private_dir and not layout.overlays and not layout.sockets
                and all(any(p == d or d in p.parents for d in shown) for p in [*layout.readonly, layout.cwd])
                and all(p in self.layout.writable for p in layout.writable)
                and env.get("PYTHONPATH") == str(STUBS_DIR))

    def ready(self) -> bool:
        """Whether it is primed and listening (waiting while it still imports, unless it died)."""
        deadline = time.monotonic() + READY_WAIT_S
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def command(self, command: list[str], key_fifo: str | None) -> list[str]:
        """What ansible-runner starts instead of ``command`` (the attach client)."""
        return [sys.executable, "-I", "-S", str(ATTACH_SCRIPT), str(self.socket), key_fifo or "", *command]

    def end(self) -> None:
        """Kill what is left of the process and its sandbox."""
        procs.kill_tree(self.proc.pid)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.warning("warm process %s did not end", self.proc.pid)


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip() != "0"


def take(settings: Settings) -> Warm | None:
    """The warm process made for this run, or None (the run starts cold)."""
    global _next
    with _lock:
        warm, _next = _next, None
    if warm is None:
        return None
    if warm.proc.poll() is not None or warm.layout.readonly != _readonly(settings):
        discard(warm)
        return None
    return warm


def discard(warm: Warm) -> None:
    warm.end()
    shutil.rmtree(warm.private_dir, ignore_errors=True)


def ready_next(settings: Settings) -> None:
    """Start the warm process for the next run (if enabled and none is waiting)."""
    global _next
    if not enabled():
        return
    with _lock:
        if _next is not None:
            return
        try:
            _next = _start(settings)
        except (sandbox.SandboxError, OSError) as exc:
            log.warning("no warm ansible-playbook for the next run: %s", exc)


def close() -> None:
    """End the waiting warm process (the worker stops)."""
    global _next
    with _lock:
        warm, _next = _next, None
    if warm is not None:
        discard(warm)


def artifact_dirs(private_dir: Path) -> list[Path]:
    """The artifact directories the run writes into (its event files): writable inside."""
    base = private_dir / "artifacts" / IDENT
    return [base / "job_events", base / "fact_cache"]


def _readonly(settings: Settings) -> list[Path]:
    env = protocols.ansible_env(settings.playbook_dir)
    dirs = [PROCESS_SCRIPT, settings.playbook_dir, settings.playbook_dir.parent / "roles", STUBS_DIR,
            *ca_bundles.ca_dirs()]
    dirs += [Path(p) for k in PATH_KEYS for p in env.get(k, "").split(os.pathsep) if p]
    return [p for p in dict.fromkeys(dirs) if p.exists()]


def _start(settings: Settings) -> Warm:
    private_dir = sandbox.new_private_dir()
    try:
        writable = artifact_dirs(private_dir)
        for path in writable:
            sandbox.make_writable(path)
        sandbox.open_up(private_dir)
        layout = sandbox.Layout(private_dir, private_dir, readonly=_readonly(settings), writable=writable)
        sandbox.check(layout)
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(private_dir / "home"),
               "TMPDIR": "/tmp", "USER": "nobody", "LOGNAME": "nobody", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               # a placeholder as long as any run's marker: the run's is written over it (warm_process.relabel)
               procs.MARK_ENV: procs.marker(0).ljust(64)}
        argv = sandbox.argv(layout, [sys.executable, "-I", str(PROCESS_SCRIPT), str(private_dir / "tmp" / "warm.sock"),
                                         str(STUBS_DIR)])
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    except BaseException:
        shutil.rmtree(private_dir, ignore_errors=True)
        raise
    return Warm(private_dir, layout, proc)
