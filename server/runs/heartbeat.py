"""A running execution's heartbeat: the reaper declares a run lost when it stops.

One beat per ``HEARTBEAT_S`` from a thread of its own (the run itself blocks on Ansible),
each in its own short transaction. A slice of a big execution (slicing.py) beats for the
execution and for its own row, so the reaper can also tell which slice's worker died.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any

from sqlalchemy import update

from server.core import db
from server.core.models import Execution, ExecutionSlice, ExecutionStatus, utcnow

log = logging.getLogger(__name__)

HEARTBEAT_S = float(os.environ.get("TASKMANAGER_HEARTBEAT_S", "10"))


class Heartbeat:
    """Refreshes ``heartbeat_at`` of the execution (and of slice ``slice_index``) while the run lasts."""

    def __init__(self, execution_id: int, slice_index: int | None = None, interval: float = HEARTBEAT_S) -> None:
        self.execution_id = execution_id
        self.slice_index = slice_index
        self.interval = interval
        self._stop = threading.Event()
        name = f"heartbeat-{execution_id}" + ("" if slice_index is None else f"-{slice_index}")
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def beat(self) -> None:
        now = utcnow()
        with db.engine().begin() as conn:
            conn.execute(update(Execution)
                         .where(Execution.id == self.execution_id, Execution.status == ExecutionStatus.RUNNING)
                         .values(heartbeat_at=now))
            if self.slice_index is not None:
                conn.execute(update(ExecutionSlice)
                             .where(ExecutionSlice.execution_id == self.execution_id,
                                    ExecutionSlice.index == self.slice_index)
                             .values(heartbeat_at=now))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - the next beat tries again
                log.warning("execution %s (slice %s): heartbeat failed", self.execution_id, self.slice_index,
                            exc_info=True)
