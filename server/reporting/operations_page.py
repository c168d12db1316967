"""A page of an execution's operations, for executions too big to send whole.

``GET /api/v1/executions/<id>`` sends every operation (with its steps) up to
``UNPAGED_MAX`` hosts, as it always did. A bigger execution (10,000 hosts would be tens of
megabytes), or any request with ``ops_page``, ``ops_per_page`` or ``ops_status``, gets one
page of operations in host-name order and ``operations_page`` saying where it is:
``{"page", "per_page", "total", "pages", "status"}``. ``ops_status`` keeps one status
(``failed``, ``unreachable``...), so the failed hosts of a big run are one request away.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from server.core.errors import ValidationError
from server.core.models import Execution, Operation, OperationStatus

UNPAGED_MAX = 500
DEFAULT_PER_PAGE = 100
MAX_PER_PAGE = 500
ARGS = ("ops_page", "ops_per_page", "ops_status")


def wanted(args: Mapping[str, str], ex: Execution, unpaged_max: int = UNPAGED_MAX) -> bool:
    return any(a in args for a in ARGS) or (ex.host_count or 0) > unpaged_max


def _int(args: Mapping[str, str], name: str, default: int, highest: int) -> int:
    raw = args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= highest:
        raise ValidationError(f"'{name}' must be a whole number from 1 to {highest}", field=name)
    return int(raw)


def page_args(args: Mapping[str, str]) -> tuple[int, int, str | None]:
    """(page, per_page, status) from the query, each checked (422 naming the argument)."""
    page = _int(args, "ops_page", 1, 1_000_000)
    per_page = _int(args, "ops_per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE)
    status = args.get("ops_status")
    if status is not None and status not in {s.value for s in OperationStatus}:
        raise ValidationError(f"'ops_status' must be one of {', '.join(s.value for s in OperationStatus)}",
                              field="ops_status")
    return page, per_page, status


def operations_page(session: Session, ex: Execution, args: Mapping[str, str]) -> tuple[list[Operation], dict[str, Any]]:
    """One page of ``ex``'s operations (steps loaded) and the ``operations_page`` description."""
    page, per_page, status = page_args(args)
    where = [Operation.execution_id == ex.id] + ([Operation.status == status] if status else [])
    total = session.execute(select(func.count()).select_from(Operation).where(*where)).scalar_one()
    ops = list(session.execute(
        select(Operation).where(*where).order_by(Operation.host_name).offset((page - 1) * per_page).limit(per_page)
        .options(selectinload(Operation.steps))).scalars())
    return ops, {"page": page, "per_page": per_page, "total": total, "pages": max(1, math.ceil(total / per_page)),
                 "status": status}
