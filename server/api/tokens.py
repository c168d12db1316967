"""API tokens: the password exchange (``POST /api/v1/auth/token``) and list, create and
revoke (``/api/v1/tokens``). Only hashes are stored, so a token's value is shown once, in
the response that creates it."""
from __future__ import annotations

from typing import Any

from flask import g, jsonify, request
from sqlalchemy import select

from server.api import api_bp, json_body, me
from server.api.common import iso, no_content
from server.api.openapi import DATETIME, describe, register_schema
from server.core.validation import schema_of
from server.core import db
from server.core.errors import ValidationError
from server.core.models import ApiToken, User
from server.core.pagination import bool_arg, text_arg
from server.guards import visible_or_404
from server.people.web_sessions import mfa_at as web_mfa_at
from server.core.models import utcnow
from server.people import access, mfa, scopes
from server.people.accounts import revoke_token, token_name, tokens_of
from server.people.auth import EXPIRES_IN_SCHEMA, _token_hash, complete, first_factor, issue_token, token_expiry
from server.people.login_throttle import LoginThrottled

TOKEN_FIELDS = {"name", "scopes", "expires_in_s"}


@api_bp.post("/auth/token")
@describe(request="TokenRequest", response="TokenValue", status=201)
def create_token():
    """Trade a password (and, with MFA, ``otp``) for a token, optionally limited to
    ``scopes`` and expiring after ``expires_in_s``. Refused (403) while the password must be
    changed or a required second factor is not enrolled; 401 ``otp_required`` /
    ``invalid_otp``; 429 with ``Retry-After`` while sign-ins for this account from this
    address are delayed."""
    data = json_body()
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        raise ValidationError("'username' and 'password' are required strings")
    unknown = sorted(set(data) - TOKEN_FIELDS - {"username", "password", "otp"})
    if unknown:
        raise ValidationError(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])
    name = token_name(data.get("name"))
    expires_at = token_expiry(data.get("expires_in_s"))
    s = db.session()
    try:
        user = first_factor(s, username, password)
        wanted = scopes.parse(data.get("scopes"), user.role)
        mfa_at = complete(s, user, data.get("otp"), via="api")
    except LoginThrottled as exc:
        resp = jsonify(exc.to_dict())
        resp.status_code = exc.status
        resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
    if mfa.must_enrol(s, user):
        s.commit()
        raise mfa.EnrollmentRequired(f"role '{user.role}' must use a second factor: enrol TOTP in the web UI "
                                     "(Account) before creating API tokens")
    token = issue_token(s, user, name=name, actor=user.username, scopes=wanted, expires_at=expires_at,
                        mfa_at=mfa_at)
    s.commit()
    return jsonify({"token": token}), 201


def token_dict(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "prefix": token.prefix,
        "user": token.user.username,
        "created_at": iso(token.created_at),
        "last_used_at": iso(token.last_used_at),
        "revoked_at": iso(token.revoked_at),
        "expires_at": iso(token.expires_at),
        "scopes": sorted(scopes.effective(token.scopes, token.user.role)),
        "active": token.revoked_at is None and (token.expires_at is None or token.expires_at > utcnow()),
    }


@api_bp.get("/tokens")
@describe(response="Token", query={"user": {"type": "string", "description": "admins: this user's tokens"},
                                   "all": {"type": "boolean", "description": "admins: everyone's tokens"},
                                   "active": {"type": "boolean", "description": "only tokens not revoked"}})
def list_tokens():
    """Your API tokens (never their values); admins may list anyone's."""
    actor = me()
    s = db.session()
    target: User | None = actor
    name = text_arg(request.args, "user")
    if name or bool_arg(request.args, "all"):
        access.require(actor, "users.manage")
        target = None
        if name:
            target = s.execute(select(User).where(User.username == name)).scalar_one_or_none()
            if target is None:
                raise ValidationError(f"no user named {name!r}", field="user")
    active_only = bool(bool_arg(request.args, "active"))
    items = [token_dict(t) for t in tokens_of(s, target, include_revoked=not active_only)]
    return jsonify({"items": items, "total": len(items)})


@api_bp.post("/tokens")
@describe(request="TokenInput", response="NewToken", status=201, body_optional=True)
def create_api_token():
    """Create a token for yourself; the response is the only time its value is shown.

    Refused (403 ``password_change_required``) while your password must be changed."""
    actor = me()
    data = json_body(required=False)
    unknown = sorted(set(data) - TOKEN_FIELDS)
    if unknown:
        raise ValidationError(f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(sorted(TOKEN_FIELDS))})",
                              field=unknown[0])
    caller = g.api_token
    within = scopes.effective(caller.scopes, actor.role) if caller is not None else None
    wanted = scopes.parse(data.get("scopes"), actor.role, within=within)
    s = db.session()
    value = issue_token(s, actor, name=token_name(data.get("name")), actor=actor.username, scopes=wanted,
                        expires_at=token_expiry(data.get("expires_in_s")),
                        mfa_at=caller.mfa_at if caller is not None else web_mfa_at())
    s.commit()
    row = s.execute(select(ApiToken).where(ApiToken.token_hash == _token_hash(value))).scalar_one()
    return jsonify({**token_dict(row), "token": value}), 201


@api_bp.delete("/tokens/<int:token_id>")
@describe()
def revoke_api_token(token_id: int):
    """Revoke a token (yours; admins: anyone's). It stops working at once."""
    actor = me()
    token = visible_or_404(ApiToken, token_id, "token",
                           lambda t: t.user_id == actor.id or access.has(actor, "users.manage"))
    revoke_token(db.session(), token, actor=actor)
    db.session.commit()
    return no_content()


SCOPE_LIST = {"type": ["array", "null"], "minItems": 1, "items": {"type": "string", "enum": list(scopes.SCOPES)},
              "description": "default (null): every scope the owner's role holds; never more than it holds"}
register_schema("Token", {"type": "object", "properties": {
    "id": {"type": "integer"}, "name": {"type": "string"}, "prefix": {"type": "string"},
    "user": {"type": "string"}, "created_at": DATETIME, "last_used_at": DATETIME, "revoked_at": DATETIME,
    "expires_at": DATETIME, "scopes": SCOPE_LIST, "active": {"type": "boolean"}}})
register_schema("TokenInput", {"type": "object", "additionalProperties": False, "properties": {
    "name": schema_of(token_name), "scopes": SCOPE_LIST,
    "expires_in_s": EXPIRES_IN_SCHEMA}})
register_schema("NewToken", {"allOf": [{"$ref": "#/components/schemas/Token"}, {"type": "object", "properties": {
    "token": {"type": "string", "description": "shown once"}}}]})
register_schema("TokenRequest", {"type": "object", "required": ["username", "password"], "additionalProperties": False,
                                 "properties": {
    "username": {"type": "string", "minLength": 1}, "password": {"type": "string"},
    "otp": {"type": "string", "description": "a current TOTP code or an unused recovery code, once TOTP is on"},
    "name": schema_of(token_name), "scopes": SCOPE_LIST,
    "expires_in_s": EXPIRES_IN_SCHEMA}})
register_schema("TokenValue", {"type": "object", "properties": {"token": {"type": "string"}}})
