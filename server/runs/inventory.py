"""Ansible inventories: the one generated for each execution, and importing existing ones.

``build_inventory`` turns database hosts, their groups and the task's credential into an
inventory in the shape of Ansible's YAML inventory (``{"all": {"hosts", "vars",
"children"}}``). User-typed variables are wrapped in ``Unsafe`` so that ``dump`` writes
them with the ``!unsafe`` tag: Jinja never evaluates a ``{{ ... }}`` somebody typed into a
host or group variable. Secrets never appear here; they reach ansible-playbook only
through ansible-runner's password prompts and ssh-agent (see prepare.py).
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from server.core import audit
from server.runs import protocols, sandbox
from server.core.errors import ValidationError
from server.core.models import PROTOCOLS, Credential, Group, Host
from server.core.validation import GROUP_NAME_RE, HOST_NAME_RE, var_name_problem


# Inventory names the YAML inventory plugin takes literally (no ``[1:3]`` ranges, no ``:port``).
PLAIN_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-@]*$")
RESERVED_GROUPS = ("all", "ungrouped")
log = logging.getLogger(__name__)
IMPORT_TIMEOUT_S = 120
IMPORT_MEMORY_BYTES = 512 * 2**20  # address space of ansible-inventory reading an import


class Unsafe(str):
    """A user-supplied string: dumped as ``!unsafe`` so Ansible never templates it."""


class _Dumper(yaml.SafeDumper):
    pass


_RESOLVER = yaml.resolver.Resolver()


def _represent_unsafe(dumper: yaml.SafeDumper, data: Unsafe) -> yaml.Node:
    value = str(data)
    # Ansible re-resolves the type of an ``!unsafe`` scalar as if it were plain, so
    # ``!unsafe 'true'`` would become a boolean and ``!unsafe ''`` null. Such strings
    # (booleans, numbers, dates, empty) cannot hold a template: emit them as quoted str.
    if _RESOLVER.resolve(yaml.ScalarNode, value, (True, False)) != "tag:yaml.org,2002:str":
        return dumper.represent_str(value)
    return dumper.represent_scalar("!unsafe", value, style='"' if ("\n" in value or not value.isprintable()) else "'")


_Dumper.add_representer(Unsafe, _represent_unsafe)


def dump(data: Any) -> str:
    """YAML text of an inventory / vars file / play, with ``Unsafe`` strings tagged ``!unsafe``."""
    return yaml.dump(data, Dumper=_Dumper, default_flow_style=False, sort_keys=False, allow_unicode=True, width=1 << 30)


def unsafe(value: Any) -> Any:
    """Wrap every string inside ``value`` (keys of nested mappings stay plain)."""
    if isinstance(value, str):
        return Unsafe(value)
    if isinstance(value, dict):
        return {str(k): unsafe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [unsafe(v) for v in value]
    return value


def forbidden_var(name: Any) -> bool:
    """A name user data may not set (validation.var_name_problem is the one rule)."""
    return var_name_problem(name) is not None


def user_vars(values: dict[str, Any] | None) -> dict[str, Any]:
    """User variables as unsafe data, minus reserved names (``ansible_``/``tm_``...).

    Rows saved before the allow-list may still hold such names: they are dropped here, at
    every inventory build and for run variables, so they never reach Ansible and never
    override what the inventory or the protocol sets."""
    out: dict[str, Any] = {}
    for key, value in (values or {}).items():
        if forbidden_var(key):
            log.warning("ignoring reserved variable %r in stored variables", key)
            continue
        out[key] = unsafe(value)
    return out


def inventory_name(host: Host) -> str:
    """The name the host has inside Ansible: its own name unless Ansible would parse it."""
    return host.name if PLAIN_NAME_RE.match(host.name) else f"tm-host-{host.id}"


def connection_vars(host: Host, credential: Credential | None) -> dict[str, Any]:
    """Non-secret connection variables for one host: its protocol's (``protocols.Protocol``)."""
    return protocols.protocol(host.protocol).host_vars(host, credential)


