# Task Manager: protocol probes for remote desktop services (RDP, VNC).
# Standard library only (plus `cryptography` for VNC password authentication), so the same
# code serves the Ansible modules (as module_utils) and Task Manager's connection test.
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import socket
import ssl
import struct

RDP_PROTOCOLS = {0: "RDP (standard security)", 1: "TLS", 2: "CredSSP (NLA)", 4: "RDSTLS", 8: "CredSSP with early user auth (HYBRID_EX)"}
RDP_FAILURES = {
    1: "the server requires TLS (SSL_REQUIRED_BY_SERVER)",
    2: "the server does not allow TLS (SSL_NOT_ALLOWED_BY_SERVER)",
    3: "the server has no certificate for TLS (SSL_CERT_NOT_ON_SERVER)",
    4: "inconsistent flags (INCONSISTENT_FLAGS)",
    5: "the server requires CredSSP/NLA (HYBRID_REQUIRED_BY_SERVER)",
    6: "the server requires TLS with user authentication (SSL_WITH_USER_AUTH_REQUIRED_BY_SERVER)",
}
VNC_SECURITY = {0: "invalid", 1: "None", 2: "VNC Authentication", 5: "RA2", 6: "RA2ne", 16: "Tight", 17: "Ultra",
                18: "TLS", 19: "VeNCrypt", 20: "SASL", 21: "MD5", 22: "xvp", 30: "Apple Remote Desktop"}


class ProbeError(Exception):
    """The service answered, but not as the protocol requires (or refused us)."""


def _recv_exact(sock: socket.socket, n: int, what: str) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ProbeError(f"the server closed the connection while sending {what}")
        data += chunk
    return data


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.settimeout(timeout)
    return sock


# --------------------------------------------------------------------------- RDP


def rdp_probe(host: str, port: int = 3389, timeout: float = 10, username: str = "", tls: bool = True,
              ca_file: str | None = None, validate_certs: bool = False) -> dict:
    """X.224 Connection Request with an RDP Negotiation Request (MS-RDPBCGR 2.2.1.1);
    returns the protocol the server selected and, when it chose TLS or CredSSP, the TLS
    version and certificate of the upgraded connection."""
    requested = 0x1 | 0x2 | 0x8  # TLS, CredSSP, CredSSP with early user authorization
    cookie = f"Cookie: mstshash={username[:9] or 'tm'}\r\n".encode() if username is not None else b""
    neg_req = struct.pack("<BBHI", 0x01, 0x00, 8, requested)
    x224 = bytes([0xE0, 0, 0, 0, 0, 0]) + cookie + neg_req
    x224 = bytes([len(x224)]) + x224  # length indicator
    tpkt = struct.pack(">BBH", 3, 0, 4 + len(x224)) + x224
    sock = _connect(host, port, timeout)
    try:
        sock.sendall(tpkt)
        head = _recv_exact(sock, 4, "the TPKT header")
        version, _, length = struct.unpack(">BBH", head)
        if version != 3 or length < 11 or length > 512:
            raise ProbeError(f"not an RDP server (TPKT header {head.hex()})")
        body = _recv_exact(sock, length - 4, "the X.224 Connection Confirm")
        if body[1] & 0xF0 != 0xD0:
            raise ProbeError(f"not an RDP server (X.224 code 0x{body[1]:02x}, expected Connection Confirm 0xd0)")
        result: dict = {"x224": "Connection Confirm"}
        neg = body[7:]
        if len(neg) >= 8:
            ntype, flags, nlen, value = struct.unpack("<BBHI", neg[:8])
            if ntype == 0x03:
                raise ProbeError(f"the server refused the negotiation: {RDP_FAILURES.get(value, f'failure code {value}')}")
            if ntype != 0x02:
                raise ProbeError(f"unexpected negotiation response type {ntype}")
            selected = value
            result["flags"] = flags
        else:
            selected = 0  # pre-negotiation servers: standard RDP security
        result["selected_protocol"] = RDP_PROTOCOLS.get(selected, f"unknown ({selected})")
        result["selected_protocol_id"] = selected
        if selected in (1, 2, 8) and tls:
            ctx = ssl.create_default_context(cafile=ca_file) if validate_certs else ssl._create_unverified_context()
            if not validate_certs:
                ctx.check_hostname = False
            with ctx.wrap_socket(sock, server_hostname=host if validate_certs else None) as tls_sock:
                der = tls_sock.getpeercert(binary_form=True)
                result["tls_version"] = tls_sock.version()
                result["certificate"] = describe_certificate(der)
        return result
    finally:
        sock.close()


