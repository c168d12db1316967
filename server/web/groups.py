"""Group pages: the list with each group's tree, add, edit and delete.

Thin views like the host pages: the form becomes the dict the API takes and goes to
``catalog.groups``; a refusal (an unknown child, a cycle) comes back next to its field.
"""
from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import false, select
from sqlalchemy.orm import selectinload

from server.catalog.groups import create_group, delete_group, host_counts, update_group
from server.core import db
from server.core.models import Group
from server.core.pagination import like_pattern
from server.guards import requires, visible_or_404
from server.people import access
from server.web import web_bp
from server.web.common import page_of, save, search_arg
from server.web.forms import dump_vars, int_or_text, parse_vars, split_names


@web_bp.get("/groups")
@login_required
@requires("hosts.view")
def groups():
    query = select(Group).options(selectinload(Group.children), selectinload(Group.parents)).order_by(Group.name)
    ids = access.visible_group_ids(db.session(), current_user)
    if ids is not None:
        query = query.where(Group.id.in_(ids) if ids else false())
    q = search_arg("q")
    if q:
        query = query.where(Group.name.ilike(like_pattern(q), escape="\\"))
    page = page_of(query)
    counts = host_counts(db.session(), [g.id for g in page.items])
    return render_template("groups/list.html", page=page, q=q or "", counts=counts,
                           can_edit=access.has(current_user, "hosts.edit"))


def _group_data(form, group: Group | None) -> dict[str, Any]:
    data: dict[str, Any] = {"vars": parse_vars(form.get("vars", ""))}
    if group is None or group.name != "all":  # the stored 'all' group takes only variables
        data.update(name=form.get("name", ""), children=split_names(form.get("children", "")),
                    priority=int_or_text(form.get("priority")))
    return data


def _group_form(group: Group | None, errors: dict[str, str] | None = None, status: int = 200):
    if request.method == "POST":
        values = request.form.to_dict()
    elif group is not None:
        values = {"name": group.name, "children": ", ".join(c.name for c in group.children),
                  "priority": "" if group.priority is None else group.priority, "vars": dump_vars(group.vars)}
    else:
        values = {}
    known = db.session.execute(select(Group.name).where(Group.name != "all").order_by(Group.name)).scalars().all()
    return render_template("groups/form.html", group=group, form=values, errors=errors or {},
                           known_groups=known), status


@web_bp.route("/groups/new", methods=["GET", "POST"])
@login_required
@requires("hosts.edit")
def group_new():
    if request.method == "GET":
        return _group_form(None)
    group, errors = save(lambda s: create_group(s, _group_data(request.form, None), actor=current_user.username))
    if errors:
        return _group_form(None, errors, errors.status)
    flash(f"Group {group.name} added.", "success")
    return redirect(url_for("web.groups"))


@web_bp.route("/groups/<int:group_id>/edit", methods=["GET", "POST"])
@login_required
@requires("hosts.edit")
def group_edit(group_id: int):
    group = visible_or_404(Group, group_id, "group")
    if request.method == "GET":
        return _group_form(group)
    _, errors = save(lambda s: update_group(s, group, _group_data(request.form, group),
                                            actor=current_user.username))
    if errors:
        return _group_form(visible_or_404(Group, group_id, "group"), errors, errors.status)
    flash(f"Group {group.name} saved.", "success")
    return redirect(url_for("web.groups"))


@web_bp.post("/groups/<int:group_id>/delete")
@login_required
@requires("hosts.edit")
def group_delete(group_id: int):
    group = visible_or_404(Group, group_id, "group")
    name = group.name
    _, errors = save(delete_group, group, actor=current_user.username)
    if errors:
        flash(errors.message, "error")
    else:
        flash(f"Group {name} deleted; its hosts and child groups are kept.", "success")
    return redirect(url_for("web.groups"))
