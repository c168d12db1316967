"""What every view, API and page alike, does first: load the row or 404, check the grant.

One loader (``visible_or_404``) so that a row one may not see answers exactly like a row
that does not exist, and one id bound (``MAX_ID``) so that an id past the database's
integer is a 404, never an overflow. ``requires`` is the role-grant check of
``access.require`` as a decorator. Both raise ``ApiError``s: the API renders them as JSON,
the web blueprint as its plain error pages, so the status is the same either way.
"""
from __future__ import annotations

from functools import wraps
from typing import Callable, TypeVar

from flask import g, request
from flask_login import current_user

from server.core import db
from server.core.errors import NotFound
from server.core.models import User
from server.core.validation import INT32_MAX
from server.people import access

T = TypeVar("T")

MAX_ID = INT32_MAX  # ids are 32-bit integer columns on every database
API_BLUEPRINT = "api"


def visible_or_404(model: type[T], obj_id: int, label: str, visible: Callable[[T], bool] | None = None) -> T:
    """The ``model`` row with this id, if it exists and ``visible(row)`` holds; else NotFound
    ("<label> <id> does not exist"), the same answer for both so existence is not told."""
    obj = db.session.get(model, obj_id) if 0 < obj_id <= MAX_ID else None
    if obj is None or (visible is not None and not visible(obj)):
        raise NotFound(f"{label} {obj_id} does not exist")
    return obj


def acting_user() -> User:
    """Who makes this request: on the API the user its authentication found (a bearer token
    or the session), on pages the signed-in browser user."""
    if request.blueprint == API_BLUEPRINT:
        return g.user
    return current_user._get_current_object()


def requires(grant: str) -> Callable:
    """Refuse the view (403, ``Forbidden``) unless the user's role holds ``grant``.

    Put it below ``@login_required`` on pages, so an anonymous visitor is still sent to the
    sign-in page first; API requests are authenticated before any view runs.
    """
    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def guarded(*args, **kwargs):
            access.require(acting_user(), grant)
            return view(*args, **kwargs)
        return guarded
    return decorate
