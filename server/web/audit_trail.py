"""The audit trail page: filter by actor, action, outcome and dates; verify the chain.

Rows name their targets ("user alice", not "user 4") and show their detail as fields; the
action filter finds every action of a kind ("approval" finds approval.decide, ...).
"""
from __future__ import annotations

from datetime import datetime

from flask import flash, render_template, request
from flask_login import login_required
from sqlalchemy import select

from server.core import audit, db
from server.core.dates import parse_moment
from server.core.errors import ValidationError
from server.core.models import Credential, Group, Host, NotificationChannel, Policy, Task, User
from server.guards import requires
from server.web import web_bp
from server.web.common import page_of


# target_type (the model's lower-cased class name) -> the model and how a person names it
TARGETS = {
    "user": (User, User.username), "task": (Task, Task.name), "host": (Host, Host.name), "group": (Group, Group.name),
    "credential": (Credential, Credential.name), "policy": (Policy, Policy.name),
    "notificationchannel": (NotificationChannel, NotificationChannel.name),
}
LINKS = {"task": "/tasks/{}", "execution": "/executions/{}", "schedule": "/schedules/{}"}


def target_labels(session, rows) -> dict[tuple[str, str], str]:
    """(target_type, target_id) -> the target's current name, one query per type on the page."""
    wanted: dict[str, set[int]] = {}
    for r in rows:
        if r.target_type in TARGETS and (r.target_id or "").isdigit():
            wanted.setdefault(r.target_type, set()).add(int(r.target_id))
    labels = {}
    for kind, ids in wanted.items():
        model, name = TARGETS[kind]
        for row_id, label in session.execute(select(model.id, name).where(model.id.in_(sorted(ids)))):
            labels[(kind, str(row_id))] = label
    return labels


def _action_filter(raw: str) -> str | None:
    """A bare word ("approval") finds every action starting with it, as "approval.*" does."""
    if not raw:
        return None
    return raw if raw.endswith(("*", ".")) or "." in raw else raw + "*"


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
    query = audit.query(db.session(), actor=filters["actor"] or None, action=_action_filter(filters["action"]),
                        outcome=filters["outcome"] or None, since=since, until=until)
    page = page_of(query)
    check = audit.verify_trail(db.session()) if request.args.get("verify") else None
    args = {k: v for k, v in filters.items() if v}
    return render_template("admin/audit.html", page=page, filters=filters, args=args, check=check,
                           labels=target_labels(db.session(), page.items), links=LINKS), status
