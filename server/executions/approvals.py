"""Approval flows: four eyes, levels 1-3, expiry, and "what was approved is what runs".

Approval belongs to the task: every run a user requests of a task that a policy puts
under approval is created ``waiting_approval`` by ``request.request_execution``,
whoever asks (admins and authors included), and a schedule on such a task waits before
its first fire (``request_schedule_approval``). Both wait on an ``ApprovalRequest``
(models.py), stored and decided the same way: the approvers of every level (from the
policies that put the task under approval), the fingerprint and its parts, and the hosts
the run will touch are snapshotted when it is asked. Levels are decided in order, one
approval per level suffices, any rejection ends the request, and nobody ever decides
their own request (admins included); a request that only its requester could approve is
refused up front (``require_someone_else``). ``decide`` is the one path for both: what
differs is only what the last decision does to its subject (a run is queued or closed,
a schedule may fire or not).

A dry run (check mode, ``trigger == DRY_RUN_TRIGGER``) exists only as a copy of a
waiting request made by ``start_dry_run``; the runner gives it no password or API secret,
and it is never retried or relaunched into a live run.

The approval binds the fingerprint (task definition, playbook content, variables,
targets, credential; computed in ``fingerprint.py``). It is compared with the task as it
is now when an approver approves, by the worker just before the run
(``verify_before_run``), and for a schedule at each fire (``check_schedule_fire``, which
suspends the schedule and asks again); a difference refuses with a reason naming what
changed.

Functions here never commit: the caller commits (API view, worker, scheduler loop).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import combinations
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from server.core import audit, db
from server.core.errors import Conflict, Forbidden, ValidationError
from server.core.models import (
    EXECUTION_FINAL,
    OPERATION_OPEN,
    Approval,
    ApprovalRequest,
    ApprovalStatus,
    Execution,
    ExecutionStatus,
    OperationStatus,
    Schedule,
    Task,
    User,
    utcnow,
)
from server.executions import jobs
from server.executions.fingerprint import (
    current_snapshot,
    explain_change,
    launch_inputs,
    parts,
    project_files,
    target_hosts,
)
from server.people import access
from server.reporting import notify

log = logging.getLogger(__name__)

MAX_COMMENT = 2000
DECISIONS = ("approved", "rejected")
DRY_RUN_TRIGGER = "dry_run"

Subject = Execution | Schedule  # what an approval request is about


# ---------------------------------------------------------------- requests


def _open(rules: access.RunRules, snap_parts: dict[str, str], fingerprint: str | None, hosts: list[str],
          requester_id: int | None, **subject: Any) -> ApprovalRequest:
    """A new pending request with its snapshot of approvers, parts and hosts."""
    levels = {str(level): list(ids) for level, ids in sorted(rules.approvers.items())} or {"1": []}
    return ApprovalRequest(
        status=ApprovalStatus.PENDING, level=min(int(lv) for lv in levels), levels=levels, parts=snap_parts,
        policies=list(rules.policy_ids), hosts=hosts, fingerprint=fingerprint,
        requested_by_id=requester_id, created_at=utcnow(), **subject,
    )


def request_of(session: Session, subject: Subject) -> ApprovalRequest | None:
    """The run's request, or the schedule's current (latest) one."""
    if isinstance(subject, Execution):
        return subject.approval
    return session.execute(
        select(ApprovalRequest).where(ApprovalRequest.schedule_id == subject.id)
        .order_by(ApprovalRequest.id.desc()).limit(1)
    ).scalar_one_or_none()


def levels_of(req: ApprovalRequest | None) -> list[int]:
    return sorted(int(level) for level in ((req.levels if req else None) or {"1": []}))


def approver_ids(req: ApprovalRequest | None, level: int) -> list[int]:
    return list(((req.levels if req else None) or {}).get(str(level)) or [])


def level_rows(session: Session, req: ApprovalRequest) -> list[dict[str, Any]]:
    """Per level: who may decide it (names; [] = any approver) and its decision, if any."""
    named = {uid for lv in levels_of(req) for uid in approver_ids(req, lv)}
    names = dict(session.execute(select(User.id, User.username).where(User.id.in_(named))).all()) if named else {}
    return [
        {"level": lv, "approvers": [names[i] for i in approver_ids(req, lv) if i in names],
         "decision": next((a for a in reversed(req.decisions) if a.level == lv), None)}
        for lv in levels_of(req)
    ]


def _notify(session: Session, event: str, **kw: Any) -> None:
    """Tell the notification module without letting a broken channel break the decision."""
    try:
        notify.emit(session, event, **kw)
    except Exception:  # noqa: BLE001 - a broken channel must not block approvals
        log.exception("notification %s failed", event)


def _about(req: ApprovalRequest) -> dict[str, Any]:
    """The request's subject as the notification and audit calls name it."""
    return {"execution": req.execution} if req.execution is not None else {"schedule": req.schedule}


