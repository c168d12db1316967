"""Running one execution with ansible-runner, in the worker process.

``run(session, ex, hosts, ops, settings)`` prepares a private directory (mode 0700, always
removed afterwards), starts ``ansible-playbook`` through ansible-runner and turns its event
stream into ``Step`` rows and ``Operation`` results, written in batches.

Secrets reach Ansible only two ways, both in memory: an SSH private key through
ansible-runner's ssh-agent fifo (``ssh_key=``), and passwords typed into Ansible's own
prompts (``--ask-pass``/``--ask-become-pass`` answered by ``passwords=``). They are never
in the environment, extra vars, files, the command line or the ``artifacts/*/command``
file. Ansible then hands the login password to ssh through its own ssh_askpass helper
(a 0600 POSIX shared-memory segment that exists only while ssh asks); sshpass is not
used because it mistakes remote exit codes 1-6 for its own errors. User variables and
command lines are written as ``!unsafe`` YAML so Jinja never evaluates them.

Speed: ssh ControlMaster connections persist (per credential version) between runs, a
``commands`` task runs all its lines in one ``tm_commands`` task per host (each line still
its own shell and step, without Ansible's ~15 ms of per-task CPU for every line), with the
``free`` strategy and one fork per host, pipelining is on, only the YAML inventory plugin
is enabled, runs without WinRM hosts skip importing pywinrm, and events reach the database
in batches (the last host's result at once). What remains is mostly ansible-playbook
starting up (~0.4 s CPU; bench/seed_usecase.py).
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import stat
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ansible_runner.config.runner import RunnerConfig
from ansible_runner.runner import Runner
from ansible_runner.utils import open_fifo_write
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.core import db
from server.runs import hostkeys, inventory, procs, protocols, sandbox
from server.catalog import playbooks
from server.core.config import Settings
from server.core.errors import ValidationError
from server.executions.approvals import DRY_RUN_TRIGGER
from server.core.models import Credential, Execution, Host, Operation, Step, Task, utcnow
from server.core.vault import vault


log = logging.getLogger(__name__)
procs.install_tree_termination()  # cancel/timeout end ansible's setsid()'d workers and ssh too

FLUSH_EVERY_EVENTS = 100
FLUSH_EVERY_S = 0.25
CANCEL_CHECK_S = 1.0
CONTROL_PERSIST_S = 300
MAX_STEP_OUTPUT = 256 * 1024
MAX_OPERATION_OUTPUT = 1024 * 1024
MAX_MESSAGE = 4000
TRUNCATED = "\n[... output truncated ...]\n"
STUBS_DIR = Path(__file__).resolve().parent / "ansible_stubs"
ENV_KEEP_PREFIXES = ("ANSIBLE_", "AWX_", "RUNNER_", "ORIGINAL_STDOUT_CALLBACK")
# Ansible's prompts, anchored to a whole line so command output can never trigger them.
SSH_PASS_PROMPT = r"^SSH password:\s*$"
BECOME_PASS_PROMPT = r"^BECOME password(\[defaults to SSH password\])?:\s*$"
STEP_EVENTS = {
    "runner_on_ok": "succeeded",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}
ITEM_EVENTS = {"runner_item_on_ok", "runner_item_on_failed", "runner_item_on_skipped"}
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass
class RunResult:
    status: str  # succeeded, failed, cancelled, timed_out
    message: str | None = None
    rc: int | None = None


# --------------------------------------------------------------------------- helpers

def _now() -> datetime:
    return utcnow()


def _clip(text: str | None, limit: int) -> str:
    if not text:
        return ""
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATED)] + TRUNCATED


def _parse_time(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def _epoch(value: Any) -> datetime | None:
    """A UNIX timestamp (tm_commands' step times) as an aware datetime."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)


def _diff_text(res: dict[str, Any]) -> str | None:
    """What ``--diff`` reports (check mode: what *would* change), as unified-diff text."""
    items = [res] + [r for r in res.get("results") or [] if isinstance(r, dict)]
    out: list[str] = []
    for item in items:
        diffs = item.get("diff")
        for d in diffs if isinstance(diffs, list) else [diffs] if isinstance(diffs, dict) else []:
            if not isinstance(d, dict):
                continue
            if d.get("prepared"):
                out.append(str(d["prepared"]))
                continue
            if "before" not in d and "after" not in d:
                continue
            before, after = (v if isinstance(v, str) else json.dumps(v, indent=2, sort_keys=True, default=str)
                             for v in (d.get("before") or "", d.get("after") or ""))
            out.extend(difflib.unified_diff(before.splitlines(), after.splitlines(),
                                            str(d.get("before_header") or "before"),
                                            str(d.get("after_header") or "after"), lineterm=""))
    return "\n".join(out) or None


def venv_bin() -> Path:
    return Path(sys.executable).parent


def _drain_fifo(path: str) -> None:
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


# --------------------------------------------------------------------------- event recording

@dataclass
class HostState:
    op: Operation
    steps: list[Step] = field(default_factory=list)
    open_steps: dict[str, Step] = field(default_factory=dict)  # task_uuid -> running step
    completed: int = 0
    done: bool = False  # counted in hosts_done
    final: bool = False  # operation status is final (commands tasks finish early)
    failed: bool = False
    unreachable: bool = False
    first_failure: str | None = None
    seq_base: int = 0  # steps of earlier attempts on this host (retries.py)
    command_steps: dict[int, Step] = field(default_factory=dict)  # commands task: line index -> step
    commands_done: set[int] = field(default_factory=set)  # line indexes with a result


class Recorder:
    """Turns ansible-runner events into Steps/Operations; writes them in batches.

    Playbook tasks: one step per Ansible task and host. ``commands`` tasks run all their
    lines in one ``tm_commands`` task per host (plugins/action/tm_commands.py): one step
    per line, from its progress lines (``progress`` prefix) as each line ends, and from
    the task's result, which is authoritative.
    """

    def __init__(self, session: Session, ex: Execution, ops: dict[str, Operation], names: dict[str, str],
                 commands: list[str] | None = None, progress: str | None = None, attempt: int = 1) -> None:
        self.session = session
        self.ex = ex
        self.names = names  # inventory name -> host name
        self.hosts = {name: HostState(op) for name, op in ops.items()}
        self.commands = commands  # a commands task's lines
        self.progress = progress  # tm_commands' progress lines start with it and a space
        self.stats: dict[str, Any] | None = None
        self.errors: list[str] = []
        self.pending_events = 0
        self.last_flush = time.monotonic()
        self.last_cancel_check = 0.0
        self.cancel_seen = False
        self.events = 0
        self.handler_s = 0.0  # time spent recording events (for the run summary)
        self.first_event_at: float | None = None
        self.flushes = 0
        self.flush_soon = False
        self.attempt = attempt
        if attempt > 1:  # a retry of unreachable hosts (retries.py): steps follow the earlier ones
            base = dict(session.execute(
                select(Step.operation_id, func.max(Step.seq))
                .where(Step.operation_id.in_([op.id for op in ops.values()])).group_by(Step.operation_id)
            ).all())
            for st in self.hosts.values():
                st.seq_base = base.get(st.op.id) or 0

    # -- ansible-runner callbacks ------------------------------------------------------
    def event_handler(self, event: dict[str, Any]) -> bool:
        began = time.monotonic()
        if self.first_event_at is None:
            self.first_event_at = began
        self.events += 1
        try:
            self._handle(event)
        except Exception:  # never let a bookkeeping problem kill the run
            log.exception("execution %s: could not record event %s", self.ex.id, event.get("event"))
        self.pending_events += 1
        if (self.flush_soon or self.pending_events >= FLUSH_EVERY_EVENTS
                or began - self.last_flush >= FLUSH_EVERY_S):
            self.flush()
        self.handler_s += time.monotonic() - began
        return False  # nothing is written to the artifacts directory

    def cancel_callback(self) -> bool:
        now = time.monotonic()
        if self.pending_events and now - self.last_flush >= FLUSH_EVERY_S:
            self.flush()
        if now - self.last_cancel_check >= CANCEL_CHECK_S:
            self.last_cancel_check = now
            with db.engine().connect() as conn:
                self.cancel_seen = bool(conn.execute(
                    select(Execution.cancel_requested).where(Execution.id == self.ex.id)
                ).scalar())
        return self.cancel_seen

    def flush(self) -> None:
        self.session.commit()
        self.flushes += 1
        self.flush_soon = False
        self.pending_events = 0
        self.last_flush = time.monotonic()

    # -- events ------------------------------------------------------------------------
    def _state(self, event: dict[str, Any]) -> HostState | None:
        host = (event.get("event_data") or {}).get("host")
        return self.hosts.get(host) if host else None

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        data = event.get("event_data") or {}
        if kind == "runner_on_start":
            st = self._state(event)
            if st is not None and self.commands is not None:
                self._start_command(st, 0, _parse_time(event.get("created")) or _now())
            elif st is not None:
                self._start_step(st, data, event)
        elif kind in STEP_EVENTS:
            st = self._state(event)
            if st is not None and self.commands is not None:
                self._finish_commands(st, kind, data)
            elif st is not None:
                self._finish_step(st, kind, data, event)
        elif kind == "verbose" and self.progress and (event.get("stdout") or "").startswith(self.progress + " "):
            self._command_progress(event["stdout"][len(self.progress) + 1:])
        elif kind in ITEM_EVENTS:
            st = self._state(event)
            if st is not None:
                self._item(st, kind, data, event)
        elif kind == "playbook_on_stats":
            self.stats = data
        elif kind in ("error", "warning", "verbose", "playbook_on_no_hosts_matched") and event.get("stdout"):
            if kind == "error" or "ERROR" in event["stdout"]:
                self.errors.append(event["stdout"].strip())

    def _step_name(self, data: dict[str, Any]) -> str:
        name = str(data.get("task") or data.get("task_action") or "task")
        role = data.get("role")
        if role:
            name = f"{role} : {name}"
        return self._attempt_name(name)

    def _attempt_name(self, name: str) -> str:
        return f"[attempt {self.attempt}] {name}" if self.attempt > 1 else name

    def _new_step(self, st: HostState, name: str, started: datetime) -> Step:
        op = st.op
        if op.status == "pending":
            op.status = "running"
            op.started_at = started
        step = Step(
            operation_id=op.id,
            seq=st.seq_base + len(st.steps) + 1,
            name=name[:500],
            status="running",
            started_at=started,
            changed=False,
        )
        self.session.add(step)
        st.steps.append(step)
        return step

    def _start_step(self, st: HostState, data: dict[str, Any], event: dict[str, Any]) -> Step:
        step = self._new_step(st, self._step_name(data), _parse_time(event.get("created")) or _now())
        if data.get("task_uuid"):
            st.open_steps[data["task_uuid"]] = step
        return step

    def _finish_step(self, st: HostState, kind: str, data: dict[str, Any], event: dict[str, Any]) -> None:
        step = st.open_steps.pop(data.get("task_uuid") or "", None)
        if step is None:  # no start event (e.g. a handler or a skipped loop): make one
            step = self._start_step(st, data, event)
            st.open_steps.pop(data.get("task_uuid") or "", None)
        res = data.get("res") or {}
        if not isinstance(res, dict):
            res = {"msg": str(res)}
        status = STEP_EVENTS[kind]
        stdout = _text(res.get("stdout"))
        stderr = _text(res.get("stderr"))
        msg = _text(res.get("msg"))
        if "results" in res and isinstance(res["results"], list) and stdout is None:
            # a loop: the items' output, in order
            outs = [_text(r.get("stdout")) for r in res["results"] if isinstance(r, dict)]
            errs = [_text(r.get("stderr")) for r in res["results"] if isinstance(r, dict)]
            stdout = "\n".join(o for o in outs if o) or None
            stderr = "\n".join(e for e in errs if e) or None
        if stdout is None and status == "succeeded" and msg and data.get("task_action") in (
                "debug", "ansible.builtin.debug", "assert", "ansible.builtin.assert", "fail", "ansible.builtin.fail"):
            stdout = msg
        if status in ("failed", "unreachable") and not stderr and msg:
            stderr = msg
        stdout = _join(stdout, _diff_text(res)) or None  # --diff (dry runs for approvers)
        duration = data.get("duration")
        self._record(st, step, status, res.get("rc"), stdout, stderr, msg, changed=bool(res.get("changed")),
                     duration=float(duration) if isinstance(duration, (int, float)) else None,
                     ignore_errors=bool(data.get("ignore_errors")))
        if status == "unreachable":
            self._host_done(st, final="unreachable")
        elif st.failed:
            self._host_done(st, final=None)  # a rescue block may still take over: final at the end

    def _record(self, st: HostState, step: Step, status: str, rc: Any, stdout: str | None, stderr: str | None,
                msg: str | None, *, changed: bool, duration: float | None, ignore_errors: bool = False) -> None:
        """A step's outcome, and what it means for its operation (rc, output, message)."""
        step.status = status
        step.rc = rc if isinstance(rc, int) else step.rc
        step.stdout = _clip(stdout, MAX_STEP_OUTPUT)
        step.stderr = _clip(stderr, MAX_STEP_OUTPUT)
        step.changed = changed
        if duration is not None:
            step.duration_s = round(duration, 3)
        elif step.started_at is not None:
            step.duration_s = round((_now() - step.started_at).total_seconds(), 3)
        st.completed += 1
        op = st.op
        if step.rc is not None and not st.failed:
            op.rc = step.rc  # the last rc, or the rc of the step that failed the host
        op.stdout = _clip(_join(op.stdout, stdout), MAX_OPERATION_OUTPUT)
        op.stderr = _clip(_join(op.stderr, stderr), MAX_OPERATION_OUTPUT)
        if status == "unreachable":
            st.unreachable = True
            op.message = _clip(hostkeys.explain(msg or stderr or "host unreachable"), MAX_MESSAGE)
        elif status == "failed" and not ignore_errors:
            st.failed = True
            if st.first_failure is None:
                st.first_failure = _clip(f"{step.name}: {msg or stderr or 'failed'}", MAX_MESSAGE)
                op.message = st.first_failure

    # -- commands tasks (tm_commands) ------------------------------------------------------
    def _start_command(self, st: HostState, index: int, started: datetime) -> Step | None:
        if self.commands is None or index >= len(self.commands):
            return None
        step = st.command_steps.get(index)
        if step is None:
            step = self._new_step(st, self._attempt_name(playbooks.command_step_name(index, self.commands[index])),
                                  started)
            st.command_steps[index] = step
        return step

    def _command_result(self, st: HostState, result: dict[str, Any]) -> None:
        """One command line's outcome (a progress line or the task's ``tm_steps``)."""
        index = result.get("index")
        status = result.get("status")
        if not isinstance(index, int) or index in st.commands_done or status not in STEP_EVENTS.values():
            return
        began = _epoch(result.get("start"))
        ended = _epoch(result.get("end"))
        step = self._start_command(st, index, began or _now())
        if step is None:
            return
        if began is not None:
            step.started_at = began
            if step is st.steps[0] and (st.op.started_at is None or began < st.op.started_at):
                st.op.started_at = began
        st.commands_done.add(index)
        duration = (ended - began).total_seconds() if began and ended else None
        msg = "non-zero return code" if status == "failed" else None  # as ansible.builtin.raw says it
        self._record(st, step, status, result.get("rc"), _text(result.get("stdout")), _text(result.get("stderr")),
                     msg, changed=status == "succeeded", duration=duration)
        if status == "succeeded":
            self._start_command(st, index + 1, ended or _now())  # the next line starts now

    def _command_progress(self, line: str) -> None:
        try:
            result = json.loads(line)
        except ValueError:
            return
        if isinstance(result, dict):
            st = self.hosts.get(str(result.get("host") or ""))
            if st is not None and not st.final:
                self._command_result(st, result)

    def _finish_commands(self, st: HostState, kind: str, data: dict[str, Any]) -> None:
        """The host's tm_commands task ended: its result completes every step, and the host."""
        res = data.get("res") if isinstance(data.get("res"), dict) else {}
        for result in res.get("tm_steps") or []:
            if isinstance(result, dict):
                self._command_result(st, result)
        status = STEP_EVENTS[kind]
        msg = _text(res.get("msg"))
        if not st.command_steps and status != "skipped":  # it failed before the first line ran
            self._start_command(st, 0, _now())
        for index, step in st.command_steps.items():
            if index not in st.commands_done:  # no result of its own (an error Ansible raised)
                st.commands_done.add(index)
                self._record(st, step, "failed" if status == "succeeded" else status, None, None, msg, msg,
                             changed=False, duration=None)
        if st.unreachable:
            self._host_done(st, final="unreachable")
        elif st.failed or status == "failed":
            st.failed = True
            st.op.message = st.op.message or _clip(msg or "failed", MAX_MESSAGE)
            self._host_done(st, final="failed")
        elif status == "skipped" or all(s.status == "skipped" for s in st.steps):
            self._host_done(st, final=None)  # check mode: finish() says skipped
        else:
            self._host_done(st, final="succeeded")

    def _item(self, st: HostState, kind: str, data: dict[str, Any], event: dict[str, Any]) -> None:
        """Loop items: their output shows on the step while the loop runs."""
        step = st.open_steps.get(data.get("task_uuid") or "")
        if step is None:
            return
        res = data.get("res") or {}
        if isinstance(res, dict):
            step.stdout = _clip(_join(step.stdout, _text(res.get("stdout"))), MAX_STEP_OUTPUT)
            step.stderr = _clip(_join(step.stderr, _text(res.get("stderr"))), MAX_STEP_OUTPUT)

    def _host_done(self, st: HostState, final: str | None) -> None:
        if final is not None and not st.final:
            st.op.status = final
            st.op.finished_at = _now()
            st.final = True
        if not st.done:
            st.done = True
            self.ex.hosts_done = (self.ex.hosts_done or 0) + 1
            if st.final and all(h.final for h in self.hosts.values()):
                self.flush_soon = True  # the last result: visible now, not at the next batch

    # -- the end -------------------------------------------------------------------------
    def finish(self, runner: Runner | None, timeout_s: int, failure: str | None = None) -> RunResult:
        """Final statuses for every operation and the execution (not committed here)."""
        cancelled = bool(runner and runner.canceled)
        timed_out = bool(runner and runner.timed_out) and not cancelled
        rc = runner.rc if runner is not None else None
        stats = self.stats or {}
        dark = stats.get("dark") or {}
        failures = stats.get("failures") or {}
        now = _now()
        error_text = failure or "\n".join(self.errors[-5:]).strip() or None
        for name, st in self.hosts.items():
            op = st.op
            for step in st.steps:
                if step.status == "running":
                    step.status = "cancelled" if cancelled else "failed"
                    if timed_out:
                        step.stderr = _join(step.stderr, f"timed out after {timeout_s} s")
                    if step.started_at is not None:
                        step.duration_s = round((now - step.started_at).total_seconds(), 3)
            if st.final:
                continue
            if name in dark or st.unreachable:
                status = "unreachable"
            elif name in failures or st.failed:
                status = "failed"
            elif cancelled:
                status = "cancelled"
                op.message = op.message or "cancelled before this host finished"
            elif timed_out:
                status = "failed" if st.steps else "cancelled"
                op.message = op.message or f"the execution timed out after {timeout_s} s"
            elif self.stats is None and (rc or failure):
                status = "failed"
                op.message = op.message or _clip(
                    f"ansible-playbook stopped before finishing this host: {error_text or f'exit status {rc}'}",
                    MAX_MESSAGE)
            elif not st.steps or all(s.status == "skipped" for s in st.steps):
                status = "skipped"
                op.message = op.message or ("no task ran on this host" if not st.steps else "every task was skipped")
            else:
                status = "succeeded"
            op.status = status
            if op.started_at is not None or status not in ("skipped", "cancelled"):
                op.finished_at = op.finished_at or now
            if not st.done:
                st.done = True
        self.ex.hosts_done = len(self.hosts)

        counts: dict[str, int] = {}
        for st in self.hosts.values():
            counts[st.op.status] = counts.get(st.op.status, 0) + 1
        if cancelled:
            return RunResult("cancelled", "cancelled on request", rc)
        if timed_out:
            return RunResult("timed_out", f"timed out after {timeout_s} s", rc)
        bad = {k: v for k, v in counts.items() if k in ("failed", "unreachable", "cancelled")}
        if not bad and (rc in (0, None) or self.stats is not None) and not failure:
            return RunResult("succeeded", None, rc)
        if bad:
            parts = [f"{v} {k}" for k, v in sorted(bad.items())]
            message = f"{', '.join(parts)} of {len(self.hosts)} hosts"
            if self.stats is None and error_text:
                message = _clip(f"{message}: {error_text}", MAX_MESSAGE)
        else:
            message = _clip(error_text or f"ansible-playbook exited with status {rc}", MAX_MESSAGE)
        return RunResult("failed", message, rc)


def _join(current: str | None, more: str | None) -> str:
    if not more:
        return current or ""
    if not current:
        return more
    return current + ("" if current.endswith("\n") else "\n") + more


# --------------------------------------------------------------------------- preparing a run

@dataclass
class Prepared:
    private_dir: Path
    playbook: str
    project_dir: str
    cmdline: list[str]
    envvars: dict[str, str]
    passwords: dict[str, str]
    ssh_key: str | None
    readonly: list[Path]  # what the sandbox sees read-only besides the system and Python
    sockets: list[Path]  # the X11 display socket, for x11 hosts
    forks: int
    names: dict[str, str]
    commands: list[str] | None  # a commands task's lines (steps come from tm_commands)
    progress: str | None  # prefix of tm_commands' progress lines


def _secrets(credential: Credential | None) -> tuple[str | None, str | None, str | None]:
    """(ssh key, login password, become password), decrypted only in memory."""
    if credential is None:
        return None, None, None
    box = vault()
    secret = box.decrypt(credential.secret_enc)
    become = box.decrypt(credential.become_password_enc)
    if credential.kind == "ssh_key":
        return secret, None, become
    if credential.kind == "password":
        return None, secret, become or secret  # sudo asks for the login password by default
    return None, None, become


def ssh_args(settings: Settings, credential: Credential | None, known_hosts: Path | None = None) -> str:
    known_hosts = known_hosts or hostkeys.known_hosts_path(settings.instance_dir)
    args = [
        "-F none",  # no ~/.ssh/config: how we connect is decided here, per host and credential
        "-o IdentityFile=none",  # never the worker's own keys: only the credential's
        "-o ControlMaster=auto",
        f"-o ControlPersist={CONTROL_PERSIST_S}s",
        "-o StrictHostKeyChecking=accept-new",
        f"-o UserKnownHostsFile={known_hosts}",
        "-o LogLevel=ERROR",
        "-o ServerAliveInterval=15",
        "-o ServerAliveCountMax=4",
    ]
    if credential is not None and credential.kind == "password":
        args.append("-o PubkeyAuthentication=no")
    return " ".join(args)


def prepare(private_dir: Path, ex: Execution, task: Task, hosts: list[Host], settings: Settings) -> Prepared:
    credential = task.credential
    if task.kind == "commands":
        problem = protocols.commands_problem(hosts)  # API-protocol hosts run on this machine: no raw lines
        if problem:
            raise ValidationError(problem, field="commands")
    key, password, become_password = _secrets(credential)
    preview = ex.check_mode and ex.trigger == DRY_RUN_TRIGGER
    if preview:  # before approval: nothing a playbook could read, only the key inside ssh-agent
        password = become_password = None
    inv = inventory.build_inventory(hosts, credential)
    (private_dir / "inventory").mkdir(mode=0o700)
    (private_dir / "inventory" / "hosts.yml").write_text(inventory.dump_inventory(inv))
    env_dir = private_dir / "env"
    env_dir.mkdir(mode=0o700)
    run_vars = {**(task.vars or {}), **(ex.vars or {})}
    cmdline: list[str] = []
    user_vars = inventory.user_vars(run_vars)
    if user_vars:
        vars_file = env_dir / "vars.yml"
        vars_file.write_text(inventory.dump(user_vars))
        cmdline += ["-e", f"@{vars_file}"]
    project = private_dir / "project"
    project.mkdir(mode=0o700)
    roles_path = [str(settings.playbook_dir / "roles"), str(settings.playbook_dir.parent / "roles")]
    commands: list[str] | None = None
    progress: str | None = None
    if task.kind == "commands":
        commands = list(task.commands or [])
        progress = f"tm-progress-{secrets.token_hex(8)}"  # only this run's plugin writes such lines
        play = playbooks.commands_play([inventory.Unsafe(c) for c in commands], become=bool(task.become),
                                       progress=progress)
        for p in play:
            p["strategy"] = "free"  # each host runs its commands as fast as it can
        playbook = project / "commands.yml"
        playbook.write_text(inventory.dump(play))
        project_dir = str(project)
    else:
        resolved = playbooks.resolve(settings.playbook_dir, task.playbook or "")
        playbook = resolved
        project_dir = str(resolved.parent)
        roles_path.insert(0, str(resolved.parent / "roles"))
    if ex.check_mode:
        cmdline += ["--check", "--diff"]  # a dry run shows the approver what would change
    if task.kind == "playbook" and task.become:
        cmdline.append("--become")
    passwords: dict[str, str] = {}
    if password:
        cmdline.append("--ask-pass")
        passwords[SSH_PASS_PROMPT] = Once(password)
    if become_password and (task.become or task.kind == "playbook"):
        cmdline.append("--ask-become-pass")
        passwords[BECOME_PASS_PROMPT] = Once(become_password)
    if task.kind == "playbook":
        # the protocol playbooks' vars_prompt (API secrets): answered like Ansible's own prompts,
        # with the secret only when an API-protocol host needs it (an ssh key stays with ssh-agent)
        api_hosts = any((h.protocol or "ssh") not in ("ssh", "local", "x11") for h in hosts)
        passwords.update(protocols.prompt_answers(credential if api_hosts and not preview else None))
    forks = max(1, min(len(hosts), settings.max_forks))
    known_hosts = private_dir / "ssh" / "known_hosts"
    hostkeys.seed(settings.instance_dir, hosts, known_hosts)
    cfg_file = private_dir / "ansible.cfg"
    cfg_file.write_text("# empty: every setting comes from the environment below\n")
    envvars = {
        "PATH": f"{venv_bin()}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(private_dir / "home"),
        "TMPDIR": "/tmp",  # the sandbox's own tmpfs (ssh-agent's socket lives there)
        "USER": "nobody",
        "LOGNAME": "nobody",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "ANSIBLE_CONFIG": str(cfg_file),
        "ANSIBLE_LOCAL_TEMP": str(private_dir / "tmp"),
        "ANSIBLE_INVENTORY_ENABLED": "yaml",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_HOST_KEY_CHECKING": "True",  # with accept-new: new hosts are learnt, changed keys refused
        "ANSIBLE_SSH_ARGS": ssh_args(settings, credential, known_hosts),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(private_dir / "cp"),
        # ssh_askpass, not sshpass: sshpass mistakes remote exit codes 1-6 for its own errors.
        "ANSIBLE_SSH_PASSWORD_MECHANISM": "ssh_askpass",
        "ANSIBLE_SSH_USETTY": "False",  # keep stderr apart from stdout
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_TIMEOUT": "10",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_FORCE_COLOR": "False",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        "ANSIBLE_TRANSFORM_INVALID_GROUP_CHARS": "ignore",
        "ANSIBLE_GATHER_TIMEOUT": "30",
        "ANSIBLE_ROLES_PATH": ":".join(roles_path),
    }
    if not any((h.protocol or "ssh") == "winrm" for h in hosts):
        # no pywinrm import at ansible-playbook start-up (see ansible_stubs/winrm)
        envvars["PYTHONPATH"] = str(STUBS_DIR)
    # shipped modules, module_utils, connection plugins and roles (non-secret)
    extra = dict(protocols.ansible_env(Path(project_dir) if task.kind == "playbook" else settings.playbook_dir))
    more_roles = [r for r in str(extra.pop("ANSIBLE_ROLES_PATH", "")).split(os.pathsep) if r]
    envvars["ANSIBLE_ROLES_PATH"] = os.pathsep.join(dict.fromkeys(roles_path + more_roles))
    for k, v in extra.items():
        envvars.setdefault(k, str(v))
    readonly = [Path(project_dir), settings.playbook_dir, STUBS_DIR, *protocols.ca_dirs()]
    readonly += [Path(p) for k in ("ANSIBLE_ROLES_PATH", "ANSIBLE_LIBRARY", "ANSIBLE_MODULE_UTILS",
                                   "ANSIBLE_CONNECTION_PLUGINS", "ANSIBLE_ACTION_PLUGINS")
                 for p in envvars.get(k, "").split(os.pathsep) if p]
    return Prepared(
        private_dir=private_dir,
        playbook=str(playbook),
        project_dir=project_dir,
        cmdline=cmdline,
        envvars=envvars,
        passwords=passwords,
        ssh_key=key,
        readonly=[p for p in dict.fromkeys(readonly) if p.exists()],
        sockets=_x11_sockets(envvars.get("DISPLAY")) if any(h.protocol == "x11" for h in hosts) else [],
        forks=forks,
        names=inv["_meta"]["names"],
        commands=commands,
        progress=progress,
    )


def _x11_sockets(display: str | None) -> list[Path]:
    """The local X server's socket for ``DISPLAY=:N`` (a TCP display needs nothing)."""
    if display and display.startswith(":"):
        return [Path("/tmp/.X11-unix") / f"X{display[1:].split('.')[0]}"]
    return []


def _filter_env(env: dict[str, str], keep: dict[str, str]) -> dict[str, str]:
    """What ansible-playbook may see: our own variables and what ansible-runner added.

    Nothing of the worker's own environment (which may hold the vault key, database and
    Redis URLs) passes: a variable the worker has with the same value is dropped.
    """
    return {k: v for k, v in env.items()
            if k in keep or (k.startswith(ENV_KEEP_PREFIXES) and os.environ.get(k) != v)}


class Once(str):
    """A prompt answer ansible-runner can send once: later matches get an empty line.

    Ansible asks for the login and become passwords once, at start-up; a playbook that
    prints the prompt again (e.g. through its parent's terminal) must not be answered.
    pexpect sends ``answer + linesep``, which is where the secret is handed out.
    """

    def __new__(cls, secret: str) -> "Once":
        obj = super().__new__(cls, "")
        obj._secret = secret
        return obj

    def __add__(self, other: str) -> str:
        secret, self._secret = self._secret, ""
        return secret + other


class SandboxedRunner(Runner):
    """ansible-runner's Runner, reading event files the sandbox writes without trusting them.

    The callback plugin inside the sandbox drops ``<uuid>-partial.json`` files that the
    worker reads by a name taken from the output stream, which code inside can forge: a
    uuid that is not a uuid, or a file that is not a regular file, is never opened.
    """

    def event_callback(self, event_data: dict[str, Any]) -> None:
        uuid = str(event_data.get("uuid") or "")
        if "uuid" in event_data:
            path = Path(self.config.artifact_dir) / "job_events" / f"{uuid}-partial.json"
            if not UUID_RE.match(uuid) or (path.is_symlink() or (path.exists() and not path.is_file())):
                event_data = {k: v for k, v in event_data.items() if k not in ("uuid", "event_data")}
                event_data["event"] = "verbose"
        return super().event_callback(event_data)


# --------------------------------------------------------------------------- the run

def run(session: Session, ex: Execution, hosts: list[Host], ops: dict[str, Operation], settings: Settings,
        *, timeout_s: int | None = None, attempt: int = 1) -> RunResult:
    """Run ``ex`` on ``hosts``; ``ops`` maps host name -> its pending Operation.

    Returns the execution's outcome; operations and steps are updated in ``session``
    (the last changes are left for the caller to commit with the final status).
    """
    task = ex.task
    timeout_s = int(timeout_s or task.timeout_s or 3600)
    began = time.monotonic()
    private_dir = sandbox.new_private_dir()
    runner: Runner | None = None
    recorder: Recorder | None = None
    fifo: str | None = None
    mark: str | None = None
    try:
        try:
            prep = prepare(private_dir, ex, task, hosts, settings)
        except Exception as exc:  # an invalid playbook path, an undecryptable secret, ...
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            recorder = Recorder(session, ex, _by_inventory_name(ops, {}), {})
            return recorder.finish(None, timeout_s, failure=f"could not prepare the run: {message}")
        recorder = Recorder(session, ex, _by_inventory_name(ops, prep.names), prep.names, prep.commands,
                            prep.progress, attempt=attempt)
        # Non-secret runner settings go in env/settings: ansible-runner 2.4.3 drops a
        # ``settings=`` dict when that file is missing (BaseConfig.prepare_env).
        (private_dir / "env" / "settings").write_text(json.dumps({
            "job_timeout": timeout_s,
            "idle_timeout": timeout_s,
            "pexpect_timeout": 0.2,
            "pexpect_use_poll": True,
            "suppress_ansible_output": True,
            "suppress_output_file": True,
        }))
        rc = RunnerConfig(
            private_data_dir=str(private_dir),
            playbook=prep.playbook,
            inventory=str(private_dir / "inventory" / "hosts.yml"),
            project_dir=prep.project_dir,
            cmdline=" ".join(shlex.quote(a) for a in prep.cmdline),
            envvars=prep.envvars,
            passwords=dict(prep.passwords),
            settings={},
            forks=prep.forks,
            ident=f"execution-{ex.id}",
            suppress_env_files=True,
            suppress_ansible_output=True,
            suppress_output_file=True,
            quiet=True,
            fact_cache_type="jsonfile",
        )
        rc.prepare()
        rc.env = _filter_env(rc.env, keep=prep.envvars)
        rc.env[procs.MARK_ENV] = mark = procs.marker(ex.id)  # finds this run's processes (procs.py)
        events = [Path(rc.artifact_dir) / "job_events", Path(rc.artifact_dir) / "fact_cache"]
        for path in events:
            sandbox.make_writable(path)
        sandbox.open_up(private_dir)
        layout = sandbox.Layout(private_dir, Path(rc.cwd), readonly=prep.readonly, writable=events,
                                sockets=prep.sockets)
        try:
            sandbox.check(layout)
        except sandbox.SandboxError as exc:
            return recorder.finish(None, timeout_s, failure=str(exc))
        command = list(rc.command)
        if prep.ssh_key:  # ssh-agent inside the sandbox reads the key from a fifo only it can open
            fifo = str(private_dir / "agent" / "key")
            open_fifo_write(fifo, prep.ssh_key)
            if os.geteuid() == 0:
                os.chown(fifo, sandbox.SANDBOX_UID, sandbox.SANDBOX_GID)
            command = rc.wrap_args_with_ssh_agent(command, fifo)
        rc.command = sandbox.argv(layout, command)
        runner = SandboxedRunner(
            config=rc,
            event_handler=recorder.event_handler,
            cancel_callback=recorder.cancel_callback,
        )
        spawned = time.monotonic()
        runner.run()
        ended = time.monotonic()
        result = recorder.finish(runner, timeout_s)
        log.info(
            "execution %s: %s on %d hosts; prepare %.3f s, ansible start to first event %.3f s, run %.3f s, "
            "%d events recorded in %.3f s (%d commits)",
            ex.id, result.status, len(hosts), spawned - began, (recorder.first_event_at or ended) - spawned,
            ended - spawned, recorder.events, recorder.handler_s, recorder.flushes)
        return result
    finally:
        if mark:
            procs.kill_marked(mark)  # nothing of this run outlives it (exceptions, RQ timeout)
        if fifo:
            _drain_fifo(fifo)
        hostkeys.learn(settings.instance_dir, hosts, private_dir / "ssh" / "known_hosts")
        shutil.rmtree(private_dir, ignore_errors=True)


def _by_inventory_name(ops: dict[str, Operation], names: dict[str, str]) -> dict[str, Operation]:
    """Operations keyed by the host's inventory name (see inventory.inventory_name)."""
    by_host = {host_name: inv for inv, host_name in names.items()}
    return {by_host.get(name, name): op for name, op in ops.items()}
