"""Connection protocols: what each one needs in the inventory, how its secrets reach
Ansible, and a real connection test.

Every host has a ``protocol`` (models.PROTOCOLS). For each one this module knows:

* which credential kinds it accepts (``credential_problem``);
* ``host_vars(host, credential)``: the inventory connection variables, never a secret
  (inventory.py merges them over the user's variables);
* ``prompt_answers(credential)``: the secrets the shipped protocol playbooks ask for with
  a private ``vars_prompt``; prepare.py merges them into ansible-runner's ``passwords``
  (the connection password itself goes through ``--ask-pass`` as for SSH);
* ``test_connection(host, credential)``: TCP, then the protocol's own handshake and, where
  the protocol allows it, a login.

Host variables read here (all optional): ``tls_verify`` (default true), ``ca_bundle``
(PEM file on the Task Manager server), ``winrm_transport``/``winrm_scheme``,
``telnet_mode``/``telnet_login_prompt``/``telnet_password_prompt``/``telnet_prompt``,
``https_auth``/``https_test_path``, ``ldap_base_dn``, ``x11_trusted``. They are checked by
type and value when a host is saved (``option_problem``, ``settings_problem``) and again
when an inventory is built. ``ca_bundle`` must lie under ``core.ca_bundles.ca_dirs()``: the system CA
directories plus the colon-separated ``TASKMANAGER_CA_DIRS``.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from server.core.ca_bundles import ca_bundle_problem
from server.core.errors import ValidationError
from server.core.models import Credential, Host

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO_ROOT / "plugins"
TIMEOUT_S = 10.0

# The private vars_prompt every shipped HTTPS / LDAPS / VNC playbook uses for the
# credential's secret (see playbooks/https, playbooks/ldap, playbooks/remote_desktop).
SECRET_VAR = "tm_secret"
SECRET_PROMPT = "Task Manager credential secret"
# ansible-runner's display callback writes its event markers right before the prompt, on
# the same line, ending in ESC[K: the prompt is matched at a line start or right after
# that escape, which task output (JSON-escaped by the callback) can never contain.
SECRET_PROMPT_RE = r"(?:^|\x1b\[K)Task Manager credential secret:\s*$"


LOCAL_PROTOCOLS = frozenset({"https", "ldaps", "rdp", "vnc"})  # tasks run on the controller
CONNECTION_PASSWORD_PROTOCOLS = frozenset({"ssh", "x11", "winrm", "telnet"})  # secret via --ask-pass
WINRM_TRANSPORTS = ("ntlm", "kerberos", "credssp", "basic")
TELNET_MODES = ("posix", "raw")
HTTPS_AUTH = ("bearer", "basic", "none")
WINRM_SCHEMES = ("http", "https")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
FLAG_OPTIONS = ("tls_verify", "x11_trusted")
CHOICE_OPTIONS = {"winrm_transport": WINRM_TRANSPORTS, "winrm_scheme": WINRM_SCHEMES, "telnet_mode": TELNET_MODES,
                  "https_auth": HTTPS_AUTH}
REGEX_OPTIONS = ("telnet_login_prompt", "telnet_password_prompt", "telnet_prompt")
TEXT_OPTIONS = {"ldap_base_dn": 1000, "https_test_path": 2000}
OPTIONS = frozenset((*FLAG_OPTIONS, *CHOICE_OPTIONS, *REGEX_OPTIONS, *TEXT_OPTIONS, "ca_bundle"))
MAX_PROMPT_LEN = 200
MAX_PATH_LEN = 4096


def protocol(name: str | None) -> Protocol:
    try:
        return PROTOCOLS[name or "ssh"]
    except KeyError:
        raise ValidationError(f"unknown protocol {name!r}; one of {', '.join(PROTOCOLS)}", field="protocol") from None


def ansible_env(playbook_dir: Path | None = None, hosts: Iterable[Host] | None = None) -> dict[str, str]:
    """Non-secret environment every ansible-playbook run needs to find the shipped roles,
    modules (LDAP, RDP/VNC probes), module_utils, the telnet connection plugin and the
    ``tm_commands`` action that runs ``commands`` tasks, plus what the protocols of
    ``hosts`` add (every protocol's when ``hosts`` is None; see ``X11.env``)."""
    roles = [REPO_ROOT / "roles"]
    if playbook_dir is not None:
        roles.insert(0, Path(playbook_dir) / "roles")
    env = {
        "ANSIBLE_ROLES_PATH": os.pathsep.join(str(p) for p in roles),
        "ANSIBLE_LIBRARY": str(REPO_ROOT / "library"),
        "ANSIBLE_MODULE_UTILS": str(PLUGIN_DIR / "module_utils"),
        "ANSIBLE_CONNECTION_PLUGINS": str(PLUGIN_DIR / "connection"),
        "ANSIBLE_ACTION_PLUGINS": str(PLUGIN_DIR / "action"),  # tm_commands
        "ANSIBLE_STRATEGY_PLUGINS": str(PLUGIN_DIR / "strategy"),  # tm_threads, for commands plays
    }
    names = {h.protocol or "ssh" for h in hosts} if hosts is not None else set(PROTOCOLS)
    for name in sorted(names):
        env.update(protocol(name).env())
    return env


def _secret_of(credential: Credential | None) -> str:
    if credential is None or credential.secret_enc is None:
        return ""
    from server.core.vault import vault

    return vault().decrypt(credential.secret_enc) or ""


def prompt_answers(credential: Credential | None, hosts: Iterable[Host] | None = None) -> dict[str, str]:
    """{prompt regex: answer} for the ``vars_prompt`` of the protocol playbooks: what the
    protocols of ``hosts`` answer (every protocol's when ``hosts`` is None).

    Always holds the secret prompt's entry (an empty answer when no protocol of the run
    needs the secret), so a play that asks is never left waiting.
    """
    answers = {SECRET_PROMPT_RE: ""}
    names = {h.protocol or "ssh" for h in hosts} if hosts is not None else set(PROTOCOLS)
    for name in sorted(names):
        answers.update(protocol(name).prompt_answers(credential))
    return answers


def credential_problem(protocol_name: str, credential: Credential | None) -> str | None:
    """Why ``credential`` cannot log in over ``protocol_name`` (None when it can)."""
    proto = protocol(protocol_name)
    if credential is None or not proto.credential_kinds:
        return None
    if credential.kind not in proto.credential_kinds:
        kinds = " or ".join(proto.credential_kinds)
        return f"{proto.name} needs a {kinds} credential, not {credential.kind} (credential {credential.name!r})"
    return None


def commands_problem(hosts) -> str | None:
    """Why a ``commands`` task may not run on these hosts (None when it may).

    Hosts reached through an API protocol run their tasks on the Task Manager server
    (connection local): raw command lines there would run on the server itself.
    """
    bad = sorted(h.name for h in hosts if not protocol(h.protocol).runs_commands)
    if not bad:
        return None
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return (f"command lines cannot run on {shown}: their protocol is an API or service check "
            "(https, ldaps, rdp, vnc); use a playbook task for them")


# --------------------------------------------------------------------------- host variables


def _shown(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _flag_value(value: Any) -> bool | None:
    """True/False for a flag option (booleans, 0/1, yes/no, on/off, true/false), else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def option_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not valid for the protocol option ``name`` (None when it is, or when
    ``name`` is not a protocol option). The message follows the option's name."""
    if name not in OPTIONS:
        return None
    if name in FLAG_OPTIONS:
        return None if _flag_value(value) is not None else f"must be true or false, not {_shown(value)}"
    if value in (None, ""):
        return None  # unset: the protocol's default
    if name in CHOICE_OPTIONS:
        allowed = CHOICE_OPTIONS[name]
        if not isinstance(value, str) or value.strip().lower() not in allowed:
            return f"must be one of {', '.join(allowed)}, not {_shown(value)}"
        return None
    if not isinstance(value, str):
        return f"must be a string, not {_shown(value)}"
    if any(ord(ch) < 32 or ch == "\x7f" for ch in value):
        return "must not contain control characters"
    if name in REGEX_OPTIONS:
        if len(value) > MAX_PROMPT_LEN:
            return f"must be at most {MAX_PROMPT_LEN} characters"
        try:
            re.compile(value)
        except re.error as exc:
            return f"is not a valid regular expression: {exc}"
        return None
    if name in TEXT_OPTIONS:
        if len(value) > TEXT_OPTIONS[name]:
            return f"must be at most {TEXT_OPTIONS[name]} characters"
        if name == "https_test_path" and (not value.startswith("/") or any(ch.isspace() for ch in value)):
            return f"must be a URL path starting with '/' and without spaces, not {_shown(value)}"
        return None
    if len(value) > MAX_PATH_LEN:
        return f"must be at most {MAX_PATH_LEN} characters"
    return ca_bundle_problem(value)


def settings_problem(protocol_name: str, port: int | None, values: dict[str, Any]) -> str | None:
    """Why a host's protocol options do not work together (checked when the host is saved)."""
    if protocol_name != "winrm":
        return None
    transport = str(values.get("winrm_transport") or "ntlm").strip().lower()
    scheme = str(values.get("winrm_scheme") or "").strip().lower() or ("http" if port == 5985 else "https")
    if transport == "basic" and scheme == "http":
        return ("basic authentication over http would send the password in clear; "
                "use https (port 5986) or ntlm/kerberos")
    return None


def _option(host: Host, name: str) -> Any:
    """A stored option, checked again (rows may predate the checks or bypass the API)."""
    value = (host.vars or {}).get(name)
    problem = option_problem(name, value) if name in (host.vars or {}) else None
    if problem:
        raise ValidationError(f"host {host.name!r}: {name} {problem}", field="vars")
    return value


def _flag(host: Host, name: str, default: bool) -> bool:
    if name not in (host.vars or {}):
        return default
    return bool(_flag_value(_option(host, name)))


def _choice(host: Host, name: str, default: str) -> str:
    value = _option(host, name)
    return default if value in (None, "") else str(value).strip().lower()


def ca_bundle(host: Host) -> str | None:
    """The host's CA bundle: a PEM file under one of ``core.ca_bundles.ca_dirs()`` on the Task Manager server."""
    value = _option(host, "ca_bundle")
    return None if value in (None, "") else str(value)


def _regex(host: Host, name: str) -> str | None:
    value = _option(host, name)
    return None if value in (None, "") else str(value)


def port_of(host: Host) -> int | None:
    proto = protocol(host.protocol)
    if host.protocol == "winrm" and not host.port:
        return 5985 if _choice(host, "winrm_scheme", "https") == "http" else 5986
    return host.port or proto.default_port


def _base_vars(proto: Protocol, host: Host, credential: Credential | None) -> dict[str, Any]:
    """What every protocol but ssh and local puts first: address, protocol, port. Raises
    ValidationError for a credential the protocol cannot use."""
    problem = credential_problem(proto.name, credential)
    if problem:
        raise ValidationError(f"host {host.name!r}: {problem}", field="credential")
    address = host.address or host.name
    port = port_of(host)
    out: dict[str, Any] = {"ansible_host": address, "tm_protocol": proto.name, "tm_address": address}
    if port:
        out["tm_port"] = port
    return out


def _user(credential: Credential | None) -> str | None:
    return credential.username if credential is not None and credential.username else None


@dataclass(frozen=True)
class Protocol:
    """One connection protocol and what a run needs of it. ``host_vars`` gives a host's
    inventory connection variables (never a secret; inventory.py merges them over the
    user's variables), ``prompt_answers`` the answers to the shipped playbooks'
    ``vars_prompt`` (prepare.py merges them into ansible-runner's passwords; the connection
    password itself goes through ``--ask-pass``), ``env`` what it adds to the run's
    environment. This base class is the API and service protocols (https, ldaps, rdp,
    vnc): their tasks run on the controller and talk to the target; subclasses override
    what differs."""

    name: str
    default_port: int | None
    credential_kinds: tuple[str, ...]
    runs_commands: bool  # can a ``commands`` task (raw lines) run on such a host?
    summary: str  # what a task can do over it

    def host_vars(self, host: Host, credential: Credential | None) -> dict[str, Any]:
        """Raises ValidationError for a bad protocol setting, so a run fails with a clear
        reason before anything connects."""
        out = _base_vars(self, host, credential)
        address, port, user = out["tm_address"], out.get("tm_port"), _user(credential)
        out.update(ansible_connection="local", ansible_python_interpreter=sys.executable)
        out["tm_tls_verify"] = _flag(host, "tls_verify", self.name != "rdp")
        bundle = ca_bundle(host)
        if bundle:
            out["tm_ca_bundle"] = bundle
        if user:
            out["tm_username"] = user
        out["tm_has_secret"] = credential is not None and credential.secret_enc is not None
        if self.name == "https":
            out["tm_base_url"] = f"https://{_url_host(address)}" + ("" if port == 443 else f":{port}")
            out["tm_auth"] = https_auth(host, credential)
        elif self.name == "ldaps":
            out["tm_ldap_url"] = f"ldaps://{_url_host(address)}:{port}"
            base_dn = _option(host, "ldap_base_dn")
            if base_dn:
                out["tm_ldap_base_dn"] = str(base_dn)
        return out

    def prompt_answers(self, credential: Credential | None) -> dict[str, str]:
        """The credential's secret for the playbooks' private ``vars_prompt``."""
        return {SECRET_PROMPT_RE: _secret_of(credential)}

    def env(self) -> dict[str, str]:
        return {}


class Ssh(Protocol):
    def host_vars(self, host: Host, credential: Credential | None) -> dict[str, Any]:
        out: dict[str, Any] = {"ansible_host": host.address or host.name, "ansible_connection": "ssh",
                               "ansible_port": host.port or 22}
        if _user(credential):
            out["ansible_user"] = _user(credential)
        return out

    def prompt_answers(self, credential: Credential | None) -> dict[str, str]:
        return {}  # the password goes through --ask-pass, a key through ssh-agent


class Local(Ssh):
    def host_vars(self, host: Host, credential: Credential | None) -> dict[str, Any]:
        return {"ansible_connection": "local", "ansible_host": host.address or host.name}


class X11(Ssh):
    def host_vars(self, host: Host, credential: Credential | None) -> dict[str, Any]:
        out = _base_vars(self, host, credential)
        out.update(ansible_connection="ssh", ansible_port=out.get("tm_port"))
        if _user(credential):
            out["ansible_user"] = _user(credential)
        trusted = _flag(host, "x11_trusted", False)
        # Clients on the target draw on the controller's display through the tunnel.
        out["ansible_ssh_extra_args"] = f"-o ForwardX11=yes -o ForwardX11Trusted={'yes' if trusted else 'no'}"
        out["tm_x11_trusted"] = trusted
        return out

    def env(self) -> dict[str, str]:
        """``TASKMANAGER_X11_DISPLAY`` names the controller's X display that forwarded clients
        draw on; it is passed on as ``DISPLAY``."""
        display = os.environ.get("TASKMANAGER_X11_DISPLAY")
        return {"DISPLAY": display} if display else {}


class WinRM(Protocol):
    def host_vars(self, host: Host, credential: Credential | None) -> dict[str, Any]:
        out = _base_vars(self, host, credential)
        port = out.get("tm_port")
        scheme = _choice(host, "winrm_scheme", "http" if port == 5985 else "https")
        transport = _choice(host, "winrm_transport", "ntlm")
        if transport == "basic" and scheme == "http":
            raise ValidationError(
                f"host {host.name!r}: basic authentication over http would send the password in clear; "
                "use https (port 5986) or ntlm/kerberos", field="vars")
        verify = _flag(host, "tls_verify", True)
        out.update(
            ansible_connection="winrm",
            ansible_port=port,
            ansible_shell_type="powershell",
            ansible_winrm_scheme=scheme,
            ansible_winrm_transport=[transport],
            ansible_winrm_server_cert_validation="validate" if verify else "ignore",
            ansible_winrm_message_encryption="auto",
        )
        if transport == "kerberos":
            out["ansible_winrm_kinit_mode"] = "managed"  # kinit with the credential's password
        bundle = ca_bundle(host)
        if bundle:
            out["ansible_winrm_ca_trust_path"] = bundle
        if _user(credential):
            out["ansible_user"] = _user(credential)
        return out


class Telnet(Protocol):
    def host_vars(self, host: Host, credential: Credential | None) -> dict[str, Any]:
        out = _base_vars(self, host, credential)
        out.update(ansible_connection="telnet", ansible_port=out.get("tm_port"),
                   ansible_telnet_mode=_choice(host, "telnet_mode", "posix"))
        for var, target in (("telnet_login_prompt", "ansible_telnet_login_prompt"),
                            ("telnet_password_prompt", "ansible_telnet_password_prompt"),
                            ("telnet_prompt", "ansible_telnet_prompt")):
            rx = _regex(host, var)
            if rx:
                out[target] = rx
        if _user(credential):
            out["ansible_user"] = _user(credential)
        return out


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Ssh("ssh", 22, ("ssh_key", "password"), True, "any playbook or command over OpenSSH"),
        Local("local", None, (), True, "tasks on the Task Manager server itself"),
        WinRM("winrm", 5986, ("password",), True,
              "PowerShell commands, Windows services and WMI/CIM queries over WinRM (pywinrm)"),
        Telnet("telnet", 23, ("password",), True,
               "commands behind a login/password/shell prompt; every module on POSIX shells"),
        Protocol("https", 443, ("token", "password"), False,
                 "REST API calls (ansible.builtin.uri) with a bearer token or basic auth"),
        Protocol("ldaps", 636, ("password",), False, "directory search, account check/unlock, attribute changes"),
        Protocol("rdp", 3389, ("password",), False, "RDP service check: X.224 negotiation, security protocol, TLS certificate"),
        Protocol("vnc", 5900, ("password",), False, "VNC service check: RFB version, security types, login, desktop"),
        X11("x11", 22, ("ssh_key", "password"), True, "X clients on the target through SSH X11 forwarding"),
    )
}


