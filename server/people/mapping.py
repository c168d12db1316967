"""Directory groups → role and access-policy membership, applied at every sign-in.

The role is the highest one any of the user's groups maps to (``RANK``); a user none of
whose groups is mapped gets no account (sign-in refused). Policy memberships the mapping
gave are remembered (``users.mapped_policy_ids``), so a user removed from a group leaves
the policy at his next sign-in, while memberships an admin gave by hand stay. Every change
is audited (``identity.mapping``).
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.core import audit
from server.core.errors import Unauthorized, ValidationError
from server.core.models import ROLES, Policy, User, utcnow

RANK = {"auditor": 1, "operator": 2, "approver": 3, "author": 4, "admin": 5}
UNUSABLE_PASSWORD = "!external"  # never an argon2 hash: no password can match it


def clean_group_roles(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and k.strip() for k in value):
        raise ValidationError("'group_roles' must be an object {group: role}", field="group_roles")
    bad = sorted(k for k, v in value.items() if v not in ROLES)
    if bad:
        raise ValidationError(f"'group_roles' maps {bad[0]!r} to an unknown role (known: {', '.join(ROLES)})",
                              field="group_roles")
    return {k.strip(): v for k, v in value.items()}


def clean_group_policies(session: Session, value: Any) -> dict[str, list[str]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(n, str) for n in v)
            for k, v in value.items()):
        raise ValidationError("'group_policies' must be an object {group: [policy names]}", field="group_policies")
    names = {n for v in value.values() for n in v}
    known = set(session.execute(select(Policy.name).where(Policy.name.in_(names))).scalars()) if names else set()
    missing = sorted(names - known)
    if missing:
        raise ValidationError(f"'group_policies' names no such policy: {missing[0]!r}", field="group_policies")
    return {k.strip(): sorted(set(v)) for k, v in value.items()}


def _norm(group: str) -> str:
    return group.strip().lower()


def role_for(groups: list[str], group_roles: dict[str, str]) -> str | None:
    """The highest role any group maps to (group names compared case-insensitively, as DNs are)."""
    mine = {_norm(g) for g in groups}
    roles = [r for g, r in group_roles.items() if _norm(g) in mine]
    return max(roles, key=RANK.__getitem__) if roles else None


def policies_for(groups: list[str], group_policies: dict[str, list[str]]) -> list[str]:
    mine = {_norm(g) for g in groups}
    return sorted({p for g, names in group_policies.items() if _norm(g) in mine for p in names})


def apply(session: Session, *, source: str, username: str, external_id: str, groups: list[str],
          settings: dict[str, Any], known: User | None = None, email: str | None = None) -> User:
    """Create or update the external account from its directory groups; audit what changed."""
    role = role_for(groups, settings.get("group_roles") or {})
    user = known or session.execute(select(User).where(User.username == username)).scalar_one_or_none()
    if user is not None and user.auth_source != source:
        raise Unauthorized(f"a {user.auth_source} account named {username!r} already exists here")
    if role is None:
        if user is not None and user.is_active:
            from server.people.accounts import end_access

            _sync_policies(session, user, {}, {})
            end_access(session, user, reason="no mapped group")
            session.commit()
        raise Unauthorized("none of your directory groups is mapped to a role here")
    changes: dict[str, Any] = {}
    if user is None:
        user = User(username=username, role=role, password_hash=UNUSABLE_PASSWORD, auth_source=source,
                    external_id=external_id, email=email)
        session.add(user)
        session.flush()
        changes["created"] = True
    if user.role != role:
        changes["role"] = [user.role, role]
        user.role = role
    if not user.is_active:
        changes["is_active"] = True  # active again in the directory
        user.is_active = True
    user.external_id = external_id
    if email and user.email != email:
        user.email = email
    wanted = {p.id: p for p in session.execute(
        select(Policy).where(Policy.name.in_(policies_for(groups, settings.get("group_policies") or {})))).scalars()}
    _sync_policies(session, user, wanted, changes)
    user.directory_checked_at = utcnow()
    if changes:
        audit.record(session, "identity.mapping", actor=source, target=user, groups=sorted(groups)[:50], **changes)
    return user


def _sync_policies(session: Session, user: User, wanted: dict[int, Policy], changes: dict[str, Any]) -> None:
    """Join the policies the groups give, leave those an earlier mapping gave and they no longer do."""
    given = set(user.mapped_policy_ids or [])
    for policy in session.execute(select(Policy).where(Policy.id.in_(given - set(wanted)))).scalars():
        if user in policy.users:
            policy.users.remove(user)
        changes.setdefault("policies_left", []).append(policy.name)
    for policy in wanted.values():
        if user not in policy.users:
            policy.users.append(user)
            changes.setdefault("policies_joined", []).append(policy.name)
    user.mapped_policy_ids = sorted(wanted)
