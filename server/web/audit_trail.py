"""The audit trail page: filter by actor, action, outcome and dates; verify the chain."""
from __future__ import annotations

from datetime import datetime

from flask import flash, render_template, request
from flask_login import login_required

from server.core import audit, db
from server.core.dates import parse_moment
from server.core.errors import ValidationError
from server.guards import requires
from server.web import web_bp
from server.web.common import page_of


def _day(name: str, end: bool) -> datetime | None:
    """A date filter, or None when empty; malformed or out of range raises ValidationError."""
    raw = (request.args.get(name) or "").strip()
    return parse_moment(raw, name, end=end) if raw else None


@web_bp.get("/audit")
@login_required
@requires("audit.view")
def audit_log():
    filters = {k: (request.args.get(k) or "").strip()[:120] for k in ("actor", "action", "outcome", "from", "to")}
    status = 200
    try:
        since, until = _day("from", False), _day("to", True)
    except ValidationError as err:
        flash(err.message, "error")  # shown on this page: the bad date is left out of the query
        since = until = None
        status = 422
    query = audit.query(db.session(), actor=filters["actor"] or None, action=filters["action"] or None,
                        outcome=filters["outcome"] or None, since=since, until=until)
    page = page_of(query)
    check = audit.verify_trail(db.session()) if request.args.get("verify") else None
    args = {k: v for k, v in filters.items() if v}
    return render_template("admin/audit.html", page=page, filters=filters, args=args, check=check), status
