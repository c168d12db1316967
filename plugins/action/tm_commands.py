"""Task Manager's ``commands`` runner: a task's command lines, one after the other, on one host.

A ``commands`` task used to be one ``ansible.builtin.raw`` task per command line. Each of
those costs Ansible a fork of ansible-playbook, a template pass and a new connection
object (~15 ms of CPU per command and host), which made a 3-command run over 20 servers
a third slower than plain ssh. Here all of a host's command lines run in one Ansible task:
each is still executed exactly as ``raw`` executes it (``_low_level_execute_command``: its
own shell over the host's connection plugin, become applied the same way, no Python
needed on the target), and the host stops at the first one that fails, as separate tasks
would.

Every finished command is reported with a one-line progress message (a JSON object after
``progress`` + a space, shown through Ansible's display, which ansible-runner turns into a
``verbose`` event), so the execution page shows each step as it ends and a cancel or
timeout keeps the output of the steps already done. A host whose commands all end within
``LIVE_AFTER_S`` sends none: its task result, a moment later, says the same, and every
event costs ansible-playbook, ansible-runner and the recorder (1,000 local hosts with two
quick commands each: 2,004 events instead of 4,004, the run 11.4 s instead of 12.7 s).
From ``LIVE_AFTER_S`` on, the lines held back go out, then every line at once. The task's result lists every command's outcome
under ``tm_steps``: that is the authoritative record.

Launch values: a line may hold ``[#NAME#]``. ``values`` maps names to their text, already
shell-quoted by Task Manager (one word, or one per item); ``secrets`` lists the names whose
values come from this play's ``vars_prompt`` (``tm_secret__NAME``, never in the task
arguments, so never in an event). Each line is substituted in one pass at the moment it runs
(a value is never scanned again), and every secret value is replaced by ``********`` in the
output this plugin reports.

While a command runs over SSH its output is reported too, whole lines at most every
``LIVE_EVERY_S`` (``"status": "running"`` progress lines carrying only the new text), so a
long command's first lines reach the page while it still runs. Ansible's connection plugins
have no streaming interface: ``_live_output`` tees the ssh process's pipes as the ssh plugin
reads them, for this task's own thread only (strategy ``tm_threads`` runs hosts on threads).
Other connections report at the end.

Arguments: ``commands`` (list of command lines, passed as ``!unsafe``), ``progress`` (the
per-run prefix of progress lines; none are written without it), ``values``, ``secrets``.
"""
from __future__ import annotations

import importlib
import json
import re
import shlex
import threading
import time
from contextlib import contextmanager

from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()
MAX_PROGRESS_OUTPUT = 256 * 1024  # per stream, in a progress line; the task result keeps everything
PLACEHOLDER_RE = re.compile(r"\[#([A-Za-z_][A-Za-z0-9_]*)#\]")
SECRET_PREFIX = "tm_secret__"
MASK = "********"
LIVE_EVERY_S = 0.3
LIVE_AFTER_S = 0.5
SWEEP_EVERY_S = 0.1
BECOME_MARKER = re.compile(rb"^BECOME-SUCCESS-[a-z]+\r?\n", re.MULTILINE)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_PROGRESS_OUTPUT else text[:MAX_PROGRESS_OUTPUT]


def render(command: str, words: dict[str, str]) -> str:
    """``command`` with each ``[#NAME#]`` of ``words`` replaced, in one pass."""
    return PLACEHOLDER_RE.sub(lambda m: words.get(m.group(1), m.group(0)), command)


def masker(secret_values: list[str]):
    """A function hiding every secret value (longest first) in a text."""
    values = sorted({v for v in secret_values if v}, key=len, reverse=True)

    def mask(text: str) -> str:
        for value in values:
            text = text.replace(value, MASK)
        return text

    return mask


class _Tee:
    """A pipe whose reads are also handed to ``sink`` (same object for the selector)."""

    def __init__(self, pipe, sink):
        self._pipe = pipe
        self._sink = sink

    def read(self, *args):
        data = self._pipe.read(*args)
        if data:
            self._sink(data)
        return data

    def __getattr__(self, name):
        return getattr(self._pipe, name)


