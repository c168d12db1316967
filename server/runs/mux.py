"""ssh connections held between runs: one connection holder per credential version.

Why: every run's ``ansible-playbook`` lives in its own sandbox with its own PID namespace,
and a PID namespace ends all its processes with its first one. An ssh ControlPersist master
started by a run therefore dies with the run, and every run paid for a new ssh handshake
and login per host.

What: per credential version, the worker keeps a *holder*, a sandbox of its own (same
bubblewrap confinement as a run: nobody, read-only system, fresh /tmp, own PID namespace)
with an ssh-agent holding that credential's key and a small loop (mux_holder.py) that
starts ``ssh -M -N -f`` masters on request. A run's ssh clients connect through those
masters (``ansible_control_path``): only the sockets of the run's own hosts are linked into
the run's private directory (hard links), one file each, so a run never sees another credential's connections nor hosts it
does not target. The masters end after ``CONTROL_PERSIST_S`` idle, when the credential's
secret changes (a new version gets a new holder; the old one is closed), or with the worker.

What is not held (those runs connect by themselves, as before): password credentials (their
secret would have to wait in the holder for ssh to ask), hosts on other protocols, x11
hosts (their own ssh options) and hosts whose master is not up within ``READY_WAIT_S`` (an
unreachable host delays nothing: the run connects and reports it unreachable itself; the
master keeps trying for the next run).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any


from server.core.config import Settings
from server.core.models import Credential, Host
from server.core.vault import vault
from server.runs import hostkeys, protocols, sandbox

log = logging.getLogger(__name__)

HOLDER_SCRIPT = Path(__file__).resolve().parent / "mux_holder.py"
CONTROL_PERSIST_S = 300  # as prepare.CONTROL_PERSIST_S: a holder idle that long has no master left
READY_WAIT_S = 2.0
CONNECT_TIMEOUT_S = 10
FAILED_S = 300  # a host whose master failed this recently is tried again, but not waited for

_lock = threading.Lock()
_holders: dict[int, Holder] = {}  # credential id -> its holder (for the newest version seen)


@dataclass(frozen=True)
class Target:
    """One host a holder keeps a connection to, and the socket for it."""

    name: str  # the host's name
    host: Any  # what hostkeys needs of the host, copied (SimpleNamespace)
    address: str
    port: int
    user: str
    path: Path


def holdable(host: Host, credential: Credential | None) -> bool:
    """Whether ``host``'s connection can be held: plain ssh with a key credential and a user."""
    return (credential is not None and credential.kind == "ssh_key" and bool(credential.username)
            and (host.protocol or "ssh") == "ssh")


def socket_name(address: str, port: int, user: str) -> str:
    """A short, fixed-length file name (unix socket paths are limited to 108 bytes)."""
    return hashlib.sha256(f"{user}\0{address}\0{port}".encode()).hexdigest()[:20]