def host_vars(host: Host, credential: Credential | None) -> dict[str, Any]:
    """Inventory connection variables for ``host`` (never a secret): its protocol's."""
    return protocol(host.protocol).host_vars(host, credential)


def https_auth(host: Host, credential: Credential | None) -> str:
    default = "none" if credential is None else "bearer" if credential.kind == "token" else "basic"
    return _choice(host, "https_auth", default)


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


# --------------------------------------------------------------------------- connection tests


@dataclass
class Result:
    ok: bool
    reason: str
    details: dict[str, Any]

    def __iter__(self):  # ``ok, reason = test_connection(...)``
        return iter((self.ok, self.reason))


def test_connection(host: Host, credential: Credential | None, timeout: float = TIMEOUT_S) -> Result:
    """A real connection test: TCP, the protocol handshake, and a login where possible.

    Returns a ``Result`` (unpacks as ``ok, reason``); never raises for network trouble.
    """
    name = host.protocol or "ssh"
    try:
        proto = protocol(name)
        problem = credential_problem(name, credential)
        if problem:
            return Result(False, problem, {})
        secret = _secret(credential)
        checker: Callable[..., Result] = _CHECKS[proto.name]
        started = time.monotonic()
        result = checker(host, credential, secret, timeout)
        result.details.setdefault("elapsed_s", round(time.monotonic() - started, 3))
        return result
    except ValidationError as err:
        return Result(False, err.message, {})
    except (socket.timeout, TimeoutError):
        return Result(False, f"timed out after {timeout:.0f} s talking to {host.address}:{port_of(host)}", {})
    except ConnectionRefusedError:
        return Result(False, f"connection refused by {host.address}:{port_of(host)} (nothing listens there)", {})
    except OSError as exc:
        return Result(False, f"cannot reach {host.address}:{port_of(host)}: {exc.strerror or exc}", {})


