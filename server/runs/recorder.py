"""Turning ansible-runner's event stream into ``Step`` rows and ``Operation`` results.

A ``Recorder`` is the run's event handler and cancel callback: one step per Ansible task and
host (one per line for a ``commands`` task), each operation's status, output and message as
its host finishes, written in batches (the last host's result at once). ``finish`` settles
every operation when ansible-playbook has ended; ``outcome`` says what the hosts' operations
mean for the execution, for a single run and after retries alike.

Plays on ``hosts: localhost`` (Ansible's implicit localhost: no target of the run has that
inventory name) run on the controller, inside the run's sandbox. Their steps go to one more
operation, ``CONTROLLER``, made at its first event: a name no host can have (host names
allow no space), so it is never taken for a real host called localhost; ``outcome`` counts
it apart from the hosts (its failure fails the run) and it is not in ``hosts_done``. A task
delegated to the controller stays on the host it ran for (Ansible counts its result there),
its step named so that it says where it ran.
"""
from __future__ import annotations

import difflib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ansible_runner.runner import Runner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.catalog import playbooks
from server.core import db
from server.core.models import (
    OPERATION_FAILED,
    STEP_IGNORED,
    Execution,
    ExecutionStatus,
    Operation,
    OperationStatus,
    Step,
    utcnow,
)
from server.reporting import output
from server.runs import hostkeys

log = logging.getLogger(__name__)

FLUSH_EVERY_EVENTS = 100
FLUSH_EVERY_S = 0.25
CANCEL_CHECK_S = 1.0
MAX_STEP_OUTPUT = 256 * 1024
MAX_OPERATION_OUTPUT = 1024 * 1024
MAX_MESSAGE = 4000
TRUNCATED = "\n[... output truncated ...]\n"
STEP_EVENTS = {
    "runner_on_ok": OperationStatus.SUCCEEDED,
    "runner_on_failed": OperationStatus.FAILED,
    "runner_on_unreachable": OperationStatus.UNREACHABLE,
    "runner_on_skipped": OperationStatus.SKIPPED,
}
ITEM_EVENTS = {"runner_item_on_ok", "runner_item_on_failed", "runner_item_on_skipped"}
# a host whose operation ends in one of these fails the execution
HOST_FAILED = (OperationStatus.FAILED, OperationStatus.UNREACHABLE, OperationStatus.CANCELLED)
CONTROLLER = "localhost (controller)"  # the operation of plays on the implicit localhost
IMPLICIT_LOCALHOST = ("localhost", "127.0.0.1", "::1")
ON_CONTROLLER = " (on the controller)"


def controller_name(slice_index: int | None) -> str:
    """The controller's operation name; each slice of a big execution runs its own."""
    return CONTROLLER if slice_index is None else f"{CONTROLLER[:-1]}, slice {slice_index + 1})"


def is_controller(op: Operation) -> bool:
    return op.host_id is None and (op.host_name or "").startswith(CONTROLLER[:-1])