def _record(session: Session, req: ApprovalRequest, verb: str, actor: str, **detail: Any) -> None:
    """Audit a step of a request: ``approval.<verb>`` for runs, ``schedule.<verb>`` for schedules."""
    subject: Subject = req.execution if req.execution is not None else req.schedule  # type: ignore[assignment]
    prefix = "approval" if req.execution is not None else "schedule"
    audit.record(session, f"{prefix}.{verb}", actor=actor, target=subject, task=req.task.name, **detail)


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
    bound = parts(ex.task, ex.content_hash or "", ex.vars or {}, hosts, launch_inputs(ex), project_files(ex.task))
    ex.approval = _open(rules, bound, ex.fingerprint,
                        [h.name for h in hosts], ex.requested_by_id,
                        expires_at=ex.created_at + timedelta(seconds=rules.approval_ttl_s))
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
    if user is not None and user.id != ex.requested_by_id and not involves(session, ex, user):
        raise Forbidden("only the requester or an approver of this request may start its dry run")
    if ex.task.kind != "playbook":
        raise ValidationError("a dry run is available for playbook tasks only", field="dry_run")
    if ex.status != ExecutionStatus.WAITING_APPROVAL:
        raise Conflict(f"execution {ex.id} is {ex.status}, not waiting for approval")
    if ex.approval is None or ex.check_mode or ex.trigger == DRY_RUN_TRIGGER:
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
        # the launch options as requested (the approval binds them); secret values are not given to a preview
        tags=ex.tags, skip_tags=ex.skip_tags, ticket=ex.ticket, limit_pattern=ex.limit_pattern,
        secret_vars_enc=ex.secret_vars_enc,
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


# ---------------------------------------------------------------- deciding


def _eligible(user: User, req: ApprovalRequest | None, level: int) -> bool:
    listed = approver_ids(req, level)
    if user.role == "admin":
        return True  # admins may stand in for any level (still never for their own request)
    if listed:
        return user.id in listed
    return user.role == "approver"  # a level without named approvers: any approver


def _not_waiting(subject: Subject, req: ApprovalRequest | None) -> str | None:
    """Why the request can no longer be decided, or None while it waits."""
    if isinstance(subject, Execution):
        if subject.status != ExecutionStatus.WAITING_APPROVAL or req is None:
            return f"execution {subject.id} is {subject.status}, not waiting for approval"
    elif subject.approval_status != ApprovalStatus.PENDING or req is None:
        return f"schedule {subject.id} is not waiting for approval"
    if req.status != ApprovalStatus.PENDING:
        return f"this request is {req.status}, not waiting for approval"
    return None


def may_decide(session: Session, subject: Subject, user: User, *, any_level: bool = False) -> str | None:
    """None if ``user`` may decide the request's current level now (``any_level``: some level), else why not."""
    req = request_of(session, subject)
    why = _not_waiting(subject, req)
    if why is not None or req is None:
        return why
    if not user.is_active:
        return "your account is disabled"
    own = {req.requested_by_id, subject.created_by_id if isinstance(subject, Schedule) else None}
    if user.id in own:
        return "nobody may decide their own request"
    earlier = [a for a in req.decisions if a.approver_id == user.id]
    if earlier:
        return f"you already decided level {earlier[0].level} of this request; another person must decide the next level"
    levels = levels_of(req) if any_level else [req.level]
    if not any(_eligible(user, req, level) for level in levels):
        return f"you are not an approver for level {req.level} of this request"
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


def _claim(session: Session, req: ApprovalRequest, level: int, **values: Any) -> None:
    """Move a pending request on only if nobody else did meanwhile (two approvers at once):
    a conditional UPDATE, which also holds the row until the caller commits."""
    matched = db.rowcount(session.execute(
        update(ApprovalRequest)
        .where(ApprovalRequest.id == req.id, ApprovalRequest.status == ApprovalStatus.PENDING,
               ApprovalRequest.level == level)
        .values(level=level, **values)
        .execution_options(synchronize_session=False)
    ))
    session.refresh(req)
    if matched != 1:
        raise Conflict(f"this request was decided by someone else meanwhile (now {req.status}, level {req.level})")


