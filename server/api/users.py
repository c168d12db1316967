"""Users (admins only) and the caller's own account: ``/api/v1/users``, ``/api/v1/me``."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from flask import jsonify, request
from sqlalchemy import select

from server.people import access, login_throttle
from server.core import db
from server.people.accounts import EMAIL_SCHEMA, USERNAME_SCHEMA, add_user, deactivate_user, update_user
from server.core.models import ROLES, User
from server.core.pagination import bool_arg, text_arg
from server.api import api_bp, json_body, me
from server.api.common import iso, no_content, page_of
from server.guards import requires, visible_or_404
from server.api.openapi import DATETIME, describe, register_schema


def user_dict(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "email": user.email,
        "is_active": user.is_active,
        "must_change_password": user.must_change_password,
        "source": user.auth_source,
        "mfa": user.totp_confirmed_at is not None,
        "last_login_at": iso(user.last_login_at),
        "created_at": iso(user.created_at),
    }


def user_detail(user: User) -> dict[str, Any]:
    """One user, with the addresses whose sign-ins for this account are being slowed down."""
    delays = [{"address": d.address, "failures": d.failures,
               "retry_at": iso(datetime.fromtimestamp(d.retry_at, timezone.utc)) if d.retry_at else None}
              for d in login_throttle.delays_for(user.username)]
    return {**user_dict(user), "login_delays": delays}


@api_bp.get("/me")
@describe(response="Me")
def get_me():
    """The authenticated user, with the role's resource grants."""
    user = me()
    body = user_dict(user)
    body["grants"] = sorted(access.ROLE_GRANTS.get(user.role, set()))
    return jsonify(body)


@api_bp.get("/users")
@describe(response="User", paged=True, query={"role": {"type": "string"}, "q": {"type": "string"},
                                               "active": {"type": "boolean"}})
@requires("users.manage")
def list_users():
    """Every user (admins only)."""
    query = select(User).order_by(User.username)
    role = text_arg(request.args, "role")
    if role:
        query = query.where(User.role == role)
    term = text_arg(request.args, "q")
    if term:
        query = query.where(User.username.contains(term, autoescape=True))
    active = bool_arg(request.args, "active")
    if active is not None:
        query = query.where(User.is_active.is_(active))
    page = page_of(query)
    return jsonify(page.envelope([user_dict(u) for u in page.items]))


@api_bp.post("/users")
@describe(request="UserInput", response="User", status=201)
@requires("users.manage")
def create_user_view():
    """Create a user: ``username``, ``role``, ``password`` (8+ characters), optional ``email``."""
    actor = me()
    user = add_user(db.session(), json_body(), actor=actor.username)
    db.session.commit()
    return jsonify(user_dict(user)), 201


@api_bp.get("/users/<int:user_id>")
@describe(response="UserDetail")
def get_user(user_id: int):
    """One user (admins, or the user themself)."""
    actor = me()
    if actor.id != user_id:
        access.require(actor, "users.manage")
    return jsonify(user_detail(visible_or_404(User, user_id, "user")))


@api_bp.patch("/users/<int:user_id>")
@describe(request="UserPatch", response="UserDetail")
@requires("users.manage")
def update_user_view(user_id: int):
    """Change ``role``, ``email``, ``password``, ``is_active``; ``{"unlock": true}`` clears sign-in delays.

    Setting another user's password is a reset: it must be changed at his next sign-in, and
    his web sessions and API tokens are revoked."""
    actor = me()
    user = update_user(db.session(), visible_or_404(User, user_id, "user"), json_body(), actor=actor)
    db.session.commit()
    return jsonify(user_detail(user))


@api_bp.delete("/users/<int:user_id>")
@describe()
@requires("users.manage")
def delete_user_view(user_id: int):
    """Deactivate a user: sign-in and tokens stop working; history stays attributed to them."""
    actor = me()
    deactivate_user(db.session(), visible_or_404(User, user_id, "user"), actor=actor)
    db.session.commit()
    return no_content()


_USER = {
    "id": {"type": "integer"}, "username": {"type": "string"}, "role": {"type": "string", "enum": list(ROLES)},
    "email": {"type": ["string", "null"]}, "is_active": {"type": "boolean"},
    "must_change_password": {"type": "boolean"}, "last_login_at": DATETIME,
    "created_at": DATETIME, "source": {"type": "string", "enum": ["local", "ldap", "oidc"],
                                       "description": "where the account signs in; external ones have no local password"},
    "mfa": {"type": "boolean", "description": "TOTP enrolled"},
}
register_schema("User", {"type": "object", "properties": _USER})
register_schema("UserDetail", {"type": "object", "properties": {**_USER, "login_delays": {
    "type": "array", "description": "addresses whose sign-ins for this account are slowed down",
    "items": {"type": "object", "properties": {"address": {"type": "string"}, "failures": {"type": "integer"},
                                               "retry_at": DATETIME}}}}})
register_schema("Me", {"type": "object", "properties": {**_USER, "grants": {"type": "array",
                                                                             "items": {"type": "string"}}}})
register_schema("UserInput", {"type": "object", "additionalProperties": False,
                              "required": ["username", "role", "password"], "properties": {
                                  "username": USERNAME_SCHEMA,
                                  "role": {"type": "string", "enum": list(ROLES)},
                                  "password": {"type": "string", "minLength": 8, "writeOnly": True},
                                  "email": EMAIL_SCHEMA}})
register_schema("UserPatch", {"type": "object", "additionalProperties": False, "properties": {
    "role": {"type": "string", "enum": list(ROLES)}, "email": EMAIL_SCHEMA,
    "password": {"type": "string", "minLength": 8, "writeOnly": True}, "is_active": {"type": "boolean"},
    "must_change_password": {"type": "boolean"}, "unlock": {"type": "boolean"},
    "reset_mfa": {"type": "boolean", "description": "true: the user enrols a second factor again"}}})
