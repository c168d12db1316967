"""Groups and their tree: the write path shared by the API and the web form.

A group has variables, an optional ``ansible_group_priority`` and child groups; the
generated inventory emits that tree as is, so Ansible's own precedence applies (see
runs/inventory.py). Children must already exist (a typo would otherwise create a group
silently) and the tree stays a tree in the sense Ansible needs: no group may be its own
descendant (Ansible refuses such an inventory, so the mistake is a 422 when saved, not a
failed run later). Hosts join groups from the host side (catalog.hosts).

The stored ``all`` group holds an imported ``[all:vars]``: only its variables may change.
Deleting a group that a task targets is refused (the task would silently lose hosts).
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.catalog.hosts import group_name, is_admin
from server.core import audit
from server.core.errors import Conflict, Forbidden, ValidationError
from server.core.models import Group, Task, host_groups, task_groups
from server.core.validation import INT32_MAX, Fields, integer, name_list, variables

GROUP_FIELDS = ("name", "children", "priority", "vars")
# The checks of a group's fields: check_group applies them, the OpenAPI GroupInput is made of them.
GROUP_CHECKS = {
    "name": group_name,
    "children": name_list(item=group_name),
    "priority": integer(-INT32_MAX, INT32_MAX, nullable=True),
    "vars": variables,
}


def host_counts(session: Session, ids: list[int]) -> dict[int, int]:
    """Group id -> how many hosts are direct members (for a page of groups, one query)."""
    if not ids:
        return {}
    rows = session.execute(select(host_groups.c.group_id, func.count()).where(host_groups.c.group_id.in_(ids))
                           .group_by(host_groups.c.group_id)).tuples()
    return {gid: n for gid, n in rows}


def check_group(session: Session, data: Any, group: Group | None = None, *, actor: str | None = None) -> dict[str, Any]:
    """Validated values for a new group (``group`` None) or the changed fields of ``group``;
    ``children`` comes back as rows.

    A task that targets a group reaches the hosts of the groups below it, so putting a group
    that holds a ``local`` host (the Task Manager server itself) under another group is, like
    editing such a host, for admins only."""
    f = Fields(data, GROUP_FIELDS, partial=group is not None)
    for key in GROUP_FIELDS:
        f.take(key, GROUP_CHECKS[key], required=key == "name",
               default={"children": list, "priority": None, "vars": dict}.get(key))
    f.raise_if_invalid()
    clean = f.clean
    if group is not None and group.name == "all":
        fixed = sorted(k for k in clean if k != "vars")
        if fixed:
            raise ValidationError("the 'all' group holds variables for every host: only 'vars' may change",
                                  field=fixed[0])
    name = clean.get("name")
    if name is not None and (group is None or name != group.name):
        if session.execute(select(Group.id).where(Group.name == name)).first():
            raise Conflict(f"a group named {name!r} already exists", field="name")
    if "children" in clean:
        names = clean["children"]
        rows = {g.name: g for g in session.execute(select(Group).where(Group.name.in_(names))).scalars()} \
            if names else {}
        missing = [n for n in names if n not in rows]
        if missing:
            raise ValidationError(f"'children' names unknown group{'s' if len(missing) > 1 else ''}: "
                                  f"{', '.join(missing)} (add them first)", field="children")
        own = {name, group.name if group is not None else None} - {None}
        for kid in (rows[n] for n in names):
            if kid.name in own or (group is not None and group in kid.subtree()):
                raise ValidationError(f"'children' may not contain {kid.name!r}: a group cannot be its own "
                                      "descendant", field="children")
        added = [kid for kid in rows.values() if group is None or kid not in group.children]
        local = sorted({h.name for kid in added for h in kid.member_hosts() if h.protocol == "local"})
        if local and not is_admin(session, actor):
            raise Forbidden(f"'children' would make tasks of this group reach {', '.join(local)} (protocol 'local': "
                            "the Task Manager server itself): only admins may", field="children")
        clean["children"] = sorted(rows.values(), key=lambda g: g.name)
    return clean


def create_group(session: Session, data: Any, *, actor: str | None) -> Group:
    clean = check_group(session, data, actor=actor)
    group = Group(name=clean["name"], vars=clean["vars"], priority=clean["priority"], children=clean["children"])
    session.add(group)
    session.flush()
    audit.record(session, "group.create", actor=actor, target=group, name=group.name,
                 children=[c.name for c in group.children], priority=group.priority, vars=sorted(group.vars))
    return group


def update_group(session: Session, group: Group, data: Any, *, actor: str | None) -> Group:
    clean = check_group(session, data, group, actor=actor)
    changed = []
    if "children" in clean:
        if [c.name for c in group.children] != [c.name for c in clean["children"]]:
            changed.append("children")
            group.children = clean["children"]
        del clean["children"]
    for key, value in clean.items():
        if getattr(group, key) != value:
            changed.append(key)
            setattr(group, key, value)
    session.flush()
    session.refresh(group, ["children"])  # relationship order by name
    if changed:
        audit.record(session, "group.update", actor=actor, target=group, name=group.name, changed=sorted(changed),
                     children=[c.name for c in group.children])
    return group


def delete_group(session: Session, group: Group, *, actor: str | None) -> None:
    """Remove the group (its hosts stay, its children lose this parent); 409 while a task
    targets it."""
    tasks = list(session.execute(
        select(Task.name).join(task_groups, task_groups.c.task_id == Task.id)
        .where(task_groups.c.group_id == group.id).order_by(Task.name)).scalars())
    if tasks:
        raise Conflict(f"group {group.name!r} is a target of task{'s' if len(tasks) > 1 else ''} "
                       f"{', '.join(tasks)}: remove it there first")
    audit.record(session, "group.delete", actor=actor, target=group, name=group.name,
                 hosts=[h.name for h in group.hosts][:1000], children=[c.name for c in group.children],
                 parents=[p.name for p in group.parents])
    session.delete(group)
    session.flush()
