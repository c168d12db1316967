"""Small helpers the page modules share."""
from __future__ import annotations

from flask import abort
from flask_login import current_user

from server.people import access
from server.core import db

MAX_ID = 2**31 - 1  # larger ids in a URL are a 404, never a database overflow


def need(grant: str) -> None:
    """403 unless the signed-in user's role holds ``grant`` (see access.ROLE_GRANTS)."""
    if not access.has(current_user, grant):
        abort(403)


def get_or_404(model, obj_id: int):
    obj = db.session.get(model, obj_id) if 0 < obj_id <= MAX_ID else None
    if obj is None:
        abort(404)
    return obj
