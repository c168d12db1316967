"""Approvals: the inbox (``GET /api/v1/approvals``) and the decisions
(``POST /api/v1/executions/<id>/approve|reject``, ``POST /api/v1/schedules/<id>/approve|reject``).

A decision that could not be taken because the request was closed instead (it expired,
or the task changed since it was requested) is committed and answered 409 with the reason.
"""
from __future__ import annotations

from typing import Any

from flask import jsonify, request
from sqlalchemy import exists, select

from server.people import access
from server.executions import approvals
from server.core import db
from server.core.errors import Forbidden, NotFound, ValidationError
from server.core.models import Approval, ApprovalRequest, ApprovalStatus, Execution, ExecutionStatus, Schedule, User
from server.api import api_bp, json_body, me
from server.api.common import iso, page_of
from server.guards import visible_or_404
from server.api.executions import approval_levels, decision_dict, execution_dict
from server.api.openapi import DATETIME, describe, register_schema

STATUSES = ("pending", "decided", "all")
SCOPES = ("decide", "mine", "all")




def dry_run_dict(ex: Execution) -> dict[str, Any] | None:
    dry = approvals.dry_run_of(db.session(), ex)
    if dry is None:
        return None
    return {
        "id": dry.id,
        "status": dry.status,
        "message": dry.message,
        "finished_at": iso(dry.finished_at),
        "hosts": [
            {"host": op.host_name, "status": op.status, "rc": op.rc, "message": op.message,
             "changed": sum(1 for st in op.steps if st.changed),
             "steps": [{"name": st.name, "status": st.status, "changed": st.changed,
                        "diff": st.stdout or ""} for st in op.steps]}
            for op in dry.operations
        ],
    }


def execution_request_dict(ex: Execution, user: User) -> dict[str, Any]:
    s = db.session()
    req = ex.approval
    decided = approvals.decisions(s, ex)
    why_not = approvals.may_decide(s, ex, user)
    return {
        "kind": "execution",
        "id": ex.id,
        "execution_id": ex.id,
        "task": ex.task.name,
        "task_id": ex.task_id,
        "task_kind": ex.task.kind,
        "status": ex.status,
        "requested_by": ex.requested_by.username if ex.requested_by else None,
        "reason": ex.reason,
        "vars": ex.vars or {},
        "hosts": list(req.hosts) if req else [],
        "revision": ex.revision,
        "fingerprint": ex.fingerprint,
        "created_at": iso(ex.created_at),
        "expires_at": iso(ex.approval_expires_at),
        "level": ex.approval_level,
        "levels": approval_levels(req),
        "decisions": [decision_dict(a) for a in decided],
        "can_decide": why_not is None,
        "why_not": why_not,
        "message": ex.message,
        "dry_run": dry_run_dict(ex),
        "execution": execution_dict(ex),
    }


def schedule_request_dict(sch: Schedule, user: User) -> dict[str, Any]:
    s = db.session()
    req = approvals.request_of(s, sch)
    decided = approvals.decisions(s, sch)
    why_not = approvals.may_decide(s, sch, user)
    requester = req.requested_by if req else None
    return {
        "kind": "schedule",
        "id": sch.id,
        "schedule_id": sch.id,
        "task": sch.task.name,
        "task_id": sch.task_id,
        "status": sch.approval_status,
        "requested_by": requester.username if requester else None,
        "cron": sch.cron,
        "timezone": sch.timezone,
        "vars": sch.vars or {},
        "hosts": list(req.hosts) if req else [],
        "fingerprint": req.fingerprint if req else None,
        "created_at": iso(req.created_at) if req else None,
        "expires_at": None,
        "level": req.level if req else 1,
        "levels": approval_levels(req),
        "decisions": [decision_dict(a) for a in decided],
        "can_decide": why_not is None,
        "why_not": why_not,
        "suspended_reason": sch.suspended_reason,
    }


def _choice(name: str, allowed: tuple[str, ...], default: str) -> str:
    value = request.args.get(name) or default
    if value not in allowed:
        raise ValidationError(f"'{name}' must be one of {', '.join(allowed)}", field=name)
    return value