def _close_run(session: Session, ex: Execution, **values: Any) -> None:
    """Move a waiting run on only if it still waits (it may have been cancelled meanwhile)."""
    matched = db.rowcount(session.execute(
        update(Execution)
        .where(Execution.id == ex.id, Execution.status == ExecutionStatus.WAITING_APPROVAL)
        .values(**values)
        .execution_options(synchronize_session=False)
    ))
    session.refresh(ex)
    if matched != 1:
        raise Conflict(f"execution {ex.id} was decided by someone else meanwhile (now {ex.status})")


def close(session: Session, ex: Execution, status: str, message: str, *, actor: str = "system", action: str) -> None:
    """End a waiting run's request (expired, refused)."""
    req = ex.approval
    if req is not None:
        closed = ApprovalStatus.EXPIRED if status == ExecutionStatus.EXPIRED else ApprovalStatus.REFUSED
        _claim(session, req, req.level, status=closed, closed_at=utcnow())
    _close_run(session, ex, status=status, finished_at=utcnow(), message=message)
    audit.record(session, action, actor=actor, target=ex, task=ex.task.name, status=status, message=message)
    _notify(session, "approval.decided", execution=ex, decision=status, approver=actor, message=message)


def _outcome(req: ApprovalRequest, refused: str | None = None) -> Outcome:
    if req.execution is not None:
        return Outcome(req.execution, status=req.execution.status, refused=refused)
    schedule = req.schedule
    return Outcome(schedule=schedule, status=(schedule.approval_status or "") if schedule else "", refused=refused)


def decide(session: Session, subject: Subject, user: User, decision: str, comment: Any = None) -> Outcome:
    """Approve or reject the current level of a waiting request (a run's or a schedule's)."""
    if decision not in DECISIONS:
        raise ValidationError("decision must be 'approved' or 'rejected'", field="decision")
    comment = _validate_comment(comment)
    if isinstance(subject, Execution) and expire_if_due(session, subject):
        return Outcome(subject, status=subject.status, refused=subject.message)
    req = request_of(session, subject)
    why = may_decide(session, subject, user)
    if why is not None or req is None:
        raise (Conflict if _not_waiting(subject, req) else Forbidden)(why or "not waiting for approval")
    level = req.level
    _claim(session, req, level)
    if decision == "rejected":
        return _reject(session, req, _record_decision(req, user, decision, comment), user)
    snap = current_snapshot(session, req.task, subject.vars, req.execution.limit_hosts if req.execution else None, subject,
                            revision=req.execution.revision if req.execution else None)
    if snap.error or snap.fingerprint != req.fingerprint:
        return _refuse_changed(session, req, user, snap.error, explain_change(req.parts, snap.parts))
    _record_decision(req, user, decision, comment)
    later = [lv for lv in levels_of(req) if lv > level]
    if later:
        req.level = later[0]
        _record(session, req, "approve", user.username, level=level, comment=comment, next_level=later[0],
                fingerprint=req.fingerprint)
        _notify(session, "approval.requested", **_about(req),
                message=f"level {level} approved by {user.username}; level {later[0]} to decide")
        return _outcome(req)
    req.status, req.closed_at = ApprovalStatus.APPROVED, utcnow()
    if req.execution is not None:
        _close_run(session, req.execution, status=ExecutionStatus.QUEUED, queued_at=utcnow())
        session.flush()
        jobs.enqueue_after_commit(session, req.execution.id)
    elif req.schedule is not None:
        req.schedule.approval_status = ApprovalStatus.APPROVED
        req.schedule.approved_fingerprint = req.fingerprint
        req.schedule.suspended_reason = None
    _record(session, req, "approve", user.username, level=level, comment=comment, final=True,
            fingerprint=req.fingerprint)
    _notify(session, "approval.decided", **_about(req), decision="approved", approver=user.username, comment=comment)
    return _outcome(req)


def _record_decision(req: ApprovalRequest, user: User, decision: str, comment: str | None) -> Approval:
    """Add the decision on the request's current level (the session adds it with the request)."""
    approval = Approval(execution_id=req.execution_id, schedule_id=req.schedule_id, level=req.level,
                        approver_id=user.id, approver=user, decision=decision, comment=comment,
                        fingerprint=req.fingerprint)
    req.decisions.append(approval)
    return approval


def _reject(session: Session, req: ApprovalRequest, approval: Approval, user: User) -> Outcome:
    """Any rejection ends the request: the run is closed, the schedule does not fire."""
    level, comment = approval.level, approval.comment
    req.status, req.closed_at = ApprovalStatus.REJECTED, utcnow()
    if req.execution is not None:
        _close_run(session, req.execution, status=ExecutionStatus.REJECTED, finished_at=utcnow(),
                   message=f"rejected by {user.username} at level {level}" + (f": {comment}" if comment else ""))
    elif req.schedule is not None:
        req.schedule.approval_status = ApprovalStatus.REJECTED
    _record(session, req, "reject", user.username, level=level, comment=comment)
    _notify(session, "approval.decided", **_about(req), decision="rejected", approver=user.username, comment=comment)
    return _outcome(req)


