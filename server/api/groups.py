"""Groups and their tree: ``/api/v1/groups``."""
from __future__ import annotations

from typing import Any

from flask import jsonify, request
from sqlalchemy import false, select
from sqlalchemy.orm import selectinload

from server.catalog.groups import GROUP_CHECKS, create_group, delete_group, host_counts, update_group
from server.core import db
from server.core.models import Group
from server.core.pagination import like_pattern, text_arg
from server.core.validation import schema_of
from server.people.access import visible_group_ids
from server.api import api_bp, json_body, me
from server.api.common import no_content, page_of
from server.guards import requires, visible_or_404
from server.api.openapi import NAMES, VARS, describe, register_schema


def group_dict(group: Group, host_count: int) -> dict[str, Any]:
    return {
        "id": group.id,
        "name": group.name,
        "priority": group.priority,
        "children": [c.name for c in group.children],
        "parents": [p.name for p in group.parents],
        "vars": group.vars or {},
        "host_count": host_count,
    }


def _visible(group: Group) -> bool:
    ids = visible_group_ids(db.session(), me())
    return ids is None or group.id in ids


@api_bp.get("/groups")
@describe(response="Group", paged=True, query={"q": {"type": "string", "description": "name contains"}})
@requires("hosts.view")
def list_groups():
    """List groups by name (operators and approvers: the groups of what their tasks target)."""
    query = select(Group).options(selectinload(Group.children), selectinload(Group.parents)).order_by(Group.name)
    ids = visible_group_ids(db.session(), me())
    if ids is not None:
        query = query.where(Group.id.in_(ids) if ids else false())
    term = text_arg(request.args, "q")
    if term:
        query = query.where(Group.name.ilike(like_pattern(term), escape="\\"))
    page = page_of(query)
    counts = host_counts(db.session(), [g.id for g in page.items])
    return jsonify(page.envelope([group_dict(g, counts.get(g.id, 0)) for g in page.items]))


@api_bp.post("/groups")
@describe(request="GroupInput", response="Group", status=201)
@requires("hosts.edit")
def create_group_view():
    """Add a group. ``children`` must name existing groups, and no group may end up its own
    descendant (422 on ``children``); hosts join groups through ``/hosts``."""
    group = create_group(db.session(), json_body(), actor=me().username)
    db.session.commit()
    return jsonify(group_dict(group, 0)), 201


@api_bp.get("/groups/<int:group_id>")
@describe(response="Group")
@requires("hosts.view")
def get_group(group_id: int):
    """One group."""
    group = visible_or_404(Group, group_id, "group", _visible)
    return jsonify(group_dict(group, host_counts(db.session(), [group.id]).get(group.id, 0)))


@api_bp.patch("/groups/<int:group_id>")
@describe(request="GroupInput", response="Group")
@requires("hosts.edit")
def update_group_view(group_id: int):
    """Change some fields of a group; ``children`` replaces the list (same checks as
    creating). The stored ``all`` group (an imported ``[all:vars]``) takes only ``vars``."""
    group = visible_or_404(Group, group_id, "group")
    update_group(db.session(), group, json_body(), actor=me().username)
    db.session.commit()
    return jsonify(group_dict(group, host_counts(db.session(), [group.id]).get(group.id, 0)))


@api_bp.delete("/groups/<int:group_id>")
@describe(status=204)
@requires("hosts.edit")
def delete_group_view(group_id: int):
    """Remove a group: its hosts and child groups stay; 409 while a task targets it."""
    delete_group(db.session(), visible_or_404(Group, group_id, "group"), actor=me().username)
    db.session.commit()
    return no_content()


_GROUP_PROPS = {  # generated from the checks the server applies (catalog.groups.GROUP_CHECKS)
    "name": schema_of(GROUP_CHECKS["name"]),
    "children": schema_of(GROUP_CHECKS["children"], description="names of existing groups; null: none"),
    "priority": schema_of(GROUP_CHECKS["priority"], description="ansible_group_priority; null: Ansible's 1"),
    "vars": VARS,
}
register_schema("Group", {"type": "object", "properties": {
    "id": {"type": "integer"}, **_GROUP_PROPS,
    "name": {"type": "string"},  # the stored 'all' group keeps its reserved name
    "children": NAMES, "parents": NAMES, "host_count": {"type": "integer", "minimum": 0}}})
register_schema("GroupInput", {"type": "object", "additionalProperties": False, "required": ["name"],
                               "properties": _GROUP_PROPS,
                               "description": "POST needs 'name'; PATCH takes any subset"})
