"""Connection protocols: inventory variables, secrets prompts and connection tests.

Placeholder for the Ansible environment; the protocol table follows.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def ansible_env(playbook_dir: Path | None = None) -> dict[str, str]:
    """Environment every ansible-playbook run needs to find the shipped roles, modules
    and connection plugins (telnet), wherever the playbook directory is."""
    roles = [REPO_ROOT / "roles"]
    if playbook_dir is not None:
        roles.insert(0, Path(playbook_dir) / "roles")
    return {
        "ANSIBLE_ROLES_PATH": os.pathsep.join(str(p) for p in roles),
        "ANSIBLE_LIBRARY": str(REPO_ROOT / "library"),
        "ANSIBLE_CONNECTION_PLUGINS": str(REPO_ROOT / "plugins" / "connection"),
    }
