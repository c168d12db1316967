"""Access policies: ``/api/v1/policies`` (admins manage; everyone may read the ones naming them)."""
from __future__ import annotations

from flask import jsonify
from sqlalchemy import or_, select
from sqlalchemy.orm import selectinload

from server.core import db
from server.core.models import PERMISSIONS, Policy, PolicyApprover, User
from server.people.policies import MAX_LEVEL, MAX_TTL_S, MIN_TTL_S, delete_policy, policy_dict, save_policy
from server.api import api_bp, json_body, me
from server.api.common import no_content, page_of
from server.guards import requires, visible_or_404
from server.api.openapi import DATETIME, describe, register_schema


def _readable(query, user: User):
    """Admins and auditors see every policy; others the ones naming them as user or approver."""
    if user.role in ("admin", "auditor"):
        return query
    return query.where(or_(Policy.users.any(User.id == user.id), Policy.approvers.any(PolicyApprover.user_id == user.id)))


@api_bp.get("/policies")
@describe(response="Policy", paged=True)
def list_policies():
    """Access policies by name."""
    query = select(Policy).options(selectinload(Policy.users), selectinload(Policy.tasks),
                                   selectinload(Policy.approvers)).order_by(Policy.name)
    page = page_of(_readable(query, me()))
    return jsonify(page.envelope([policy_dict(p) for p in page.items]))


@api_bp.post("/policies")
@describe(request="PolicyInput", response="Policy", status=201)
@requires("policies.manage")
def create_policy_view():
    """Create a policy (admins)."""
    actor = me()
    policy = save_policy(db.session(), json_body(), actor=actor.username)
    db.session.commit()
    return jsonify(policy_dict(policy)), 201


@api_bp.get("/policies/<int:policy_id>")
@describe(response="Policy")
def get_policy(policy_id: int):
    """One policy."""
    readable = _readable(select(Policy.id).where(Policy.id == policy_id), me())
    return jsonify(policy_dict(visible_or_404(Policy, policy_id, "policy",
                                              lambda _p: db.session.execute(readable).first() is not None)))


@api_bp.patch("/policies/<int:policy_id>")
@describe(request="PolicyInput", response="Policy")
@requires("policies.manage")
def update_policy_view(policy_id: int):
    """Change a policy; list fields replace the whole list. Pending requests keep the
    approvers they were made with."""
    actor = me()
    policy = save_policy(db.session(), json_body(), actor=actor.username, policy=visible_or_404(Policy, policy_id, "policy"))
    db.session.commit()
    return jsonify(policy_dict(policy))


@api_bp.delete("/policies/<int:policy_id>")
@describe()
@requires("policies.manage")
def delete_policy_view(policy_id: int):
    """Delete a policy."""
    actor = me()
    delete_policy(db.session(), visible_or_404(Policy, policy_id, "policy"), actor=actor.username)
    db.session.commit()
    return no_content()


_APPROVER = {"type": "object", "required": ["user"], "additionalProperties": False,
             "properties": {"user": {"type": "string"},
                            "level": {"type": "integer", "minimum": 1, "maximum": MAX_LEVEL, "default": 1}}}
_STORED_NAMES = {"type": "array", "maxItems": 10_000, "items": {"type": "string", "minLength": 1},
                 "description": "names of stored rows"}
_POLICY = {
    "name": {"type": "string", "maxLength": 200, "pattern": "^[^\\x00-\\x1f]*[^\\s\\x00-\\x1f][^\\x00-\\x1f]*$"},
    "users": _STORED_NAMES, "tasks": _STORED_NAMES,
    "permissions": {"type": "array", "items": {"type": "string", "enum": list(PERMISSIONS)}},
    "requires_approval": {"type": "boolean"}, "requires_reason": {"type": "boolean"},
    "approvers": {"type": "array", "items": _APPROVER},
    "approval_ttl_s": {"type": "integer", "minimum": MIN_TTL_S, "maximum": MAX_TTL_S},
    "requires_ticket": {"type": "boolean", "description": "runs need a ticket (change or incident reference)"},
    "ticket_pattern": {"type": ["string", "null"], "maxLength": 200, "format": "regex", "description": "regular expression a ticket must match, "
                       "e.g. ^(CHG|INC)[0-9]{6}$"},
    "reasons": {"type": ["array", "null"], "maxItems": 100,
                "items": {"type": "string", "maxLength": 200, "pattern": "\\S"}, "description": "curated reasons: when not empty, "
                "a run's reason must be one of them"},
}
register_schema("Policy", {"type": "object", "properties": {"id": {"type": "integer"}, **_POLICY,
                                                            "created_at": DATETIME}})
register_schema("PolicyInput", {"type": "object", "additionalProperties": False, "properties": _POLICY,
                                "required": ["name"], "description": "POST needs name; PATCH takes any subset"})