@api_bp.get("/approvals")
@describe(response="ApprovalRequest", paged=True, query={
    "status": {"type": "string", "enum": list(STATUSES), "default": "pending"},
    "scope": {"type": "string", "enum": list(SCOPES), "default": "decide",
              "description": "decide: requests you approve; mine: your requests; all: admins and auditors"}})
def list_approvals():
    """Approval requests: by default the pending ones you are an approver of (see ``can_decide``)."""
    user = me()
    s = db.session()
    status = _choice("status", STATUSES, "pending")
    scope = _choice("scope", SCOPES, "decide")
    if scope == "all" and user.role not in ("admin", "auditor"):
        raise Forbidden("only admins and auditors may list every approval request")
    approvals.expire_due(s)
    s.commit()
    query = select(Execution).join(ApprovalRequest, ApprovalRequest.execution_id == Execution.id).where(
        Execution.trigger != approvals.DRY_RUN_TRIGGER)
    if status == "pending":
        query = query.where(Execution.status == ExecutionStatus.WAITING_APPROVAL)
    elif status == "decided":
        query = query.where(Execution.status != ExecutionStatus.WAITING_APPROVAL)
    if scope == "mine":
        query = query.where(Execution.requested_by_id == user.id)
    elif scope == "decide" and user.role != "admin":
        if status == "pending":
            ids = [ex.id for ex in s.execute(query).scalars() if approvals.involves(s, ex, user)]
            query = query.where(Execution.id.in_(ids))
        else:
            took_part = exists().where(Approval.execution_id == Execution.id, Approval.approver_id == user.id)
            if status == "all":
                waiting = [ex.id for ex in s.execute(query.where(Execution.status == ExecutionStatus.WAITING_APPROVAL))
                           .scalars() if approvals.involves(s, ex, user)]
                query = query.where(took_part | Execution.id.in_(waiting))
            else:
                query = query.where(took_part)
    query = query.order_by(Execution.created_at.desc(), Execution.id.desc())
    page = page_of(query)
    items = [execution_request_dict(ex, user) for ex in page.items]
    if status in ("pending", "all") and page.page == 1:
        squery = select(Schedule).where(Schedule.approval_status == ApprovalStatus.PENDING).order_by(Schedule.id)
        for sch in s.execute(squery).scalars():
            req = approvals.request_of(s, sch)
            if (scope == "all" or (scope == "mine" and req is not None and req.requested_by_id == user.id)
                    or (scope == "decide" and approvals.involves(s, sch, user))):
                items.append(schedule_request_dict(sch, user))
    body = page.envelope(items)
    body["total"] = page.total + (len(items) - len(page.items))
    return jsonify(body)


def _request_execution(execution_id: int) -> Execution:
    """The execution if the user may see it or is one of its approvers."""
    user = me()
    return visible_or_404(Execution, execution_id, "execution", lambda ex: bool(
        access.can_view_execution(db.session(), user, ex) or approvals.involves(db.session(), ex, user)))


def _comment() -> Any:
    data = json_body(required=False)
    unknown = sorted(set(data) - {"comment"})
    if unknown:
        raise ValidationError(f"unknown field(s): {', '.join(unknown)} (allowed: comment)", field=unknown[0])
    return data.get("comment")


def _answer(outcome: approvals.Outcome, body: dict[str, Any]):
    db.session.commit()
    if outcome.refused:
        code = "expired" if outcome.status == "expired" else "refused"
        return jsonify({"error": {"code": code, "message": outcome.refused}, "request": body}), 409
    return jsonify(body)


@api_bp.get("/executions/<int:execution_id>/approval")
@describe(response="ApprovalRequest")
def get_execution_approval(execution_id: int):
    """The approval state of one execution: levels, decisions, dry-run result."""
    ex = _request_execution(execution_id)
    if ex.approval is None:
        raise NotFound(f"execution {execution_id} did not need approval")
    if approvals.expire_if_due(db.session(), ex):
        db.session.commit()
    return jsonify(execution_request_dict(ex, me()))


