"""The command ansible-runner starts for a warm run: it hands the run to the warm process.

``python -I -S warm_attach.py SOCKET KEY_FIFO ansible-playbook ARGS...`` (KEY_FIFO empty
without an ssh key). It runs as ansible-runner's child on the run's pty, outside the
sandbox, and imports only the standard library's C modules: it connects to the warm
process's socket (in the run's private directory), passes the pty (stdin, stdout, stderr)
with SCM_RIGHTS plus the argv, the environment ansible-runner gave it and its directory,
then waits for the exit status and exits with it. Ending it (cancel, timeout: ansible-runner
kills its process tree) closes the socket, which ends the warm process and its sandbox.
"""
import fcntl
import json
import os
import signal
import socket
import sys
import termios
import time

CONNECT_WAIT_S = 5  # the worker saw it listening (warm.Warm.ready)


def main() -> int:
    path, key, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + CONNECT_WAIT_S
    while True:
        try:
            conn.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                print(f"ERROR! the warm ansible-playbook process never answered on {path}", file=sys.stderr)
                return 1
            time.sleep(0.002)
    try:  # the pty becomes the warm process's controlling terminal (its prompts ask for one)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        fcntl.ioctl(0, termios.TIOCNOTTY)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    except OSError:
        pass
    socket.send_fds(conn, [b"\0"], [0, 1, 2])
    request = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "key": key}
    conn.sendall(json.dumps(request).encode() + b"\n")
    reply = b""
    while True:
        chunk = conn.recv(64)
        if not chunk:
            break
        reply += chunk
    try:
        return int(reply)
    except ValueError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
