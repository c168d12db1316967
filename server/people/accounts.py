"""Managing users and API tokens (admins manage users; everyone manages their own tokens).

Users are never hard-deleted: executions, approvals and the audit trail keep pointing at
them, so "delete" deactivates the account, revokes its tokens and drops it from policies.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from server.core import audit
from server.people import login_throttle, web_sessions
from server.people.auth import create_user, hash_password
from server.core.errors import Conflict, Forbidden, ValidationError
from server.core.models import ROLES, ApiToken, PolicyApprover, User, policy_users, utcnow

MAX_EMAIL = 255
MAX_TOKEN_NAME = 80
USER_FIELDS = {"username", "role", "password", "email", "is_active", "unlock", "must_change_password", "reset_mfa"}


def _check_fields(data: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValidationError("request body must be a JSON object")
    unknown = sorted(str(k) for k in data if k not in allowed and k not in ("id", "created_at"))
    if unknown:
        raise ValidationError(f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})",
                              field=unknown[0])
    return data


# What _email and add_user accept, as JSON Schema (the OpenAPI UserInput/UserPatch use these).
_VISIBLE = "[^\\s\\x00-\\x1f\\x7f]"
EMAIL_SCHEMA = {"type": ["string", "null"], "maxLength": MAX_EMAIL, "pattern": f"^({_VISIBLE}*@{_VISIBLE}*)?$",
                "description": "an address with '@'; null or empty: none"}
USERNAME_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 80, "pattern": "^[^\\s\\x00-\\x1f]+$"}


def _email(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if (not isinstance(value, str) or len(value) > MAX_EMAIL or "@" not in value
            or any(c.isspace() or ord(c) < 32 or c == "\x7f" for c in value)):
        raise ValidationError("'email' must be an e-mail address", field="email")
    return value


def _bool(data: dict[str, Any], name: str) -> bool:
    value = data[name]
    if not isinstance(value, bool):
        raise ValidationError(f"'{name}' must be true or false", field=name)
    return value


def _active_admins(session: Session) -> int:
    return session.execute(
        select(func.count(User.id)).where(User.role == "admin", User.is_active.is_(True))
    ).scalar_one()


def add_user(session: Session, data: Any, *, actor: str) -> User:
    data = _check_fields(data, {"username", "role", "password", "email"})
    for name in ("username", "role", "password"):
        if not isinstance(data.get(name), str):
            raise ValidationError(f"'{name}' is required and must be a string", field=name)
    username = data["username"].strip()
    if any(c.isspace() or ord(c) < 32 for c in username):
        raise ValidationError("'username' may not contain spaces or control characters", field="username")
    email = _email(data.get("email"))
    user = create_user(session, username, data["role"], data["password"], actor=actor)
    user.email = email
    # The admin knows this password: its owner must choose his own at his first web sign-in.
    # The API token exchange stays open to him (the contract's way in for API clients).
    user.must_change_password = True
    return user


def _local_only(user: User, field: str) -> None:
    """Directory accounts have no password here: the directory (or provider) owns it."""
    if user.auth_source != "local":
        raise ValidationError(f"'{user.username}' is an {user.auth_source.upper()} account: its password is "
                              "managed by the directory, not here", field=field)


def update_user(session: Session, user: User, data: Any, *, actor: User) -> User:
    data = _check_fields(data, USER_FIELDS - {"username"})
    changes: dict[str, Any] = {}
    if "role" in data:
        role = data["role"]
        if role not in ROLES:
            raise ValidationError(f"'role' must be one of {', '.join(ROLES)}", field="role")
        if user.role == "admin" and role != "admin" and user.is_active and _active_admins(session) <= 1:
            raise Conflict("this is the last active admin; make another admin first", field="role")
        if role != user.role:
            changes["role"] = [user.role, role]
            user.role = role
    if "email" in data:
        user.email = _email(data["email"])
        changes["email"] = True
    if "password" in data:
        _local_only(user, "password")
        password = data["password"]
        if not isinstance(password, str) or len(password) < 8:
            raise ValidationError("'password' must be at least 8 characters", field="password")
        changes.update(_set_password(session, user, password, by=actor))
    if "must_change_password" in data:
        user.must_change_password = _bool(data, "must_change_password")
        changes["must_change_password"] = user.must_change_password
    if "is_active" in data:
        active = _bool(data, "is_active")
        if not active and user.id == actor.id:
            raise Conflict("you cannot deactivate your own account", field="is_active")
        if not active and user.role == "admin" and user.is_active and _active_admins(session) <= 1:
            raise Conflict("this is the last active admin", field="is_active")
        if active != user.is_active:
            changes["is_active"] = active
            user.is_active = active
            if not active:
                _revoke_all(session, user)
                web_sessions.revoke_all(session, user)
    if "reset_mfa" in data and _bool(data, "reset_mfa") and user.totp_confirmed_at is not None:
        from server.people import mfa

        mfa.disable(session, user, None, actor=actor)  # a lost device: he enrols again at next sign-in
        changes["reset_mfa"] = True
    if "unlock" in data and _bool(data, "unlock"):
        changes["unlock"] = login_throttle.clear_account(user.username)  # addresses cleared
    session.flush()
    audit.record(session, "user.update", actor=actor.username, target=user, username=user.username, **changes)
    return user


def _set_password(session: Session, user: User, password: str, *, by: User) -> dict[str, Any]:
    """Set a password and end what the old one opened.

    Set by an admin for someone else (a reset): temporary (must be changed at next sign-in),
    and every session and API token of the user is revoked, since whoever knew the old
    password may hold them. Set by the user himself: his other sessions end, this one stays.
    """
    user.password_hash = hash_password(password)
    if user.id == by.id:
        user.must_change_password = user.password_from_admin = False
        return {"password": "changed",
                "sessions_revoked": web_sessions.revoke_all(session, user, keep=web_sessions.current_key())}
    user.must_change_password = user.password_from_admin = True
    return {"password": "reset", "sessions_revoked": web_sessions.revoke_all(session, user),
            "tokens_revoked": _revoke_all(session, user)}


def _revoke_all(session: Session, user: User) -> int:
    return session.execute(
        update(ApiToken)
        .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount


def deactivate_user(session: Session, user: User, *, actor: User) -> None:
    """DELETE /users/<id>: the account stops working; its history stays attributable."""
    if user.id == actor.id:
        raise Conflict("you cannot delete your own account")
    if user.role == "admin" and user.is_active and _active_admins(session) <= 1:
        raise Conflict("this is the last active admin")
    user.is_active = False
    revoked = _revoke_all(session, user)
    web_sessions.revoke_all(session, user)
    session.execute(policy_users.delete().where(policy_users.c.user_id == user.id))
    session.execute(PolicyApprover.__table__.delete().where(PolicyApprover.user_id == user.id))
    session.flush()
    audit.record(session, "user.delete", actor=actor.username, target=user, username=user.username,
                 tokens_revoked=revoked)


def change_own_password(session: Session, user: User, current: Any, new: Any) -> None:
    from server.people.auth import check_password

    _local_only(user, "new_password")
    if not isinstance(current, str) or not check_password(user, current):
        audit.record(session, "user.password", actor=user.username, target=user, outcome="denied",
                     reason="wrong current password")
        raise ValidationError("the current password is wrong", field="current_password")
    if not isinstance(new, str) or len(new) < 8:
        raise ValidationError("the new password must be at least 8 characters", field="new_password")
    if new == current:
        raise ValidationError("the new password must differ from the current one", field="new_password")
    user.password_hash = hash_password(new)
    user.must_change_password = user.password_from_admin = False
    # Whoever else held a session (a copied cookie, a forgotten browser) is signed out.
    ended = web_sessions.revoke_all(session, user, keep=web_sessions.current_key())
    audit.record(session, "user.password", actor=user.username, target=user, sessions_revoked=ended)


# ---------------------------------------------------------------- tokens


def token_name(value: Any) -> str:
    if value is None:
        return "api"
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TOKEN_NAME:
        raise ValidationError(f"'name' must be 1-{MAX_TOKEN_NAME} characters", field="name")
    if any(ord(c) < 32 for c in value):
        raise ValidationError("'name' may not contain control characters", field="name")
    return value.strip()


token_name.schema = {  # type: ignore[attr-defined]  # the same rule, for the OpenAPI document
    "type": ["string", "null"], "minLength": 1, "maxLength": MAX_TOKEN_NAME,
    "pattern": "^[^\\x00-\\x1f]*[^\\s\\x00-\\x1f][^\\x00-\\x1f]*$", "description": "default 'api'"}


def tokens_of(session: Session, user: User | None, *, include_revoked: bool = True) -> list[ApiToken]:
    q = select(ApiToken).order_by(ApiToken.id.desc())
    if user is not None:
        q = q.where(ApiToken.user_id == user.id)
    if not include_revoked:
        q = q.where(ApiToken.revoked_at.is_(None))
    return list(session.execute(q).scalars())


def revoke_token(session: Session, token: ApiToken, *, actor: User) -> bool:
    """Revoke one token (own, or any for an admin). False if it was already revoked."""
    if token.user_id != actor.id and actor.role != "admin":
        raise Forbidden("you may only revoke your own tokens")
    if token.revoked_at is not None:
        return False
    token.revoked_at = utcnow()
    audit.record(session, "token.revoke", actor=actor.username, target=token, user=token.user.username,
                 name=token.name, prefix=token.prefix)
    return True


def end_access(session: Session, user: User, *, reason: str) -> None:
    """The directory says this account is gone: deactivate it, revoke its tokens and sessions."""
    user.is_active = False
    tokens = _revoke_all(session, user)
    sessions = web_sessions.revoke_all(session, user)
    audit.record(session, "identity.mapping", actor=user.auth_source, target=user, is_active=False, reason=reason,
                 tokens_revoked=tokens, sessions_revoked=sessions)