def describe_certificate(der: bytes | None) -> dict:
    if not der:
        return {}
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
    except ImportError:  # pragma: no cover - cryptography is a Task Manager requirement
        return {"der_bytes": len(der)}
    cert = x509.load_der_x509_certificate(der)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "self_signed": cert.subject == cert.issuer,
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }


# --------------------------------------------------------------------------- VNC


def _vnc_response(password: str, challenge: bytes) -> bytes:
    """VNC Authentication: DES-encrypt the challenge with the password (8 bytes, zero
    padded, each byte's bits mirrored, as RFB 6.2.2 inherited from the reference code)."""
    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:  # pragma: no cover - older cryptography
        from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    key = password.encode("latin-1", "replace")[:8].ljust(8, b"\0")
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in key)
    enc = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # K1=K2=K3: single DES
    return enc.update(challenge) + enc.finalize()


def vnc_probe(host: str, port: int = 5900, timeout: float = 10, password: str | None = None) -> dict:
    """Read the RFB version and security types; with a password (or when the server
    offers None) authenticate and read the ServerInit: desktop name and size."""
    sock = _connect(host, port, timeout)
    try:
        banner = _recv_exact(sock, 12, "the RFB version")
        if not banner.startswith(b"RFB ") or banner[-1:] != b"\n":
            raise ProbeError(f"not a VNC server (greeting {banner!r})")
        server_version = banner[4:11].decode("ascii", "replace")
        try:
            major, minor = (int(x) for x in server_version.split("."))
        except ValueError as exc:
            raise ProbeError(f"not a VNC server (version {server_version!r})") from exc
        minor = 8 if (major, minor) >= (3, 8) else 7 if (major, minor) >= (3, 7) else 3
        sock.sendall(f"RFB 003.00{minor}\n".encode())
        result: dict = {"server_version": server_version, "protocol_version": f"3.{minor}"}
        if minor == 3:
            (stype,) = struct.unpack(">I", _recv_exact(sock, 4, "the security type"))
            types = [stype] if stype else []
        else:
            (count,) = struct.unpack(">B", _recv_exact(sock, 1, "the security types"))
            types = list(_recv_exact(sock, count, "the security types")) if count else []
        if not types:
            raise ProbeError(f"the server refuses connections: {_reason(sock)}")
        result["security_types"] = [VNC_SECURITY.get(t, f"type {t}") for t in types]
        if 2 in types and password:
            chosen = 2
        elif 1 in types:
            chosen = 1
        else:
            result["authenticated"] = False
            result["note"] = "no password given" if 2 in types else "no security type Task Manager can use"
            return result
        if minor != 3:
            sock.sendall(bytes([chosen]))
        if chosen == 2:
            challenge = _recv_exact(sock, 16, "the authentication challenge")
            sock.sendall(_vnc_response(password or "", challenge))
        if chosen == 2 or minor == 8:
            (status,) = struct.unpack(">I", _recv_exact(sock, 4, "the security result"))
            if status != 0:
                reason = _reason(sock) if minor == 8 else "authentication failed"
                raise ProbeError(f"VNC authentication failed: {reason}")
        sock.sendall(b"\x01")  # ClientInit: shared session, do not disconnect others
        width, height = struct.unpack(">HH", _recv_exact(sock, 4, "the ServerInit"))
        _recv_exact(sock, 16, "the pixel format")
        (name_len,) = struct.unpack(">I", _recv_exact(sock, 4, "the desktop name length"))
        name = _recv_exact(sock, min(name_len, 4096), "the desktop name").decode("utf-8", "replace")
        result.update(authenticated=True, security=VNC_SECURITY.get(chosen), width=width, height=height,
                      desktop_name=name)
        return result
    finally:
        sock.close()


def _reason(sock: socket.socket) -> str:
    try:
        (n,) = struct.unpack(">I", _recv_exact(sock, 4, "the reason"))
        return _recv_exact(sock, min(n, 4096), "the reason").decode("utf-8", "replace") or "no reason given"
    except (ProbeError, OSError):
        return "no reason given"
