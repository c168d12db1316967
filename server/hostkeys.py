"""SSH host keys Task Manager has learnt, and forgetting a host's key when the server is rebuilt.

Runs and connection tests use one known-hosts file, ``instance/known_hosts``, with
``StrictHostKeyChecking=accept-new``: a server's key is learnt on first contact and a
changed key is refused (the operation is ``unreachable``: "Host key verification failed").
That is the protection against a man in the middle, so nothing forgets keys on its own:
after a legitimate rebuild someone who may edit hosts forgets the old key (audited, with
the fingerprints removed) and the next connection learns the new one.

OpenSSH's own ``ssh-keygen -F`` / ``-R`` read and edit the file (it may hold hashed names).
"""
from __future__ import annotations

import fcntl
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from . import access, audit, protocols
from .errors import ValidationError
from .models import Host, User

SSH_PROTOCOLS = ("ssh", "x11")
TIMEOUT_S = 10
CHANGED_KEY_MARKERS = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED")
HINT = ("The server's SSH host key is not the one recorded. If the server was rebuilt, forget its old key "
        "(host page → Test connection → Forget host key, or DELETE /api/v1/hosts/<id>/host-keys); "
        "otherwise someone may be intercepting the connection.")


def known_hosts_path(instance_dir: Path) -> Path:
    return Path(instance_dir) / "known_hosts"


def lookup_names(host: Host) -> list[str]:
    """The names ssh files this host under: ``address``, or ``[address]:port`` off port 22."""
    if (host.protocol or "ssh") not in SSH_PROTOCOLS:
        return []
    port = protocols.port_of(host) or 22
    return [host.address if port == 22 else f"[{host.address}]:{port}"]


def _keygen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh-keygen", *args], capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def keys(instance_dir: Path, host: Host) -> list[dict[str, str]]:
    """The keys recorded for ``host``: ``[{"type", "fingerprint"}]`` (SHA256 fingerprints)."""
    path = known_hosts_path(instance_dir)
    if not path.exists():
        return []
    found: list[dict[str, str]] = []
    for name in lookup_names(host):
        out = _keygen("-F", name, "-l", "-f", str(path))
        for line in out.stdout.splitlines():
            parts = line.split()  # "<name> ED25519 SHA256:...", after a "# Host ... found" line
            if line.startswith("#") or len(parts) < 3:
                continue
            found.append({"name": name, "type": parts[1], "fingerprint": parts[2]})
    return found


def forget(session: Session, user: User | None, host: Host, instance_dir: Path) -> dict[str, Any]:
    """Remove every recorded key of ``host``; audited with what was removed.

    ``user`` needs hosts.edit on the host; ``None`` is the server's own CLI (its operator).
    """
    if user is not None:
        access.require(user, "hosts.edit")
        access.require_host(session, user, host)
    if (host.protocol or "ssh") not in SSH_PROTOCOLS:
        raise ValidationError(f"{host.protocol} hosts have no SSH host key", field="protocol")
    path = known_hosts_path(instance_dir)
    removed = keys(instance_dir, host)
    if removed:
        with open(path.with_name(path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two forgets at once would lose one rewrite
            for name in lookup_names(host):
                out = _keygen("-R", name, "-f", str(path))
                if out.returncode != 0:
                    raise RuntimeError(f"ssh-keygen -R failed: {out.stderr.strip()}")
            path.with_name(path.name + ".old").unlink(missing_ok=True)  # ssh-keygen's backup
    audit.record(session, "host.forget_host_key", actor=user.username if user else "cli", target=host,
                 fingerprints=[k["fingerprint"] for k in removed])
    return {"host": host.name, "forgotten": removed}


def explain(message: str | None) -> str | None:
    """``message`` with a hint appended when it says a host key changed."""
    if message and any(m in message for m in CHANGED_KEY_MARKERS) and HINT not in message:
        return f"{message.rstrip()}\n{HINT}"
    return message