test_connection.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, despite the name


def _secret(credential: Credential | None) -> str | None:
    if credential is None or credential.secret_enc is None:
        return None
    from server.core.vault import vault

    return vault().decrypt(credential.secret_enc)


def _tcp(host: Host, timeout: float) -> socket.socket:
    return socket.create_connection((host.address, port_of(host)), timeout=timeout)


def _load_plugin(relpath: str, name: str):
    """Import one of the shipped Ansible plugin files (they are not a package)."""
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, PLUGIN_DIR / relpath)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return module


def probes():
    return _load_plugin("module_utils/tm_probes.py", "tm_probes")


def _check_local(host, credential, secret, timeout) -> Result:
    return Result(True, "runs on the Task Manager server itself", {"hostname": socket.gethostname()})


def _check_ssh(host, credential, secret, timeout, x11: bool = False) -> Result:
    """OpenSSH login with the credential (key in a private temp file, password through
    sshpass on a pipe), then one command; for x11 the server must grant forwarding."""
    if credential is None:
        return _banner_only(host, timeout, b"SSH-", "SSH")
    ssh = shutil.which("ssh")
    if ssh is None:
        return Result(False, "the OpenSSH client (ssh) is not installed on the Task Manager server", {})
    from flask import current_app, has_app_context

    known = (current_app.config["TM"].instance_dir / "known_hosts") if has_app_context() else Path(os.devnull)
    remote = 'printf "uname=%s\\n" "$(uname -sr 2>/dev/null || ver)"'
    if x11:
        remote += '; printf "display=%s\\n" "$DISPLAY"; for c in xdpyinfo xset xauth; do command -v $c >/dev/null && printf "client=%s\\n" $c; done'
    args = [ssh, "-F", "none", "-o", "IdentityFile=none", "-o", f"ConnectTimeout={int(timeout)}",
            "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={known}",
            "-o", "LogLevel=ERROR", "-o", "NumberOfPasswordPrompts=1", "-p", str(port_of(host))]
    if credential.username:
        args += ["-l", credential.username]
    if x11:
        args += ["-o", "ForwardX11=yes", "-o", "ForwardX11Trusted=yes"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
           "DISPLAY": os.environ.get("TASKMANAGER_X11_DISPLAY") or ":0"} if x11 else {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    with tempfile.TemporaryDirectory(prefix="tm-conntest-") as tmp:
        pass_fds: tuple[int, ...] = ()
        rfd = wfd = None
        if credential.kind == "ssh_key":
            key = Path(tmp) / "key"
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secret or "")
            args += ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(key)]
        else:
            sshpass = shutil.which("sshpass")
            if sshpass is None:
                return Result(False, "sshpass is not installed on the Task Manager server", {})
            rfd, wfd = os.pipe()
            os.write(wfd, (secret or "").encode() + b"\n")
            os.close(wfd)
            pass_fds = (rfd,)
            args = [sshpass, "-d", str(rfd)] + args + [
                "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive"]
        args += [host.address, remote]
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 5, env=env,
                                  pass_fds=pass_fds, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return Result(False, f"timed out after {timeout:.0f} s logging in to {host.address}:{port_of(host)}", {})
        finally:
            if rfd is not None:
                os.close(rfd)
    lines = dict(ln.split("=", 1) for ln in proc.stdout.splitlines() if "=" in ln)
    if proc.returncode != 0 or "uname" not in lines:
        err = " ".join(proc.stderr.split())[:300]
        if proc.returncode == 5 or "Permission denied" in proc.stderr:
            return Result(False, f"login refused: {err or 'wrong password'}", {})
        return Result(False, err or f"ssh exited with status {proc.returncode}", {})
    details: dict[str, Any] = {"system": lines.get("uname", "")}
    if not x11:
        return Result(True, f"logged in as {credential.username or 'the default user'}: {details['system']}", details)
    clients = [v for k, v in (ln.split("=", 1) for ln in proc.stdout.splitlines() if "=" in ln) if k == "client"]
    details.update(remote_display=lines.get("display", ""), x_clients=clients)
    if not lines.get("display"):
        return Result(False, "logged in, but the server did not grant X11 forwarding "
                             "(X11Forwarding no in sshd_config, or xauth missing on the target)", details)
    if "xauth" not in clients:
        return Result(False, "X11 forwarding granted but xauth is missing on the target", details)
    return Result(True, f"X11 forwarding works: DISPLAY={lines['display']} on the target, "
                        f"X clients: {', '.join(c for c in clients if c != 'xauth') or 'none installed'}", details)


