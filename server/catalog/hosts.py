"""Hosts and their groups: the write path shared by the API and the web forms.

Groups are named by hosts and created on first mention, as in an Ansible inventory.
Deleting a host keeps the operations that ran on it (they keep ``host_name``).

Host variables follow the common rule for variable names (validation.variables) and the
protocol options among them (``tls_verify``, ``ca_bundle``...) are checked by type and value
here, so a bad setting is a 422 when saved rather than a failed run later. Hosts with
protocol ``local`` run their tasks on the Task Manager server itself: only admins may
create them, change a host to or from ``local``, or change or delete one.
"""
from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.core import audit
from server.runs import protocols
from server.core.errors import ApiError, Conflict, Forbidden, ValidationError
from server.core.models import PROTOCOLS, Group, Host, Task, User, task_hosts
from server.core.validation import (
    GROUP_NAME_RE,
    HOST_NAME_RE,
    RESERVED_GROUPS,
    Fields,
    Invalid,
    choice,
    integer,
    name_list,
    schema_of,
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


def host_variables(value: Any) -> dict[str, Any]:
    """Host variables: the common checks, then each protocol option by type and value."""
    clean = variables(value)
    for name, item in clean.items():
        problem = protocols.option_problem(name, item)
        if problem:
            raise Invalid(f"variable {name!r} {problem}")
    return clean


group_name.schema = schema_of(_group_name_text, **{"not": {"enum": sorted(RESERVED_GROUPS)}})  # type: ignore[attr-defined]
# The checks of a host's fields: clean_host applies them, the OpenAPI HostInput is made of them.
HOST_CHECKS = {
    "name": host_name,
    "address": address,
    "port": integer(1, 65535, nullable=True),
    "protocol": choice(PROTOCOLS),
    "groups": name_list(item=group_name),
    "vars": host_variables,
}


def is_admin(session: Session, actor: str | None) -> bool:
    """Whether the acting user (the callers pass his user name) is an active admin."""
    if not actor:
        return False
    user = session.execute(select(User).where(User.username == actor)).scalar_one_or_none()
    return user is not None and user.is_active and user.role == "admin"


def require_local_rights(session: Session, actor: str | None, *protocol_names: str | None) -> None:
    """403 unless an admin acts, when any of the protocols involved is ``local``."""
    if "local" in protocol_names and not is_admin(session, actor):
        raise Forbidden("only admins may create, change or delete hosts with protocol 'local': "
                        "their tasks run on the Task Manager server itself", field="protocol")


def check_host(session: Session, data: Any, host: Host | None = None, *, actor: str | None = None,
               name_checked: bool = False) -> dict[str, Any]:
    """Validated values for a new host (``host`` None) or the changed fields of ``host``."""
    if host is not None:
        require_local_rights(session, actor, host.protocol)
    f = Fields(data, HOST_FIELDS, partial=host is not None)
    f.take("name", HOST_CHECKS["name"], required=True)
    f.take("address", HOST_CHECKS["address"])
    f.take("port", HOST_CHECKS["port"], default=None)
    f.take("protocol", HOST_CHECKS["protocol"], default="ssh")
    f.take("groups", HOST_CHECKS["groups"], default=list)
    f.take("vars", HOST_CHECKS["vars"], default=dict)
    f.raise_if_invalid()
    require_local_rights(session, actor, f.clean.get("protocol"))
    _check_settings(f, host)
    if host is None and "address" not in f.clean:
        f.clean["address"] = f.clean["name"]  # like Ansible: the name is the address unless told
    name = f.clean.get("name")
    if name is not None and not name_checked and (host is None or name != host.name):
        if session.execute(select(Host.id).where(Host.name == name)).first():
            raise Conflict(f"a host named {name!r} already exists", field="name")
    return f.clean


def _check_settings(f: Fields, host: Host | None) -> None:
    """Protocol options that are valid alone but not together (winrm basic over http)."""
    def current(key: str) -> Any:
        return f.clean[key] if key in f.clean else getattr(host, key, None)

    problem = protocols.settings_problem(current("protocol") or "ssh", current("port"), current("vars") or {})
    if problem:
        f.error("vars", f"'vars' {problem}")
        f.raise_if_invalid()


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
    clean = check_host(session, data, actor=actor)
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


MAX_BULK_HOSTS = 10_000


def _item_error(exc: ApiError, index: int, item: Any) -> ApiError:
    """``exc`` for one item of a bulk request: the message and field name the item."""
    name = item.get("name") if isinstance(item, dict) and isinstance(item.get("name"), str) else None
    label = f"item {index}" + (f" ({name!r})" if name else "")
    field = f"[{index}]" + (f".{exc.field}" if exc.field else "")
    return ApiError(f"{label}: {exc.message}", code=exc.code, status=exc.status, field=field)


def create_hosts(session: Session, items: Any, *, actor: str | None) -> list[Host]:
    """Create many hosts at once (an import of a fleet): all or none.

    Every item gets the checks of ``create_host``; the first bad item fails the whole request
    with a 4xx naming it (``[3].port``: the item's index and field). Names must be unique
    in the request as in the database. Groups are resolved once, and the audit rows (one
    ``host.create`` per host, as for a single host) are written in one chained insert.
    """
    if not isinstance(items, list) or not items:
        raise ValidationError("a bulk request is a non-empty JSON array of hosts")
    if len(items) > MAX_BULK_HOSTS:
        raise ValidationError(f"at most {MAX_BULK_HOSTS} hosts per request, got {len(items)}")
    existing = set(session.execute(select(Host.name)).scalars())
    seen: dict[str, int] = {}
    cleaned: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise ValidationError("each host must be a JSON object")
            clean = _check_new_host(session, item, existing, actor=actor)
            if clean["name"] in seen:
                raise Conflict(f"the name {clean['name']!r} is also item {seen[clean['name']]}", field="name")
        except ApiError as exc:
            raise _item_error(exc, index, item) from None
        seen[clean["name"]] = index
        cleaned.append(clean)
    groups = {g.name: g for g in ensure_groups(session, sorted({n for c in cleaned for n in c["groups"]}),
                                                actor=actor)}
    hosts = [Host(name=c["name"], address=c["address"], port=c["port"], protocol=c["protocol"], vars=c["vars"],
                  groups=[groups[n] for n in c["groups"]]) for c in cleaned]
    session.add_all(hosts)
    session.flush()
    audit.record_many(session, [("host.create", {"actor": actor, "target": h, "name": h.name, "address": h.address,
                                                 "groups": c["groups"], "bulk": True})
                                for h, c in zip(hosts, cleaned, strict=True)])
    return hosts


def _check_new_host(session: Session, item: dict[str, Any], existing: set[str], *, actor: str | None
                    ) -> dict[str, Any]:
    """``check_host`` for a new host, with the name taken against ``existing`` (one query for all)."""
    clean = check_host(session, item, actor=actor, name_checked=True)
    if clean["name"] in existing:
        raise Conflict(f"a host named {clean['name']!r} already exists", field="name")
    return clean


def update_host(session: Session, host: Host, data: Any, *, actor: str | None) -> Host:
    clean = check_host(session, data, host, actor=actor)
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
    require_local_rights(session, actor, host.protocol)
    tasks = tasks_using(session, host)
    audit.record(session, "host.delete", actor=actor, target=host, name=host.name, removed_from_tasks=tasks)
    session.delete(host)
    session.flush()
