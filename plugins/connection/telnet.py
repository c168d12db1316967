# Task Manager: a telnet connection plugin for devices that speak nothing else.
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: telnet
short_description: Run commands over telnet, with login and shell prompt handling
description:
  - Logs in over telnet (RFC 854) by answering the login and password prompts, then runs
    commands. With C(ansible_telnet_mode=posix) (default) the remote login shell is
    replaced by C(/bin/sh), echo is switched off and every command reports its exit status
    and stderr through unique markers, so C(raw), C(command), C(shell) and every other
    module work (files are transferred base64-encoded). With C(ansible_telnet_mode=raw)
    (network devices, appliances) a command is sent as a line and its output is what
    arrives before the next shell prompt; the exit status is always 0, use C(raw) only.
  - The password comes from C(ansible_password) or the connection password prompt
    (C(--ask-pass)); Task Manager answers that prompt, it never writes the password to
    the inventory.
  - Privilege escalation (become) is not supported; log in as the account that has the
    rights.
author: Task Manager
options:
  host:
    description: Address of the device.
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
  port:
    description: Telnet port.
    type: int
    default: 23
    vars:
      - name: ansible_port
  remote_user:
    description: Login name sent at the login prompt.
    vars:
      - name: ansible_user
    keyword:
      - name: remote_user
  password:
    description: Password sent at the password prompt.
    vars:
      - name: ansible_password
      - name: ansible_telnet_pass
  mode:
    description: C(posix) for Unix-like shells (all modules), C(raw) for device CLIs (raw only).
    default: posix
    choices: [posix, raw]
    vars:
      - name: ansible_telnet_mode
  login_prompt:
    description: Regex for the login name prompt.
    default: '(?i)(login|username|user name)\s*:\s*$'
    vars:
      - name: ansible_telnet_login_prompt
  password_prompt:
    description: Regex for the password prompt.
    default: '(?i)password\s*:\s*$'
    vars:
      - name: ansible_telnet_password_prompt
  shell_prompt:
    description: Regex for the shell prompt after login (and after each command in raw mode).
    default: '[$#>%]\s*$'
    vars:
      - name: ansible_telnet_prompt
  login_failed:
    description: Regex of the device's answer to a wrong login.
    default: '(?i)(login incorrect|authentication fail|access denied|invalid (login|password|user))'
    vars:
      - name: ansible_telnet_login_failed
  timeout:
    description: Seconds to wait for the connection and each login step.
    type: int
    default: 15
    vars:
      - name: ansible_telnet_timeout
    keyword:
      - name: timeout
  command_timeout:
    description: Seconds a single command may run.
    type: int
    default: 3600
    vars:
      - name: ansible_telnet_command_timeout