def _decide_execution(execution_id: int, decision: str):
    user = me()
    comment = _comment()
    ex = _request_execution(execution_id)
    outcome = approvals.decide(db.session(), ex, user, decision, comment)
    return _answer(outcome, execution_request_dict(ex, user))


@api_bp.post("/executions/<int:execution_id>/approve")
@describe(request="DecisionInput", response="ApprovalRequest", body_optional=True)
def approve_execution(execution_id: int):
    """Approve the current level; the last level queues the run. Never your own request."""
    return _decide_execution(execution_id, "approved")


@api_bp.post("/executions/<int:execution_id>/reject")
@describe(request="DecisionInput", response="ApprovalRequest", body_optional=True)
def reject_execution(execution_id: int):
    """Reject: the request ends (status ``rejected``)."""
    return _decide_execution(execution_id, "rejected")


@api_bp.post("/executions/<int:execution_id>/dry-run")
@describe(response="Accepted", status=202)
def dry_run_execution(execution_id: int):
    """Start a check-mode (``--check --diff``) run of a waiting playbook request, for its approvers."""
    user = me()
    ex = _request_execution(execution_id)
    dry = approvals.start_dry_run(db.session(), ex, user)
    db.session.commit()
    return jsonify({"id": dry.id, "status": dry.status, "url": f"/api/v1/executions/{dry.id}"}), 202


def _request_schedule(schedule_id: int) -> Schedule:
    user = me()
    return visible_or_404(Schedule, schedule_id, "schedule", lambda sch: bool(
        "view" in access.task_permissions(db.session(), user, sch.task)
        or approvals.involves(db.session(), sch, user)))


@api_bp.get("/schedules/<int:schedule_id>/approval")
@describe(response="ApprovalRequest")
def get_schedule_approval(schedule_id: int):
    """The approval state of a schedule on a task that requires approval."""
    sch = _request_schedule(schedule_id)
    if sch.approval_status is None:
        raise NotFound(f"schedule {schedule_id} does not need approval")
    return jsonify(schedule_request_dict(sch, me()))


def _decide_schedule(schedule_id: int, decision: str):
    user = me()
    comment = _comment()
    sch = _request_schedule(schedule_id)
    outcome = approvals.decide(db.session(), sch, user, decision, comment)
    return _answer(outcome, schedule_request_dict(sch, user))


@api_bp.post("/schedules/<int:schedule_id>/approve")
@describe(request="DecisionInput", response="ApprovalRequest", body_optional=True)
def approve_schedule(schedule_id: int):
    """Approve the schedule's current level; after the last one it fires as approved."""
    return _decide_schedule(schedule_id, "approved")


@api_bp.post("/schedules/<int:schedule_id>/reject")
@describe(request="DecisionInput", response="ApprovalRequest", body_optional=True)
def reject_schedule(schedule_id: int):
    """Reject the schedule: it does not fire until changed and approved."""
    return _decide_schedule(schedule_id, "rejected")


register_schema("DecisionInput", {"type": "object", "additionalProperties": False,
                                  "properties": {"comment": {"type": "string", "maxLength": 2000}}})
register_schema("ApprovalRequest", {"type": "object", "properties": {
    "kind": {"type": "string", "enum": ["execution", "schedule"]}, "id": {"type": "integer"},
    "task": {"type": "string"}, "status": {"type": "string"}, "requested_by": {"type": ["string", "null"]},
    "reason": {"type": ["string", "null"]}, "vars": {"type": "object"},
    "hosts": {"type": "array", "items": {"type": "string"}}, "created_at": DATETIME, "expires_at": DATETIME,
    "level": {"type": "integer"}, "levels": {"type": "array"}, "decisions": {"type": "array"},
    "can_decide": {"type": "boolean"}, "why_not": {"type": ["string", "null"]},
    "dry_run": {"type": ["object", "null"], "description": "the check-mode run's per-host result"}}})
