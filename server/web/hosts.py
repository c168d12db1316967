"""Host pages: the list (search, group filter), add, edit and delete.

Thin views: the form becomes the dict the API takes and goes to ``catalog.hosts``; a
refusal comes back next to its field.
"""
from __future__ import annotations

from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import or_, select
from sqlalchemy.orm import selectinload

from server.catalog.connections import test_hosts
from server.catalog.hosts import create_host, delete_host, group_name, update_host
from server.core.errors import ApiError, ValidationError
from server.core.validation import Invalid
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


MAX_BULK = 200


def _selected_hosts() -> list[Host]:
    """The hosts ticked on the list (``host`` ids), each one the user may see."""
    raw = request.form.getlist("host")
    if not raw:
        raise ValidationError("tick at least one host", field="host")
    if len(raw) > MAX_BULK or not all(r.isdigit() and len(r) <= 10 for r in raw):
        raise ValidationError(f"'host' must be at most {MAX_BULK} host ids", field="host")
    hosts = [visible_or_404(Host, int(r), "host") for r in dict.fromkeys(raw)]
    for host in hosts:
        access.require_host(db.session(), current_user, host)
    return hosts


def _bulk_delete(session, hosts: list[Host]) -> str:
    for host in hosts:
        delete_host(session, host, actor=current_user.username)
    return f"Deleted {len(hosts)} host{'s' if len(hosts) != 1 else ''}; their past operations are kept."


def _bulk_group(session, hosts: list[Host]) -> str:
    try:
        name = group_name(request.form.get("group"))
    except Invalid as exc:
        raise ValidationError(f"group name {exc}", field="group") from exc
    for host in hosts:
        if name not in [g.name for g in host.groups]:
            update_host(session, host, {"groups": [g.name for g in host.groups] + [name]}, actor=current_user.username)
    return f"Added {len(hosts)} host{'s' if len(hosts) != 1 else ''} to group {name}."


@web_bp.post("/hosts/selected")
@login_required
@requires("hosts.view")
def hosts_selected():
    """The hosts list's actions on the ticked hosts: delete, add to a group (all or none),
    or test their connections."""
    action = request.form.get("action", "")
    if action not in ("delete", "group", "test"):
        flash("Choose an action: delete, add to group or test connection.", "error")
        return redirect(url_for("web.hosts"))
    if action != "test" and not access.has(current_user, "hosts.edit"):
        abort(403)
    try:
        hosts = _selected_hosts()
        if action == "test":
            results = test_hosts(db.session(), current_user, hosts)
            db.session.commit()
            bad = [r for r in results if not r["ok"]]
            flash(f"{len(results) - len(bad)} of {len(results)} hosts answered.", "success" if not bad else "error")
            for r in bad:
                flash(f"{r['host']}: {r['reason']}", "error")
        else:
            done, errors = save(_bulk_delete if action == "delete" else _bulk_group, hosts)
            flash(errors.text if errors else done, "error" if errors else "success")
    except ApiError as err:
        db.session.rollback()
        flash(err.message, "error")
    return redirect(request.referrer if (request.referrer or "").startswith(request.host_url) else url_for("web.hosts"))