def _check_x11(host, credential, secret, timeout) -> Result:
    return _check_ssh(host, credential, secret, timeout, x11=True)


def _banner_only(host: Host, timeout: float, prefix: bytes, what: str) -> Result:
    with _tcp(host, timeout) as sock:
        sock.settimeout(timeout)
        banner = sock.recv(256)
    if not banner.startswith(prefix):
        return Result(False, f"{host.address}:{port_of(host)} does not speak {what} (greeting {banner[:40]!r})", {})
    text = banner.decode("ascii", "replace").strip()
    return Result(True, f"{what} server answers ({text}); no credential, login not tested", {"banner": text})


def _check_telnet(host, credential, secret, timeout) -> Result:
    mod = _load_plugin("connection/telnet.py", "tm_telnet_connection")
    hv = host_vars(host, credential)
    kwargs = {k: hv[f"ansible_telnet_{k}"] for k in ("login_prompt", "password_prompt") if f"ansible_telnet_{k}" in hv}
    if "ansible_telnet_prompt" in hv:
        kwargs["shell_prompt"] = hv["ansible_telnet_prompt"]
    session = mod.TelnetSession(host.address, port_of(host), timeout=timeout, **kwargs)
    try:
        session.open()
        if credential is None:
            idx, _ = session.expect([session.login_re, session.password_re, session.prompt_re], timeout,
                                    "a login, password or shell prompt", settle=0.15)
            what = ("a login prompt", "a password prompt", "a shell prompt")[idx]
            return Result(True, f"telnet server answers with {what}; no credential, login not tested", {})
        session.login(credential.username if credential else None, secret)
        details: dict[str, Any] = {"mode": hv["ansible_telnet_mode"]}
        if hv["ansible_telnet_mode"] == "posix":
            session.start_posix()
            rc, out, _ = session.run("uname -sr; id -un", timeout)
            details["system"] = " / ".join(out.split("\n")[:2]).strip()
            return Result(rc == 0, f"logged in over telnet: {details['system']}", details)
        return Result(True, "logged in over telnet; the device shows its prompt", details)
    except mod.TelnetError as exc:
        return Result(False, str(exc), {})
    finally:
        session.logout()