def _ancestors(groups: Iterable[Group]) -> set[Group]:
    """The groups and every group above them (the tree may share subtrees)."""
    return {above for group in groups for above in group.lineage()}


def group_tree(groups: Iterable[Group], members: dict[Group, list[str]]) -> dict[str, Any]:
    """``all.children`` for ``groups`` (already closed over their parents): each group once,
    inside its first parent (by name) or at the top when it has none, later mentions empty.

    The tree, not a flattened copy, reaches Ansible, so Ansible's own precedence applies
    (a child's vars beat its parent's, ``ansible_group_priority`` breaks ties at one depth).
    """
    wanted = {g for g in groups if g.name not in RESERVED_GROUPS}
    placed: set[Group] = set()

    def body(group: Group) -> dict[str, Any] | None:
        if group in placed:
            return None
        placed.add(group)
        out: dict[str, Any] = {}
        if members.get(group):
            out["hosts"] = {name: None for name in members[group]}
        gv = user_vars(group.vars)
        if group.priority is not None:
            gv["ansible_group_priority"] = group.priority
        if gv:
            out["vars"] = gv
        kids = [c for c in group.children if c in wanted]
        if kids:
            out["children"] = {c.name: body(c) for c in kids}
        return out

    roots = sorted((g for g in wanted if not any(p in wanted for p in g.parents)), key=lambda g: g.name)
    tree = {g.name: body(g) for g in roots}
    for group in sorted(wanted - placed, key=lambda g: g.name):  # a cycle stored behind our back
        tree[group.name] = body(group)
    return tree


def _all_group_vars(hosts: list[Host]) -> dict[str, Any]:
    """Variables of the stored ``all`` group (an imported ``[all:vars]``): every run's."""
    session = object_session(hosts[0]) if hosts else None
    if session is None:
        return {}
    group = session.execute(select(Group).where(Group.name == "all")).scalar_one_or_none()
    return user_vars(group.vars) if group is not None else {}


def build_inventory(hosts: Iterable[Host], credential: Credential | None) -> dict[str, Any]:
    """The YAML-inventory dict for one execution: only ``hosts``, their groups and vars.

    Returns ``{"all": {...}}``; ``dump`` writes it. ``meta["names"]`` (inventory name →
    host name) lets the runner map Ansible's events back to hosts.
    """
    hosts = list(hosts)
    all_hosts: dict[str, Any] = {}
    all_vars: dict[str, Any] = _all_group_vars(hosts)
    names: dict[str, str] = {}
    members: dict[Group, list[str]] = {}
    for host in hosts:
        if host.protocol not in PROTOCOLS:
            raise ValidationError(f"host {host.name!r} has an unknown protocol {host.protocol!r}", field="protocol")
        name = inventory_name(host)
        names[name] = host.name
        hv = user_vars(host.vars)
        hv.update(connection_vars(host, credential))  # connection settings win over user data
        all_hosts[name] = hv
        for group in host.groups:
            if group.name in RESERVED_GROUPS:
                all_vars.update(user_vars(group.vars))
                continue
            members.setdefault(group, []).append(name)
    children = group_tree(_ancestors(members), members)
    if credential is not None:
        if credential.become_method:
            all_vars["ansible_become_method"] = credential.become_method
        if credential.become_user:
            all_vars["ansible_become_user"] = credential.become_user
    root: dict[str, Any] = {"hosts": all_hosts}
    if all_vars:
        root["vars"] = all_vars
    if children:
        root["children"] = children
    return {"all": root, "_meta": {"names": names}}


def dump_inventory(inventory: dict[str, Any]) -> str:
    return dump({"all": inventory["all"]})


# --- importing an existing inventory ------------------------------------------------------

def _ansible_inventory_bin() -> str:
    candidate = Path(sys.executable).parent / "ansible-inventory"
    return str(candidate) if candidate.exists() else "ansible-inventory"


