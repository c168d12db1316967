"""SSH host keys Task Manager has learnt, and forgetting a host's key when the server is rebuilt.

Runs and connection tests use one known-hosts file, ``instance/known_hosts``, with
``StrictHostKeyChecking=accept-new``: a server's key is learnt on first contact and a
changed key is refused (the operation is ``unreachable``: "Host key verification failed").
A run cannot see ``instance/`` (sandbox.py): it gets a copy holding its own hosts' lines
(``seed``), and afterwards only keys of its own hosts that were not known yet are taken
back (``learn``) — a run can neither read other hosts' entries nor replace a pinned key.
That is the protection against a man in the middle, so nothing forgets keys on its own:
after a legitimate rebuild someone who may edit hosts forgets the old key (audited, with
the fingerprints removed) and the next connection learns the new one.

OpenSSH's own ``ssh-keygen -F`` / ``-R`` read and edit the file (it may hold hashed names).
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from server.people import access
from server.core import audit
from server.runs import protocols
from server.core.errors import ValidationError
from server.core.models import Host, User

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


KEY_TYPES = frozenset({"ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                       "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"})
MAX_LEARNT_BYTES = 1024 * 1024


def _names_match(field: str, names: set[str]) -> bool:
    """Does a known_hosts name field (plain or ``|1|salt|hash``) name one of ``names``?"""
    for pattern in field.split(","):
        if pattern.startswith("|1|"):
            try:
                _, _, salt, digest = pattern.split("|")
                salt_b, digest_b = base64.b64decode(salt), base64.b64decode(digest)
            except ValueError:
                continue
            if any(hmac.compare_digest(hmac.new(salt_b, n.encode(), hashlib.sha1).digest(), digest_b) for n in names):
                return True
        elif pattern in names:
            return True
    return False


def _name_field(line: str) -> str | None:
    parts = line.split()
    if not parts or line.lstrip().startswith("#"):
        return None
    return parts[1] if parts[0].startswith("@") and len(parts) > 1 else parts[0]


def seed(instance_dir: Path, hosts: list[Host], dest: Path) -> None:
    """Write ``dest``: the recorded lines of ``hosts`` only, for one run's sandbox."""
    names = {n for h in hosts for n in lookup_names(h)}
    path = known_hosts_path(instance_dir)
    lines = []
    if names and path.exists():
        lines = [ln for ln in path.read_text().splitlines() if (f := _name_field(ln)) and _names_match(f, names)]
    dest.write_text("".join(ln + "\n" for ln in lines))
    os.chmod(dest, 0o644)
    if os.geteuid() == 0:
        os.chown(dest, dest.parent.stat().st_uid, dest.parent.stat().st_gid)  # ssh inside appends


def _learnt_lines(src: Path) -> list[str]:
    """``src`` as the sandbox left it, read without following a link it may have planted."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        return fh.read(MAX_LEARNT_BYTES).decode("utf-8", "replace").splitlines()


def _valid_entry(line: str, names: set[str]) -> str | None:
    """The name a plain ``name keytype base64key`` line records, when it is one of ``names``."""
    parts = line.split()
    if len(parts) != 3 or parts[0] not in names or parts[1] not in KEY_TYPES:
        return None
    try:
        base64.b64decode(parts[2], validate=True)
    except ValueError:
        return None
    return parts[0]


def learn(instance_dir: Path, hosts: list[Host], src: Path) -> list[str]:
    """Take back from a run the first keys of its own hosts; returns the names learnt.

    ssh (``accept-new``) appended them inside the sandbox. Code inside could append too,
    so only plain, well-formed lines for this run's hosts that had no key yet are kept:
    a pinned key is never replaced and no other host gains one.
    """
    names = {n for h in hosts for n in lookup_names(h)}
    if not names:
        return []
    path = known_hosts_path(instance_dir)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        known = path.read_text().splitlines() if path.exists() else []
        pinned = {n for ln in known if (f := _name_field(ln)) for n in names if _names_match(f, {n})}
        new: dict[str, list[str]] = {}
        for line in _learnt_lines(src):
            name = _valid_entry(line, names - pinned)
            if name and line not in new.setdefault(name, []):
                new[name].append(line)
        if new:
            with open(path, "a") as fh:
                fh.write("".join(ln + "\n" for lines in new.values() for ln in lines))
    return sorted(new)


def explain(message: str | None) -> str | None:
    """``message`` with a hint appended when it says a host key changed."""
    if message and any(m in message for m in CHANGED_KEY_MARKERS) and HINT not in message:
        return f"{message.rstrip()}\n{HINT}"
    return message