def _refuse_changed(session: Session, req: ApprovalRequest, user: User, error: str | None, what: str) -> Outcome:
    """The task no longer matches the request (``what`` changed) or cannot run (``error``):
    a run is refused (request it again), a schedule's request is renewed for the task as it is now."""
    if req.execution is not None:
        reason = error or f"refused: {what} changed since the request was made; request the run again for a new approval"
        close(session, req.execution, ExecutionStatus.FAILED, reason, actor=user.username,
              action="approval.invalidated")
        return _outcome(req, reason)
    reason = error or (f"refused: {what} changed since the approval was requested; "
                       "the request was renewed for the current definition")
    if req.schedule is not None and not error:
        request_schedule_approval(session, req.schedule, req.requested_by, strict=False)
    _record(session, req, "approval_invalidated", user.username, reason=reason)
    return _outcome(req, reason)


# ---------------------------------------------------------------- expiry


def expire_if_due(session: Session, ex: Execution, now: datetime | None = None) -> bool:
    """Lazily expire one request whose time ran out; True if it is (now) expired."""
    now = now or utcnow()
    expires_at = ex.approval_expires_at
    if ex.status != ExecutionStatus.WAITING_APPROVAL or expires_at is None or expires_at > now:
        return ex.status == ExecutionStatus.EXPIRED
    try:
        close(session, ex, ExecutionStatus.EXPIRED,
              f"no decision before {expires_at.isoformat()}; request the run again",
              action="approval.expire")
    except Conflict:
        return ex.status == ExecutionStatus.EXPIRED  # someone else decided or expired it first
    return True