class _LiveStream:
    """Collects one command's output and reports its whole new lines, throttled."""

    def __init__(self, emit):
        self.emit = emit  # emit(stream, text)
        self.pending = {"stdout": b"", "stderr": b""}
        self.sent = 0
        self.last = 0.0

    def sink(self, stream):
        def add(data: bytes) -> None:
            self.pending[stream] += data
            self.flush()
        return add

    def flush(self) -> None:
        """Whole lines only; what is still pending at the end is in the command's result."""
        now = time.monotonic()
        if now - self.last < LIVE_EVERY_S:
            return
        for stream, data in self.pending.items():
            cut = data.rfind(b"\n") + 1
            if cut <= 0 or self.sent >= 2 * MAX_PROGRESS_OUTPUT:
                continue
            text = BECOME_MARKER.sub(b"", data[:cut]).decode("utf-8", "replace")
            self.pending[stream] = data[cut:]
            if text:
                self.sent += len(text)
                self.emit(stream, text)
                self.last = now


_live = threading.local()
_tee_lock = threading.Lock()


def _install_tee() -> None:
    """Give the ssh plugin a ``subprocess`` whose ``Popen`` tees into the calling thread's live
    stream, if it has one. Installed once per process; a thread (strategy tm_threads) or a
    forked worker sees only its own command's output."""
    module = importlib.import_module("ansible.plugins.connection.ssh")
    with _tee_lock:
        if isinstance(module.subprocess, _TeeingSubprocess):
            return
        module.subprocess = _TeeingSubprocess(module.subprocess)


class _TeeingSubprocess:
    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def Popen(self, *args, **kwargs):  # noqa: N802 (subprocess's name)
        proc = self._real.Popen(*args, **kwargs)
        live = getattr(_live, "stream", None)
        if live is not None:
            if proc.stdout is not None:
                proc.stdout = _Tee(proc.stdout, live.sink("stdout"))
            if proc.stderr is not None:
                proc.stderr = _Tee(proc.stderr, live.sink("stderr"))
        return proc


class _Progress:
    """One host's progress lines: held back until the host has run ``LIVE_AFTER_S``, then sent
    (held ones first, in order); dropped at ``close`` (the task's result carries them)."""

    def __init__(self, prefix: str, host: str):
        self.prefix, self.host = prefix, host
        self.held: list[str] = []
        self.live = self.closed = False
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + LIVE_AFTER_S
        _sweeper.watch(self)

    def emit(self, data: dict) -> None:
        line = f"{self.prefix} {json.dumps(dict(data, host=self.host))}"
        with self.lock:
            if not self.live and not self.closed and time.monotonic() >= self.deadline:
                self._go_live()
            if self.live:
                display.display(line)
            elif not self.closed:
                self.held.append(line)

    def go_live(self) -> None:
        with self.lock:
            if not self.closed and not self.live:
                self._go_live()

    def _go_live(self) -> None:
        self.live = True
        for line in self.held:
            display.display(line)
        self.held = []

    def close(self) -> None:
        _sweeper.forget(self)
        with self.lock:
            self.closed, self.live, self.held = True, False, []


class _Sweeper:
    """Sends the held lines of every host that reached its deadline while a command still runs:
    one thread per process, started with the first host (a timer thread per host cost more
    CPU than the lines it saves)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: set[_Progress] = set()
        self.thread: threading.Thread | None = None

    def watch(self, progress: _Progress) -> None:
        with self.lock:
            self.waiting.add(progress)
            if self.thread is None or not self.thread.is_alive():  # none yet, or not in this forked worker
                self.thread = threading.Thread(target=self._run, name="tm-progress", daemon=True)
                self.thread.start()

    def forget(self, progress: _Progress) -> None:
        with self.lock:
            self.waiting.discard(progress)

    def _run(self) -> None:
        while True:
            time.sleep(SWEEP_EVERY_S)
            now = time.monotonic()
            with self.lock:
                due = [p for p in self.waiting if p.deadline <= now]
                self.waiting.difference_update(due)
            for progress in due:
                progress.go_live()


_sweeper = _Sweeper()


@contextmanager
def _live_output(connection, live: _LiveStream | None):
    """Tee the ssh plugin's subprocess pipes into ``live`` while the block runs (this thread only)."""
    if live is None or getattr(connection, "transport", None) != "ssh":
        yield
        return
    _install_tee()
    _live.stream = live
    try:
        yield
    finally:
        _live.stream = None


