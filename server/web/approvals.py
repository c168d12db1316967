"""Approval pages: "My approvals" (the inbox), "My requests", and one request's page with
its levels, the dry-run result per host, and the approve / reject form."""
from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from server.people import access
from server.executions import approvals
from server.core import db
from server.core.errors import ApiError
from server.executions.request import target_hosts
from server.core.models import Approval, Execution, Schedule, User
from server.guards import visible_or_404
from server.web import web_bp

RECENT = 50


def _me() -> User:
    return current_user._get_current_object()


def _names(ids: list[int]) -> list[str]:
    if not ids:
        return []
    by_id = dict(db.session.execute(select(User.id, User.username).where(User.id.in_(ids))).all())
    return [by_id[i] for i in ids if i in by_id]


def _levels(plan, decided: list[Approval]) -> list[dict]:
    return [
        {"level": lv, "approvers": _names(approvals.level_approver_ids(plan, lv)),
         "decision": next((a for a in reversed(decided) if a.level == lv), None)}
        for lv in approvals.plan_levels(plan)
    ]


@web_bp.get("/approvals")
@login_required
def approvals_inbox():
    """Requests waiting for me (or for a later level I am on), and what I decided lately."""
    s = db.session()
    user = _me()
    if approvals.expire_due(s):
        s.commit()
    waiting = [ex for ex in approvals.pending_executions(s) if approvals.involves(ex, user)]
    items = [{"ex": ex, "why_not": approvals.may_decide(s, ex, user)} for ex in waiting]
    schedules = [
        {"sch": sch, "why_not": approvals.may_decide_schedule(s, sch, user)}
        for sch in s.execute(select(Schedule).where(Schedule.approval_status == "pending").order_by(Schedule.id)).scalars()
        if approvals.involves(sch, user)
    ]
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
        .where(Execution.requested_by_id == user.id, Execution.approval_plan.is_not(None),
               Execution.trigger != approvals.DRY_RUN_TRIGGER)
        .order_by(Execution.created_at.desc(), Execution.id.desc())
        .limit(200)
    ).scalars().all()
    return render_template("approvals/requests.html", rows=rows)


def _execution_for(execution_id: int) -> Execution:
    """An execution that needed approval, if the user may see it or is one of its approvers."""
    user = _me()
    return visible_or_404(Execution, execution_id, "execution", lambda ex: ex.approval_plan is not None and (
        access.can_view_execution(db.session(), user, ex) or approvals.involves(ex, user)))


@web_bp.get("/approvals/<int:execution_id>")
@login_required
def approval_detail(execution_id: int):
    s = db.session()
    ex = _execution_for(execution_id)
    if approvals.expire_if_due(s, ex):
        s.commit()
    decided = approvals.decisions(s, ex)
    user = _me()
    return render_template(
        "approvals/detail.html",
        ex=ex,
        hosts=target_hosts(ex.task, ex.limit_hosts),
        levels=_levels(ex.approval_plan, decided),
        why_not=approvals.may_decide(s, ex, user),
        dry=approvals.dry_run_of(s, ex),
        can_dry_run=(ex.status == "waiting_approval" and ex.task.kind == "playbook"
                     and (ex.requested_by_id == user.id or approvals.involves(ex, user))),
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
    if ex.status == "waiting_approval" and approvals.may_decide(s, ex, _me()) is not None:
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
    elif outcome.status == "queued":
        flash(f"Approved: execution #{ex.id} is queued.", "success")
    elif outcome.status == "rejected":
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
    if user.id != ex.requested_by_id and not approvals.involves(ex, user):
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
        "view" in access.task_permissions(db.session(), user, sch.task) or approvals.involves(sch, user)))


@web_bp.get("/approvals/schedules/<int:schedule_id>")
@login_required
def schedule_approval(schedule_id: int):
    s = db.session()
    sch = _schedule_for(schedule_id)
    plan = sch.approval_plan or {}
    requester = s.get(User, plan.get("requested_by")) if plan.get("requested_by") else None
    return render_template(
        "approvals/schedule.html",
        sch=sch,
        requester=requester,
        hosts=target_hosts(sch.task),
        levels=_levels(plan, approvals.decisions(s, sch)),
        why_not=approvals.may_decide_schedule(s, sch, _me()),
    )


@web_bp.post("/approvals/schedules/<int:schedule_id>/decide")
@login_required
def schedule_decide(schedule_id: int):
    s = db.session()
    sch = _schedule_for(schedule_id)
    if sch.approval_status == "pending" and approvals.may_decide_schedule(s, sch, _me()) is not None:
        abort(403)
    decision = _decision_from_form()
    try:
        outcome = approvals.decide_schedule(s, sch, _me(), decision, request.form.get("comment") or None)
        s.commit()
        flash(outcome.refused or f"Schedule #{sch.id} is {outcome.status}.", "error" if outcome.refused else "success")
    except ApiError as err:
        s.rollback()
        flash(err.message, "error")
    return redirect(url_for("web.schedule_approval", schedule_id=schedule_id))