def _read_inventory(path: str) -> dict[str, Any]:
    """``ansible-inventory --list`` of ``path`` (every static format Ansible reads), as JSON.

    The text may be pasted by a user: it is read inside the run sandbox (nothing of the
    server's files, environment or instance/ in reach) with bounded memory and CPU, so an
    inventory crafted to expand without end fails alone instead of starving the web server.
    """
    source = Path(path)
    if not source.exists():
        raise ValidationError(f"inventory {path!r} does not exist", field="path")
    private = sandbox.new_private_dir()
    copy = private / "import" / source.name  # the name keeps its extension: it picks the plugin
    copy.parent.mkdir()
    if source.is_dir():
        shutil.copytree(source, copy)
    else:
        shutil.copyfile(source, copy)
    sandbox.open_up(private)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(private / "home"),
        "ANSIBLE_LOCAL_TEMP": str(private / "tmp"),
        "ANSIBLE_CONFIG": "",
        "LANG": "C.UTF-8",
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
        "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True",
        # Static formats only: an inventory script would run arbitrary code on this machine.
        "ANSIBLE_INVENTORY_ENABLED": "ini,yaml,toml",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
    }
    layout = sandbox.Layout(private_dir=private, cwd=private)
    command = ["prlimit", f"--as={IMPORT_MEMORY_BYTES}", f"--cpu={IMPORT_TIMEOUT_S}", "--",
               _ansible_inventory_bin(), "-i", str(copy), "--list", "--export"]
    try:
        proc = subprocess.run(sandbox.argv(layout, command), capture_output=True, text=True,
                              timeout=IMPORT_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise ValidationError(f"reading the inventory took longer than {IMPORT_TIMEOUT_S} s", field="path") from exc
    except sandbox.SandboxError as exc:
        raise ValidationError(f"the inventory cannot be read: {exc}", field="path") from exc
    finally:
        shutil.rmtree(private, ignore_errors=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        if "MemoryError" in proc.stderr or proc.returncode in (-9, 137):
            lines = [f"reading the inventory needed more than {IMPORT_MEMORY_BYTES // 2**20} MB"]
        detail = "; ".join(lines[-3:]).replace(str(copy), str(source))[:500] or f"exit status {proc.returncode}"
        raise ValidationError(f"not a valid Ansible inventory: {detail}", field="path")
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise ValidationError("ansible-inventory returned no readable inventory", field="path") from exc
    if not isinstance(data, dict):
        raise ValidationError("ansible-inventory returned no readable inventory", field="path")
    return data


def _plain(value: Any) -> Any:
    """ansible-inventory's JSON marks ``!unsafe`` strings as ``{"__ansible_unsafe": s}``."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _has_vault(value: Any) -> bool:
    if isinstance(value, dict):
        return "__ansible_vault" in value or any(_has_vault(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_vault(v) for v in value)
    return False


def _protocol_of(hvars: dict[str, Any]) -> str:
    conn = str(_plain(hvars.get("ansible_connection")) or "ssh")
    if conn in ("local",):
        return "local"
    if conn in ("winrm", "psrp"):
        return "winrm"
    if conn in ("ssh", "paramiko", "paramiko_ssh", "smart"):
        return "ssh"
    if conn in PROTOCOLS:
        return conn
    raise ValidationError(f"connection type {conn!r} is not supported", field="path")


# Variables that become the host's own fields rather than variables.
HOST_FIELD_VARS = ("ansible_host", "ansible_ssh_host", "ansible_port", "ansible_ssh_port", "ansible_connection")
_SECRET_NAME_RE = re.compile(r"(^|_)(pass|passwd|password|passphrase|secret|token|private_key|private_key_file)(_|$)",
                             re.IGNORECASE)
_JINJA_RE = re.compile(r"\{\{|\{%|\{#")


def skip_reason(name: Any, value: Any) -> str | None:
    """Why an imported variable is not kept (None: it is kept as it is)."""
    if _has_vault(value):
        return "vault-encrypted value: secrets belong in a credential"
    if isinstance(name, str) and _SECRET_NAME_RE.search(name):
        return "secret: passwords and keys belong in a credential, never in host or group variables"
    problem = var_name_problem(name)
    if problem is not None:
        if isinstance(name, str) and name.lower().startswith("ansible_"):
            return "connection variable: set by the host's protocol and the task's credential"
        return problem
    option = protocols.option_problem(name, _plain(value))
    if option:
        return f"protocol option refused: {option}"
    return None


def _has_jinja(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_JINJA_RE.search(value))
    if isinstance(value, dict):
        return any(_has_jinja(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_jinja(v) for v in value)
    return False


@dataclass
class ImportPlan:
    """What an inventory would write: checked, nothing touched yet (the preview shows it)."""

    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> address, port, protocol, vars, groups
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> vars, priority, children
    all_vars: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)  # scope, name, reason
    literal: list[dict[str, str]] = field(default_factory=list)  # scope, name: values holding Jinja
    errors: list[str] = field(default_factory=list)

    def keep(self, scope: str, values: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for name, value in values.items():
            if name in HOST_FIELD_VARS or name == "ansible_group_priority":
                continue
            reason = skip_reason(name, value)
            if reason:
                self.skipped.append({"scope": scope, "name": str(name), "reason": reason})
                continue
            value = _plain(value)
            if _has_jinja(value):
                self.literal.append({"scope": scope, "name": name})
            out[name] = value
        return json.loads(json.dumps(out, default=str))

    def summary(self) -> dict[str, Any]:
        return {"hosts": len(self.hosts), "groups": len(self.groups),
                "skipped_vars": sorted({s["name"] for s in self.skipped}),
                "skipped": self.skipped, "literal_jinja": self.literal}


def _host_fields(name: str, hv: dict[str, Any], plan: ImportPlan) -> dict[str, Any] | None:
    if not isinstance(name, str) or not HOST_NAME_RE.match(name) or len(name) > 255:
        plan.errors.append(f"host name {name!r} is not allowed")
        return None
    address = str(_plain(hv.get("ansible_host") or hv.get("ansible_ssh_host")) or name)
    port_raw = _plain(hv.get("ansible_port") or hv.get("ansible_ssh_port"))
    try:
        port = int(port_raw) if port_raw not in (None, "") else None
    except (TypeError, ValueError):
        plan.errors.append(f"host {name!r} has an invalid port {port_raw!r}")
        return None
    if port is not None and not 1 <= port <= 65535:
        plan.errors.append(f"host {name!r} has an invalid port {port}")
        return None
    try:
        protocol = _protocol_of(hv)
    except ValidationError as exc:
        plan.errors.append(f"host {name!r}: {exc.message}")
        return None
    return {"address": address, "port": port, "protocol": protocol, "vars": plan.keep(f"host {name}", hv),
            "groups": []}


def plan_import(data: dict[str, Any]) -> ImportPlan:
    """The hosts, groups (with children and priority), ``all`` vars and host vars of an
    ``ansible-inventory --list --export`` document, each variable kept or skipped with why."""
    plan = ImportPlan()
    meta = (data.get("_meta") or {}).get("hostvars") or {}
    bodies = {g: b for g, b in data.items() if g != "_meta" and isinstance(b, dict)}
    plan.all_vars = plan.keep("all", (bodies.get("all") or {}).get("vars") or {})
    names = set(meta)
    for body in bodies.values():
        names.update(body.get("hosts") or [])
    for gname in sorted(g for g in bodies if g not in RESERVED_GROUPS):
        if not isinstance(gname, str) or not GROUP_NAME_RE.match(gname) or len(gname) > 120:
            plan.errors.append(f"group name {gname!r} is not allowed")
            continue
        gv = bodies[gname].get("vars") or {}
        priority = _plain(gv.get("ansible_group_priority"))
        try:
            priority = int(priority) if priority is not None else None
        except (TypeError, ValueError):
            plan.errors.append(f"group {gname!r} has an invalid ansible_group_priority {priority!r}")
            priority = None
        plan.groups[gname] = {
            "vars": plan.keep(f"group {gname}", gv), "priority": priority,
            "children": sorted(c for c in bodies[gname].get("children") or [] if c not in RESERVED_GROUPS),
        }
    for hname in sorted(names, key=str):
        fields = _host_fields(hname, meta.get(hname) or {}, plan)
        if fields is not None:
            plan.hosts[hname] = fields
    for gname in plan.groups:
        for hname in bodies[gname].get("hosts") or []:
            if hname in plan.hosts:
                plan.hosts[hname]["groups"].append(gname)
    if not names:
        plan.errors.append("the inventory contains no hosts")
    return plan


def read_plan(path: str) -> ImportPlan:
    """``path`` read by ``ansible-inventory`` and planned (see ``plan_import``)."""
    return plan_import(_read_inventory(path))


def _group(session: Session, cache: dict[str, Group], name: str, actor: str | None) -> Group:
    group = cache.get(name)
    if group is None:
        group = Group(name=name, vars={})
        session.add(group)
        session.flush()
        audit.record(session, "group.create", actor=actor, target=group, name=name, source="import")
        cache[name] = group
    return group


def apply_plan(session: Session, plan: ImportPlan, actor: str | None, source: str) -> dict[str, Any]:
    """Write a plan without errors: hosts and groups created or updated in place (the caller
    commits). Membership and children are added to what is stored, never removed."""
    if plan.errors:
        raise ValidationError(plan.errors[0], field="path")
    groups = {g.name: g for g in session.execute(select(Group)).scalars()}
    if plan.all_vars:
        group = _group(session, groups, "all", actor)
        merged = {**(group.vars or {}), **plan.all_vars}
        if group.vars != merged:
            group.vars = merged
    for gname, spec in plan.groups.items():
        group = _group(session, groups, gname, actor)
        changed = []
        merged = {**(group.vars or {}), **spec["vars"]}
        if group.vars != merged:
            group.vars = merged
            changed.append("vars")
        if spec["priority"] is not None and group.priority != spec["priority"]:
            group.priority = spec["priority"]
            changed.append("priority")
        for child in spec["children"]:
            kid = _group(session, groups, child, actor)
            if kid not in group.children:
                group.children.append(kid)
                changed.append(f"child {child}")
        if changed:
            session.flush()
            audit.record(session, "group.update", actor=actor, target=group, name=gname, changed=changed,
                         source="import")
    hosts = {h.name: h for h in session.execute(select(Host)).scalars()}
    created: list[Host] = []
    for hname, spec in plan.hosts.items():
        wanted = [groups[g] for g in spec["groups"]]
        host = hosts.get(hname)
        if host is None:
            host = Host(name=hname, address=spec["address"], port=spec["port"], protocol=spec["protocol"],
                        vars=spec["vars"], groups=wanted)
            created.append(host)
            continue
        changed = []
        for attr in ("address", "port", "protocol", "vars"):
            if getattr(host, attr) != spec[attr]:
                setattr(host, attr, spec[attr])
                changed.append(attr)
        extra = [g for g in wanted if g not in host.groups]
        if extra:
            host.groups = sorted([*host.groups, *extra], key=lambda g: g.name)
            changed.append("groups")
        if changed:
            session.flush()
            audit.record(session, "host.update", actor=actor, target=host, name=hname, changed=changed,
                         source="import")
    session.add_all(created)
    session.flush()  # one round of INSERTs for a 700-host range, then one audit INSERT
    audit.record_many(session, [("host.create", {"actor": actor, "target": h, "name": h.name, "address": h.address,
                                                 "groups": [g.name for g in h.groups], "source": "import"})
                                for h in created])
    session.flush()
    result = plan.summary()
    audit.record(session, "inventory.import", actor=actor, hosts=result["hosts"], groups=result["groups"],
                 source=source, skipped_vars=result["skipped_vars"])
    return result


def import_inventory(session: Session, path: str, actor: str | None) -> dict[str, Any]:
    """Create or update hosts and groups from an inventory file (the caller commits).

    The group tree (children, group vars, ``ansible_group_priority``, ``[all:vars]``) is
    kept as it is, so the inventory generated for a run gives every kept variable the value
    ``ansible-inventory`` gives it in the file. ``ansible_host``/``ansible_port``/
    ``ansible_connection`` become the host's address, port and protocol. Connection
    variables, secrets and vault values are skipped, each listed with why; values holding
    Jinja are kept literal (never templated) and listed too.
    """
    return apply_plan(session, read_plan(path), actor, str(path))
