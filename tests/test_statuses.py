"""The status vocabulary (server/core/models.py): the contract's values, the sets, and members
that behave as the plain strings the database, the API and the audit log hold."""
from __future__ import annotations

import json

from markupsafe import escape
from sqlalchemy import select

from server.core import models
from server.core.models import (
    EXECUTION_FAILED,
    EXECUTION_FINAL,
    EXECUTION_NOT_STARTED,
    EXECUTION_OPEN,
    EXECUTION_RELAUNCHABLE,
    EXECUTION_STATUSES,
    OPERATION_FAILED,
    OPERATION_FINAL,
    OPERATION_OK,
    OPERATION_OPEN,
    OPERATION_STATUSES,
    Execution,
    ExecutionStatus,
    OperationStatus,
    Task,
)


def test_values_are_the_contracts_in_its_order():
    assert EXECUTION_STATUSES == ("waiting_approval", "rejected", "expired", "queued", "running", "succeeded",
                                  "failed", "cancelled", "timed_out", "lost")
    assert OPERATION_STATUSES == ("pending", "running", "succeeded", "failed", "unreachable", "skipped", "cancelled")


def test_the_sets():
    assert EXECUTION_FINAL == {"rejected", "expired", "succeeded", "failed", "cancelled", "timed_out", "lost"}
    assert EXECUTION_FAILED == {"failed", "timed_out", "lost"} and EXECUTION_FAILED < EXECUTION_FINAL
    assert EXECUTION_RELAUNCHABLE == {"succeeded", "failed", "cancelled", "timed_out", "lost"}
    assert EXECUTION_NOT_STARTED == {"waiting_approval", "queued"}
    assert EXECUTION_OPEN == {"waiting_approval", "queued", "running"}
    assert EXECUTION_OPEN | EXECUTION_FINAL == set(ExecutionStatus) and not EXECUTION_OPEN & EXECUTION_FINAL
    assert OPERATION_FINAL == {"succeeded", "failed", "unreachable", "skipped", "cancelled"}
    assert OPERATION_FAILED == {"failed", "unreachable"} and OPERATION_OK == {"succeeded", "skipped"}
    assert OPERATION_OPEN | OPERATION_FINAL == set(OperationStatus) and not OPERATION_OPEN & OPERATION_FINAL
    assert not hasattr(models, "EXECUTION_ACTIVE")


def test_members_read_and_print_as_their_strings():
    s = ExecutionStatus.TIMED_OUT
    assert s == "timed_out" and "timed_out" in EXECUTION_FINAL and s in {"timed_out"}
    assert str(s) == f"{s}" == "timed_out" == str(escape(s))
    assert json.dumps({"status": s, "ops": [OperationStatus.SKIPPED]}) == '{"status": "timed_out", "ops": ["skipped"]}'
    assert ExecutionStatus("lost") is ExecutionStatus.LOST


def test_a_member_is_stored_and_read_back_as_the_plain_string(session):
    task = Task(name="status-vocabulary", kind="commands", commands=["true"])
    session.add(task)
    session.flush()
    ex = Execution(task_id=task.id, status=ExecutionStatus.WAITING_APPROVAL)
    session.add(ex)
    session.commit()
    raw = session.execute(select(Execution.status).where(Execution.id == ex.id)).scalar_one()
    assert raw == "waiting_approval" and type(raw) is str
    found = session.execute(
        select(Execution.id).where(Execution.status.in_(EXECUTION_NOT_STARTED), Execution.id == ex.id)
    ).scalar_one()
    assert found == ex.id
    default = Execution(task_id=task.id)
    session.add(default)
    session.commit()
    assert session.execute(select(Execution.status).where(Execution.id == default.id)).scalar_one() == "queued"
