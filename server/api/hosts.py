"""Hosts: ``/api/v1/hosts``."""
from __future__ import annotations

from typing import Any

from flask import jsonify, request
from sqlalchemy import or_, select
from sqlalchemy.orm import selectinload

from server.core import db
from server.people.access import filter_hosts, require_host
from server.catalog.hosts import HOST_CHECKS, create_host, create_hosts, delete_host, update_host
from server.core.validation import schema_of
from server.core.models import Group, Host
from server.core.pagination import like_pattern, text_arg
from server.api import api_bp, json_body, me
from server.api.common import iso, no_content, page_of
from server.guards import requires, visible_or_404
from server.api.openapi import DATETIME, VARS, describe, register_schema


def host_dict(host: Host) -> dict[str, Any]:
    return {
        "id": host.id,
        "name": host.name,
        "address": host.address,
        "port": host.port,
        "protocol": host.protocol,
        "groups": [g.name for g in host.groups],
        "vars": host.vars or {},
        "created_at": iso(host.created_at),
        "updated_at": iso(host.updated_at),
    }


@api_bp.get("/hosts")
@describe(response="Host", paged=True, query={"q": {"type": "string", "description": "name or address contains"},
                                              "group": {"type": "string", "description": "member of this group"}})
@requires("hosts.view")
def list_hosts():
    """List hosts by name."""
    query = filter_hosts(select(Host).options(selectinload(Host.groups)).order_by(Host.name), me())
    term = text_arg(request.args, "q")
    if term:
        pattern = like_pattern(term)
        query = query.where(or_(Host.name.ilike(pattern, escape="\\"), Host.address.ilike(pattern, escape="\\")))
    group = text_arg(request.args, "group")
    if group:
        query = query.where(Host.groups.any(Group.name == group))
    page = page_of(query)
    return jsonify(page.envelope([host_dict(h) for h in page.items]))


@api_bp.post("/hosts")
@describe(request="HostInput", response="Host", status=201)
@requires("hosts.edit")
def create_host_view():
    """Add a host, or many: a JSON array of hosts creates them all or none.

    Groups named in ``groups`` are created if missing. Variable names starting with
    ``ansible_`` or ``tm_`` are refused (422), protocol options (``tls_verify``,
    ``ca_bundle``...) are checked by type and value, and protocol ``local`` is for admins
    only (403). An array (at most 10,000 hosts) answers the list of the hosts created, in
    order; a bad item fails the whole request (422) with its index in the message and in
    ``field`` (``[3].port``)."""
    user = me()
    data = json_body(allow_list=True)
    if isinstance(data, list):
        hosts = create_hosts(db.session(), data, actor=user.username)
        db.session.commit()
        return jsonify([host_dict(h) for h in hosts]), 201
    host = create_host(db.session(), data, actor=user.username)
    db.session.commit()
    return jsonify(host_dict(host)), 201


@api_bp.get("/hosts/<int:host_id>")
@describe(response="Host")
@requires("hosts.view")
def get_host(host_id: int):
    """One host."""
    host = visible_or_404(Host, host_id, "host")
    require_host(db.session(), me(), host)
    return jsonify(host_dict(host))


@api_bp.patch("/hosts/<int:host_id>")
@describe(request="HostInput", response="Host")
@requires("hosts.edit")
def update_host_view(host_id: int):
    """Change some fields of a host; ``groups`` replaces the list (same checks as creating;
    only admins may change a ``local`` host or make a host ``local``)."""
    user = me()
    host = visible_or_404(Host, host_id, "host")
    update_host(db.session(), host, json_body(), actor=user.username)
    db.session.commit()
    return jsonify(host_dict(host))


@api_bp.delete("/hosts/<int:host_id>")
@describe(status=204)
@requires("hosts.edit")
def delete_host_view(host_id: int):
    """Remove a host; past operations on it keep its name (``local`` hosts: admins only)."""
    user = me()
    delete_host(db.session(), visible_or_404(Host, host_id, "host"), actor=user.username)
    db.session.commit()
    return no_content()


_HOST_PROPS = {  # generated from the checks the server applies (catalog.hosts.HOST_CHECKS)
    "name": schema_of(HOST_CHECKS["name"]),
    "address": schema_of(HOST_CHECKS["address"], description="DNS name or IP; defaults to the name"),
    "port": schema_of(HOST_CHECKS["port"]),
    "protocol": schema_of(HOST_CHECKS["protocol"], default="ssh"),
    "groups": schema_of(HOST_CHECKS["groups"], description="group names; missing groups are created; null: none"),
    "vars": VARS,
}
register_schema("Host", {"type": "object", "properties": {
    "id": {"type": "integer"}, **_HOST_PROPS,
    "address": {"type": "string", "description": "as given, or the host's name"},  # not re-checked on output
    "groups": {"type": "array", "items": {"type": "string"}},
    "created_at": DATETIME, "updated_at": DATETIME}})
register_schema("HostInput", {"type": "object", "additionalProperties": False, "required": ["name"],
                              "properties": _HOST_PROPS,
                              "description": "POST needs 'name'; PATCH takes any subset"})