class ActionModule(ActionBase):
    """Runs the lines; ``_execute`` keeps secret values out of every local command line."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("commands", "progress", "values", "secrets"))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        commands = self._task.args.get("commands")
        if not isinstance(commands, list) or not commands or not all(isinstance(c, str) for c in commands):
            raise AnsibleActionFail("tm_commands needs 'commands': a non-empty list of command lines")
        progress = self._task.args.get("progress")
        host = (task_vars or {}).get("inventory_hostname", "")
        words = {str(k): str(v) for k, v in (self._task.args.get("values") or {}).items()}
        secret_values = []
        for name in self._task.args.get("secrets") or []:
            value = str((task_vars or {}).get(SECRET_PREFIX + name) or "")
            secret_values.append(value)
            words[name] = shlex.quote(value)
        secret_names = set(self._task.args.get("secrets") or [])
        lines = _Progress(progress, host) if progress else None
        try:
            return self._run_commands(result, commands, words, secret_names, secret_values, lines)
        finally:
            if lines is not None:
                lines.close()

    def _run_commands(self, result: dict, commands: list[str], words: dict[str, str], secret_names: set[str],
                      secret_values: list[str], lines: _Progress | None) -> dict:
        mask = masker(secret_values)
        steps: list[dict] = []
        result.update(tm_steps=steps, changed=False)

        def report(step: dict) -> None:
            step = dict(step, stdout=mask(step["stdout"]), stderr=mask(step["stderr"]))
            steps.append(step)
            if lines is not None:
                lines.emit(dict(step, stdout=_clip(step["stdout"]), stderr=_clip(step["stderr"])))

        if self._task.check_mode:  # like raw: nothing runs in check mode
            for i in range(len(commands)):
                now = time.time()
                report({"index": i, "status": "skipped", "rc": None, "stdout": "", "stderr": "",
                        "start": now, "end": now})
            result.update(skipped=True, msg="commands do not run in check mode")
            return result

        def live_for(index: int) -> _LiveStream | None:
            if lines is None:
                return None
            if any("\n" in v for v in secret_values):
                return None  # live lines could split a multi-line secret past the mask: report at the end
            return _LiveStream(lambda stream, text: lines.emit({"index": index, "status": "running", stream: mask(text)}))

        for i, command in enumerate(commands):
            started = time.time()
            try:
                # exactly what ansible.builtin.raw does (executable=False: no 'sh -c' wrapper)
                with _live_output(self._connection, live_for(i)):
                    res = self._execute(command, words, secret_names)
            except AnsibleConnectionFailure as exc:
                report({"index": i, "status": "unreachable", "rc": None, "stdout": "", "stderr": str(exc),
                        "start": started, "end": time.time()})
                result.update(unreachable=True, msg=mask(str(exc)))
                return result
            rc = res.get("rc")
            ok = rc == 0
            report({"index": i, "status": "succeeded" if ok else "failed", "rc": rc,
                    "stdout": res.get("stdout") or "", "stderr": res.get("stderr") or "",
                    "start": started, "end": time.time()})
            if not ok:
                result.update(failed=True, rc=rc, msg=f"command {i + 1}: non-zero return code")
                return result
        result["rc"] = 0
        return result

    def _execute(self, command: str, words: dict[str, str], secret_names: set[str]) -> dict:
        """Run one line exactly as ``ansible.builtin.raw`` does (executable=False: no 'sh -c'
        wrapper). A line holding a secret travels on ssh's standard input instead of its
        command line, so the value never shows in a process list: neither here (ssh's argv)
        nor on the host (the shell reads the line from its input; builtins fork no process)."""
        line = render(command, words)
        if not any(m.group(1) in secret_names for m in PLACEHOLDER_RE.finditer(command)):
            return self._low_level_execute_command(line, executable=False)
        # eval inside the shell: the value is not in its argv either (only in what the line runs)
        return self._low_level_execute_command("sh -c 'eval \"$(cat)\"'", in_data=line, executable=False)
