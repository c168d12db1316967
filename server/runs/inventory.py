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
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.core import audit
from server.runs import protocols
from server.core.errors import ValidationError
from server.core.models import PROTOCOLS, Credential, Group, Host
from server.core.validation import GROUP_NAME_RE, HOST_NAME_RE, var_name_problem


# Inventory names the YAML inventory plugin takes literally (no ``[1:3]`` ranges, no ``:port``).
PLAIN_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-@]*$")
RESERVED_GROUPS = ("all", "ungrouped")
log = logging.getLogger(__name__)
IMPORT_TIMEOUT_S = 120


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


def build_inventory(hosts: Iterable[Host], credential: Credential | None) -> dict[str, Any]:
    """The YAML-inventory dict for one execution: only ``hosts``, their groups and vars.

    Returns ``{"all": {...}}``; ``dump`` writes it. ``meta["names"]`` (inventory name →
    host name) lets the runner map Ansible's events back to hosts.
    """
    all_hosts: dict[str, Any] = {}
    children: dict[str, dict[str, Any]] = {}
    all_vars: dict[str, Any] = {}
    names: dict[str, str] = {}
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
            child = children.setdefault(group.name, {"hosts": {}})
            child["hosts"][name] = None
            if group.vars and "vars" not in child:
                gv = user_vars(group.vars)
                if gv:
                    child["vars"] = gv
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
    """``ansible-inventory --list`` of ``path`` (every format Ansible reads), as JSON."""
    if not Path(path).exists():
        raise ValidationError(f"inventory {path!r} does not exist", field="path")
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(Path.home()),
        "LANG": "C.UTF-8",
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
        "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True",
        # Static formats only: an inventory script would run arbitrary code on this machine.
        "ANSIBLE_INVENTORY_ENABLED": "ini,yaml,toml",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
    }
    try:
        proc = subprocess.run(
            [_ansible_inventory_bin(), "-i", str(path), "--list", "--export"],
            capture_output=True, text=True, timeout=IMPORT_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ValidationError(f"reading the inventory took longer than {IMPORT_TIMEOUT_S} s", field="path") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        detail = "; ".join(lines[-3:])[:500] or f"exit status {proc.returncode}"
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
    conn = str(hvars.get("ansible_connection") or "ssh")
    if conn in ("local",):
        return "local"
    if conn in ("winrm", "psrp"):
        return "winrm"
    if conn in ("ssh", "paramiko", "paramiko_ssh", "smart"):
        return "ssh"
    if conn in PROTOCOLS:
        return conn
    raise ValidationError(f"connection type {conn!r} is not supported", field="path")


def import_inventory(session: Session, path: str, actor: str | None) -> dict[str, Any]:
    """Create or update hosts and groups from an inventory file (the caller commits).

    ``ansible_host``/``ansible_port``/``ansible_connection`` become the host's address, port
    and protocol; other variables are kept unless their name is reserved (``ansible_``,
    ``tm_``), they are vault-encrypted, or they are protocol options the host form would
    refuse (those are listed under ``skipped_vars``).
    """
    data = _read_inventory(path)
    meta = (data.get("_meta") or {}).get("hostvars") or {}
    # Group membership: walk children from "all".
    group_hosts: dict[str, set[str]] = {}
    group_vars: dict[str, dict[str, Any]] = {}
    all_host_names: set[str] = set(meta)
    for gname, body in data.items():
        if gname == "_meta" or not isinstance(body, dict):
            continue
        group_vars[gname] = body.get("vars") or {}
        group_hosts.setdefault(gname, set()).update(body.get("hosts") or [])
        all_host_names.update(body.get("hosts") or [])
    # Hosts of child groups belong to the parent too (Ansible semantics).
    def members(gname: str, seen: frozenset = frozenset()) -> set[str]:
        body = data.get(gname) or {}
        out = set(body.get("hosts") or [])
        for child in body.get("children") or []:
            if child not in seen:
                out |= members(child, seen | {gname})
        return out

    if not all_host_names:
        raise ValidationError("the inventory contains no hosts", field="path")
    skipped: set[str] = set()

    def clean_vars(values: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in values.items():
            if k in ("ansible_host", "ansible_ssh_host", "ansible_port", "ansible_ssh_port", "ansible_connection"):
                continue
            if not isinstance(k, str) or forbidden_var(k) or _has_vault(v):
                skipped.add(str(k))  # connection settings, secrets, vault-encrypted values
                continue
            if protocols.option_problem(k, _plain(v)):
                skipped.add(k)  # a protocol option the host form would refuse (ca_bundle outside the CA dirs...)
                continue
            out[k] = _plain(v)
        return json.loads(json.dumps(out, default=str))

    all_vars = clean_vars(group_vars.get("all") or {})  # no "all" group in the database
    # Groups (not the implicit ones).
    groups_by_name = {g.name: g for g in session.execute(select(Group)).scalars()}
    group_count = 0
    for gname in sorted(group_hosts):
        if gname in RESERVED_GROUPS:
            continue
        if not GROUP_NAME_RE.match(gname) or len(gname) > 120:
            raise ValidationError(f"group name {gname!r} is not allowed", field="path")
        group = groups_by_name.get(gname)
        gv = clean_vars(group_vars.get(gname) or {})
        if group is None:
            group = Group(name=gname, vars=gv)
            session.add(group)
            session.flush()
            audit.record(session, "group.create", actor=actor, target=group, name=gname, source="import")
            groups_by_name[gname] = group
        elif gv and group.vars != {**(group.vars or {}), **gv}:
            group.vars = {**(group.vars or {}), **gv}
            audit.record(session, "group.update", actor=actor, target=group, name=gname, source="import")
        group_count += 1

    hosts_by_name = {h.name: h for h in session.execute(select(Host)).scalars()}
    host_count = 0
    for hname in sorted(all_host_names):
        if not isinstance(hname, str) or not HOST_NAME_RE.match(hname) or len(hname) > 255:
            raise ValidationError(f"host name {hname!r} is not allowed", field="path")
        hv = meta.get(hname) or {}
        address = str(hv.get("ansible_host") or hv.get("ansible_ssh_host") or hname)
        port_raw = hv.get("ansible_port") or hv.get("ansible_ssh_port")
        try:
            port = int(port_raw) if port_raw not in (None, "") else None
        except (TypeError, ValueError):
            raise ValidationError(f"host {hname!r} has an invalid port {port_raw!r}", field="path") from None
        if port is not None and not 1 <= port <= 65535:
            raise ValidationError(f"host {hname!r} has an invalid port {port}", field="path")
        protocol = _protocol_of(hv)
        hvars = {**all_vars, **clean_vars(hv)}
        wanted_groups = sorted(
            g for g in group_hosts if g not in RESERVED_GROUPS and hname in members(g)
        )
        host = hosts_by_name.get(hname)
        if host is None:
            host = Host(name=hname, address=address, port=port, protocol=protocol, vars=hvars)
            host.groups = [groups_by_name[g] for g in wanted_groups]
            session.add(host)
            session.flush()
            audit.record(session, "host.create", actor=actor, target=host, name=hname, address=address,
                         groups=wanted_groups, source="import")
        else:
            changed = []
            for attr, value in (("address", address), ("port", port), ("protocol", protocol), ("vars", hvars)):
                if getattr(host, attr) != value:
                    setattr(host, attr, value)
                    changed.append(attr)
            merged = sorted({g.name for g in host.groups} | set(wanted_groups))
            if merged != sorted(g.name for g in host.groups):
                host.groups = [groups_by_name[g] if g in groups_by_name else next(x for x in host.groups if x.name == g)
                               for g in merged]
                changed.append("groups")
            if changed:
                session.flush()
                audit.record(session, "host.update", actor=actor, target=host, name=hname, changed=changed,
                             source="import")
        host_count += 1
    session.flush()
    audit.record(session, "inventory.import", actor=actor, hosts=host_count, groups=group_count,
                 source=str(path), skipped_vars=sorted(skipped))
    return {"hosts": host_count, "groups": group_count, "skipped_vars": sorted(skipped)}
