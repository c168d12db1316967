"""Task Manager's ``commands`` runner: a task's command lines, one after the other, on one host.

A ``commands`` task used to be one ``ansible.builtin.raw`` task per command line. Each of
those costs Ansible a fork of ansible-playbook, a template pass and a new connection
object (~15 ms of CPU per command and host), which made a 3-command run over 20 servers
a third slower than plain ssh. Here all of a host's command lines run in one Ansible task:
each is still executed exactly as ``raw`` executes it (``_low_level_execute_command``: its
own shell over the host's connection plugin, become applied the same way, no Python
needed on the target), and the host stops at the first one that fails, as separate tasks
would.

Every finished command is reported at once with a one-line progress message (a JSON
object after ``progress`` + a space, shown through Ansible's display, which ansible-runner
turns into a ``verbose`` event), so the execution page shows each step as it ends and a
cancel or timeout keeps the output of the steps already done. The task's result lists
every command's outcome under ``tm_steps``: that is the authoritative record.

Launch values: a line may hold ``[#NAME#]``. ``values`` maps names to their text, already
shell-quoted by Task Manager (one word, or one per item); ``secrets`` lists the names whose
values come from this play's ``vars_prompt`` (``tm_secret__NAME``, never in the task
arguments, so never in an event). Each line is substituted in one pass at the moment it runs
(a value is never scanned again), and every secret value is replaced by ``********`` in the
output this plugin reports.

Arguments: ``commands`` (list of command lines, passed as ``!unsafe``), ``progress`` (the
per-run prefix of progress lines; none are written without it), ``values``, ``secrets``.
"""
from __future__ import annotations

import json
import re
import shlex
import time

from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()
MAX_PROGRESS_OUTPUT = 256 * 1024  # per stream, in a progress line; the task result keeps everything
PLACEHOLDER_RE = re.compile(r"\[#([A-Za-z_][A-Za-z0-9_]*)#\]")
SECRET_PREFIX = "tm_secret__"
MASK = "********"


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
        mask = masker(secret_values)
        secret_names = set(self._task.args.get("secrets") or [])
        steps: list[dict] = []
        result.update(tm_steps=steps, changed=False)

        def report(step: dict) -> None:
            step = dict(step, stdout=mask(step["stdout"]), stderr=mask(step["stderr"]))
            steps.append(step)
            if progress:
                line = dict(step, host=host, stdout=_clip(step["stdout"]), stderr=_clip(step["stderr"]))
                display.display(f"{progress} {json.dumps(line)}")

        if self._task.check_mode:  # like raw: nothing runs in check mode
            for i in range(len(commands)):
                now = time.time()
                report({"index": i, "status": "skipped", "rc": None, "stdout": "", "stderr": "",
                        "start": now, "end": now})
            result.update(skipped=True, msg="commands do not run in check mode")
            return result

        for i, command in enumerate(commands):
            started = time.time()
            try:
                # exactly what ansible.builtin.raw does (executable=False: no 'sh -c' wrapper)
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
            result["changed"] = True
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
