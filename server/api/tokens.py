"""Token exchange: ``POST /api/v1/auth/token`` with username and password."""
from __future__ import annotations

from flask import jsonify

from .. import db
from ..auth import authenticate, issue_token
from ..errors import ValidationError
from . import api_bp, json_body


@api_bp.post("/auth/token")
def create_token():
    data = json_body()
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        raise ValidationError("'username' and 'password' are required strings")
    s = db.session()
    user = authenticate(s, username, password)
    token = issue_token(s, user, name=str(data.get("name") or "api"))
    s.commit()
    return jsonify({"token": token}), 201
