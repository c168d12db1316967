"""Real servers for the protocol tests: telnetd, an HTTPS API, slapd, xrdp, Xvfb + x11vnc.

Each server runs on its own random loopback address (127.200-254.x.y, apart from
sshlab's 127.0.x.y), is started by a context manager and stopped with everything it
spawned. A private CA (``PKI``) signs the TLS servers' certificates.
"""
from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.runs import procs

PROTO_USER = "tmproto"
PROTO_PASSWORD = "Proto-Pass-314"


def ensure_user(user: str = PROTO_USER, password: str = PROTO_PASSWORD) -> None:
    """A real local account (telnet logins go through /bin/login and PAM)."""
    if subprocess.run(["id", "-u", user], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", user], check=True, capture_output=True)
    subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True, capture_output=True)


def free_address(port: int) -> str:
    """A loopback address nobody listens on at ``port``."""
    for _ in range(200):
        addr = f"127.{random.randint(200, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        with socket.socket() as s:
            try:
                s.bind((addr, port))
                return addr
            except OSError:
                continue
    raise RuntimeError(f"no free loopback address for port {port}")


def wait_port(addr: str, port: int, proc: subprocess.Popen | None = None, timeout: float = 15, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()[-2000:] if log else ''}")
        try:
            with socket.create_connection((addr, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {addr}:{port} after {timeout} s")


def stop_process(proc: subprocess.Popen | None) -> None:
    """Stop ``proc`` and every process it started (servers fork per connection)."""
    if proc is None:
        return
    for pid in [p.pid for p in procs.descendants(proc.pid)] + [proc.pid]:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- PKI


class PKI:
    """A private CA and certificates it signs (written as PEM files under ``dir``)."""

    def __init__(self, directory: Path, name: str = "Task Manager Test CA") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = self.dir / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, addresses: list[str]) -> tuple[Path, Path]:
        """(certificate file, key file) for a server reachable at ``addresses``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        sans = [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses] + [x509.DNSName(name)]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        os.chmod(key_file, 0o600)
        return cert_file, key_file


# --------------------------------------------------------------------------- telnet


class TelnetServer:
    """inetutils telnetd, started per connection by an inetd-style accept loop."""

    def __init__(self) -> None:
        self.addr = free_address(23)
        self.port = 23
        self.procs: list[subprocess.Popen] = []
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self.connections = 0

    def __enter__(self) -> "TelnetServer":
        ensure_user()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.addr, self.port))
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def _serve(self) -> None:
        assert self.sock is not None
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by __exit__
            self.connections += 1
            proc = subprocess.Popen(["/usr/sbin/telnetd", "-h"], stdin=conn, stdout=conn,
                                    stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
            conn.close()
            self.procs.append(proc)

    def __exit__(self, *exc) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            except OSError:
                pass
            self.sock.close()
        if self.thread is not None:
            self.thread.join(timeout=5)
        for proc in self.procs:
            stop_process(proc)


# --------------------------------------------------------------------------- HTTPS


class HTTPSServer:
    """A small JSON API over TLS that checks the Authorization header it is sent."""

    def __init__(self, pki: PKI, *, token: str | None = None, user: str | None = None, password: str | None = None) -> None:
        self.addr = free_address(8443)
        self.port = 8443
        self.cert, self.key = pki.issue(f"api-{self.addr}", [self.addr])
        self.token, self.user, self.password = token, user, password
        self.requests: list[dict] = []
        self.httpd: ThreadingHTTPServer | None = None

    def authorized(self, header: str) -> bool:
        if self.token and header == f"Bearer {self.token}":
            return True
        if self.user and header.startswith("Basic "):
            try:
                return base64.b64decode(header[6:]).decode() == f"{self.user}:{self.password}"
            except ValueError:
                return False
        return False

    def __enter__(self) -> "HTTPSServer":
        lab = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization", "")
                lab.requests.append({"method": self.command, "path": self.path, "authorization": auth,
                                     "body": body.decode(errors="replace")})
                if not lab.authorized(auth):
                    status, doc = 401, {"error": "unauthorized"}
                elif self.path.startswith("/api/status"):
                    status, doc = 200, {"status": "green", "version": "1.2.3"}
                elif self.path.startswith("/api/items") and self.command == "POST":
                    status, doc = 201, {"created": json.loads(body or b"{}")}
                else:
                    status, doc = 404, {"error": "no such endpoint"}
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Bearer realm="test"')
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _reply

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer((self.addr, self.port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


# --------------------------------------------------------------------------- slapd


class Slapd:
    """A private OpenLDAP server (mdb + ppolicy) over ldaps:// with a cert from ``pki``."""

    SUFFIX = "dc=example,dc=org"
    ROOT_DN = "cn=admin,dc=example,dc=org"
    ROOT_PW = "admin-Secret-1"

    def __init__(self, pki: PKI, directory: Path, *, plain: bool = False) -> None:
        self.addr = free_address(636)
        self.port = 636
        self.plain = plain  # also ldap:// on 389 (for StartTLS)
        self.dir = directory
        self.cert, self.key = pki.issue(f"ldap-{self.addr}", [self.addr])
        self.ca_file = pki.ca_file
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ldaps://{self.addr}:{self.port}"

    def __enter__(self) -> "Slapd":
        (self.dir / "db").mkdir(parents=True)
        conf = self.dir / "slapd.conf"
        conf.write_text("\n".join([
            *(f"include /etc/ldap/schema/{s}.schema" for s in ("core", "cosine", "inetorgperson", "nis")),
            "modulepath /usr/lib/ldap", "moduleload back_mdb", "moduleload ppolicy",
            f"pidfile {self.dir / 'slapd.pid'}", f"argsfile {self.dir / 'slapd.args'}",
            f"TLSCertificateFile {self.cert}", f"TLSCertificateKeyFile {self.key}",
            "database mdb", "maxsize 10485760", f'suffix "{self.SUFFIX}"', f'rootdn "{self.ROOT_DN}"',
            f"rootpw {self.ROOT_PW}", f"directory {self.dir / 'db'}",
            "overlay ppolicy", f'ppolicy_default "cn=default,ou=policies,{self.SUFFIX}"', "ppolicy_use_lockout", "",
        ]))
        log = self.dir / "slapd.log"
        with open(log, "wb") as fh:
            urls = f"{self.url}/" + (f" ldap://{self.addr}:389/" if self.plain else "")
            self.proc = subprocess.Popen(["/usr/sbin/slapd", "-f", str(conf), "-h", urls, "-d", "0"],
                                         stdout=fh, stderr=fh, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.addr, self.port, self.proc, log=log)
        self._populate()
        return self

    def connection(self, user: str | None = None, password: str | None = None):
        import ldap3

        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.ca_file))
        server = ldap3.Server(self.addr, port=self.port, use_ssl=True, tls=tls, get_info=ldap3.NONE)
        return ldap3.Connection(server, user=user or self.ROOT_DN, password=password or self.ROOT_PW,
                                raise_exceptions=False)

    def _populate(self) -> None:
        conn = self.connection()
        assert conn.bind(), conn.result
        s = self.SUFFIX
        entries = [
            (s, ["dcObject", "organization"], {"o": "Example", "dc": "example"}),
            (f"ou=people,{s}", ["organizationalUnit"], {"ou": "people"}),
            (f"ou=policies,{s}", ["organizationalUnit"], {"ou": "policies"}),
            (f"cn=default,ou=policies,{s}", ["organizationalRole", "pwdPolicy"],
             {"cn": "default", "pwdAttribute": "userPassword", "pwdLockout": "TRUE", "pwdMaxFailure": "3"}),
            (f"cn=operator,ou=people,{s}", ["inetOrgPerson"],
             {"cn": "operator", "sn": "Operator", "userPassword": "operator-Pass-1"}),
        ]
        for name in ("alice", "bob", "carol"):
            entries.append((f"uid={name},ou=people,{s}", ["inetOrgPerson"],
                            {"uid": name, "cn": name.title(), "sn": name.title(), "mail": f"{name}@example.org",
                             "userPassword": f"{name}-Pass-1"}))
        for dn, classes, attrs in entries:
            assert conn.add(dn, classes, attrs), (dn, conn.result)
        conn.unbind()

    def lock(self, uid: str) -> None:
        import ldap3

        conn = self.connection()
        assert conn.bind()
        assert conn.modify(f"uid={uid},ou=people,{self.SUFFIX}",
                           {"pwdAccountLockedTime": [(ldap3.MODIFY_REPLACE, ["000001010000Z"])]}), conn.result
        conn.unbind()

    def can_bind(self, uid: str) -> bool:
        conn = self.connection(f"uid={uid},ou=people,{self.SUFFIX}", f"{uid}-Pass-1")
        ok = conn.bind()
        conn.unbind()
        return ok

    def __exit__(self, *exc) -> None:
        stop_process(self.proc)