"""

import base64
import re
import secrets
import shlex
import socket
import time
import typing as t

from ansible.errors import AnsibleAuthenticationFailure, AnsibleConnectionFailure, AnsibleError
from ansible.module_utils.common.text.converters import to_bytes
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

display = Display()

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
OPT_ECHO, OPT_SGA = 1, 3


class TelnetError(Exception):
    """A telnet failure; ``auth`` tells a rejected login from a network problem."""

    def __init__(self, message: str, auth: bool = False) -> None:
        super().__init__(message)
        self.auth = auth


class TelnetSession:
    """A telnet client: option negotiation, prompt-driven login, command execution.

    Used by the connection plugin and by Task Manager's "test connection" button, so both
    log in the same way.
    """

    def __init__(
        self,
        host: str,
        port: int = 23,
        *,
        timeout: float = 15,
        login_prompt: str = r"(?i)(login|username|user name)\s*:\s*$",
        password_prompt: str = r"(?i)password\s*:\s*$",
        shell_prompt: str = r"[$#>%]\s*$",
        login_failed: str = r"(?i)(login incorrect|authentication fail|access denied|invalid (login|password|user))",
    ) -> None:
        self.host, self.port, self.timeout = host, int(port), float(timeout)
        self.login_re = re.compile(login_prompt)
        self.password_re = re.compile(password_prompt)
        self.prompt_re = re.compile(shell_prompt)
        self.failed_re = re.compile(login_failed)
        self.sock: socket.socket | None = None
        self.buf = b""
        self.banner = ""
        self.posix = False
        self.nonce = secrets.token_hex(6)

    # -- transport --------------------------------------------------------------------
    def open(self) -> None:
        try:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            # Small request/response lines: without this, delayed ACKs cost 40 ms each.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except ConnectionRefusedError as exc:
            raise TelnetError(f"connection refused by {self.host}:{self.port} (nothing listens there)") from exc
        except socket.timeout as exc:
            raise TelnetError(f"timed out after {self.timeout:.0f} s connecting to {self.host}:{self.port}") from exc
        except OSError as exc:
            raise TelnetError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def send(self, text: str) -> None:
        data = to_bytes(text).replace(bytes([IAC]), bytes([IAC, IAC]))
        try:
            assert self.sock is not None
            self.sock.sendall(data)
        except OSError as exc:
            raise TelnetError(f"connection to {self.host}:{self.port} lost while sending: {exc}") from exc

    def sendline(self, text: str) -> None:
        self.send(text + "\r\n")

    def _negotiate(self, data: bytes) -> bytes:
        """Strip telnet commands from ``data``, answering option requests (only the
        server's ECHO and SUPPRESS-GO-AHEAD are accepted: a plain NVT terminal)."""
        out = bytearray()
        replies = bytearray()
        i = 0
        while i < len(data):
            b = data[i]
            if b != IAC:
                out.append(b)
                i += 1
                continue
            if i + 1 >= len(data):
                self.buf_iac = data[i:]
                break
            cmd = data[i + 1]
            if cmd == IAC:
                out.append(IAC)
                i += 2
            elif cmd in (DO, DONT, WILL, WONT):
                if i + 2 >= len(data):
                    self.buf_iac = data[i:]
                    break
                opt = data[i + 2]
                if cmd == DO:
                    replies += bytes([IAC, WONT, opt])
                elif cmd == WILL:
                    replies += bytes([IAC, DO if opt in (OPT_ECHO, OPT_SGA) else DONT, opt])
                i += 3
            elif cmd == SB:
                end = data.find(bytes([IAC, SE]), i + 2)
                if end < 0:
                    self.buf_iac = data[i:]
                    break
                i = end + 2
            else:
                i += 2
        if replies and self.sock is not None:
            self.sock.sendall(bytes(replies))
        return bytes(out)

    buf_iac = b""

    def _recv(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        assert self.sock is not None
        self.sock.settimeout(min(remaining, 1.0))
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return True
        except OSError as exc:
            raise TelnetError(f"connection to {self.host}:{self.port} lost: {exc}") from exc
        if not chunk:
            raise TelnetError(f"{self.host}:{self.port} closed the connection")
        data, self.buf_iac = self.buf_iac + chunk, b""
        # NVT line ends are CR LF (or CR NUL for a bare CR): keep only LF.
        self.buf += self._negotiate(data).replace(b"\r\x00", b"").replace(b"\r", b"")
        return True

    def expect(self, patterns: list[re.Pattern], timeout: float, what: str, settle: float = 0.0) -> tuple[int, str]:
        """Read until one of ``patterns`` matches the text so far (prompts: at its end).
        Returns (index, text up to and including the match); the rest stays buffered.

        ``settle``: a prompt only counts when no more data follows within that many
        seconds, so "Last login: ..." in a banner is not mistaken for a login prompt.
        """
        deadline = time.monotonic() + timeout
        while True:
            text = self.buf.decode("utf-8", "surrogateescape")
            for idx, pat in enumerate(patterns):
                m = pat.search(text)
                if m:
                    if settle and m.end() == len(text) and self._more_within(settle):
                        break  # more output arrived: look again
                    consumed = text[: m.end()]
                    self.buf = self.buf[len(consumed.encode("utf-8", "surrogateescape")):]
                    return idx, consumed.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            else:
                if not self._recv(deadline):
                    lines = text.strip().splitlines()
                    got = f"; last output: {lines[-1][:200]!r}" if lines else "; nothing received"
                    raise TelnetError(
                        f"timed out after {timeout:.0f} s waiting for {what} from {self.host}:{self.port}{got}")

    def _more_within(self, seconds: float) -> bool:
        before = len(self.buf)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._recv(deadline)
            if len(self.buf) != before:
                return True
        return False

    # -- login ------------------------------------------------------------------------
    def login(self, user: str | None, password: str | None) -> str:
        """Answer the login and password prompts; returns the text seen before the shell prompt."""
        if self.sock is None:
            self.open()
        seen = []
        sent_user = sent_pass = False
        deadline = time.monotonic() + self.timeout * 3
        while True:
            left = max(deadline - time.monotonic(), 0.1)
            idx, text = self.expect(
                [self.failed_re, self.login_re, self.password_re, self.prompt_re],
                min(self.timeout, left), "a login, password or shell prompt", settle=0.15,
            )
            seen.append(text)
            if idx == 0:
                raise TelnetError(f"login rejected by {self.host}:{self.port}: {text.strip().splitlines()[-1][:200]}", auth=True)
            if idx == 1:
                if sent_user:
                    raise TelnetError(f"login rejected by {self.host}:{self.port} (asked for the login name again)", auth=True)
                if not user:
                    raise TelnetError(f"{self.host}:{self.port} asks for a login name but the credential has no username", auth=True)
                self.sendline(user)
                sent_user = True
            elif idx == 2:
                if sent_pass:
                    raise TelnetError(f"login rejected by {self.host}:{self.port} (asked for the password again)", auth=True)
                if password is None:
                    raise TelnetError(f"{self.host}:{self.port} asks for a password but none was given", auth=True)
                self.sendline(password)
                sent_pass = True
            else:
                self.banner = "".join(seen)
                return self.banner

    def start_posix(self) -> None:
        """Replace the login shell by a quiet /bin/sh: no echo, no prompts, so command
        output can be separated exactly by markers."""
        # Wait for sh's own prompt: typed-ahead input may be swallowed by the login
        # shell's line editor before the exec.
        self.sendline("exec /bin/sh")
        self.expect([re.compile(r"[$#]\s*$")], self.timeout, "/bin/sh to start", settle=0.2)
        self.sendline(
            "stty -echo -onlcr 2>/dev/null; PS1=''; PS2=''; export PS1 PS2; unset PROMPT_COMMAND; "
            f"printf '%s%s\\n' __TM{self.nonce} _READY"
        )
        self.expect([re.compile(rf"__TM{self.nonce}_READY\n")], self.timeout, "the shell to start")
        self.posix = True

    # -- commands ---------------------------------------------------------------------
    def run_posix(self, cmd: str, timeout: float) -> tuple[int, str, str]:
        """Run ``cmd`` with sh; returns (rc, stdout, stderr) separated by unique markers."""
        n = self.nonce
        err = f"/tmp/.tm-telnet-{n}.err"
        line = (
            f"sh -c {shlex.quote(cmd)} </dev/null 2>{err}; __tm_rc=$?; "
            f"printf '\\n%s%s\\n' __TM{n} _ERR; cat {err} 2>/dev/null; rm -f {err}; "
            f"printf '\\n%s%s%s\\n' __TM{n} _RC $__tm_rc"
        )
        if any(len(part) > 4000 for part in line.split("\n")):
            raise TelnetError("a command line is longer than the 4000 characters a terminal line may hold")
        self.sendline(line)
        _, text = self.expect([re.compile(rf"\n__TM{n}_RC(\d+)\n")], timeout, "the command to finish")
        out, _, rest = text.partition(f"\n__TM{n}_ERR\n")
        errtext, _, rc = rest.rpartition(f"\n__TM{n}_RC")
        return int(rc.strip()), out, errtext

    def run_raw(self, cmd: str, timeout: float) -> tuple[int, str, str]:
        """Device CLI: send the line, output is what comes before the next prompt."""
        self.sendline(cmd)
        _, text = self.expect([self.prompt_re], timeout, "the prompt after the command", settle=0.15)
        lines = text.split("\n")
        if lines and lines[0].strip() == cmd.strip():
            lines = lines[1:]  # the device's echo of the command
        return 0, "\n".join(lines[:-1]) + ("\n" if len(lines) > 1 else ""), ""

    def run(self, cmd: str, timeout: float = 3600) -> tuple[int, str, str]:
        return self.run_posix(cmd, timeout) if self.posix else self.run_raw(cmd, timeout)

    def upload(self, data: bytes, path: str, timeout: float = 600) -> None:
        """Write ``data`` to ``path`` in one stream: the tty is switched to
        non-canonical mode (no 4095-byte line limit) and ``head -c`` reads exactly the
        base64 text, which ``base64 -d`` turns back into the file."""
        n = self.nonce
        encoded = base64.b64encode(data)
        tmp, dest = shlex.quote(path + ".b64"), shlex.quote(path)
        self.sendline(
            f"stty -icanon min 1 time 0 2>/dev/null; printf '%s%s\\n' __TM{n} _GO; "
            f"head -c {len(encoded)} > {tmp}; __tm_rc=$?; stty icanon 2>/dev/null; "
            f"if [ $__tm_rc = 0 ]; then base64 -d {tmp} > {dest} 2>/tmp/.tm-telnet-{n}.err; __tm_rc=$?; fi; "
            f"rm -f {tmp}; printf '\\n%s%s\\n' __TM{n} _ERR; cat /tmp/.tm-telnet-{n}.err 2>/dev/null; "
            f"rm -f /tmp/.tm-telnet-{n}.err; printf '\\n%s%s%s\\n' __TM{n} _RC $__tm_rc"
        )
        self.expect([re.compile(rf"__TM{n}_GO\n")], self.timeout, "the upload to start")
        assert self.sock is not None
        try:
            self.sock.sendall(encoded)
        except OSError as exc:
            raise TelnetError(f"connection to {self.host}:{self.port} lost while uploading: {exc}") from exc
        _, text = self.expect([re.compile(rf"\n__TM{n}_RC(\d+)\n")], timeout, "the upload to finish")
        _, _, rest = text.partition(f"\n__TM{n}_ERR\n")
        err, _, rc = rest.rpartition(f"\n__TM{n}_RC")
        if int(rc.strip()) != 0:
            raise TelnetError(f"cannot write {path} (are head and base64 installed?): {err.strip()[:300]}")

    def logout(self) -> None:
        try:
            if self.sock is not None:
                self.sendline("exit")
        except TelnetError:
            pass
        self.close()


class Connection(ConnectionBase):
    """Ansible connection over telnet (see DOCUMENTATION)."""

    transport = "telnet"
    has_pipelining = False

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self.session: TelnetSession | None = None

    def _connect(self) -> "Connection":
        if self._connected:
            return self
        if self.become is not None:
            raise AnsibleError("become is not supported over telnet: log in as the account that has the rights")
        host = self.get_option("host")
        port = self.get_option("port") or 23
        session = TelnetSession(
            host, port,
            timeout=self.get_option("timeout") or 15,
            login_prompt=self.get_option("login_prompt"),
            password_prompt=self.get_option("password_prompt"),
            shell_prompt=self.get_option("shell_prompt"),
            login_failed=self.get_option("login_failed"),
        )
        display.vvv(f"TELNET CONNECT {host}:{port} as {self.get_option('remote_user')}", host=host)
        try:
            session.open()
            session.login(self.get_option("remote_user"), self.get_option("password"))
            if self.get_option("mode") == "posix":
                session.start_posix()
        except TelnetError as exc:
            session.close()
            if exc.auth:
                raise AnsibleAuthenticationFailure(str(exc)) from exc
            raise AnsibleConnectionFailure(str(exc)) from exc
        self.session = session
        self._connected = True
        return self

    def exec_command(self, cmd: str, in_data: bytes | None = None, sudoable: bool = True) -> tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        if in_data is not None:
            raise AnsibleError("the telnet connection does not support pipelining")
        self._connect()
        assert self.session is not None
        display.vvv(f"TELNET EXEC {cmd[:200]}", host=self.get_option("host"))
        try:
            rc, out, err = self.session.run(cmd, self.get_option("command_timeout") or 3600)
        except TelnetError as exc:
            self.close()
            raise AnsibleConnectionFailure(str(exc)) from exc
        return rc, to_bytes(out), to_bytes(err)

    def _require_posix(self, what: str) -> None:
        if not (self.session and self.session.posix):
            raise AnsibleError(f"{what} needs ansible_telnet_mode=posix; in raw mode only the raw module works")

    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        self._connect()
        self._require_posix("copying files")
        assert self.session is not None
        with open(in_path, "rb") as fh:
            data = fh.read()
        try:
            self.session.upload(data, out_path)
        except TelnetError as exc:
            raise AnsibleError(str(exc)) from exc

    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        self._connect()
        self._require_posix("fetching files")
        assert self.session is not None
        rc, out, err = self.session.run(f"base64 < {shlex.quote(in_path)}", 600)
        if rc != 0:
            raise AnsibleError(f"cannot read {in_path}: {err.strip()}")
        with open(out_path, "wb") as fh:
            fh.write(base64.b64decode("".join(out.split())))

    def close(self) -> None:
        if self.session is not None:
            self.session.logout()
            self.session = None
        self._connected = False

    def reset(self) -> None:
        self.close()
