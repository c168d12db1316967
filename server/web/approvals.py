"""Approval pages: "My approvals" (the inbox), "My requests", and one request's page with
its levels, the dry-run result per host, and the approve / reject form."""
from __future__ import annotations

from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from server.people import access
from server.executions import approvals
from server.core import db
from server.core.errors import ApiError
from server.core.models import Approval, ApprovalRequest, ApprovalStatus, Execution, ExecutionStatus, Schedule, User
from server.guards import visible_or_404
from server.web import web_bp

RECENT = 50


def _me() -> User:
    return current_user._get_current_object()


@web_bp.app_context_processor
def approvals_context() -> dict[str, Any]:
    """For every page: how many requests wait for the signed-in user's decision (the
    navigation's badge), and a request's levels for the execution page."""
    if not current_user.is_authenticated:
        return {}
    return {"approvals_waiting": len(approvals.waiting_for(db.session(), _me())),
            "approval_rows": lambda req: approvals.level_rows(db.session(), req)}


@web_bp.get("/approvals")
@login_required
def approvals_inbox():
    """Requests waiting for me (or for a later level I am on), and what I decided lately."""
    s = db.session()
    user = _me()
    if approvals.expire_due(s):
        s.commit()
    waiting = [req for req in approvals.pending_requests(s) if approvals.involves(s, req, user)]
    items = [{"ex": req.execution, "why_not": approvals.may_decide(s, req.execution, user)}
             for req in waiting if req.execution is not None]
    schedules = [{"sch": req.schedule, "req": req, "why_not": approvals.may_decide(s, req.schedule, user)}
                 for req in waiting if req.schedule is not None]
    decided = s.execute(
        select(Approval).where(Approval.approver_id == user.id).order_by(Approval.id.desc()).limit(RECENT)
    ).scalars().all()
    return render_template("approvals/inbox.html", items=items, schedules=schedules, decided=decided)


@web_bp.get("/requests")
@login_required
def my_requests():
    """My runs that needed approval, newest first, with where each one stands."""
    s = db.session()
    user = _me()
    if approvals.expire_due(s):
        s.commit()
    rows = s.execute(
        select(Execution)
        .join(ApprovalRequest, ApprovalRequest.execution_id == Execution.id)
        .where(Execution.requested_by_id == user.id, Execution.trigger != approvals.DRY_RUN_TRIGGER)
        .order_by(Execution.created_at.desc(), Execution.id.desc())
        .limit(200)
    ).scalars().all()
    return render_template("approvals/requests.html", rows=rows)


def _execution_for(execution_id: int) -> Execution:
    """An execution that needed approval, if the user may see it or is one of its approvers."""
    user = _me()
    return visible_or_404(Execution, execution_id, "execution", lambda ex: ex.approval is not None and (
        access.can_view_execution(db.session(), user, ex) or approvals.involves(db.session(), ex, user)))


@web_bp.get("/approvals/<int:execution_id>")
@login_required
def approval_detail(execution_id: int):
    s = db.session()
    ex = _execution_for(execution_id)
    if approvals.expire_if_due(s, ex):
        s.commit()
    user = _me()
    return render_template(
        "approvals/detail.html",
        ex=ex,
        req=ex.approval,
        levels=approvals.level_rows(s, ex.approval),
        why_not=approvals.may_decide(s, ex, user),
        dry=approvals.dry_run_of(s, ex),
        can_dry_run=(ex.status == ExecutionStatus.WAITING_APPROVAL and ex.task.kind == "playbook"
                     and (ex.requested_by_id == user.id or approvals.involves(s, ex, user))),
    )


def _decision_from_form() -> str:
    """The form's Approve/Reject button as a decision; anything else is a 400."""
    decision = {"approve": "approved", "reject": "rejected"}.get(request.form.get("decision", ""))
    if decision is None:
        abort(400)
    return decision


@web_bp.post("/approvals/<int:execution_id>/decide")
@login_required
def approval_decide(execution_id: int):
    s = db.session()
    ex = _execution_for(execution_id)
    if ex.status == ExecutionStatus.WAITING_APPROVAL and approvals.may_decide(s, ex, _me()) is not None:
        abort(403)
    decision = _decision_from_form()
    try:
        outcome = approvals.decide(s, ex, _me(), decision, request.form.get("comment") or None)
        s.commit()
    except ApiError as err:
        s.rollback()
        flash(err.message, "error")
        return redirect(url_for("web.approval_detail", execution_id=execution_id))
    if outcome.refused:
        flash(outcome.refused, "error")
    elif outcome.status == ExecutionStatus.QUEUED:
        flash(f"Approved: execution #{ex.id} is queued.", "success")
    elif outcome.status == ExecutionStatus.REJECTED:
        flash(f"Rejected execution #{ex.id}.", "success")
    else:
        flash(f"Approved level; waiting for level {ex.approval_level}.", "success")
    return redirect(url_for("web.approval_detail", execution_id=execution_id))


@web_bp.post("/approvals/<int:execution_id>/dry-run")
@login_required
def approval_dry_run(execution_id: int):
    s = db.session()
    ex = _execution_for(execution_id)
    user = _me()
    if user.id != ex.requested_by_id and not approvals.involves(s, ex, user):
        abort(403)
    try:
        dry = approvals.start_dry_run(s, ex, user)
        s.commit()
        flash(f"Dry run #{dry.id} queued (check mode, with diffs).", "success")
    except ApiError as err:
        s.rollback()
        flash(err.message, "error")
    return redirect(url_for("web.approval_detail", execution_id=execution_id))


def _schedule_for(schedule_id: int) -> Schedule:
    """A schedule that needs approval, if the user may see its task or is one of its approvers."""
    user = _me()
    return visible_or_404(Schedule, schedule_id, "schedule", lambda sch: sch.approval_status is not None and (
        "view" in access.task_permissions(db.session(), user, sch.task) or approvals.involves(db.session(), sch, user)))


@web_bp.get("/approvals/schedules/<int:schedule_id>")
@login_required
def schedule_approval(schedule_id: int):
    s = db.session()
    sch = _schedule_for(schedule_id)
    req = approvals.request_of(s, sch)
    return render_template(
        "approvals/schedule.html",
        sch=sch,
        req=req,
        requester=req.requested_by if req else None,
        levels=approvals.level_rows(s, req) if req else [],
        why_not=approvals.may_decide(s, sch, _me()),
    )


@web_bp.post("/approvals/schedules/<int:schedule_id>/decide")
@login_required
def schedule_decide(schedule_id: int):
    s = db.session()
    sch = _schedule_for(schedule_id)
    if sch.approval_status == ApprovalStatus.PENDING and approvals.may_decide(s, sch, _me()) is not None:
        abort(403)
    decision = _decision_from_form()
    try:
        outcome = approvals.decide(s, sch, _me(), decision, request.form.get("comment") or None)
        s.commit()
        flash(outcome.refused or f"Schedule #{sch.id} is {outcome.status}.", "error" if outcome.refused else "success")
    except ApiError as err:
        s.rollback()
        flash(err.message, "error")
    return redirect(url_for("web.schedule_approval", schedule_id=schedule_id))