@dataclass
class RunResult:
    """What a run came to: the execution's status, its message and ansible-playbook's exit code."""

    status: str  # succeeded, failed, cancelled, timed_out
    message: str | None = None
    rc: int | None = None


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
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _epoch(value: Any) -> datetime | None:
    """A UNIX timestamp (tm_commands' step times) as an aware datetime."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=UTC)
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


def _join(current: str | None, more: str | None) -> str:
    if not more:
        return current or ""
    if not current:
        return more
    return current + ("" if current.endswith("\n") else "\n") + more


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
    controller: bool = False  # the controller's operation: not one of the run's target hosts


class Recorder:
    """Turns ansible-runner events into Steps/Operations; writes them in batches.

    Playbook tasks: one step per Ansible task and host. ``commands`` tasks run all their
    lines in one ``tm_commands`` task per host (plugins/action/tm_commands.py): one step
    per line, from its progress lines (``progress`` prefix) as each line ends, and from
    the task's result, which is authoritative.
    """

    # Set by runner.run: called once with the outcome when every host has its final result
    # (a commands task's last host, a playbook's stats), before ansible-playbook exits.
    on_settled: Callable[[RunResult], None] | None = None
    settled_at: float | None = None  # monotonic time the execution was made final at its last result

    def __init__(self, session: Session, ex: Execution, ops: dict[str, Operation], names: dict[str, str],
                 commands: list[str] | None = None, progress: str | None = None, attempt: int = 1,
                 launch_play: str | None = None) -> None:
        self.session = session
        self.ex = ex
        self.names = names  # inventory name -> host name
        self.hosts = {name: HostState(op) for name, op in ops.items()}
        self.commands = commands  # a commands task's lines
        self.progress = progress  # tm_commands' progress lines start with it and a space
        self.launch_play = launch_play  # the play setting secret launch values: not a step
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
        self.slice = next((op.slice for op in ops.values()), None)
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
        if not host:
            return None
        st = self.hosts.get(host)
        if st is None and host in IMPLICIT_LOCALHOST and host not in self.names and self.commands is None:
            st = next((s for s in self.hosts.values() if s.controller), None) or self._controller()
            self.hosts[host] = st
        return st

    def _controller(self) -> HostState:
        """The controller's operation: this execution's (an earlier attempt's) or a new one."""
        name = controller_name(self.slice)
        op = self.session.execute(select(Operation).where(
            Operation.execution_id == self.ex.id, Operation.host_name == name)).scalar_one_or_none()
        if op is None:
            op = Operation(execution_id=self.ex.id, host_id=None, host_name=name, slice=self.slice,
                           status=OperationStatus.PENDING, stdout="", stderr="")
            self.session.add(op)
            self.session.flush()  # its id, for its steps
        st = HostState(op, controller=True, failed=op.status == OperationStatus.FAILED)
        st.seq_base = self.session.execute(select(func.max(Step.seq)).where(Step.operation_id == op.id)).scalar() or 0
        if op.status != OperationStatus.PENDING:  # an earlier attempt's: this one runs it again
            op.status, op.finished_at = OperationStatus.RUNNING, None
        return st

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        data = event.get("event_data") or {}
        if self.launch_play is not None and data.get("play") == self.launch_play:
            return  # setting the secret launch values is not a step of the host (stats still count it)
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
            self._settle()
        elif kind in ("error", "warning", "verbose", "playbook_on_no_hosts_matched") and event.get("stdout"):
            if kind == "error" or "ERROR" in event["stdout"]:
                self.errors.append(event["stdout"].strip())

    def _step_name(self, data: dict[str, Any]) -> str:
        name = str(data.get("task") or data.get("task_action") or "task")
        role = data.get("role")
        if role:
            name = f"{role} : {name}"
        return self._attempt_name(name)

    def _not_run(self) -> str:
        """Why a host without any step was skipped: a rolling run that stopped early says so."""
        task, stats = self.ex.task, self.stats or {}
        if task is None or not task.serial or not (stats.get("failures") or stats.get("dark")):
            return "no task ran on this host"
        limit = task.max_fail_percentage
        return ("not run: the rolling run stopped after a batch failed"
                + (f" (more than max_fail_percentage {limit}% of its hosts)" if limit is not None else ""))

    def _attempt_name(self, name: str) -> str:
        return f"[attempt {self.attempt}] {name}" if self.attempt > 1 else name

    def _new_step(self, st: HostState, name: str, started: datetime) -> Step:
        op = st.op
        if op.status == OperationStatus.PENDING:
            op.status = OperationStatus.RUNNING
            op.started_at = started
        step = Step(
            operation_id=op.id,
            seq=st.seq_base + len(st.steps) + 1,
            name=name[:500],
            status=OperationStatus.RUNNING,
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
        if stdout is None and status == OperationStatus.SUCCEEDED and msg and data.get("task_action") in (
                "debug", "ansible.builtin.debug", "assert", "ansible.builtin.assert", "fail", "ansible.builtin.fail"):
            stdout = msg
        if status in OPERATION_FAILED and not stderr and msg:
            stderr = msg
        stdout = _join(stdout, _diff_text(res)) or None  # --diff (dry runs for approvers)
        delegated = res.get("_ansible_delegated_vars")
        if (isinstance(delegated, dict) and not st.controller and not step.name.endswith(ON_CONTROLLER)
                and delegated.get("ansible_connection") == "local"):
            step.name = (step.name + ON_CONTROLLER)[:500]
        duration = data.get("duration")
        self._record(st, step, status, res.get("rc"), stdout, stderr, msg, changed=bool(res.get("changed")),
                     duration=float(duration) if isinstance(duration, (int, float)) else None,
                     ignore_errors=bool(data.get("ignore_errors")))
        if status == OperationStatus.UNREACHABLE:
            self._host_done(st, final=OperationStatus.UNREACHABLE)
        elif st.failed:
            self._host_done(st, final=None)  # a rescue block may still take over: final at the end

    def _record(self, st: HostState, step: Step, status: str, rc: Any, stdout: str | None, stderr: str | None,
                msg: str | None, *, changed: bool, duration: float | None, ignore_errors: bool = False) -> None:
        """A step's outcome, and what it means for its operation (rc, output, message)."""
        step.status = STEP_IGNORED if status == "failed" and ignore_errors else status
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
        if status == OperationStatus.UNREACHABLE:
            st.unreachable = True
            op.message = _clip(hostkeys.explain(msg or stderr or "host unreachable"), MAX_MESSAGE)
        elif status == OperationStatus.FAILED and not ignore_errors:
            st.failed = True
            if st.first_failure is None:
                st.first_failure = _clip(self._failure(step, msg, stderr, step.rc), MAX_MESSAGE)
                op.message = st.first_failure

    def _failure(self, step: Step, msg: str | None, stderr: str | None, rc: int | None) -> str:
        """A failed host's message: its error first (the last stderr line), then where it happened.

        A ``commands`` step is named by its command line, which says nothing about what went
        wrong: it is "command N" there."""
        error = output.last_line(stderr)
        reason = msg or "failed"
        if rc not in (None, 0) and "return code" in reason:
            reason = f"{reason} {rc}"
        where = step.name.split(":", 1)[0] if self.commands is not None else step.name
        if error and error != (msg or "").strip():
            return f"{error} ({where}: {reason})"
        return f"{where}: {reason}"

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
        if (not isinstance(index, int) or index in st.commands_done or not isinstance(status, str)
                or status not in STEP_EVENTS.values()):
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
        msg = "non-zero return code" if status == OperationStatus.FAILED else None  # as ansible.builtin.raw says it
        self._record(st, step, status, result.get("rc"), _text(result.get("stdout")), _text(result.get("stderr")),
                     msg, changed=False, duration=duration)  # a command line says nothing of change
        if status == OperationStatus.SUCCEEDED:
            self._start_command(st, index + 1, ended or _now())  # the next line starts now

    def _command_progress(self, line: str) -> None:
        try:
            result = json.loads(line)
        except ValueError:
            return
        if isinstance(result, dict):
            st = self.hosts.get(str(result.get("host") or ""))
            if st is not None and not st.final and result.get("status") == "running":
                self._command_output(st, result)
            elif st is not None and not st.final:
                self._command_result(st, result)

    def _command_output(self, st: HostState, result: dict[str, Any]) -> None:
        """A running command's new lines: kept on its step as they come (the result replaces them)."""
        index = result.get("index")
        if not isinstance(index, int) or index in st.commands_done:
            return
        step = self._start_command(st, index, _now())
        if step is not None:
            for stream in ("stdout", "stderr"):
                if isinstance(result.get(stream), str):
                    setattr(step, stream, _clip((getattr(step, stream) or "") + result[stream], MAX_STEP_OUTPUT))

    def _finish_commands(self, st: HostState, kind: str, data: dict[str, Any]) -> None:
        """The host's tm_commands task ended: its result completes every step, and the host."""
        res: dict[str, Any] = data["res"] if isinstance(data.get("res"), dict) else {}
        for result in res.get("tm_steps") or []:
            if isinstance(result, dict):
                self._command_result(st, result)
        status = STEP_EVENTS[kind]
        msg = _text(res.get("msg"))
        if not st.command_steps and status != OperationStatus.SKIPPED:  # it failed before the first line ran
            self._start_command(st, 0, _now())
        for index, step in st.command_steps.items():
            if index not in st.commands_done:  # no result of its own (an error Ansible raised)
                st.commands_done.add(index)
                failed = OperationStatus.FAILED if status == OperationStatus.SUCCEEDED else status
                self._record(st, step, failed, None, None, msg, msg,
                             changed=False, duration=None)
        if st.unreachable:
            self._host_done(st, final=OperationStatus.UNREACHABLE)
        elif st.failed or status == OperationStatus.FAILED:
            st.failed = True
            st.op.message = st.op.message or _clip(msg or "failed", MAX_MESSAGE)
            self._host_done(st, final=OperationStatus.FAILED)
        elif status == OperationStatus.SKIPPED or all(s.status == OperationStatus.SKIPPED for s in st.steps):
            self._host_done(st, final=None)  # check mode: finish() says skipped
        else:
            self._host_done(st, final=OperationStatus.SUCCEEDED)

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
            if not st.controller:
                self.ex.hosts_done = (self.ex.hosts_done or 0) + 1
            if st.final and all(h.final for h in self.hosts.values()):
                self.flush_soon = True  # the last result: visible now, not at the next batch
                self._settle()

    def _settle(self) -> None:
        """Every host has its result: the execution is final now; Ansible's exit is cleanup.

        Not for a run whose unreachable hosts will be tried again (retries.py decides after
        the exit), nor twice. ``finish`` without a runner gives the hosts not yet final
        (a playbook's, at its stats) the status the stats say.
        """
        if self.on_settled is None or self.settled_at is not None or self.attempt > 1:
            return
        dark = (self.stats or {}).get("dark") or {}
        if int(self.ex.task.retry_attempts or 1) > 1 and any(
                st.unreachable or st.op.status == "unreachable" or name in dark for name, st in self.hosts.items()):
            return  # retries.py runs the unreachable hosts again once ansible-playbook has exited
        self.settled_at = time.monotonic()
        result = self.finish(None, int(self.ex.task.timeout_s or 3600))
        for st in self.hosts.values():
            st.final = True  # what ansible-playbook's exit brings changes nothing any more
        self.on_settled(result)

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
                if step.status == OperationStatus.RUNNING:
                    step.status = OperationStatus.CANCELLED if cancelled else OperationStatus.FAILED
                    # the output it printed so far stays, on the step and its host
                    op.stdout = _clip(_join(op.stdout, step.stdout), MAX_OPERATION_OUTPUT)
                    op.stderr = _clip(_join(op.stderr, step.stderr), MAX_OPERATION_OUTPUT)
                    if timed_out:
                        step.stderr = _join(step.stderr, f"timed out after {timeout_s} s")
                    if step.started_at is not None:
                        step.duration_s = round((now - step.started_at).total_seconds(), 3)
            if st.final:
                continue
            if name in dark or st.unreachable:
                status = OperationStatus.UNREACHABLE
            elif name in failures or st.failed:
                status = OperationStatus.FAILED
            elif cancelled:
                status = OperationStatus.CANCELLED
                op.message = op.message or "cancelled before this host finished"
            elif timed_out:
                status = OperationStatus.FAILED if st.steps else OperationStatus.CANCELLED
                op.message = op.message or f"the execution timed out after {timeout_s} s"
            elif self.stats is None and (rc or failure):
                status = OperationStatus.FAILED
                op.message = op.message or _clip(
                    f"ansible-playbook stopped before finishing this host: {error_text or f'exit status {rc}'}",
                    MAX_MESSAGE)
            elif not st.steps or all(s.status == OperationStatus.SKIPPED for s in st.steps):
                status = OperationStatus.SKIPPED
                op.message = op.message or (self._not_run() if not st.steps else "every task was skipped")
            else:
                status = OperationStatus.SUCCEEDED
            op.status = status
            if op.started_at is not None or status not in (OperationStatus.SKIPPED, OperationStatus.CANCELLED):
                op.finished_at = op.finished_at or now
            if not st.done:
                st.done = True
        self.ex.hosts_done = sum(not st.controller for st in self.hosts.values())
        if cancelled:
            return RunResult(ExecutionStatus.CANCELLED, "cancelled on request", rc)
        if timed_out:
            return RunResult(ExecutionStatus.TIMED_OUT, f"timed out after {timeout_s} s", rc)
        # without a stats event ansible-playbook stopped early: its error explains the hosts' failures
        return outcome((st.op for st in self.hosts.values()), rc=rc,
                       exit_ok=(rc in (0, None) or self.stats is not None) and not failure,
                       error=error_text if self.stats is None else None)


def outcome(ops: Iterable[Operation], *, rc: int | None = None, exit_ok: bool = True,
            error: str | None = None, note: str | None = None) -> RunResult:
    """The execution's status from its hosts' operations, once none of them is running.

    Succeeded when no host failed, was unreachable or was cancelled and ansible-playbook
    ended well (``exit_ok``); otherwise failed, saying how many hosts ended how, with
    ``note`` (e.g. how many attempts it took) and ``error`` (why ansible-playbook stopped)
    after it. One function for a single run (``Recorder.finish``) and after retries
    (retries.py), so the two can never count differently.
    """
    ops = list({id(op): op for op in ops}.values())  # the controller's may come under two names
    hosts = [op for op in ops if not is_controller(op)]
    bad = Counter(op.status for op in hosts if op.status in HOST_FAILED)
    controller_bad = sorted({op.status for op in ops if is_controller(op) and op.status in HOST_FAILED})
    if not bad and not controller_bad and exit_ok:
        return RunResult(ExecutionStatus.SUCCEEDED, None, rc)
    if not bad and not controller_bad:
        error = error or f"ansible-playbook exited with status {rc}"
        return RunResult(ExecutionStatus.FAILED, _clip(error, MAX_MESSAGE), rc)
    said = [f"{', '.join(f'{v} {k}' for k, v in sorted(bad.items()))} of {len(hosts)} hosts"] if bad else []
    said += [f"the controller's tasks {', '.join(controller_bad)}"] if controller_bad else []
    message = "; ".join(said)
    if note:
        message = f"{message} ({note})"
    if error:
        message = _clip(f"{message}: {error}", MAX_MESSAGE)
    return RunResult(ExecutionStatus.FAILED, message, rc)


def by_inventory_name(ops: dict[str, Operation], names: dict[str, str]) -> dict[str, Operation]:
    """Operations keyed by the host's inventory name (see inventory.inventory_name)."""
    by_host = {host_name: inv for inv, host_name in names.items()}
    return {by_host.get(name, name): op for name, op in ops.items()}