def _tls_context(host: Host, verify: bool) -> ssl.SSLContext:
    if not verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=ca_bundle(host))


def _tls_failure(exc: ssl.SSLError, host: Host) -> str:
    detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
    hint = "" if ca_bundle(host) else "; set the host variable ca_bundle to the CA that signed it, or tls_verify: false"
    return f"TLS certificate of {host.address}:{port_of(host)} not trusted: {detail}{hint}"


def _check_https(host, credential, secret, timeout) -> Result:
    import base64
    import http.client

    verify = _flag(host, "tls_verify", True)
    path = str(_option(host, "https_test_path") or "/")
    if not path.startswith("/"):
        return Result(False, f"https_test_path must start with '/', not {path!r}", {})
    headers = {"User-Agent": "TaskManager-connection-test", "Accept": "*/*"}
    auth = https_auth(host, credential)
    if auth == "bearer" and secret:
        headers["Authorization"] = f"Bearer {secret}"
    elif auth == "basic" and secret is not None:
        token = base64.b64encode(f"{credential.username or ''}:{secret}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    conn = http.client.HTTPSConnection(host.address, port_of(host), timeout=timeout, context=_tls_context(host, verify))
    details: dict[str, Any] = {"path": path, "auth": auth, "tls_verified": verify}
    try:
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as exc:
            return Result(False, _tls_failure(exc, host), {})
        except ssl.SSLError as exc:
            return Result(False, f"TLS handshake with {host.address}:{port_of(host)} failed: {exc.reason or exc}", {})
        details["tls_version"] = conn.sock.version()
        details["certificate"] = probes().describe_certificate(conn.sock.getpeercert(binary_form=True))
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read(65536)
        details["status"] = resp.status
    finally:
        conn.close()
    if resp.status in (401, 403):
        return Result(False, f"the API refused the credential: HTTP {resp.status} {resp.reason} on {path}", details)
    if resp.status >= 400:
        return Result(False, f"HTTP {resp.status} {resp.reason} on {path}", details)
    tls = "verified" if verify else "NOT verified (tls_verify: false)"
    return Result(True, f"HTTPS {resp.status} {resp.reason} on {path}, {details['tls_version']}, certificate {tls}", details)


def _check_ldaps(host, credential, secret, timeout) -> Result:
    import ldap3
    from ldap3.core import exceptions as lex

    verify = _flag(host, "tls_verify", True)
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE, ca_certs_file=ca_bundle(host) if verify else None)
    server = ldap3.Server(host.address, port=port_of(host), use_ssl=True, tls=tls, connect_timeout=int(timeout),
                          get_info=ldap3.NONE)
    try:
        if credential is None:
            conn = ldap3.Connection(server, auto_bind=False, receive_timeout=int(timeout))
            conn.open()
            conn.unbind()
            return Result(True, "LDAPS (TLS) connection works; no credential, bind not tested", {"tls_verified": verify})
        conn = ldap3.Connection(server, user=credential.username, password=secret or "", receive_timeout=int(timeout),
                                raise_exceptions=False)
        if not conn.bind():
            desc = conn.result.get("description") or "bind failed"
            msg = conn.result.get("message") or ""
            return Result(False, f"bind as {credential.username!r} refused: {desc}{(' - ' + msg) if msg else ''}", {})
        who = conn.extend.standard.who_am_i() or ""
        conn.unbind()
    except lex.LDAPSocketOpenError as exc:
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            detail = text.split("certificate verify failed:")[-1].split("(")[0].strip(" )'\"") or "verify failed"
            hint = "" if ca_bundle(host) else "; set the host variable ca_bundle to the CA that signed it, or tls_verify: false"
            return Result(False, f"TLS certificate of {host.address}:{port_of(host)} not trusted: {detail}{hint}", {})
        return Result(False, f"cannot open LDAPS to {host.address}:{port_of(host)}: {text[:300]}", {})
    except lex.LDAPException as exc:
        return Result(False, f"LDAP error: {exc}", {})
    return Result(True, f"bound over LDAPS as {who or credential.username}", {"whoami": who, "tls_verified": verify})