# --------------------------------------------------------------------------- RDP / VNC / X


class Xrdp:
    """xrdp with its own ini (listen address, log) and the package's TLS certificate."""

    def __init__(self, directory: Path) -> None:
        self.addr = free_address(3389)
        self.port = 3389
        self.dir = directory
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Xrdp":
        self.dir.mkdir(parents=True, exist_ok=True)
        ini = Path("/etc/xrdp/xrdp.ini").read_text()
        lines = []
        for line in ini.splitlines():
            if line.startswith("port=") and "3389" in line and not line.startswith("port=ask"):
                line = f"port=tcp://{self.addr}:{self.port}"
            elif line.startswith("LogFile="):
                line = f"LogFile={self.dir / 'xrdp.log'}"
            elif line.startswith("EnableSyslog="):
                line = "EnableSyslog=false"
            lines.append(line)
        conf = self.dir / "xrdp.ini"
        conf.write_text("\n".join(lines) + "\n")
        log = self.dir / "xrdp.out"
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(["/usr/sbin/xrdp", "--nodaemon", "--config", str(conf)], stdout=fh, stderr=fh,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.addr, self.port, self.proc, log=log)
        return self

    def __exit__(self, *exc) -> None:
        stop_process(self.proc)


def free_display() -> int:
    for _ in range(100):
        n = random.randint(120, 900)
        if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists():
            return n
    raise RuntimeError("no free X display number")


