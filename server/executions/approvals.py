"""Approval flows: four eyes, levels 1-3, expiry, and "what was approved is what runs".

Approval belongs to the task: every run a user requests of a task that a policy puts
under approval is created ``waiting_approval`` by ``request.request_execution``,
whoever asks (admins and authors included), and calls ``on_requested`` here: the
approvers of every level (from the policies that put the task under approval) and a
per-component digest of what will run are snapshotted into ``Execution.approval_plan``.
Levels are decided in order, one approval per level suffices, any rejection ends the
request, and nobody ever decides their own request (admins included); a request that
only its requester could approve is refused up front (``require_someone_else``). The
last approval queues the run.

A dry run (check mode, ``trigger == DRY_RUN_TRIGGER``) exists only as a copy of a
waiting request made by ``start_dry_run``; the runner gives it no password or API secret,
and it is never retried or relaunched into a live run.

The approval binds the execution's fingerprint (task definition, playbook content,
variables, targets, credential; computed in ``fingerprint.py``). It is compared with the
task as it is now when an approver approves, and again by the worker just before the run (``verify_before_run``);
a difference refuses the run with a reason naming what changed.

Schedules on a task under approval need one approval (``request_schedule_approval``);
their runs then carry the approved fingerprint and ``check_schedule_fire`` suspends the
schedule when the task no longer matches it.

Functions here never commit: the caller commits (API view, worker, scheduler loop).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from itertools import combinations
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from server.core import audit
from server.core.errors import Conflict, Forbidden, ValidationError
from server.core.models import (
    EXECUTION_FINAL,
    OPERATION_OPEN,
    Approval,
    Execution,
    ExecutionStatus,
    OperationStatus,
    Schedule,
    Task,
    User,
    utcnow,
)
from server.executions import jobs
from server.executions.fingerprint import current_snapshot, explain_change, parts, target_hosts
from server.people import access
from server.reporting import notify

log = logging.getLogger(__name__)

MAX_COMMENT = 2000
DECISIONS = ("approved", "rejected")
DRY_RUN_TRIGGER = "dry_run"


# ---------------------------------------------------------------- plans and notifications


def _plan(rules: access.RunRules, snap_parts: dict[str, str], **extra: Any) -> dict[str, Any]:
    levels = {str(level): list(ids) for level, ids in sorted(rules.approvers.items())} or {"1": []}
    return {"levels": levels, "parts": snap_parts, "policies": list(rules.policy_ids), **extra}


def plan_levels(plan: dict[str, Any] | None) -> list[int]:
    return sorted(int(level) for level in ((plan or {}).get("levels") or {"1": []}))


def level_approver_ids(plan: dict[str, Any] | None, level: int) -> list[int]:
    return list(((plan or {}).get("levels") or {}).get(str(level)) or [])


def _notify(session: Session, event: str, **kw: Any) -> None:
    """Tell the notification module without letting a broken channel break the decision."""
    try:
        notify.emit(session, event, **kw)
    except Exception:  # noqa: BLE001 - a broken channel must not block approvals
        log.exception("notification %s failed", event)


# ---------------------------------------------------------------- requesting


def _candidates(session: Session, levels: dict[int, list[int]], excluded: set[int]) -> dict[int, set[int]]:
    """Level -> active people other than ``excluded`` who could decide it (``_eligible``'s rule)."""
    named = {uid for ids in levels.values() for uid in ids}
    rows = session.execute(
        select(User.id, User.role).where(
            User.is_active.is_(True),
            or_(User.role.in_(("admin", "approver")), User.id.in_(named or {-1})),
        )
    ).all()
    people = [(uid, role) for uid, role in rows if uid not in excluded]
    return {
        level: {uid for uid, role in people
                if role == "admin" or (uid in listed if listed else role == "approver")}
        for level, listed in levels.items()
    }


def undecidable_levels(session: Session, levels: dict[int, list[int]], excluded: set[int]) -> list[int]:
    """The levels no one outside ``excluded`` could decide, one different person per level as
    ``may_decide`` demands ([] when the request can be decided). Hall's condition over at
    most three levels: every k levels need k distinct candidates between them."""
    levels = levels or {1: []}
    candidates = _candidates(session, levels, excluded)
    for k in range(1, len(levels) + 1):
        for combo in combinations(sorted(levels), k):
            if len(set().union(*(candidates[lv] for lv in combo))) < k:
                return list(combo)
    return []


def no_approver_message(task: Task, stuck: list[int], what: str = "this run") -> str:
    names = ", ".join(map(str, stuck))
    return (f"nobody but you could approve {what} of task '{task.name}': level{'s' if len(stuck) > 1 else ''} "
            f"{names} {'have' if len(stuck) > 1 else 'has'} no other active approver (each level needs a "
            "different person, never the requester); ask an admin to add an approver to the task's "
            "approval policy")


def require_someone_else(session: Session, task: Task, rules: access.RunRules, requester: User) -> None:
    """Refuse (422) a request that only its requester could approve: it would wait until it
    expires, since nobody decides his own request."""
    stuck = undecidable_levels(session, rules.approvers, {requester.id})
    if stuck:
        raise ValidationError(no_approver_message(task, stuck), code="no_approver", field="task")


def on_requested(session: Session, ex: Execution, rules: access.RunRules, *, dry_run: Any = False) -> None:
    """Called by ``request_execution`` for a run created ``waiting_approval``."""
    if not isinstance(dry_run, bool):
        raise ValidationError("'dry_run' must be true or false", field="dry_run")
    if dry_run and ex.task.kind != "playbook":
        raise ValidationError("a dry run is available for playbook tasks only", field="dry_run")
    hosts = target_hosts(ex.task, ex.limit_hosts)
    ex.approval_plan = _plan(rules, parts(ex.task, ex.content_hash or "", ex.vars or {}, hosts))
    ex.approval_level = plan_levels(ex.approval_plan)[0]
    session.flush()
    if dry_run:
        start_dry_run(session, ex, ex.requested_by)
    _notify(session, "approval.requested", execution=ex)


def dry_run_of(session: Session, ex: Execution) -> Execution | None:
    """The latest dry run (check mode) started for this approval request."""
    return session.execute(
        select(Execution)
        .where(Execution.parent_id == ex.id, Execution.check_mode.is_(True), Execution.trigger == DRY_RUN_TRIGGER)
        .order_by(Execution.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def start_dry_run(session: Session, ex: Execution, user: User | None) -> Execution:
    """Queue a check-mode (``--check --diff``) copy of a waiting request for the approvers to inspect."""
    if user is not None and user.id != ex.requested_by_id and not involves(ex, user):
        raise Forbidden("only the requester or an approver of this request may start its dry run")
    if ex.task.kind != "playbook":
        raise ValidationError("a dry run is available for playbook tasks only", field="dry_run")
    if ex.status != ExecutionStatus.WAITING_APPROVAL:
        raise Conflict(f"execution {ex.id} is {ex.status}, not waiting for approval")
    if ex.approval_plan is None or ex.check_mode or ex.trigger == DRY_RUN_TRIGGER:
        raise Conflict(f"execution {ex.id} is not an approval request")
    current = dry_run_of(session, ex)
    if current is not None and current.status not in EXECUTION_FINAL:
        return current
    now = utcnow()
    dry = Execution(
        task_id=ex.task_id,
        task=ex.task,
        status=ExecutionStatus.QUEUED,
        trigger=DRY_RUN_TRIGGER,
        requested_by_id=user.id if user else None,
        reason=f"dry run for the approval of execution {ex.id}",
        vars=ex.vars,
        limit_hosts=ex.limit_hosts,
        parent_id=ex.id,
        revision=ex.revision,
        content_hash=ex.content_hash,
        fingerprint=ex.fingerprint,
        check_mode=True,
        host_count=ex.host_count,
        created_at=now,
        queued_at=now,
    )
    session.add(dry)
    session.flush()
    audit.record(session, "execution.dry_run", actor=user.username if user else "system", target=dry,
                 task=ex.task.name, for_execution=ex.id)
    jobs.enqueue_after_commit(session, dry.id)
    return dry


# ---------------------------------------------------------------- deciding on executions


def _decided_by(session: Session, ex: Execution) -> list[Approval]:
    return list(
        session.execute(select(Approval).where(Approval.execution_id == ex.id).order_by(Approval.id)).scalars()
    )


def _eligible(user: User, plan: dict[str, Any] | None, level: int) -> bool:
    listed = level_approver_ids(plan, level)
    if user.role == "admin":
        return True  # admins may stand in for any level (still never for their own request)
    if listed:
        return user.id in listed
    return user.role == "approver"  # a level without named approvers: any approver


def may_decide(session: Session, ex: Execution, user: User, *, any_level: bool = False) -> str | None:
    """None if ``user`` may decide the request's current level now, else why not."""
    if ex.status != ExecutionStatus.WAITING_APPROVAL:
        return f"execution {ex.id} is {ex.status}, not waiting for approval"
    if not user.is_active:
        return "your account is disabled"
    if ex.requested_by_id == user.id:
        return "nobody may decide their own request"
    earlier = [a for a in _decided_by(session, ex) if a.approver_id == user.id]
    if earlier:
        return f"you already decided level {earlier[0].level} of this request; another person must decide the next level"
    levels = plan_levels(ex.approval_plan) if any_level else [ex.approval_level]
    if not any(_eligible(user, ex.approval_plan, level) for level in levels):
        return f"you are not an approver for level {ex.approval_level} of this request"
    return None


def _validate_comment(comment: Any) -> str | None:
    if comment is None:
        return None
    if not isinstance(comment, str):
        raise ValidationError("'comment' must be a string", field="comment")
    if len(comment) > MAX_COMMENT:
        raise ValidationError(f"'comment' is longer than {MAX_COMMENT} characters", field="comment")
    return comment.strip() or None


@dataclass
class Outcome:
    """The result of a decision. ``refused`` carries the reason when the request was closed
    instead (the task changed, or the request expired): the caller commits and reports it."""

    execution: Execution | None = None
    schedule: Schedule | None = None
    status: str = ""
    refused: str | None = None


def _cas(session: Session, ex: Execution, level: int, **values: Any) -> None:
    """Move a waiting request on only if nobody else did meanwhile (two approvers at once)."""
    res = session.execute(
        update(Execution)
        .where(Execution.id == ex.id, Execution.status == ExecutionStatus.WAITING_APPROVAL, Execution.approval_level == level)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        session.refresh(ex)
        raise Conflict(f"execution {ex.id} was decided by someone else meanwhile (now {ex.status})")
    session.refresh(ex)


def close(session: Session, ex: Execution, status: str, message: str, *, actor: str = "system", action: str) -> None:
    """End a waiting request (expired, rejected, refused)."""
    now = utcnow()
    _cas(session, ex, ex.approval_level, status=status, finished_at=now, message=message)
    audit.record(session, action, actor=actor, target=ex, task=ex.task.name, status=status, message=message)
    _notify(session, "approval.decided", execution=ex, decision=status, approver=actor, message=message)


def decide(session: Session, ex: Execution, user: User, decision: str, comment: Any = None) -> Outcome:
    """Approve or reject the current level of a waiting request."""
    if decision not in DECISIONS:
        raise ValidationError("decision must be 'approved' or 'rejected'", field="decision")
    comment = _validate_comment(comment)
    if expire_if_due(session, ex):
        return Outcome(ex, status=ex.status, refused=ex.message)
    why = may_decide(session, ex, user)
    if why is not None:
        if ex.status != ExecutionStatus.WAITING_APPROVAL:
            raise Conflict(why)
        raise Forbidden(why)
    level = ex.approval_level
    approval = Approval(execution_id=ex.id, level=level, approver_id=user.id, decision=decision,
                        comment=comment, fingerprint=ex.fingerprint)
    if decision == "rejected":
        _cas(session, ex, level, status=ExecutionStatus.REJECTED, finished_at=utcnow(),
             message=f"rejected by {user.username} at level {level}" + (f": {comment}" if comment else ""))
        session.add(approval)
        audit.record(session, "approval.reject", actor=user.username, target=ex, level=level, comment=comment,
                     task=ex.task.name)
        _notify(session, "approval.decided", execution=ex, decision="rejected", approver=user.username,
                comment=comment)
        return Outcome(ex, status=ex.status)

    snap = current_snapshot(session, ex.task, ex.vars, ex.limit_hosts, revision=ex.revision)
    if snap.error or snap.fingerprint != ex.fingerprint:
        reason = snap.error or (
            f"refused: {explain_change((ex.approval_plan or {}).get('parts'), snap.parts)} changed since the "
            "request was made; request the run again for a new approval"
        )
        close(session, ex, ExecutionStatus.FAILED, reason, actor=user.username, action="approval.invalidated")
        return Outcome(ex, status=ex.status, refused=reason)

    later = [lv for lv in plan_levels(ex.approval_plan) if lv > level]
    if later:
        _cas(session, ex, level, approval_level=later[0])
        session.add(approval)
        audit.record(session, "approval.approve", actor=user.username, target=ex, level=level, comment=comment,
                     next_level=later[0], task=ex.task.name, fingerprint=ex.fingerprint)
        _notify(session, "approval.requested", execution=ex, message=f"level {level} approved by {user.username}; "
                f"level {later[0]} to decide")
        return Outcome(ex, status=ex.status)
    now = utcnow()
    _cas(session, ex, level, status=ExecutionStatus.QUEUED, queued_at=now)
    session.add(approval)
    audit.record(session, "approval.approve", actor=user.username, target=ex, level=level, comment=comment,
                 final=True, task=ex.task.name, fingerprint=ex.fingerprint)
    session.flush()
    jobs.enqueue_after_commit(session, ex.id)
    _notify(session, "approval.decided", execution=ex, decision="approved", approver=user.username, comment=comment)
    return Outcome(ex, status=ex.status)


# ---------------------------------------------------------------- expiry


def expire_if_due(session: Session, ex: Execution, now: datetime | None = None) -> bool:
    """Lazily expire one request whose time ran out; True if it is (now) expired."""
    now = now or utcnow()
    if ex.status != ExecutionStatus.WAITING_APPROVAL or ex.approval_expires_at is None or ex.approval_expires_at > now:
        return ex.status == ExecutionStatus.EXPIRED
    try:
        close(session, ex, ExecutionStatus.EXPIRED,
              f"no decision before {ex.approval_expires_at.isoformat()}; request the run again",
              action="approval.expire")
    except Conflict:
        return ex.status == ExecutionStatus.EXPIRED  # someone else decided or expired it first
    return True


def expire_due(session: Session, now: datetime | None = None) -> int:
    """The periodic sweep (scheduler loop): expire every overdue request. The caller commits."""
    now = now or utcnow()
    due = session.execute(
        select(Execution).where(
            Execution.status == ExecutionStatus.WAITING_APPROVAL,
            Execution.approval_expires_at.is_not(None),
            Execution.approval_expires_at <= now,
        ).order_by(Execution.id)
    ).scalars().all()
    return sum(1 for ex in due if expire_if_due(session, ex, now))


# ---------------------------------------------------------------- just before the run


def _refuse_schedule_change(session: Session, schedule: Schedule, reason: str) -> None:
    if schedule.suspended_reason != reason:
        _suspend(session, schedule, reason)


def verify_before_run(session: Session, ex: Execution) -> str | None:
    """Called by the worker right after claiming ``ex``: None if it may run, else the reason.

    Only runs bound by an approval (an approved request, a dry run of one, a run of an
    approved schedule) are checked: what runs must be what was approved.
    """
    bound_by = None
    if ex.check_mode and ex.trigger == DRY_RUN_TRIGGER:
        bound_by = "request"
    elif ex.approval_plan is not None:
        approved = {a.level for a in _decided_by(session, ex) if a.decision == "approved" and a.fingerprint == ex.fingerprint}
        missing = [lv for lv in plan_levels(ex.approval_plan) if lv not in approved]
        if missing:
            return f"refused: execution {ex.id} lacks approval for level(s) {', '.join(map(str, missing))}"
        bound_by = "approval"
    schedule = session.get(Schedule, ex.schedule_id) if ex.schedule_id else None
    if schedule is not None and schedule.approval_status is not None:
        if schedule.approval_status != "approved":
            return f"refused: schedule {schedule.id} is {schedule.approval_status}, not approved"
        if ex.fingerprint != schedule.approved_fingerprint:
            return f"refused: this run does not match what was approved for schedule {schedule.id}"
        bound_by = "schedule"
    if bound_by is None:
        return None
    snap = current_snapshot(session, ex.task, ex.vars, ex.limit_hosts, revision=ex.revision)
    if snap.error:
        return f"refused: {snap.error}"
    if snap.fingerprint == ex.fingerprint:
        return None
    before = (schedule.approval_plan if bound_by == "schedule" and schedule else ex.approval_plan) or {}
    if bound_by == "request":
        parent = session.get(Execution, ex.parent_id) if ex.parent_id else None
        before = (parent.approval_plan if parent else None) or {}
    what = explain_change(before.get("parts"), snap.parts)
    reason = f"refused: {what} changed since it was approved; a new approval is needed"
    if bound_by == "schedule" and schedule is not None:
        _refuse_schedule_change(session, schedule, reason)
    return reason


def refuse(session: Session, ex: Execution, reason: str) -> None:
    """Mark a claimed execution failed because ``verify_before_run`` refused it."""
    now = utcnow()
    ex.status = ExecutionStatus.FAILED
    ex.message = reason
    ex.finished_at = now
    for op in ex.operations:
        if op.status in OPERATION_OPEN:
            op.status = OperationStatus.SKIPPED
            op.message = reason
    audit.record(session, "execution.refused", actor="system", target=ex, task=ex.task.name, reason=reason)


# ---------------------------------------------------------------- schedules


def schedule_requires_approval(session: Session, task: Task) -> bool:
    """Whether a schedule on ``task`` needs an approval: some policy puts the task under approval
    (schedules run without a requesting user, so any such policy applies)."""
    return access.task_approval_rules(session, task).requires_approval


def request_schedule_approval(session: Session, schedule: Schedule, user: User | None, *, strict: bool = True) -> bool:
    """Call after creating or changing a schedule (once flushed). True if it now waits for approval;
    until approved, ``check_schedule_fire`` keeps it from firing.

    A user's request that nobody else could approve is refused (422, ``strict``); a renewal
    by the system (the task changed) waits anyway and its audit row says it is stuck."""
    task = schedule.task or session.get(Task, schedule.task_id)
    rules = access.task_approval_rules(session, task)
    if not rules.requires_approval:
        if schedule.approval_status is not None:
            schedule.approval_status = None
            schedule.approved_fingerprint = None
            schedule.approval_plan = None
        return False
    snap = current_snapshot(session, task, schedule.vars, None)
    if snap.error:
        raise ValidationError(snap.error, field="task")
    stuck = undecidable_levels(session, rules.approvers,
                               {uid for uid in (user.id if user else None, schedule.created_by_id) if uid})
    if stuck and strict and user is not None:
        raise ValidationError(no_approver_message(task, stuck, "a schedule"),
                              code="no_approver", field="task")
    schedule.approval_status = "pending"
    schedule.approved_fingerprint = None
    schedule.approval_plan = _plan(
        rules, snap.parts, fingerprint=snap.fingerprint, level=plan_levels(_plan(rules, {}))[0],
        requested_by=user.id if user else None, requested_at=utcnow().isoformat(),
    )
    session.flush()
    audit.record(session, "schedule.approval_request", actor=user.username if user else "system", target=schedule,
                 task=task.name, **({"no_approver": stuck} if stuck else {}))
    _notify(session, "approval.requested", schedule=schedule,
            title=f"[Task Manager] schedule #{schedule.id} of {task.name} needs approval",
            message=f"cron {schedule.cron} ({schedule.timezone})")
    return True


def _suspend(session: Session, schedule: Schedule, reason: str) -> None:
    """Stop a schedule whose task no longer matches what was approved, and ask again."""
    schedule.suspended_reason = reason
    request_schedule_approval(session, schedule, None)
    audit.record(session, "schedule.suspend", actor="system", target=schedule, reason=reason)


def check_schedule_fire(session: Session, schedule: Schedule, ex: Execution | None = None) -> str | None:
    """Called by the scheduler for each due fire (before creating the run, or with it):
    None if the schedule may fire, else the reason (record the fire as suspended)."""
    task = schedule.task or session.get(Task, schedule.task_id)
    if not schedule_requires_approval(session, task):
        return None
    if schedule.approval_status is None:
        # A policy put the task under approval after the schedule was made.
        request_schedule_approval(session, schedule, None)
        return f"schedule {schedule.id} needs approval: task '{task.name}' now requires approval"
    if schedule.suspended_reason:
        return f"schedule {schedule.id} is suspended: {schedule.suspended_reason}"
    if schedule.approval_status != "approved":
        return f"schedule {schedule.id} is {schedule.approval_status} approval"
    snap = current_snapshot(session, task, schedule.vars, None)
    fingerprint = ex.fingerprint if ex is not None else snap.fingerprint
    if snap.error or fingerprint != schedule.approved_fingerprint:
        what = snap.error or explain_change((schedule.approval_plan or {}).get("parts"), snap.parts)
        reason = f"suspended: {what} changed since the schedule was approved; it needs a new approval"
        if snap.revision:
            reason += f" (it would run commit {snap.revision[:12]})"
        _suspend(session, schedule, reason)
        return reason
    return None


def _schedule_decisions(session: Session, schedule: Schedule) -> list[Approval]:
    return list(
        session.execute(select(Approval).where(Approval.schedule_id == schedule.id).order_by(Approval.id)).scalars()
    )


def may_decide_schedule(session: Session, schedule: Schedule, user: User) -> str | None:
    plan = schedule.approval_plan or {}
    if schedule.approval_status != "pending":
        return f"schedule {schedule.id} is not waiting for approval"
    if not user.is_active:
        return "your account is disabled"
    if user.id in (plan.get("requested_by"), schedule.created_by_id):
        return "nobody may decide their own request"
    if user.id in (plan.get("decided_by") or []):
        return "you already decided a level of this request; another person must decide the next level"
    level = int(plan.get("level") or 1)
    if not _eligible(user, plan, level):
        return f"you are not an approver for level {level} of this schedule"
    return None


def decide_schedule(session: Session, schedule: Schedule, user: User, decision: str, comment: Any = None) -> Outcome:
    if decision not in DECISIONS:
        raise ValidationError("decision must be 'approved' or 'rejected'", field="decision")
    comment = _validate_comment(comment)
    # Serialise deciders: a no-op UPDATE takes the row lock (PostgreSQL) / write lock (SQLite), then re-read.
    session.execute(
        update(Schedule).where(Schedule.id == schedule.id).values(id=Schedule.id)
        .execution_options(synchronize_session=False)
    )
    session.refresh(schedule)
    why = may_decide_schedule(session, schedule, user)
    if why is not None:
        raise (Conflict if schedule.approval_status != "pending" else Forbidden)(why)
    plan = dict(schedule.approval_plan or {})
    level = int(plan.get("level") or 1)
    approval = Approval(schedule_id=schedule.id, level=level, approver_id=user.id, decision=decision,
                        comment=comment, fingerprint=plan.get("fingerprint"))
    if decision == "rejected":
        session.add(approval)
        schedule.approval_status = "rejected"
        audit.record(session, "schedule.reject", actor=user.username, target=schedule, level=level, comment=comment)
        _notify(session, "approval.decided", schedule=schedule, decision="rejected", approver=user.username,
                comment=comment, title=f"[Task Manager] schedule #{schedule.id} was rejected")
        return Outcome(schedule=schedule, status="rejected")
    snap = current_snapshot(session, schedule.task, schedule.vars, None)
    if snap.error or snap.fingerprint != plan.get("fingerprint"):
        reason = snap.error or (
            f"refused: {explain_change(plan.get('parts'), snap.parts)} changed since the approval was requested; "
            "the request was renewed for the current definition"
        )
        if not snap.error:
            request_schedule_approval(session, schedule, session.get(User, plan.get("requested_by") or 0),
                                      strict=False)
        audit.record(session, "schedule.approval_invalidated", actor=user.username, target=schedule, reason=reason)
        return Outcome(schedule=schedule, status=schedule.approval_status or "", refused=reason)
    session.add(approval)
    plan["decided_by"] = [*(plan.get("decided_by") or []), user.id]
    schedule.approval_plan = plan
    later = [lv for lv in plan_levels(plan) if lv > level]
    if later:
        plan["level"] = later[0]
        schedule.approval_plan = dict(plan)
        audit.record(session, "schedule.approve", actor=user.username, target=schedule, level=level,
                     comment=comment, next_level=later[0])
        _notify(session, "approval.requested", schedule=schedule,
                title=f"[Task Manager] schedule #{schedule.id} needs approval (level {later[0]})")
        return Outcome(schedule=schedule, status="pending")
    schedule.approval_status = "approved"
    schedule.approved_fingerprint = plan.get("fingerprint")
    schedule.suspended_reason = None
    audit.record(session, "schedule.approve", actor=user.username, target=schedule, level=level, comment=comment,
                 final=True, fingerprint=schedule.approved_fingerprint)
    _notify(session, "approval.decided", schedule=schedule, decision="approved", approver=user.username,
            comment=comment, title=f"[Task Manager] schedule #{schedule.id} was approved")
    return Outcome(schedule=schedule, status="approved")


# ---------------------------------------------------------------- listing


def pending_executions(session: Session) -> list[Execution]:
    """Every waiting request, after expiring the overdue ones."""
    expire_due(session)
    return list(
        session.execute(
            select(Execution).where(Execution.status == ExecutionStatus.WAITING_APPROVAL).order_by(Execution.created_at, Execution.id)
        ).scalars()
    )


def involves(ex_or_schedule: Execution | Schedule, user: User) -> bool:
    """Whether ``user`` is named (or, for unnamed levels, eligible) on any level of the request."""
    plan = ex_or_schedule.approval_plan
    return any(_eligible(user, plan, level) for level in plan_levels(plan))


def decisions(session: Session, obj: Execution | Schedule) -> list[Approval]:
    return _decided_by(session, obj) if isinstance(obj, Execution) else _schedule_decisions(session, obj)

