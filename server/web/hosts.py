"""Host pages: the list (search, group filter), add, edit and delete.

Thin views: the form becomes the dict the API takes and goes to ``catalog.hosts``; a
refusal comes back next to its field.
"""
from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import or_, select
from sqlalchemy.orm import selectinload

from server.catalog.hosts import create_host, delete_host, update_host
from server.core import db
from server.core.models import PROTOCOLS, Group, Host
from server.core.pagination import like_pattern
from server.guards import requires, visible_or_404
from server.people import access
from server.web import web_bp
from server.web.common import page_of, save, search_arg
from server.web.forms import dump_vars, int_or_text, parse_vars, split_names


@web_bp.get("/hosts")
@login_required
@requires("hosts.view")
def hosts():
    query = access.filter_hosts(select(Host).options(selectinload(Host.groups)).order_by(Host.name), current_user)
    q, group = search_arg("q"), search_arg("group")
    if q:
        pattern = like_pattern(q)
        query = query.where(or_(Host.name.ilike(pattern, escape="\\"), Host.address.ilike(pattern, escape="\\")))
    if group:
        query = query.where(Host.groups.any(Group.name == group))
    groups = db.session.execute(select(Group.name).order_by(Group.name)).scalars().all()
    return render_template("hosts/list.html", page=page_of(query), q=q or "", group=group or "", groups=groups,
                           can_edit=access.has(current_user, "hosts.edit"))


def _host_data(form) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": form.get("name", ""),
        "port": int_or_text(form.get("port")),
        "protocol": form.get("protocol", "ssh"),
        "groups": split_names(form.get("groups", "")),
        "vars": parse_vars(form.get("vars", "")),
    }
    if form.get("address", "").strip():
        data["address"] = form["address"]
    return data


def _host_form(host: Host | None, errors: dict[str, str] | None = None, status: int = 200):
    if request.method == "POST":
        values = request.form.to_dict()
    elif host is not None:
        values = {"name": host.name, "address": host.address, "port": host.port or "", "protocol": host.protocol,
                  "groups": ", ".join(g.name for g in host.groups), "vars": dump_vars(host.vars)}
    else:
        values = {"protocol": "ssh"}
    known_groups = db.session.execute(select(Group.name).order_by(Group.name)).scalars().all()
    return render_template("hosts/form.html", host=host, form=values, errors=errors or {}, protocols=PROTOCOLS,
                           known_groups=known_groups), status


@web_bp.route("/hosts/new", methods=["GET", "POST"])
@login_required
@requires("hosts.edit")
def host_new():
    if request.method == "GET":
        return _host_form(None)
    host, errors = save(lambda s: create_host(s, _host_data(request.form), actor=current_user.username))
    if errors:
        return _host_form(None, errors, errors.status)
    flash(f"Host {host.name} added.", "success")
    return redirect(url_for("web.hosts"))


@web_bp.route("/hosts/<int:host_id>/edit", methods=["GET", "POST"])
@login_required
@requires("hosts.edit")
def host_edit(host_id: int):
    host = visible_or_404(Host, host_id, "host")
    if request.method == "GET":
        return _host_form(host)
    _, errors = save(lambda s: update_host(s, host, _host_data(request.form), actor=current_user.username))
    if errors:
        return _host_form(visible_or_404(Host, host_id, "host"), errors, errors.status)
    flash(f"Host {host.name} saved.", "success")
    return redirect(url_for("web.hosts"))


@web_bp.post("/hosts/<int:host_id>/delete")
@login_required
@requires("hosts.edit")
def host_delete(host_id: int):
    host = visible_or_404(Host, host_id, "host")
    name = host.name
    _, errors = save(delete_host, host, actor=current_user.username)
    if errors:
        flash(errors.message, "error")
    else:
        flash(f"Host {name} deleted; its past operations are kept.", "success")
    return redirect(url_for("web.hosts"))