def _check_rdp(host, credential, secret, timeout) -> Result:
    p = probes()
    try:
        info = p.rdp_probe(host.address, port_of(host), timeout, username=(credential.username if credential else "") or "",
                           ca_file=ca_bundle(host), validate_certs=_flag(host, "tls_verify", False))
    except ssl.SSLCertVerificationError as exc:
        return Result(False, _tls_failure(exc, host), {})
    except p.ProbeError as exc:
        return Result(False, str(exc), {})
    tls = f", {info['tls_version']}" if info.get("tls_version") else ""
    return Result(True, f"RDP negotiation done: the server selected {info['selected_protocol']}{tls} "
                        "(login is not tried: it needs an interactive RDP session)", info)


def _check_vnc(host, credential, secret, timeout) -> Result:
    p = probes()
    try:
        info = p.vnc_probe(host.address, port_of(host), timeout, password=secret)
    except p.ProbeError as exc:
        return Result(False, str(exc), {})
    types = ", ".join(info["security_types"])
    if info.get("authenticated"):
        return Result(True, f"VNC {info['server_version']} ({types}): logged in, desktop "
                            f"{info['desktop_name']!r} {info['width']}x{info['height']}", info)
    return Result(True, f"VNC {info['server_version']} answers, security types: {types}; {info.get('note')}", info)


