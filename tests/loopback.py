"""A TCP listener on 127.0.0.1 that keeps what each connection sent: the outside world a
sandboxed run can reach (its network is the machine's), standing in for an attacker's
server or a ledger of what runs did."""
from __future__ import annotations

import socket
import threading


class Listener(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)  # a client that waits for an answer is cut off, what it sent is kept
                data = b""
                try:
                    while chunk := conn.recv(4096):
                        data += chunk
                except OSError:
                    pass
                self.received.append(data)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)
        self.sock.close()
