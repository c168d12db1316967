"""Starting executions: validate the request, fix its revision and fingerprint, enqueue.

Every trigger (API, web, scheduler, relaunch) goes through ``request_execution`` (or its
batch form ``request_executions``, same code) so that access rules, approvals and auditing
apply the same way to all of them. The one exception is the dry run of an approval
request, made only by ``approvals.start_dry_run``; this path refuses that trigger.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from server.catalog import launch
from server.core import audit, db, validation
from server.core.vault import vault
from server.core.errors import ApiError, Conflict, ValidationError
from server.core.models import (
    EXECUTION_FINAL,
    EXECUTION_NOT_STARTED,
    OPERATION_FINAL,
    ApprovalRequest,
    ApprovalStatus,
    Execution,
    ExecutionStatus,
    Operation,
    OperationStatus,
    Task,
    User,
    utcnow,
)
from server.executions import approvals, jobs
from server.executions.fingerprint import fingerprint, launch_inputs, project_files, revision_of, target_hosts
from server.people import access

MAX_REASON = 2000
MAX_TICKET = 200


def validate_run_input(run_vars: Any, reason: Any) -> tuple[dict[str, Any], str | None]:
    try:  # the one rule for every variable (reserved names, JSON values, size, depth)
        run_vars = validation.variables(run_vars)
    except validation.Invalid as exc:
        raise ValidationError(f"'vars' {exc}", field="vars") from None
    if reason is not None and not isinstance(reason, str):
        raise ValidationError("'reason' must be a string", field="reason")
    if reason is not None and len(reason) > MAX_REASON:
        raise ValidationError(f"'reason' is longer than {MAX_REASON} characters", field="reason")
    return run_vars, (reason.strip() or None) if reason else None


@dataclass
class RunRequest:
    """One run to request: the arguments of ``request_execution`` (``request_executions`` takes many)."""

    task: Task
    user: User | None = None
    run_vars: Any = None
    reason: Any = None
    trigger: str = "manual"
    schedule_id: int | None = None
    scheduled_for: datetime | None = None
    limit_hosts: list[str] | None = None
    parent_id: int | None = None
    dry_run: Any = False
    ticket: Any = None
    limit: Any = None  # an Ansible pattern or list of terms, within the task's targets
    tags: Any = None
    skip_tags: Any = None
    secret_enc: bytes | None = None  # stored secret values (a schedule's), vault-encrypted


def _check_ticket(rules: access.RunRules, ticket: Any) -> str | None:
    if ticket is not None and not isinstance(ticket, str):
        raise ValidationError("'ticket' must be a string", field="ticket")
    ticket = (ticket or "").strip() or None
    if ticket and (len(ticket) > MAX_TICKET or any(ord(c) < 32 for c in ticket)):
        raise ValidationError(f"'ticket' must be one line of at most {MAX_TICKET} characters", field="ticket")
    if rules.requires_ticket and not ticket:
        raise ValidationError("a ticket (change or incident reference) is required to run this task", field="ticket")
    for pattern in rules.ticket_patterns:
        if ticket and not re.fullmatch(pattern, ticket):
            raise ValidationError(f"'ticket' must match {pattern}", field="ticket")
    return ticket


def _check_reason(rules: access.RunRules, reason: str | None) -> None:
    if rules.requires_reason and not reason:
        raise ValidationError("a reason is required to run this task", field="reason")
    if reason and rules.reasons is not None and reason not in rules.reasons:
        raise ValidationError(f"'reason' must be one of: {'; '.join(rules.reasons)}", field="reason")


def _check_tags(task: Task, key: str, value: Any) -> list[str] | None:
    if value is None or value == []:
        return None
    try:
        tags = launch.tag_list(value)
    except validation.Invalid as exc:
        raise ValidationError(f"'{key}' {exc}", field=key) from None
    if task.kind != "playbook":
        raise ValidationError(f"'{key}' applies to playbook tasks only", field=key)
    bad = [t for t in tags if t not in (task.allowed_tags or [])]
    if bad:
        raise ValidationError(f"'{key}': tag {bad[0]!r} is not allowed for this task (allowed: "
                              f"{', '.join(task.allowed_tags or []) or 'none'})", field=key)
    return tags


def select_targets(task: Task, limit: Any) -> list:
    """The hosts a run with ``limit`` (pattern or list of terms) would touch; 422 naming 'limit'."""
    hosts = target_hosts(task)
    if limit is None:
        return hosts
    try:
        return launch.select_hosts(hosts, launch.limit_terms(limit))
    except validation.Invalid as exc:
        raise ValidationError(f"'limit' {exc}", field="limit") from None


# What a request can be refused with before anything is written: the batch form records
# these per request instead of raising (e.g. a task without hosts, an unreadable playbook).
REFUSALS = (ApiError, OSError, ValueError)


@dataclass
class _Prepared:
    req: RunRequest
    ex: Execution
    rules: access.RunRules
    actor: str
    host_count: int


def _rules_for(session: Session, user: User | None, task: Task) -> access.RunRules:
    """A user's request follows the task's approval policies whoever he is. Requests without a
    user come from the system: a schedule fire (approved as a schedule, ``approvals.
    check_schedule_fire``) or the automatic retry of a lost run that was already authorised."""
    return access.request_rules(session, user, task) if user is not None else access.RunRules()


def _prepare(session: Session, req: RunRequest, revisions: dict[int, tuple[str | None, str, str | None]]) -> _Prepared:
    """Validate one request and build its Execution (not added to the session yet)."""
    run_vars, reason = validate_run_input(req.run_vars, req.reason)
    task, user, trigger = req.task, req.user, req.trigger
    if trigger == approvals.DRY_RUN_TRIGGER:
        raise ValidationError("a dry run is started only for an approval request (approvals.start_dry_run)",
                              field="trigger")
    stored = json.loads(vault().decrypt(req.secret_enc) or "{}") if req.secret_enc else {}
    public, hidden = launch.check_values(task.variables, run_vars, stored)
    rules = _rules_for(session, user, task)
    _check_reason(rules, reason)
    ticket = _check_ticket(rules, req.ticket)
    tags, skip_tags = _check_tags(task, "tags", req.tags), _check_tags(task, "skip_tags", req.skip_tags)
    if not isinstance(req.dry_run, bool):
        raise ValidationError("'dry_run' must be true or false", field="dry_run")
    if rules.requires_approval and user is not None:  # without a user the rules never require it (_rules_for)
        approvals.require_someone_else(session, task, rules, user)
    limit_hosts = req.limit_hosts
    if req.limit is not None:
        limit_hosts = [h.name for h in select_targets(task, req.limit)]
    hosts = target_hosts(task, limit_hosts)
    if not hosts:
        raise ValidationError("the task has no target hosts", field="hosts")
    if task.id not in revisions:  # one git/content read per task per batch
        revisions[task.id] = (*revision_of(task), project_files(task))
    revision, chash, files = revisions[task.id]
    now = utcnow()
    ex = Execution(
        task_id=task.id,
        task=task,
        trigger=trigger,
        requested_by_id=user.id if user else None,
        reason=reason,
        ticket=ticket,
        vars=launch.masked(public, hidden),
        # the stored ciphertext when the values are the stored ones: a schedule's approval binds its digest
        secret_vars_enc=(req.secret_enc if hidden == stored else vault().encrypt(json.dumps(hidden))) if hidden else None,
        tags=tags,
        skip_tags=skip_tags,
        limit_pattern=_pattern_text(req.limit),
        limit_hosts=limit_hosts,
        parent_id=req.parent_id,
        schedule_id=req.schedule_id,
        scheduled_for=req.scheduled_for,
        revision=revision or chash[:12],
        content_hash=chash,
        check_mode=req.dry_run and not rules.requires_approval,  # approvers get a preview copy instead
        host_count=len(hosts),
        created_at=now,
    )
    ex.fingerprint = fingerprint(task, chash, ex.vars, hosts, launch_inputs(ex), files)
    if rules.requires_approval:
        ex.status = ExecutionStatus.WAITING_APPROVAL  # approvals.on_requested opens its request
    else:
        ex.status = ExecutionStatus.QUEUED
        ex.queued_at = now
    return _Prepared(req, ex, rules, user.username if user else "scheduler", len(hosts))


def _pattern_text(limit: Any) -> str | None:
    if limit is None:
        return None
    return (",".join(limit) if isinstance(limit, list) else str(limit))[:1000]


def _create(session: Session, prepared: list[_Prepared], enqueue: bool) -> None:
    """Write prepared executions: one flush for all rows, then their audit rows in one go."""
    if not prepared:
        return
    session.add_all([p.ex for p in prepared])
    session.flush()  # one multi-row INSERT ... RETURNING for the batch
    audit.record_many(session, [
        ("execution.request", {
            "actor": p.actor, "target": p.ex, "task": p.req.task.name, "trigger": p.req.trigger,
            "status": p.ex.status, "reason": p.ex.reason, "hosts": p.host_count,
            **_launch_audit(p.ex),
        })
        for p in prepared
    ])
    for p in prepared:
        if p.ex.status == ExecutionStatus.WAITING_APPROVAL:
            approvals.on_requested(session, p.ex, p.rules, dry_run=p.req.dry_run)
        if p.ex.status == ExecutionStatus.QUEUED and enqueue:
            jobs.enqueue_after_commit(session, p.ex.id)


def _launch_audit(ex: Execution) -> dict[str, Any]:
    """The launch values and options for the audit row (secrets are already masked)."""
    extra = {"ticket": ex.ticket, "vars": ex.vars or None, "limit": ex.limit_pattern, "tags": ex.tags,
             "skip_tags": ex.skip_tags, "dry_run": ex.check_mode or None}
    return {k: v for k, v in extra.items() if v}


def request_execution(
    session: Session,
    task: Task,
    user: User | None,
    *,
    run_vars: Any = None,
    reason: Any = None,
    trigger: str = "manual",
    schedule_id: int | None = None,
    scheduled_for: datetime | None = None,
    limit_hosts: list[str] | None = None,
    parent_id: int | None = None,
    enqueue: bool = True,
    dry_run: Any = False,
    **options: Any,
) -> Execution:
    """Create an execution (queued, or waiting for approval) and enqueue it after commit.

    ``options`` are the other launch fields of ``RunRequest`` (ticket, limit, tags, skip_tags,
    secret_enc). The caller commits; ``jobs.enqueue_after_commit`` pushes the id to Redis only once the
    row is durable, so a worker never sees an id the database does not have.
    """
    req = RunRequest(task, user, run_vars=run_vars, reason=reason, trigger=trigger, schedule_id=schedule_id,
                     scheduled_for=scheduled_for, limit_hosts=limit_hosts, parent_id=parent_id, dry_run=dry_run,
                     **options)
    prepared = _prepare(session, req, {})
    _create(session, [prepared], enqueue)
    return prepared.ex


def request_executions(session: Session, requests: list[RunRequest], *,
                       enqueue: bool = True) -> list[Execution | Exception]:
    """``request_execution`` for many runs at once (the scheduler's bursts), in the caller's
    transaction: all rows in one flush, all audit rows in one more.

    Returns, in order, each request's Execution or the refusal (one of ``REFUSALS``) that
    stopped it before anything was written; the others go ahead. An error once the rows
    are being written (a constraint, a lost connection) is raised and concerns the batch.
    """
    revisions: dict[int, tuple[str | None, str, str | None]] = {}
    results: list[Execution | Exception] = []
    prepared: list[_Prepared] = []
    for req in requests:
        try:
            p = _prepare(session, req, revisions)
        except REFUSALS as exc:
            results.append(exc)
        else:
            prepared.append(p)
            results.append(p.ex)
    _create(session, prepared, enqueue)
    return results


def cancel_execution(session: Session, ex: Execution, user: User | None) -> Execution:
    """Cancel a run. Not started yet (queued / waiting for approval): cancelled at once, with
    its operations. Running: ``cancel_requested`` is set and the worker stops it. Finished: 409.

    The not-started case is a conditional UPDATE so it cannot race a worker claiming the run.
    """
    actor = user.username if user else None
    previous = ex.status
    if previous in EXECUTION_FINAL:
        raise Conflict(f"execution #{ex.id} is already {previous}", field="status")
    now = utcnow()
    done = db.rowcount(session.execute(
        update(Execution)
        .where(Execution.id == ex.id, Execution.status.in_(EXECUTION_NOT_STARTED))
        .values(status=ExecutionStatus.CANCELLED, finished_at=now, cancel_requested=True, secret_vars_enc=None,
                message=f"cancelled by {actor or 'system'} before it started")
        .execution_options(synchronize_session=False)
    ))
    if done:
        session.execute(
            update(Operation)
            .where(Operation.execution_id == ex.id, Operation.status.not_in(OPERATION_FINAL))
            .values(status=OperationStatus.CANCELLED, finished_at=now)
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(ApprovalRequest)
            .where(ApprovalRequest.execution_id == ex.id, ApprovalRequest.status == ApprovalStatus.PENDING)
            .values(status=ApprovalStatus.CANCELLED, closed_at=now)
            .execution_options(synchronize_session=False)
        )
    else:
        session.refresh(ex)
        previous = ex.status
        if previous in EXECUTION_FINAL:
            raise Conflict(f"execution #{ex.id} is already {previous}", field="status")
        if ex.cancel_requested:
            return ex  # asked before; the worker is on it
        ex.cancel_requested = True
        session.flush()
    if done and ex.approval is not None:
        session.expire(ex.approval)
    session.expire(ex)
    audit.record(session, "execution.cancel", actor=actor, target=ex, task=ex.task.name, previous=previous,
                 immediate=bool(done))
    return ex