def _check_winrm(host, credential, secret, timeout) -> Result:
    """A WinRM shell through pywinrm (what Ansible's winrm plugin uses), running hostname."""
    import requests
    import winrm
    from winrm import exceptions as wex

    hv = host_vars(host, credential)
    scheme, port = hv["ansible_winrm_scheme"], hv["ansible_port"]
    endpoint = f"{scheme}://{_url_host(host.address)}:{port}/wsman"
    with _tcp(host, timeout):
        pass  # a closed port fails here with a clear reason, before any HTTP
    if credential is None:
        return Result(True, f"WinRM port {port} open; no credential, login not tested", {"endpoint": endpoint})
    proto = winrm.Protocol(
        endpoint=endpoint, transport=hv["ansible_winrm_transport"][0], username=credential.username,
        password=secret, server_cert_validation=hv["ansible_winrm_server_cert_validation"],
        ca_trust_path=hv.get("ansible_winrm_ca_trust_path", "legacy_requests"),
        read_timeout_sec=int(timeout) + 5, operation_timeout_sec=int(timeout),
    )
    try:
        shell = proto.open_shell()
        try:
            cmd = proto.run_command(shell, "hostname")
            out, err, rc = proto.get_command_output(shell, cmd)
            proto.cleanup_command(shell, cmd)
        finally:
            proto.close_shell(shell)
    except wex.InvalidCredentialsError as exc:
        return Result(False, f"WinRM refused the credential: {exc}", {"endpoint": endpoint})
    except requests.exceptions.SSLError as exc:
        return Result(False, f"TLS certificate of {endpoint} not trusted: {exc}"[:500], {"endpoint": endpoint})
    except (wex.WinRMError, wex.WinRMTransportError, requests.exceptions.RequestException) as exc:
        return Result(False, f"WinRM error at {endpoint}: {exc}"[:500], {"endpoint": endpoint})
    name = out.decode(errors="replace").strip()
    return Result(rc == 0, f"WinRM shell opened on {name or host.address}", {"endpoint": endpoint, "hostname": name})


_CHECKS: dict[str, Callable[..., Result]] = {
    "local": _check_local,
    "ssh": _check_ssh,
    "x11": _check_x11,
    "telnet": _check_telnet,
    "https": _check_https,
    "ldaps": _check_ldaps,
    "rdp": _check_rdp,
    "vnc": _check_vnc,
    "winrm": _check_winrm,
}