def alive(path: Path) -> bool:
    """Whether a master listens on ``path`` (a stale socket file refuses the connection)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(0.5)
        sock.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()


class Holder:
    """A sandbox with the credential's key in ssh-agent, starting masters on request."""

    def __init__(self, credential: Credential, settings: Settings) -> None:
        self.credential_id = credential.id
        self.version = credential.version
        self.settings = settings
        self.dir = sandbox.new_private_dir()
        self.user = str(credential.username)
        self.used_at = time.monotonic()
        self._replies: dict[str, threading.Event] = {}
        self._ok: dict[str, bool] = {}
        self._failed_at: dict[str, float] = {}  # a host that just failed is not waited for again
        self._sent: dict[str, Target] = {}
        self._write = threading.Lock()
        layout = sandbox.Layout(self.dir, self.dir, readonly=[HOLDER_SCRIPT])
        sandbox.check(layout)
        fifo = str(self.dir / "agent" / "key")
        sandbox.write_key(fifo, vault().decrypt(credential.secret_enc) or "")
        command = ["ssh-agent", "sh", "-c", 'ssh-add -q "$0" && rm -f "$0" && exec "$@"', fifo,
                   sys.executable, "-I", str(HOLDER_SCRIPT)]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.dir / "home"), "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen(sandbox.argv(layout, command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1)
        self._fifo = fifo
        threading.Thread(target=self._read, name=f"mux-{credential.id}", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                reply: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            path = str(reply.get("path"))
            target = self._sent.pop(path, None)
            if reply.get("ok") and target is not None:  # ssh learnt a new host's key (accept-new): keep it
                try:
                    hostkeys.learn(self.settings.instance_dir, [target.host], self._known_hosts(target))
                except OSError:
                    log.warning("connection holder %s: could not keep a learnt host key", self.credential_id,
                                exc_info=True)
            if not reply.get("ok"):
                self._failed_at[path] = time.monotonic()
                log.info("connection holder %s: no master for %s: %s", self.credential_id, path, reply.get("error"))
            self._ok[path] = bool(reply.get("ok"))
            event = self._replies.pop(path, None)
            if event is not None:
                event.set()
        for event in list(self._replies.values()):  # the holder ended: nobody waits for it
            event.set()

    def target(self, host: Host) -> Target:
        address = host.address or host.name
        port = int(protocols.port_of(host) or 22)
        user = self.user
        # a plain copy: the reader thread learns host keys with it, never touching the session
        snapshot = SimpleNamespace(name=host.name, address=address, port=port, protocol="ssh")
        return Target(host.name, snapshot, address, port, user, self.dir / "cp" / socket_name(address, port, user))

    def _known_hosts(self, t: Target) -> Path:
        return self.dir / "ssh" / f"{t.path.name}.known_hosts"

    def _argv(self, t: Target) -> list[str]:
        from server.runs.prepare import ssh_args  # prepare imports this module

        known_hosts = self._known_hosts(t)
        hostkeys.seed(self.settings.instance_dir, [t.host], known_hosts)
        # ssh_args has ControlMaster=auto and ControlPersist: with -N -f this ssh becomes the master
        return ["ssh", *shlex.split(ssh_args(self.settings, None, known_hosts)), "-o", f"ControlPath={t.path}",
                "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                "-N", "-f", "-p", str(t.port), "-l", t.user, "--", t.address]

    def ensure(self, targets: list[Target], wait_s: float) -> list[Target]:
        """Start masters missing for ``targets``; the targets whose master is up within ``wait_s``."""
        self.used_at = time.monotonic()
        waiting: list[tuple[Target, threading.Event]] = []
        for t in targets:
            key = str(t.path)
            if key in self._replies or alive(t.path):
                continue
            if t.path.exists():
                t.path.unlink()  # a stale socket (its master was killed): ssh refuses to bind over it
            event = threading.Event()
            self._replies[key] = event
            if time.monotonic() - self._failed_at.get(key, -FAILED_S) >= FAILED_S:
                waiting.append((t, event))  # (a host down a moment ago would delay every run)
            self._sent[key] = t
            self._send({"path": key, "argv": self._argv(t)})
        deadline = time.monotonic() + wait_s
        for t, event in waiting:
            if event.wait(max(0.0, deadline - time.monotonic())) and self._ok.get(str(t.path)):
                self._failed_at.pop(str(t.path), None)
        return [t for t in targets if alive(t.path)]

    def _send(self, request: dict[str, Any]) -> None:
        with self._write:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps(request) + "\n")
                self.proc.stdin.flush()
            except (OSError, ValueError):
                self._replies.pop(request["path"], threading.Event()).set()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """End the holder: its sandbox's PID namespace takes every master with it."""
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        sandbox.drain_fifo(self._fifo)
        shutil.rmtree(self.dir, ignore_errors=True)


def held(credential: Credential | None, hosts: list[Host], settings: Settings,
         wait_s: float = READY_WAIT_S) -> dict[str, Path]:
    """Host name -> control socket of a live master, for the hosts of a run that can be held."""
    hosts = [h for h in hosts if holdable(h, credential)]
    if not hosts or credential is None:
        return {}
    with _lock:
        _close_idle()
        holder = _holders.get(credential.id)
        if holder is not None and (holder.version != credential.version or not holder.running):
            _holders.pop(credential.id).close()
            holder = None
        if holder is None:
            try:
                holder = Holder(credential, settings)
            except (sandbox.SandboxError, OSError) as exc:
                log.warning("no connection holder for credential %s: %s", credential.id, exc)
                return {}
            _holders[credential.id] = holder
        holder.user = str(credential.username)
    ready = holder.ensure([holder.target(h) for h in hosts], wait_s)
    return {t.name: t.path for t in ready}


def _close_idle() -> None:
    now = time.monotonic()
    for cid in [c for c, h in _holders.items() if now - h.used_at > CONTROL_PERSIST_S or not h.running]:
        _holders.pop(cid).close()


def close_all() -> None:
    """End every holder (the worker is stopping; tests)."""
    with _lock:
        for cid in list(_holders):
            _holders.pop(cid).close()


def attach(inventory: dict[str, Any], sockets: dict[str, Path], into: Path) -> list[Path]:
    """Point each held host of ``inventory`` at its master; the socket files the run must see.

    Each socket is hard-linked into ``into`` (a directory of the run's private directory, so a
    warm run's sandbox, made before its hosts are known, shows it); one that cannot be linked
    is returned, to be bound into the sandbox by itself."""
    if not sockets:
        return []
    hosts = inventory["all"]["hosts"]
    extra: list[Path] = []
    for name, host_name in inventory["_meta"]["names"].items():
        if host_name in sockets:
            path = sockets[host_name]
            try:
                os.link(path, into / f"held-{path.name}")
                path = into / f"held-{path.name}"
            except OSError:
                extra.append(path)
            hosts[name]["ansible_control_path"] = str(path)
    return extra
