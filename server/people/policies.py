"""Access policies: which users may do what to which tasks, and whose approval runs need.

One ``save_policy`` serves create (``partial=False``) and PATCH (``partial=True``); every
field is checked before anything is written, so a rejected request changes nothing.
"""
from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.core import audit
from server.core.errors import Conflict, ValidationError
from server.core.models import PERMISSIONS, Policy, PolicyApprover, Task, User

FIELDS = ("name", "users", "tasks", "permissions", "requires_approval", "requires_reason", "approvers",
          "approval_ttl_s", "requires_ticket", "ticket_pattern", "reasons")
LAUNCH_FIELDS = ("requires_ticket", "ticket_pattern", "reasons")
MIN_TTL_S = 60
MAX_TTL_S = 30 * 86400
MAX_LEVEL = 3


def policy_dict(policy: Policy) -> dict[str, Any]:
    return {
        "id": policy.id,
        "name": policy.name,
        "users": [u.username for u in policy.users],
        "tasks": [t.name for t in policy.tasks],
        "permissions": [p for p in PERMISSIONS if p in (policy.permissions or [])],
        "requires_approval": policy.requires_approval,
        "requires_reason": policy.requires_reason,
        "approvers": [{"user": a.user.username, "level": a.level} for a in policy.approvers],
        "approval_ttl_s": policy.approval_ttl_s,
        "requires_ticket": bool(policy.requires_ticket),
        "ticket_pattern": policy.ticket_pattern,
        "reasons": list(policy.reasons or []),
        "created_at": policy.created_at.isoformat() if policy.created_at else None,
    }


def _names(data: dict[str, Any], field: str) -> list[str]:
    value = data[field]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValidationError(f"'{field}' must be a list of names", field=field)
    if len(value) > 10_000:
        raise ValidationError(f"'{field}' has too many entries", field=field)
    return list(dict.fromkeys(value))


def _lookup(session: Session, model, column, names: list[str], field: str, what: str) -> list:
    found = {getattr(o, column.key): o for o in session.execute(select(model).where(column.in_(names))).scalars()} if names else {}
    missing = [n for n in names if n not in found]
    if missing:
        raise ValidationError(f"no {what} named {', '.join(repr(m) for m in missing[:5])}", field=field)
    return [found[n] for n in names]


def _bool(data: dict[str, Any], field: str) -> bool:
    if not isinstance(data[field], bool):
        raise ValidationError(f"'{field}' must be true or false", field=field)
    return data[field]


def _approvers(session: Session, value: Any) -> list[tuple[User, int]]:
    if not isinstance(value, list):
        raise ValidationError("'approvers' must be a list of {\"user\", \"level\"}", field="approvers")
    result: list[tuple[User, int]] = []
    seen: set[tuple[str, int]] = set()
    for item in value:
        if not isinstance(item, dict) or set(item) - {"user", "level"} or not isinstance(item.get("user"), str):
            raise ValidationError("each approver must be {\"user\": name, \"level\": 1-3}", field="approvers")
        level = item.get("level", 1)
        if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= MAX_LEVEL:
            raise ValidationError(f"approver level must be an integer from 1 to {MAX_LEVEL}", field="approvers")
        if (item["user"], level) in seen:
            continue
        seen.add((item["user"], level))
        user = session.execute(select(User).where(User.username == item["user"])).scalar_one_or_none()
        if user is None or not user.is_active:
            raise ValidationError(f"no active user named {item['user']!r}", field="approvers")
        result.append((user, level))
    return result


