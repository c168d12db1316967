"""Token exchange: ``POST /api/v1/auth/token`` with username and password."""
from __future__ import annotations

from flask import jsonify

from server.core import db
from server.people.accounts import token_name
from server.people.auth import authenticate, issue_token
from server.core.errors import ValidationError
from server.people.login_throttle import LoginThrottled
from server.api import api_bp, json_body


@api_bp.post("/auth/token")
def create_token():
    """Trade a password for a token. Refused (403) while the password must be changed;
    429 with ``Retry-After`` while sign-ins for this account from this address are delayed."""
    data = json_body()
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        raise ValidationError("'username' and 'password' are required strings")
    name = token_name(data.get("name"))
    s = db.session()
    try:
        user = authenticate(s, username, password)
    except LoginThrottled as exc:
        resp = jsonify(exc.to_dict())
        resp.status_code = exc.status
        resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
    token = issue_token(s, user, name=name, actor=user.username)
    s.commit()
    return jsonify({"token": token}), 201
