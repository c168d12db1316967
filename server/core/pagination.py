"""One way to page through lists, for the API (``?page``, ``?per_page``) and the pages."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from server.core.errors import ValidationError

DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 200
MAX_PAGE = 1_000_000
MAX_TEXT_ARG = 200
# The OpenAPI side of the same rules (api/openapi.py reads these, so spec and server agree).
PAGE_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1}
MAX_INT_ARG = 999_999_999  # nine digits: what _int_arg reads
PER_PAGE_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_INT_ARG, "default": DEFAULT_PER_PAGE,
                   "description": f"values above {MAX_PER_PAGE} are read as {MAX_PER_PAGE}"}
TEXT_ARG_SCHEMA = {"type": "string", "maxLength": MAX_TEXT_ARG, "pattern": "^[^\\x00-\\x1f\\x7f]*$"}


@dataclass
class Page:
    items: list[Any]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages

    def envelope(self, items: list[Any]) -> dict[str, Any]:
        """The API's list shape."""
        return {"items": items, "page": self.page, "per_page": self.per_page, "total": self.total}


def _int_arg(args: Mapping[str, str], name: str, default: int) -> int:
    raw = args.get(name)
    if raw is None:
        return default
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(MAX_INT_ARG)):  # not '²' (isdigit, no int)
        raise ValidationError(f"'{name}' must be a positive integer", field=name)
    value = int(raw)
    if value < 1:
        raise ValidationError(f"'{name}' must be a positive integer", field=name)
    return value


def page_args(args: Mapping[str, str], default_per_page: int = DEFAULT_PER_PAGE) -> tuple[int, int]:
    """(page, per_page) from query arguments; per_page is capped at MAX_PER_PAGE."""
    page = _int_arg(args, "page", 1)
    if page > MAX_PAGE:
        raise ValidationError(f"'page' must be at most {MAX_PAGE}", field="page")
    per_page = min(_int_arg(args, "per_page", default_per_page), MAX_PER_PAGE)
    return page, per_page


def paginate(session: Session, query: Select, page: int, per_page: int) -> Page:
    total = session.execute(select(func.count()).select_from(query.order_by(None).subquery())).scalar_one()
    items = list(session.execute(query.limit(per_page).offset((page - 1) * per_page)).scalars().unique())
    return Page(items=items, page=page, per_page=per_page, total=total)


def bool_arg(args: Mapping[str, str], name: str) -> bool | None:
    """A true/false query argument (``true``/``1``/``yes``, ``false``/``0``/``no``); absent: None."""
    raw = args.get(name)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ValidationError(f"'{name}' must be true or false", field=name)


def text_arg(args: Mapping[str, str], name: str, max_len: int = MAX_TEXT_ARG) -> str | None:
    """A free-text filter argument (search box), stripped; control characters refused."""
    raw = (args.get(name) or "").strip()
    if not raw:
        return None
    if len(raw) > max_len or any(ord(ch) < 32 or ch == "\x7f" for ch in raw):
        raise ValidationError(f"'{name}' must be at most {max_len} printable characters", field=name)
    return raw


def like_pattern(term: str) -> str:
    """A case-insensitive LIKE pattern matching ``term`` literally (escape char: backslash)."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
