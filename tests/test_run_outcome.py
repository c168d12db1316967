"""recorder.outcome: the one place an execution's status comes from its hosts' operations,
for a single run (Recorder.finish) and after retries of unreachable hosts (retries.py); and
the controller's operation (plays on the implicit localhost) beside them."""
from sqlalchemy import select

from server.core.models import Operation
from server.runs.recorder import CONTROLLER, MAX_MESSAGE, controller_name, outcome


def ops(*statuses: str) -> list[Operation]:
    return [Operation(status=s) for s in statuses]


def test_every_host_fine_is_a_success_with_the_exit_code():
    result = outcome(ops("succeeded", "skipped"), rc=0)
    assert (result.status, result.message, result.rc) == ("succeeded", None, 0)


def test_bad_hosts_are_counted_by_status_in_name_order():
    result = outcome(ops("unreachable", "failed", "succeeded", "failed", "cancelled"), rc=2)
    assert result.status == "failed" and result.rc == 2
    assert result.message == "1 cancelled, 2 failed, 1 unreachable of 5 hosts"


def test_after_retries_the_note_says_how_many_attempts():
    result = outcome(ops("succeeded", "unreachable"), note="after 3 attempts")
    assert (result.status, result.rc) == ("failed", None)
    assert result.message == "1 unreachable of 2 hosts (after 3 attempts)"


def test_ansible_stopping_early_explains_the_failed_hosts():
    result = outcome(ops("failed"), rc=4, exit_ok=False, error="ERROR! the playbook could not be parsed")
    assert result.message == "1 failed of 1 hosts: ERROR! the playbook could not be parsed"


def test_a_bad_exit_without_bad_hosts_fails_with_the_error_or_the_status():
    assert outcome(ops("succeeded"), rc=1, exit_ok=False, error="boom").message == "boom"
    assert outcome(ops("skipped"), rc=5, exit_ok=False).message == "ansible-playbook exited with status 5"
    long = outcome(ops(), rc=1, exit_ok=False, error="x" * (2 * MAX_MESSAGE)).message
    assert len(long) == MAX_MESSAGE and long.endswith("[... output truncated ...]\n")


def test_the_controllers_plays_count_but_not_as_a_host():
    controller = Operation(host_name=CONTROLLER, status="failed")
    result = outcome([*ops("succeeded", "succeeded"), controller], rc=2)
    assert (result.status, result.message) == ("failed", "the controller's tasks failed")
    result = outcome([*ops("failed", "succeeded"), controller, Operation(host_name=controller_name(1), status="failed")])
    assert result.message == "1 failed of 2 hosts; the controller's tasks failed"
    assert outcome([*ops("succeeded"), Operation(host_name=CONTROLLER, status="succeeded")]).status == "succeeded"


def _events(host: str, name: str, kind: str = "runner_on_ok", stdout: str = "") -> list[dict]:
    data = {"host": host, "task": name, "task_uuid": f"{host}-{name}"}
    return [{"event": "runner_on_start", "event_data": data},
            {"event": kind, "event_data": {**data, "res": {"stdout": stdout, "rc": 1 if "failed" in kind else 0}}}]


def test_a_real_host_called_localhost_is_not_the_controller(api, session):
    """Events of the inventory name ``localhost`` belong to a target of that name when the run has
    one; otherwise they are the implicit localhost's: the controller's operation, made once."""
    from resource_factories import host, task

    from server.core.models import Execution
    from server.runs.recorder import Recorder

    host(api, "localhost", address="192.0.2.7")
    host(api, "web1")
    made = task(api, "t", hosts=["localhost", "web1"])
    assert api.post(f"/api/v1/tasks/{made['id']}/executions", {})[0] == 202
    ex = session.execute(select(Execution)).scalar_one()
    ops = {name: Operation(host_name=name, status="pending") for name in ("localhost", "web1")}
    ex.operations.extend(ops.values())
    session.flush()
    real = Recorder(session, ex, dict(ops), {"localhost": "localhost", "web1": "web1"})
    for event in _events("localhost", "on the real one", stdout="real") + _events("web1", "w"):
        real.event_handler(event)
    assert [s.stdout for s in ops["localhost"].steps] == ["real"]
    assert [op.host_name for op in ex.operations] == ["localhost", "web1"]  # no controller
    # the run's inventory without that host: ``hosts: localhost`` runs on the controller
    alone = Recorder(session, ex, {"web1": ops["web1"]}, {"web1": "web1"})
    for event in (_events("localhost", "summary", stdout="ctl") + _events("127.0.0.1", "again", "runner_on_failed")
                  + [{"event": "playbook_on_stats", "event_data": {"failures": {"127.0.0.1": 1}}}]):
        alone.event_handler(event)
    result = alone.finish(None, 60)
    session.flush()  # what the worker commits
    session.expire_all()
    [ctl] = [op for op in session.get(Execution, ex.id).operations if op.host_name == CONTROLLER]
    assert ctl.host_id is None and [(s.name, s.stdout) for s in ctl.steps] == [("summary", "ctl"), ("again", "")]
    assert ctl.status == "failed" and ctl.stdout == "ctl"
    assert (result.status, result.message) == ("failed", "the controller's tasks failed")
    assert session.get(Execution, ex.id).hosts_done == 1  # the controller is no target host
