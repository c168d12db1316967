"""A git project's files for one run: exactly the execution's commit, in its private directory.

``materialise`` extracts ``ex.revision`` from the project's mirror (runs/gitsync.py), so a
sync during the run, or a branch that moved on since the approval, changes nothing.
``merged_config`` keeps the project's ``ansible.cfg`` (``become = True``, ``roles_path``,
``collections_path``, ``forks``...) but drops what Task Manager decides itself: inventory,
connection and host-key settings, callbacks, logs and vault password sources. Ansible reads
our environment variables before ``ansible.cfg`` anyway, so ours win where both speak;
dropping the rest keeps a project from changing how the run connects or reports.
"""
from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass
from pathlib import Path

from server.catalog import projects
from server.core.config import Settings
from server.core.errors import ValidationError
from server.core.models import Execution, Project
from server.runs import gitsync, requirements

# [defaults] keys a project may not set (ours, or a way around the sandbox's reporting).
DENIED_DEFAULTS = {
    "inventory", "host_key_checking", "callback_plugins", "callbacks_enabled", "callback_whitelist",
    "stdout_callback", "log_path", "vault_password_file", "vault_identity_list", "ask_pass", "ask_vault_pass",
    "become_ask_pass", "private_key_file", "transport", "connection_plugins", "local_tmp", "fact_caching",
    "fact_caching_connection", "strategy_plugins", "inventory_plugins", "vars_plugins", "roles_path",
    "remote_port", "timeout", "bin_ansible_callbacks", "nocolor", "force_color",
}
DENIED_SECTIONS = {"ssh_connection", "paramiko_connection", "persistent_connection", "connection", "inventory",
                   "galaxy", "callback_profile_tasks"}
COMMIT_RE = re.compile(r"[0-9a-f]{40,64}")


@dataclass
class Checkout:
    root: Path
    commit: str
    cache: Path  # what the requirements installed (requirements.py), read-only for the run


def materialise(project: Project, ex: Execution, dest: Path, settings: Settings) -> Checkout:
    """Extract the execution's commit of ``project`` into ``dest`` (an empty directory)."""
    commit = ex.revision or ""
    if not COMMIT_RE.fullmatch(commit):
        raise ValidationError(f"execution {ex.id} has no commit of project {project.name!r} to run", field="project")
    pdir = projects.ensure_commit(project, commit, settings.instance_dir)
    gitsync.checkout(pdir, commit, dest)
    return Checkout(dest, commit, requirements.cache_dir(pdir, commit))


def _read_config(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    if path.is_file() and not path.is_symlink():
        try:
            parser.read_string(path.read_text(errors="replace"))
        except configparser.Error:
            pass  # ansible-playbook would refuse it too; the run proceeds on our settings
    return parser


def _inside(root: Path, entries: str) -> list[str]:
    """``roles_path``-style entries resolved against ``root``, only those inside it."""
    out = []
    for entry in re.split(r"[:,]", entries or ""):
        entry = entry.strip()
        if not entry or entry.startswith(("~", "$")):
            continue
        path = (root / entry).resolve()
        if path == root.resolve() or root.resolve() in path.parents:
            out.append(str(path))
    return out


def roles_path(checkout: Checkout, playbook: Path) -> list[str]:
    """Where the run finds roles: beside the playbook, the project's ``roles/``, its
    ``ansible.cfg`` ``roles_path`` (within the project), never Task Manager's own."""
    cfg = _read_config(checkout.root / "ansible.cfg")
    configured = _inside(checkout.root, cfg.get("defaults", "roles_path", fallback=""))
    paths = [str(playbook.parent / "roles"), str(checkout.root / "roles"), *configured,
             str(checkout.cache / "roles")]
    return list(dict.fromkeys(paths))


def collections_path(checkout: Checkout) -> str:
    """The project's collections (its ``collections/`` and ``collections_path``) and the installed ones."""
    cfg = _read_config(checkout.root / "ansible.cfg")
    configured = _inside(checkout.root, cfg.get("defaults", "collections_path", fallback="")
                         or cfg.get("defaults", "collections_paths", fallback=""))
    paths = [str(checkout.root / "collections"), *configured, str(checkout.cache / "collections")]
    return os.pathsep.join(dict.fromkeys(paths))


def merged_config(root: Path) -> Path:
    """Rewrite ``root/ansible.cfg`` without the settings Task Manager owns; its path."""
    path = root / "ansible.cfg"
    cfg = _read_config(path)
    for section in list(cfg.sections()):
        if section in DENIED_SECTIONS or section.startswith("callback_"):
            cfg.remove_section(section)
    if cfg.has_section("defaults"):
        for key in list(cfg["defaults"]):
            if key in DENIED_DEFAULTS:
                cfg.remove_option("defaults", key)
    if path.exists() or path.is_symlink():
        path.unlink()
    with path.open("w") as fh:
        fh.write("# the project's ansible.cfg; Task Manager's own settings come from the environment\n")
        cfg.write(fh)
    return path
