"""Task Manager's strategy for ``commands`` plays: ``linear``, with ``tm_commands`` run on threads.

Stock Ansible forks ansible-playbook once per host and task. For a ``commands`` task that
fork is most of the cost: measured over 1,000 ``local`` hosts, 32 ms of CPU per host with
forks against 12 ms with threads (10 ms with the freeze below), nearly all of the
difference being the kernel copying the page tables and then, page by page, the memory
that parent and child both write (reference counts make every read a write). Here the ``tm_commands`` task runs on a
thread of ansible-playbook instead; everything else about the play is ``linear``'s. A
``commands`` play has one task, so each host still runs its lines as fast as it can, as
under ``free``, which would announce the task once per host (an event per host for
nothing).

Only ``tm_commands`` (plugins/action/tm_commands.py) is run on threads: it is written for
it (no process-wide state, its live-output tee is per thread). Every other action of a
play using this strategy still gets its forked worker, so a playbook naming this strategy
gains nothing else. What a worker process does for isolation between hosts is kept per
thread: the task is copied (``post_validate`` templates it in place), the loader's list of
temporary files is the thread's own. The play's objects are frozen for the garbage
collector when the play starts: they live as long as the play, and with them out of its
way a collection costs what the new objects cost.
"""
from __future__ import annotations

import copy
import gc
import threading

from ansible._internal import _task
from ansible._internal._errors import _error_utils
from ansible.errors import AnsibleError
from ansible.executor.task_executor import TaskExecutor
from ansible.executor.task_result import _RawTaskResult
from ansible.plugins import strategy as base
from ansible.plugins.strategy.linear import StrategyModule as LinearStrategy

THREADED_ACTIONS = frozenset(("tm_commands",))


class ThreadWorker(threading.Thread):
    """What ``WorkerProcess`` is to the strategy (started, alive, closed), run on a thread."""

    def __init__(self, *, final_q, task_vars, host, task, play_context, loader, variable_manager,
                 shared_loader_obj, worker_id, cliargs):
        super().__init__(name=f"tm-worker-{worker_id}", daemon=True)
        del cliargs  # a thread shares the process's
        self._final_q = final_q
        self._task_vars = task_vars
        self._host = host
        self._task = task.copy()
        self._play_context = play_context
        self._loader = copy.copy(loader)
        self._loader._tempfiles = set()
        self._variable_manager = variable_manager
        self._shared_loader_obj = shared_loader_obj
        self.worker_id = worker_id

    def run(self) -> None:
        try:
            with _task.TaskContext(self._task):
                result = TaskExecutor(self._host, self._task, self._task_vars, self._play_context, self._loader,
                                      self._shared_loader_obj, self._final_q, self._variable_manager).run()
        except BaseException as ex:  # the strategy waits for one result per queued task, whatever happens
            result = _error_utils.result_dict_from_exception(ex)
        try:
            self._final_q.send_task_result(_RawTaskResult(host=self._host, task=self._task, return_data=result,
                                                          task_fields=self._task.dump_attrs()))
        except Exception as ex:  # as WorkerProcess does: a result that cannot be sent becomes an error that can
            self._final_q.send_task_result(_RawTaskResult(
                host=self._host, task=self._task, task_fields={},
                return_data=_error_utils.result_dict_from_exception(AnsibleError(f"task result not sent: {ex}"))))

    def close(self) -> None:
        """Nothing to release: the thread has ended when the strategy closes it."""

    def terminate(self) -> None:
        """A thread cannot be killed: cancel and timeout end the whole run's process tree."""


class StrategyModule(LinearStrategy):
    def run(self, iterator, play_context):
        gc.collect()
        gc.freeze()
        return super().run(iterator, play_context)

    def _queue_task(self, host, task, task_vars, play_context):
        if task.action not in THREADED_ACTIONS:
            return super()._queue_task(host, task, task_vars, play_context)
        real = base.WorkerProcess
        base.WorkerProcess = ThreadWorker  # read by StrategyBase._queue_task, on this (the main) thread only
        try:
            return super()._queue_task(host, task, task_vars, play_context)
        finally:
            base.WorkerProcess = real
