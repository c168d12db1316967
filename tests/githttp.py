"""A real git server over HTTPS: ``git http-backend`` (CGI) behind a TLS server with basic auth."""
from __future__ import annotations

import base64
import hmac
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import ssl
from pathlib import Path

from tests.protolab import PKI, free_address


class GitHTTPS:
    """Serves the bare repositories under ``root`` at ``https://<addr>:<port>/<name>.git``;
    every request needs ``Authorization: Basic user:token``. ``seen`` keeps the request lines."""

    def __init__(self, pki: PKI, root: Path, user: str, token: str) -> None:
        self.addr = free_address(8443)
        self.cert, self.key = pki.issue(f"git-{self.addr}", [self.addr])
        self.root, self.user, self.token = root, user, token
        self.seen: list[str] = []
        self.httpd: ThreadingHTTPServer | None = None

    def url(self, name: str) -> str:
        return f"https://{self.addr}:{self.httpd.server_address[1]}/{name}"

    def _authorized(self, header: str) -> bool:
        want = "Basic " + base64.b64encode(f"{self.user}:{self.token}".encode()).decode()
        return hmac.compare_digest(header.encode(), want.encode())

    def __enter__(self) -> "GitHTTPS":
        lab = self

        class Handler(BaseHTTPRequestHandler):
            def _cgi(self) -> None:
                lab.seen.append(f"{self.command} {self.path}")
                if not lab._authorized(self.headers.get("Authorization", "")):
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                env = {"GIT_PROJECT_ROOT": str(lab.root), "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path,
                       "QUERY_STRING": query, "REQUEST_METHOD": self.command, "REMOTE_USER": lab.user,
                       "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                       "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                       "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""), "PATH": "/usr/bin:/bin",
                       "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": "/nonexistent"}
                out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True,
                                     timeout=60).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status = 200
                headers = []
                for line in head.decode().split("\r\n"):
                    key, _, value = line.partition(": ")
                    if key.lower() == "status":
                        status = int(value.split()[0])
                    elif key:
                        headers.append((key, value))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _cgi

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer((self.addr, 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
