"""Running one execution with ansible-runner, in the worker process.

How a run goes, the way ansible-runner splits itself:

1. **prepare** (prepare.py): a private directory (under a 0700 base) with the inventory, the extra
   vars and the playbook to run; the command line, environment and prompt answers; then
   ansible-runner's ``RunnerConfig`` with the environment filtered.
2. **sandbox** (sandbox.py): ansible-playbook's command wrapped so it sees the private
   directory, the playbooks and nothing of the worker; an ssh key goes to ssh-agent inside
   through a fifo only the sandbox can open.
3. **ansible-runner** (``SandboxedRunner``): starts it, answers its prompts, asks the recorder
   whether to cancel and stops it at the task's timeout.
4. **recorder** (recorder.py): every event becomes steps and operation results, written in
   batches; at the end every operation is settled and the run's ``RunResult`` computed.

Whatever happens, the run's processes are ended, the key fifo drained, newly learnt host
keys kept and the private directory removed.
"""
from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ansible_runner.config.runner import RunnerConfig
from ansible_runner.runner import Runner
from sqlalchemy.orm import Session

from server.core.config import Settings
from server.core.models import Execution, Host, Operation
from server.runs import hostkeys, procs, sandbox, warm
from server.runs.prepare import Prepared, prepare, runner_config
from server.runs.recorder import Recorder, RunResult, by_inventory_name

__all__ = ["RunResult", "SandboxedRunner", "run"]

log = logging.getLogger(__name__)
procs.install_tree_termination()  # cancel/timeout end ansible's setsid()'d workers and ssh too

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class SandboxedRunner(Runner):
    """ansible-runner's Runner, reading event files the sandbox writes without trusting them.

    The callback plugin inside the sandbox drops ``<uuid>-partial.json`` files that the
    worker reads by a name taken from the output stream, which code inside can forge: a
    uuid that is not a uuid, or a file that is not a regular file, is never opened.
    """

    on_start: Callable[[], None] | None = None  # called at the first event (ansible-playbook is running)

    def event_callback(self, event_data: dict[str, Any]) -> None:
        started = self.on_start
        if started is not None:
            self.on_start = None
            started()
        uuid = str(event_data.get("uuid") or "")
        if "uuid" in event_data:
            path = Path(self.config.artifact_dir) / "job_events" / f"{uuid}-partial.json"
            if not UUID_RE.match(uuid) or (path.is_symlink() or (path.exists() and not path.is_file())):
                event_data = {k: v for k, v in event_data.items() if k not in ("uuid", "event_data")}
                event_data["event"] = "verbose"
        return super().event_callback(event_data)


def run(session: Session, ex: Execution, hosts: list[Host], ops: dict[str, Operation], settings: Settings,
        *, timeout_s: int | None = None, attempt: int = 1) -> RunResult:
    """Run ``ex`` on ``hosts``; ``ops`` maps host name -> its pending Operation.

    Returns the execution's outcome; operations and steps are updated in ``session``
    (the last changes are left for the caller to commit with the final status).
    """
    task = ex.task
    timeout_s = int(timeout_s or task.timeout_s or 3600)
    began = time.monotonic()
    hot = warm.take(settings)  # a sandboxed ansible-playbook already imported (warm.py), or None: cold
    private_dir = hot.private_dir if hot else sandbox.new_private_dir()
    mark: str | None = None
    fifo: str | None = None
    try:
        try:
            prep = prepare(private_dir, ex, task, hosts, settings)
        except Exception as exc:  # an invalid playbook path, an undecryptable secret, ...
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            recorder = Recorder(session, ex, by_inventory_name(ops, {}), {})
            return recorder.finish(None, timeout_s, failure=f"could not prepare the run: {message}")
        recorder = Recorder(session, ex, by_inventory_name(ops, prep.names), prep.names, prep.commands,
                            prep.progress, attempt=attempt, launch_play=prep.launch_play)
        rc = runner_config(prep, ex, timeout_s)
        rc.env[procs.MARK_ENV] = mark = procs.marker(ex.id)  # finds this run's processes (procs.py)
        layout = _layout(prep, rc)
        if hot and not (hot.covers(layout, rc.env) and hot.ready()):
            hot.end()  # its sandbox cannot show what this run needs; the directory stays the run's
            hot = None
        try:  # never unconfined: no sandbox, no run
            sandbox.check(layout)
            command = list(rc.command)
            if prep.ssh_key:  # ssh-agent inside the sandbox reads the key from a fifo only it can open
                fifo = str(private_dir / "agent" / "key")  # set first: drained even if writing fails
                sandbox.write_key(fifo, prep.ssh_key)
            if hot:
                rc.command = hot.command(command, fifo)
            else:
                rc.command = sandbox.argv(layout, rc.wrap_args_with_ssh_agent(command, fifo) if fifo else command)
        except sandbox.SandboxError as exc:
            return recorder.finish(None, timeout_s, failure=str(exc))
        if all(op.slice is None for op in ops.values()):  # a slice's execution is made final by slicing.close
            recorder.on_settled = lambda result: _final_now(session, ex, result)
        runner = SandboxedRunner(config=rc, event_handler=recorder.event_handler,
                                 cancel_callback=recorder.cancel_callback)
        if warm.jobs_waiting():  # the next run's warm process imports while this one waits on its hosts
            runner.on_start = lambda: warm.ready_next(settings)
        spawned = time.monotonic()
        runner.run()
        ended = time.monotonic()
        result = recorder.finish(runner, timeout_s)
        log.info(
            "execution %s: %s on %d hosts; prepare %.3f s, %s ansible start to first event %.3f s, run %.3f s, "
            "%d events recorded in %.3f s (%d commits)%s",
            ex.id, result.status, len(hosts), spawned - began, "warm" if hot else "cold",
            (recorder.first_event_at or ended) - spawned,
            ended - spawned, recorder.events, recorder.handler_s, recorder.flushes,
            f"; final {ended - recorder.settled_at:.3f} s before ansible-playbook's exit" if recorder.settled_at else "")
        return result
    finally:
        if hot:
            hot.end()
        if mark:
            procs.kill_marked(mark)  # nothing of this run outlives it (exceptions, RQ timeout)
        if fifo:
            sandbox.drain_fifo(fifo)
        hostkeys.learn(settings.instance_dir, hosts, private_dir / "ssh" / "known_hosts")
        shutil.rmtree(private_dir, ignore_errors=True)
        if warm.keep_ready or warm.jobs_waiting():
            warm.ready_next(settings)  # unless started at this run's first event


def _final_now(session: Session, ex: Execution, result: RunResult) -> None:
    """The execution's final status, audit row and notification, committed at its last host's
    result (worker._finish, conditional on ``running``); the worker's own call after
    ansible-playbook's exit then finds it final and leaves it."""
    from server.runs.worker import _finish  # worker imports this module

    _finish(session, ex, result)


def _layout(prep: Prepared, rc: RunnerConfig) -> sandbox.Layout:
    """What the sandbox shows: the private directory, read-only inputs, the event files it writes."""
    events = [Path(rc.artifact_dir) / "job_events", Path(rc.artifact_dir) / "fact_cache"]
    for path in events:
        sandbox.make_writable(path)
    sandbox.open_up(prep.private_dir)
    return sandbox.Layout(prep.private_dir, Path(rc.cwd), readonly=prep.readonly, writable=events,
                          sockets=prep.sockets, overlays=prep.overlays)
