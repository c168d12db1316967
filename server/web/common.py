"""Helpers the page modules share: paging, search boxes, and saving a form.

Loading a row and checking a grant are ``server.guards`` (``visible_or_404``, ``requires``),
the same for pages and the API; their refusals become plain error pages here
(``web.__init__``'s handler for ``ApiError``).
"""
from __future__ import annotations

from typing import Any, Callable

from flask import request
from sqlalchemy.exc import IntegrityError

from server.core import db
from server.core.errors import ApiError
from server.core.pagination import Page, page_args, paginate, text_arg
from server.web.forms import FormError, errors_of

PER_PAGE = 50
CONFLICT = "conflicts with an existing record (changed meanwhile?)"


def page_of(query) -> Page:
    """A page of ``query`` from ?page (bad values fall back to the first page)."""
    try:
        page, _ = page_args(request.args)
    except ApiError:
        page = 1
    return paginate(db.session(), query, page, PER_PAGE)


def search_arg(name: str = "q") -> str | None:
    """A search box's text, or None when empty or unusable (a page never fails on it)."""
    try:
        return text_arg(request.args, name)
    except ApiError:
        return None


class FormErrors(dict):
    """Field -> message of a refused form ('_' for the whole form), falsy when nothing was refused.

    ``status`` is what the page answers (the service's: 422 invalid, 409 conflict, 403 a
    refused right); ``field``/``message`` the first problem, ``text`` it in one line for a
    flash or a page-level message.
    """

    status = 200
    field: str | None = None
    message = ""

    @classmethod
    def of(cls, err: ApiError | FormError) -> FormErrors:
        errors = cls(errors_of(err))
        errors.status = err.status if isinstance(err, ApiError) else 422
        errors.field, errors.message = err.field, err.message
        return errors

    @classmethod
    def conflict(cls) -> FormErrors:
        """A unique constraint hit by a concurrent change the service's own check missed."""
        errors = cls(name=CONFLICT)
        errors.status, errors.message = 409, CONFLICT
        return errors

    @property
    def text(self) -> str:
        if self.field and self.field not in self.message:
            return f"{self.field}: {self.message}"
        return self.message


def save(action: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, FormErrors]:
    """Run ``action(session, *args, **kwargs)`` and commit; on a refusal roll back and return
    its errors instead, for the form to show next to its fields."""
    try:
        result = action(db.session(), *args, **kwargs)
        db.session.commit()
        return result, FormErrors()
    except (ApiError, FormError) as err:
        db.session.rollback()
        return None, FormErrors.of(err)
    except IntegrityError:
        db.session.rollback()
        return None, FormErrors.conflict()