class Xvfb:
    """A virtual X display (``:N``), unix socket only."""

    def __init__(self) -> None:
        self.number = free_display()
        self.display = f":{self.number}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Xvfb":
        self.proc = subprocess.Popen(["/usr/bin/Xvfb", self.display, "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/.X11-unix/X{self.number}").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Xvfb {self.display} did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        stop_process(self.proc)


class X11VNC:
    """x11vnc serving an Xvfb display, password from an rfbauth file (not the command line)."""

    def __init__(self, display: str, directory: Path, password: str) -> None:
        self.addr = free_address(5900)
        self.port = 5900
        self.display, self.dir, self.password = display, directory, password
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "X11VNC":
        self.dir.mkdir(parents=True, exist_ok=True)
        passfile = self.dir / "vncpasswd"
        subprocess.run(["x11vnc", "-storepasswd", self.password, str(passfile)], check=True, capture_output=True)
        log = self.dir / "x11vnc.log"
        self.proc = subprocess.Popen(
            ["x11vnc", "-display", self.display, "-rfbport", str(self.port), "-listen", self.addr, "-rfbauth",
             str(passfile), "-forever", "-shared", "-desktop", "tm-test-desktop", "-o", str(log), "-q", "-nopw",
             "-noxdamage"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.addr, self.port, self.proc, log=log)
        return self

    def __exit__(self, *exc) -> None:
        stop_process(self.proc)


def tempdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
