"""recorder.outcome: the one place an execution's status comes from its hosts' operations,
for a single run (Recorder.finish) and after retries of unreachable hosts (retries.py)."""
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