def expire_due(session: Session, now: datetime | None = None) -> int:
    """The periodic sweep (scheduler loop): expire every overdue request. The caller commits."""
    now = now or utcnow()
    due = session.execute(
        select(Execution).join(ApprovalRequest, ApprovalRequest.execution_id == Execution.id).where(
            Execution.status == ExecutionStatus.WAITING_APPROVAL,
            ApprovalRequest.status == ApprovalStatus.PENDING,
            ApprovalRequest.expires_at.is_not(None),
            ApprovalRequest.expires_at <= now,
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
    bound: ApprovalRequest | None = None
    bound_by = None
    if ex.check_mode and ex.trigger == DRY_RUN_TRIGGER:
        parent = session.get(Execution, ex.parent_id) if ex.parent_id else None
        bound, bound_by = (parent.approval if parent else None), "request"
    elif ex.approval is not None:
        approved = {a.level for a in ex.approval.decisions
                    if a.decision == "approved" and a.fingerprint == ex.fingerprint}
        missing = [lv for lv in levels_of(ex.approval) if lv not in approved]
        if missing:
            return f"refused: execution {ex.id} lacks approval for level(s) {', '.join(map(str, missing))}"
        bound, bound_by = ex.approval, "approval"
    schedule = session.get(Schedule, ex.schedule_id) if ex.schedule_id else None
    if schedule is not None and schedule.approval_status is not None:
        if schedule.approval_status != ApprovalStatus.APPROVED:
            return f"refused: schedule {schedule.id} is {schedule.approval_status}, not approved"
        if ex.fingerprint != schedule.approved_fingerprint:
            return f"refused: this run does not match what was approved for schedule {schedule.id}"
        bound, bound_by = request_of(session, schedule), "schedule"
    if bound_by is None:
        return None
    snap = current_snapshot(session, ex.task, ex.vars, ex.limit_hosts, ex, revision=ex.revision)
    if snap.error:
        return f"refused: {snap.error}"
    if snap.fingerprint == ex.fingerprint:
        return None
    what = explain_change(bound.parts if bound else None, snap.parts)
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


def _retire(req: ApprovalRequest | None, status: ApprovalStatus) -> None:
    """Close a schedule's pending request that a new one replaces (or that is no longer needed)."""
    if req is not None and req.status == ApprovalStatus.PENDING:
        req.status, req.closed_at = status, utcnow()


def request_schedule_approval(session: Session, schedule: Schedule, user: User | None, *, strict: bool = True) -> bool:
    """Call after creating or changing a schedule (once flushed). True if it now waits for approval;
    until approved, ``check_schedule_fire`` keeps it from firing.

    A user's request that nobody else could approve is refused (422, ``strict``); a renewal
    by the system (the task changed) waits anyway and its audit row says it is stuck."""
    task = schedule.task or session.get_one(Task, schedule.task_id)
    rules = access.task_approval_rules(session, task)
    current = request_of(session, schedule)
    if not rules.requires_approval:
        if schedule.approval_status is not None:
            schedule.approval_status = None
            schedule.approved_fingerprint = None
            _retire(current, ApprovalStatus.CANCELLED)
        return False
    snap = current_snapshot(session, task, schedule.vars, None, schedule)
    if snap.error:
        raise ValidationError(snap.error, field="task")
    stuck = undecidable_levels(session, rules.approvers,
                               {uid for uid in (user.id if user else None, schedule.created_by_id) if uid})
    if stuck and strict and user is not None:
        raise ValidationError(no_approver_message(task, stuck, "a schedule"),
                              code="no_approver", field="task")
    _retire(current, ApprovalStatus.RENEWED)
    schedule.approval_status = ApprovalStatus.PENDING
    schedule.approved_fingerprint = None
    session.add(_open(rules, snap.parts, snap.fingerprint, [h.name for h in target_hosts(task)],
                      user.id if user else None,
                      schedule=schedule, schedule_id=schedule.id))
    session.flush()
    detail: dict[str, Any] = {"no_approver": stuck} if stuck else {}
    audit.record(session, "schedule.approval_request", actor=user.username if user else "system", target=schedule,
                 task=task.name, **detail)
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
    task = schedule.task or session.get_one(Task, schedule.task_id)
    if not schedule_requires_approval(session, task):
        return None
    if schedule.approval_status is None:
        # A policy put the task under approval after the schedule was made.
        request_schedule_approval(session, schedule, None)
        return f"schedule {schedule.id} needs approval: task '{task.name}' now requires approval"
    if schedule.suspended_reason:
        return f"schedule {schedule.id} is suspended: {schedule.suspended_reason}"
    if schedule.approval_status != ApprovalStatus.APPROVED:
        return f"schedule {schedule.id} is {schedule.approval_status} approval"
    snap = current_snapshot(session, task, schedule.vars, None, schedule)
    fingerprint = ex.fingerprint if ex is not None else snap.fingerprint
    if snap.error or fingerprint != schedule.approved_fingerprint:
        req = request_of(session, schedule)
        what = snap.error or explain_change(req.parts if req else None, snap.parts)
        reason = f"suspended: {what} changed since the schedule was approved; it needs a new approval"
        if snap.revision:
            reason += f" (it would run commit {snap.revision[:12]})"
        _suspend(session, schedule, reason)
        return reason
    return None


# ---------------------------------------------------------------- listing


def pending_requests(session: Session) -> list[ApprovalRequest]:
    """Every request still waiting (runs and schedules), oldest first, after expiring the overdue ones."""
    expire_due(session)
    return [
        req for req in session.execute(
            select(ApprovalRequest).where(ApprovalRequest.status == ApprovalStatus.PENDING)
            .order_by(ApprovalRequest.created_at, ApprovalRequest.id)
        ).scalars()
        if _not_waiting(req.execution or req.schedule, req) is None  # type: ignore[arg-type]
    ]


def pending_executions(session: Session) -> list[Execution]:
    """Every waiting run request."""
    return [req.execution for req in pending_requests(session) if req.execution is not None]


def involves(session: Session, subject: Subject | ApprovalRequest, user: User) -> bool:
    """Whether ``user`` is named (or, for unnamed levels, eligible) on any level of the request."""
    req = subject if isinstance(subject, ApprovalRequest) else request_of(session, subject)
    return req is not None and any(_eligible(user, req, level) for level in levels_of(req))


def decisions(session: Session, subject: Subject) -> list[Approval]:
    req = request_of(session, subject)
    return list(req.decisions) if req is not None else []


def waiting_for(session: Session, user: User) -> list[ApprovalRequest]:
    """The requests ``user`` may decide now (the navigation's badge). Read-only: overdue
    requests are left out rather than expired (pages must not write)."""
    now = utcnow()
    pending = session.execute(
        select(ApprovalRequest).where(
            ApprovalRequest.status == ApprovalStatus.PENDING,
            or_(ApprovalRequest.expires_at.is_(None), ApprovalRequest.expires_at > now),
        ).order_by(ApprovalRequest.id)
    ).scalars()
    return [req for req in pending
            if may_decide(session, req.execution or req.schedule, user) is None]  # type: ignore[arg-type]
