"""Hosts and their groups: the write path shared by the API and the web forms.

Groups are named by hosts and created on first mention, as in an Ansible inventory.
Deleting a host keeps the operations that ran on it (they keep ``host_name``).
"""
from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import audit
from .errors import Conflict
from .models import PROTOCOLS, Group, Host, Task, task_hosts
from .validation import (
    GROUP_NAME_RE,
    HOST_NAME_RE,
    RESERVED_GROUPS,
    Fields,
    Invalid,
    choice,
    integer,
    name_list,
    text,
    variables,
)

HOST_FIELDS = ("name", "address", "port", "protocol", "groups", "vars")
ADDRESS_RE = re.compile(r"^[A-Za-z0-9_.:\-\[\]%]+$")

host_name = text(255, pattern=HOST_NAME_RE,
                 pattern_hint="may contain only letters, digits and . _ - : @ [ ] (no spaces)")
address = text(255, pattern=ADDRESS_RE, pattern_hint="must be a DNS name or an IP address")
_group_name_text = text(120, pattern=GROUP_NAME_RE,
                        pattern_hint="must start with a letter or _ and contain only letters, digits and _ . -")


def group_name(value: Any) -> str:
    name = _group_name_text(value)
    if name in RESERVED_GROUPS:
        raise Invalid(f"may not be '{name}' (reserved by Ansible)")
    return name


def check_host(session: Session, data: Any, host: Host | None = None) -> dict[str, Any]:
    """Validated values for a new host (``host`` None) or the changed fields of ``host``."""
    f = Fields(data, HOST_FIELDS, partial=host is not None)
    f.take("name", host_name, required=True)
    f.take("address", address)
    f.take("port", integer(1, 65535, nullable=True), default=None)
    f.take("protocol", choice(PROTOCOLS), default="ssh")
    f.take("groups", name_list(item=group_name), default=list)
    f.take("vars", variables, default=dict)
    f.raise_if_invalid()
    if host is None and "address" not in f.clean:
        f.clean["address"] = f.clean["name"]  # like Ansible: the name is the address unless told
    name = f.clean.get("name")
    if name is not None and (host is None or name != host.name):
        if session.execute(select(Host.id).where(Host.name == name)).first():
            raise Conflict(f"a host named {name!r} already exists", field="name")
    return f.clean


def ensure_groups(session: Session, names: list[str], *, actor: str | None) -> list[Group]:
    """The groups with these names, creating (and auditing) the missing ones."""
    if not names:
        return []
    existing = {g.name: g for g in session.execute(select(Group).where(Group.name.in_(names))).scalars()}
    groups = []
    for name in names:
        group = existing.get(name)
        if group is None:
            group = Group(name=name, vars={})
            session.add(group)
            session.flush()
            audit.record(session, "group.create", actor=actor, target=group, name=name)
            existing[name] = group
        groups.append(group)
    return groups


def create_host(session: Session, data: Any, *, actor: str | None) -> Host:
    clean = check_host(session, data)
    host = Host(
        name=clean["name"],
        address=clean["address"],
        port=clean["port"],
        protocol=clean["protocol"],
        vars=clean["vars"],
    )
    host.groups = ensure_groups(session, clean["groups"], actor=actor)
    session.add(host)
    session.flush()
    session.refresh(host, ["groups"])  # relationship order by name
    audit.record(session, "host.create", actor=actor, target=host, name=host.name, address=host.address,
                 groups=clean["groups"])
    return host


def update_host(session: Session, host: Host, data: Any, *, actor: str | None) -> Host:
    clean = check_host(session, data, host)
    changed = []
    if "groups" in clean:
        if [g.name for g in host.groups] != sorted(clean["groups"]):
            changed.append("groups")
        host.groups = ensure_groups(session, clean.pop("groups"), actor=actor)
    for key, value in clean.items():
        if getattr(host, key) != value:
            changed.append(key)
            setattr(host, key, value)
    session.flush()
    session.refresh(host, ["groups"])  # keep relationship order by name
    if changed:
        audit.record(session, "host.update", actor=actor, target=host, name=host.name, changed=sorted(changed))
    return host


def tasks_using(session: Session, host: Host) -> list[str]:
    return list(session.execute(
        select(Task.name).join(task_hosts, task_hosts.c.task_id == Task.id)
        .where(task_hosts.c.host_id == host.id).order_by(Task.name)
    ).scalars())


def delete_host(session: Session, host: Host, *, actor: str | None) -> None:
    """Remove the host from inventory (and from tasks naming it); its operations stay."""
    tasks = tasks_using(session, host)
    audit.record(session, "host.delete", actor=actor, target=host, name=host.name, removed_from_tasks=tasks)
    session.delete(host)
    session.flush()