def _launch_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A ticket (required, matching a pattern such as ``^(CHG|INC)[0-9]{6}$``) and curated reasons."""
    values: dict[str, Any] = {}
    if "requires_ticket" in data:
        values["requires_ticket"] = _bool(data, "requires_ticket")
    if "ticket_pattern" in data:
        pattern = data["ticket_pattern"] or None
        if pattern is not None:
            if not isinstance(pattern, str) or len(pattern) > 200:
                raise ValidationError("'ticket_pattern' must be a regular expression of at most 200 characters",
                                      field="ticket_pattern")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValidationError(f"'ticket_pattern' is not a valid regular expression ({exc})",
                                      field="ticket_pattern") from None
        values["ticket_pattern"] = pattern
    if "reasons" in data:
        reasons = data["reasons"] or []
        if (not isinstance(reasons, list) or len(reasons) > 100
                or not all(isinstance(r, str) and r.strip() and len(r) <= 200 for r in reasons)):
            raise ValidationError("'reasons' must be a list of at most 100 reasons (1-200 characters each)",
                                  field="reasons")
        values["reasons"] = list(dict.fromkeys(r.strip() for r in reasons))
    return values


def save_policy(session: Session, data: Any, *, actor: str, policy: Policy | None = None) -> Policy:
    if not isinstance(data, dict):
        raise ValidationError("request body must be a JSON object")
    unknown = sorted(str(k) for k in data if k not in FIELDS and k not in ("id", "created_at"))
    if unknown:
        raise ValidationError(f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(FIELDS)})",
                              field=unknown[0])
    creating = policy is None
    if creating and "name" not in data:
        raise ValidationError("'name' is required", field="name")
    values: dict[str, Any] = {}
    if "name" in data:
        name = data["name"]
        if not isinstance(name, str) or not name.strip() or len(name) > 200 or any(ord(c) < 32 for c in name):
            raise ValidationError("'name' must be 1-200 printable characters", field="name")
        name = name.strip()
        clash = session.execute(select(Policy.id).where(Policy.name == name)).scalar()
        if clash is not None and (creating or clash != policy.id):
            raise Conflict(f"a policy named {name!r} already exists", field="name")
        values["name"] = name
    if "users" in data:
        values["users"] = _lookup(session, User, User.username, _names(data, "users"), "users", "user")
    if "tasks" in data:
        values["tasks"] = _lookup(session, Task, Task.name, _names(data, "tasks"), "tasks", "task")
    if "permissions" in data:
        perms = data["permissions"]
        if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms) or set(perms) - set(PERMISSIONS):
            raise ValidationError(f"'permissions' must be a subset of {', '.join(PERMISSIONS)}", field="permissions")
        values["permissions"] = [p for p in PERMISSIONS if p in perms]
    for flag in ("requires_approval", "requires_reason"):
        if flag in data:
            values[flag] = _bool(data, flag)
    if "approval_ttl_s" in data:
        ttl = data["approval_ttl_s"]
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not MIN_TTL_S <= ttl <= MAX_TTL_S:
            raise ValidationError(f"'approval_ttl_s' must be an integer from {MIN_TTL_S} to {MAX_TTL_S}",
                                  field="approval_ttl_s")
        values["approval_ttl_s"] = ttl
    values.update(_launch_fields(data))
    approvers = _approvers(session, data["approvers"]) if "approvers" in data else None

    if creating:
        policy = Policy(name=values["name"], permissions=values.get("permissions", ["view", "execute"]),
                        requires_approval=values.get("requires_approval", False),
                        requires_reason=values.get("requires_reason", False),
                        approval_ttl_s=values.get("approval_ttl_s", 86400),
                        requires_ticket=values.get("requires_ticket", False),
                        ticket_pattern=values.get("ticket_pattern"), reasons=values.get("reasons", []))
        session.add(policy)
    else:
        for key in ("name", "permissions", "requires_approval", "requires_reason", "approval_ttl_s", *LAUNCH_FIELDS):
            if key in values:
                setattr(policy, key, values[key])
    if "users" in values:
        policy.users = values["users"]
    if "tasks" in values:
        policy.tasks = values["tasks"]
    if approvers is not None:
        # Reconcile rather than replace: the unit of work inserts before it deletes, and
        # (policy, user, level) is unique.
        wanted = {(u.id, lv): u for u, lv in approvers}
        keep = [a for a in policy.approvers if (a.user_id, a.level) in wanted]
        have = {(a.user_id, a.level) for a in keep}
        policy.approvers = keep + [PolicyApprover(user_id=uid, user=u, level=lv)
                                   for (uid, lv), u in wanted.items() if (uid, lv) not in have]
    session.flush()
    snapshot = policy_dict(policy)
    snapshot.pop("created_at")
    audit.record(session, "policy.create" if creating else "policy.update", actor=actor, target=policy,
                 changed=sorted(k for k in data if k in FIELDS), policy=snapshot)
    return policy


def delete_policy(session: Session, policy: Policy, *, actor: str) -> None:
    audit.record(session, "policy.delete", actor=actor, target=policy, name=policy.name)
    session.delete(policy)
    session.flush()
