"""A lab of REAL OpenSSH servers on loopback addresses, for tests and benchmarks.

``with SSHLab(20) as lab:`` starts 20 ``/usr/sbin/sshd -D`` processes, one per address
``127.0.<block>.<10+i>:22``, each with its own config, host key and log in a private
directory. They accept key login (``lab.private_key``, an ed25519 key generated for the
lab) and password login for a real Linux user (default ``tmlab``) whose sudo rule
REQUIRES the password, so ``become`` with a become password is really exercised.

The address block is taken under a lock file, so several labs (pytest-xdist workers,
other helpers' tests, a benchmark) can run on one machine at the same time.
Needs root (sshd binds port 22 and switches to the test user).
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from server.runs import procs

SSHD = "/usr/sbin/sshd"
DEFAULT_USER = "tmlab"
DEFAULT_PASSWORD = "tmlab-Pass-2718"
LOCK_DIR = Path("/tmp/sshlab-locks")
MAX_BLOCKS = 200


@dataclass
class Server:
    index: int
    address: str
    port: int
    config: Path
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"lab{self.index:02d}"


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def _ensure_account(user: str, password: str) -> None:
    try:
        _run(["id", "-u", user])
    except subprocess.CalledProcessError:
        _run(["useradd", "--create-home", "--shell", "/bin/bash", user])
    _run(["chpasswd"], input=f"{user}:{password}\n")


def ensure_user(user: str, password: str, become_user: str | None = None,
                become_password: str | None = None) -> None:
    """Create the test user once and (re)set its password; sudo asks for that password.

    With ``become_user``/``become_password``, a second account is made and sudo asks for
    ITS password (``targetpw``): the become password then differs from the login one.
    """
    _ensure_account(user, password)
    if become_user:
        _ensure_account(become_user, become_password or password)
    if not shutil.which("sudo"):
        _run(["apt-get", "install", "-y", "-q", "sudo"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    sudoers = Path(f"/etc/sudoers.d/{user}")
    # timestamp_timeout=0: every sudo asks again, so each become really sends the password.
    flags = "timestamp_timeout=0, lecture=never, !requiretty" + (", targetpw" if become_user else "")
    rule = f"Defaults:{user} {flags}\n{user} ALL=(ALL:ALL) ALL\n"
    if not sudoers.exists() or sudoers.read_text() != rule:
        tmp = sudoers.with_suffix(".tmp")
        tmp.write_text(rule)
        os.chmod(tmp, 0o440)
        os.replace(tmp, sudoers)


class SSHLab:
    """N real sshd servers; a context manager usable from pytest fixtures and benchmarks."""

    def __init__(self, n: int, *, user: str = DEFAULT_USER, password: str = DEFAULT_PASSWORD,
                 become_user: str | None = None, become_password: str | None = None) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("SSHLab needs root (sshd on port 22, switching to the test user)")
        if not 1 <= n <= 240:
            raise ValueError("1..240 servers per lab")
        self.n = n
        self.user = user
        self.password = password
        self.become_user = become_user or "root"
        self.become_password = become_password or password
        self._separate_become = become_user is not None
        self.servers: list[Server] = []
        self.dir: Path | None = None
        self._lock_fh = None
        self.block = -1

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> "SSHLab":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        ensure_user(self.user, self.password, self.become_user if self._separate_become else None,
                    self.become_password)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self._take_block()
        # World-traversable (sshd reads authorized_keys as the test user); keys stay 0600.
        self.dir = Path(tempfile.mkdtemp(prefix="sshlab-"))
        os.chmod(self.dir, 0o755)
        self.key_path = self.dir / "client_ed25519"
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sshlab", "-f", str(self.key_path)])
        self.private_key = self.key_path.read_text()
        self.public_key = (self.dir / "client_ed25519.pub").read_text()
        auth = self.dir / "authorized_keys"
        auth.write_text(self.public_key)
        os.chmod(auth, 0o644)
        host_key = self.dir / "host_ed25519"
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
        for i in range(self.n):
            address = f"127.0.{self.block}.{10 + i}"
            config = self.dir / f"sshd_{i}.conf"
            server = Server(i, address, 22, config, self.dir / f"sshd_{i}.log")
            config.write_text(self._config(server, host_key, auth))
            self.servers.append(server)
        for server in self.servers:
            self.start_server(server.index, wait=False)
        for server in self.servers:
            self._wait_listening(server)

    def stop(self) -> None:
        for server in self.servers:
            self.stop_server(server.index)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    # -- one server ------------------------------------------------------------------
    def start_server(self, index: int, wait: bool = True) -> None:
        server = self.servers[index]
        if server.proc is not None and server.proc.poll() is None:
            return
        log = open(server.log, "ab")
        server.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(server.config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
        log.close()
        if wait:
            self._wait_listening(server)

    def stop_server(self, index: int) -> None:
        """Stop the listener AND its live connections (ControlPersist masters die too)."""
        server = self.servers[index]
        proc = server.proc
        if proc is None:
            return
        # by parentage, not process group: sshd's per-connection children call setsid
        pids = [p.pid for p in procs.descendants(proc.pid)] + [proc.pid]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        deadline = time.monotonic() + 5
        for pid in pids[:-1]:
            while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
                try:
                    with open(f"/proc/{pid}/stat") as fh:
                        if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                            break
                except OSError:
                    break
                time.sleep(0.02)
        server.proc = None

    def rekey_server(self, index: int) -> Path:
        """Give server ``index`` a new host key (a rebuilt server) and restart it; returns the key."""
        server = self.servers[index]
        host_key = self.dir / f"host_ed25519_{index}_{time.monotonic_ns()}"
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
        server.config.write_text(self._config(server, host_key, self.dir / "authorized_keys"))
        self.stop_server(index)
        self.start_server(index)
        return host_key

    # -- helpers ---------------------------------------------------------------------
    def ssh_command(self, index: int, *remote: str, password: bool = False) -> list[str]:
        """A plain ``ssh`` command line for server ``index`` (used by the benchmark floor)."""
        server = self.servers[index]
        opts = [
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=" + ("no" if password else "yes"),
            "-p", str(server.port), "-l", self.user,
        ]
        if not password:
            opts += ["-i", str(self.key_path), "-o", "IdentitiesOnly=yes"]
        return ["ssh", *opts, server.address, *remote]

    def _config(self, server: Server, host_key: Path, auth: Path) -> str:
        return "\n".join([
            f"ListenAddress {server.address}:{server.port}",
            f"HostKey {host_key}",
            f"PidFile {self.dir / f'sshd_{server.index}.pid'}",
            f"AuthorizedKeysFile {auth}",
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PermitRootLogin no",
            f"AllowUsers {self.user}",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "MaxStartups 200:30:400",
            "MaxSessions 100",
            "LogLevel ERROR",
            "Subsystem sftp internal-sftp",
            "",
        ])

    def _take_block(self) -> None:
        """Lock the first free third octet, so concurrent labs never share an address."""
        LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
        for block in range(MAX_BLOCKS):
            fh = open(LOCK_DIR / f"block-{block}.lock", "w")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            if all(self._port_free(f"127.0.{block}.{10 + i}") for i in range(self.n)):
                self._lock_fh, self.block = fh, block
                return
            fh.close()
        raise RuntimeError("no free loopback block for the SSH lab")

    @staticmethod
    def _port_free(address: str) -> bool:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, 22))
            except OSError:
                return False
        return True

    @staticmethod
    def _wait_listening(server: Server, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.proc is not None and server.proc.poll() is not None:
                raise RuntimeError(f"sshd {server.address} exited: {server.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((server.address, server.port), timeout=0.5) as s:
                    s.settimeout(2)
                    if s.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"sshd {server.address} did not start listening")
