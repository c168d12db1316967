"""Every protocol of the product sheet, against real servers on loopback addresses.

telnet: inetutils telnetd + /bin/login with a real local user; HTTPS: a Python TLS server
with a private CA; LDAPS: slapd (mdb + ppolicy); RDP: xrdp; VNC: x11vnc on Xvfb; X11 and
SSH: OpenSSH servers from tests/sshlab.py (X11Forwarding on); WinRM: no Windows here, so
the generated connection options are checked exactly and an unreachable WinRM host is
run through the real runner. Playbooks run through ansible-runner with the secrets
answered at Ansible's prompts, as prepare.py does.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tests import protolab
from tests.sshlab import SSHLab

REPO = Path(__file__).resolve().parent.parent
PLAYBOOKS = REPO / "playbooks"
SSH_PASS_PROMPT = r"^SSH password:\s*$"


def need(*binaries: str) -> None:
    missing = [b for b in binaries if not (shutil.which(b) or Path(b).exists())]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (the Makefile installs it)")


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def workdir():
    path = protolab.tempdir("tm-protolab-")
    yield path
    protolab.rmtree(path)


@pytest.fixture(autouse=True)
def ca_dirs(workdir, monkeypatch):
    """The test CAs live in the lab's directory: allow it as a ca_bundle directory."""
    monkeypatch.setenv("TASKMANAGER_CA_DIRS", str(workdir))


@pytest.fixture(scope="module")
def pki(workdir):
    return protolab.PKI(workdir / "pki")


@pytest.fixture(scope="module")
def other_pki(workdir):
    """A CA the servers do NOT use: trusting it must not make their certificates valid."""
    return protolab.PKI(workdir / "other-pki", name="Unrelated CA")


@pytest.fixture(scope="module")
def telnetd():
    need("/usr/sbin/telnetd", "/bin/login")
    with protolab.TelnetServer() as server:
        yield server


@pytest.fixture(scope="module")
def api_server(pki):
    with protolab.HTTPSServer(pki, token="tok-" + uuid.uuid4().hex, user="apiuser", password="api-Pass-7") as server:
        yield server


@pytest.fixture(scope="module")
def slapd(pki, workdir):
    need("/usr/sbin/slapd", "/usr/lib/ldap/ppolicy.so")
    with protolab.Slapd(pki, workdir / "slapd") as server:
        yield server


@pytest.fixture(scope="module")
def xrdp(workdir):
    need("/usr/sbin/xrdp")
    with protolab.Xrdp(workdir / "xrdp") as server:
        yield server


@pytest.fixture(scope="module")
def xvfb():
    need("/usr/bin/Xvfb")
    with protolab.Xvfb() as display:
        yield display


@pytest.fixture(scope="module")
def vnc(xvfb, workdir):
    need("x11vnc")
    with protolab.X11VNC(xvfb.display, workdir / "vnc", "vnc-Pass-9") as server:
        yield server


class X11Lab(SSHLab):
    """sshlab's real sshd with X11 forwarding switched on (xauth on the target)."""

    def _config(self, server, host_key, auth) -> str:
        return super()._config(server, host_key, auth) + "X11Forwarding yes\nX11UseLocalhost yes\nXAuthLocation /usr/bin/xauth\n"


@pytest.fixture(scope="module")
def sshd():
    """Two sshd: index 0 forwards X11, index 1 is plain (X11Forwarding no)."""
    need("/usr/sbin/sshd", "/usr/bin/xauth", "xdpyinfo", "sshpass")
    with X11Lab(1) as x11lab, SSHLab(1) as plain:
        yield x11lab, plain


# --------------------------------------------------------------------------- helpers


def add_host(api, name: str, address: str, protocol: str, port: int | None = None, **hvars) -> int:
    body = {"name": name, "address": address, "protocol": protocol, "vars": hvars}
    if port:
        body["port"] = port
    status, resp = api.post("/api/v1/hosts", body)
    assert status == 201, resp
    return resp["id"]


def add_credential(api, name: str, kind: str, secret: str, username: str | None = None) -> None:
    body = {"name": name, "kind": kind, "secret": secret}
    if username:
        body["username"] = username
    status, resp = api.post("/api/v1/credentials", body)
    assert status == 201, resp


def rows(session, host_names: list[str], credential_name: str | None):
    from sqlalchemy import select

    from server.core.models import Credential, Host

    hosts = [session.execute(select(Host).where(Host.name == n)).scalar_one() for n in host_names]
    cred = (session.execute(select(Credential).where(Credential.name == credential_name)).scalar_one()
            if credential_name else None)
    return hosts, cred


def connection_test(api, host_id: int, credential: str | None = None) -> dict:
    status, body = api.post(f"/api/v1/hosts/{host_id}/test", {"credential": credential} if credential else {})
    assert status == 200, body
    assert set(body) >= {"ok", "reason", "protocol", "details"}
    return body


class Run:
    def __init__(self, runner, private_dir: Path) -> None:
        self.status, self.rc = runner.status, runner.rc
        self.stdout = runner.stdout.read()
        self.events = list(runner.events)
        self.private_dir = private_dir

    def host_failed(self, host: str) -> str | None:
        """The message of the host's failed task (None when it did not fail)."""
        for ev in self.events:
            data = ev.get("event_data", {})
            if ev.get("event") in ("runner_on_failed", "runner_on_unreachable") and data.get("host") == host:
                if not data.get("ignore_errors"):
                    return str(data.get("res", {}).get("msg", ""))
        return None

    def results(self, task_name: str) -> dict[str, dict]:
        out = {}
        for ev in self.events:
            data = ev.get("event_data", {})
            if ev.get("event") in ("runner_on_ok", "runner_on_failed") and data.get("task") == task_name:
                out[data["host"]] = data.get("res", {})
        return out

    def everything(self) -> str:
        """All text the run left behind: stdout, events, artifacts."""
        parts = [self.stdout, json.dumps(self.events, default=str)]
        for path in self.private_dir.rglob("*"):
            if path.is_file():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)


# The playbook runs of this module read the database only for the host and credential rows
# they start from; what they check (the protocol, the playbook, no secret in the output) is
# the same on either database, so they run on SQLite only (the execution path itself, which
# writes results, runs on both: run_execution and tests/test_execution_e2e.py).
PLAYBOOK_RUN = pytest.mark.sqlite_only


def run_playbook(app, tmp_path: Path, playbook: str, hosts, credential, extravars=None, check=False, display=None) -> Run:
    """Run a shipped playbook the way prepare.py sets runs up: per-run inventory from the database
    rows (inventory.build_inventory → protocols.host_vars), secrets only through
    ansible-runner's prompt answers (or its ssh-agent for keys), the product's ssh args."""
    import ansible_runner

    from server.runs import inventory, prepare, protocols
    from server.core.vault import vault

    inv = inventory.build_inventory(hosts, credential)
    private = tmp_path / f"run-{uuid.uuid4().hex[:8]}"
    (private / "inventory").mkdir(parents=True)
    (private / "inventory" / "hosts.yml").write_text(inventory.dump_inventory(inv))
    passwords = dict(protocols.prompt_answers(credential))
    cmdline = []
    secret = vault().decrypt(credential.secret_enc) if credential is not None else None
    if credential is not None and credential.kind == "password":
        cmdline.append("--ask-pass")
        passwords[SSH_PASS_PROMPT] = secret
    if check:
        cmdline.append("--check")
    envvars = {
        **protocols.ansible_env(),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_SSH_ARGS": prepare.ssh_args(app.config["TM"], credential),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_SSH_PASSWORD_MECHANISM": "ssh_askpass",
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        "ANSIBLE_LOCAL_TEMP": str(private / "tmp"),
        # short: a socket path under pytest's per-worker tmp dir can pass the 107-byte limit
        "ANSIBLE_SSH_CONTROL_PATH_DIR": tempfile.mkdtemp(prefix="tm-cp-"),
    }
    if display:
        envvars["DISPLAY"] = display
    r = ansible_runner.run(
        private_data_dir=str(private), playbook=str(PLAYBOOKS / playbook), inventory=str(private / "inventory" / "hosts.yml"),
        cmdline=" ".join(cmdline), passwords=passwords, envvars=envvars, extravars=extravars or {},
        ssh_key=secret if credential is not None and credential.kind == "ssh_key" else None,
        quiet=True, settings={"suppress_ansible_output": True, "pexpect_timeout": 0.2}, timeout=120,
        suppress_env_files=True,  # like prepare.py: the passwords stay in memory
    )
    return Run(r, private)


def run_execution(api, task_body: dict) -> dict:
    """Create a task through the API and run it through the REAL execution path
    (request_execution → worker job → runner.py → ansible-runner)."""
    from server.runs.worker import run_execution_job

    status, task = api.post("/api/v1/tasks", task_body)
    assert status == 201, task
    status, ex = api.post(f"/api/v1/tasks/{task['id']}/executions", {})
    assert status == 202, ex
    run_execution_job(ex["id"])
    status, ex = api.get(f"/api/v1/executions/{ex['id']}")
    assert status == 200
    return ex


# --------------------------------------------------------------------------- inventory variables (no servers)


def test_protocol_table_covers_every_model_protocol():
    from server.core import models
    from server.runs import protocols

    assert set(protocols.PROTOCOLS) == set(models.PROTOCOLS)
    for p in protocols.PROTOCOLS.values():
        assert set(p.credential_kinds) <= set(models.CREDENTIAL_KINDS)


def test_winrm_inventory_is_exact_and_secret_free(app, api, session):
    from server.runs import inventory

    add_credential(api, "win-admin", "password", "Win-Secret-1", username="DOM\\admin".replace("\\", "_"))
    add_host(api, "win1", "192.0.2.31", "winrm")
    add_host(api, "win2", "192.0.2.32", "winrm", 5985, winrm_transport="kerberos", note="x")
    add_host(api, "win3", "192.0.2.33", "winrm", tls_verify=False, winrm_transport="credssp")
    (hosts, cred) = rows(session, ["win1", "win2", "win3"], "win-admin")
    inv = inventory.build_inventory(hosts, cred)
    hv = inv["all"]["hosts"]
    assert {k: v for k, v in hv["win1"].items()} == {
        "ansible_host": "192.0.2.31", "tm_protocol": "winrm", "tm_address": "192.0.2.31", "tm_port": 5986,
        "ansible_connection": "winrm", "ansible_port": 5986, "ansible_shell_type": "powershell",
        "ansible_winrm_scheme": "https", "ansible_winrm_transport": ["ntlm"],
        "ansible_winrm_server_cert_validation": "validate", "ansible_winrm_message_encryption": "auto",
        "ansible_user": "DOM_admin",
    }
    assert hv["win2"]["ansible_winrm_scheme"] == "http" and hv["win2"]["ansible_port"] == 5985
    assert hv["win2"]["ansible_winrm_transport"] == ["kerberos"] and hv["win2"]["ansible_winrm_kinit_mode"] == "managed"
    assert hv["win2"]["ansible_winrm_server_cert_validation"] == "validate"
    # The explicit per-host opt-out, and the host's transport option honoured.
    assert hv["win3"]["ansible_winrm_server_cert_validation"] == "ignore"
    assert hv["win3"]["ansible_winrm_transport"] == ["credssp"]
    text = inventory.dump_inventory(inv)
    assert "Win-Secret-1" not in text and "password" not in text.lower()


def test_winrm_settings_are_validated(app, api, session, workdir):
    """Bad settings are a 422 naming the variable when saved; rows planted behind the API's
    back (or saved before the checks) still fail the run with the reason."""
    from server.runs import protocols
    from server.core.errors import ValidationError
    from server.core.models import Host

    for port, hv, needle in [
        (5985, {"winrm_transport": "basic"}, "basic authentication over http would send the password in clear"),
        (None, {"winrm_transport": "digest"}, "'winrm_transport' must be one of ntlm, kerberos, credssp, basic"),
        (None, {"ca_bundle": "/nonexistent/ca.pem"}, "'ca_bundle' must be a file under /etc/ssl/certs"),
    ]:
        body = {"name": "w-x", "address": "192.0.2.40", "protocol": "winrm", "vars": hv, **({"port": port} if port else {})}
        status, resp = api.post("/api/v1/hosts", body)
        assert status == 422 and resp["error"]["field"] == "vars" and needle in resp["error"]["message"], resp
    ca = workdir / "winrm-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    add_host(api, "w-ca-ok", "192.0.2.43", "winrm", ca_bundle=str(ca), tls_verify="yes")
    planted = [Host(name="w-basic", address="192.0.2.40", port=5985, protocol="winrm", vars={"winrm_transport": "basic"}),
               Host(name="w-bad", address="192.0.2.41", protocol="winrm", vars={"winrm_transport": "digest"}),
               Host(name="w-ca", address="192.0.2.42", protocol="winrm", vars={"ca_bundle": "/nonexistent/ca.pem"})]
    session.add_all(planted)
    session.commit()
    (hosts, _) = rows(session, ["w-basic", "w-bad", "w-ca", "w-ca-ok"], None)
    with pytest.raises(ValidationError, match="basic authentication over http would send the password in clear"):
        protocols.host_vars(hosts[0], None)
    with pytest.raises(ValidationError, match="winrm_transport must be one of ntlm, kerberos, credssp, basic"):
        protocols.host_vars(hosts[1], None)
    with pytest.raises(ValidationError, match="ca_bundle must be a file under /etc/ssl/certs"):
        protocols.host_vars(hosts[2], None)
    assert protocols.host_vars(hosts[3], None)["ansible_winrm_ca_trust_path"] == str(ca)


def test_host_vars_of_every_protocol(app, api, session):
    import sys

    from server.runs import protocols

    add_credential(api, "tok", "token", "t0ken-value")
    add_credential(api, "pw", "password", "pw-value", username="cn=operator,dc=example,dc=org")
    add_credential(api, "key", "ssh_key", protolab_key(), username="ops")
    for name, proto, port, hv in [
        ("t1", "telnet", None, {"telnet_mode": "raw", "telnet_prompt": r"switch[>#]\s*$"}),
        ("a1", "https", 8443, {}), ("l1", "ldaps", None, {"ldap_base_dn": "dc=example,dc=org"}),
        ("r1", "rdp", None, {}), ("v1", "vnc", 5901, {}), ("x1", "x11", None, {"x11_trusted": True}),
    ]:
        add_host(api, name, "192.0.2.50", proto, port, **hv)
    (hosts, cred) = rows(session, ["t1", "a1", "l1", "r1", "v1", "x1"], "pw")
    (_, tok) = rows(session, [], "tok")
    (_, key) = rows(session, [], "key")
    t1, a1, l1, r1, v1, x1 = hosts
    assert protocols.host_vars(t1, cred) == {
        "ansible_host": "192.0.2.50", "tm_protocol": "telnet", "tm_address": "192.0.2.50", "tm_port": 23,
        "ansible_connection": "telnet", "ansible_port": 23, "ansible_telnet_mode": "raw",
        "ansible_telnet_prompt": r"switch[>#]\s*$", "ansible_user": "cn=operator,dc=example,dc=org"}
    https = protocols.host_vars(a1, tok)
    assert https["ansible_connection"] == "local" and https["ansible_python_interpreter"] == sys.executable
    assert https["tm_base_url"] == "https://192.0.2.50:8443" and https["tm_auth"] == "bearer" and https["tm_tls_verify"] is True
    assert protocols.host_vars(a1, cred)["tm_auth"] == "basic"
    ldap = protocols.host_vars(l1, cred)
    assert ldap["tm_ldap_url"] == "ldaps://192.0.2.50:636" and ldap["tm_ldap_base_dn"] == "dc=example,dc=org"
    assert ldap["tm_username"] == "cn=operator,dc=example,dc=org"
    assert protocols.host_vars(r1, None)["tm_port"] == 3389 and protocols.host_vars(r1, None)["tm_tls_verify"] is False
    assert protocols.host_vars(v1, None)["tm_port"] == 5901
    x11 = protocols.host_vars(x1, key)
    assert x11["ansible_connection"] == "ssh" and x11["ansible_user"] == "ops"
    assert x11["ansible_ssh_extra_args"] == "-o ForwardX11=yes -o ForwardX11Trusted=yes"
    for hv in (protocols.host_vars(h, cred) for h in hosts if h.protocol != "x11"):
        assert "pw-value" not in json.dumps(hv)
    # A credential of the wrong kind is refused with the reason.
    assert protocols.credential_problem("https", key) == \
        "https needs a token or password credential, not ssh_key (credential 'key')"
    ok, reason = protocols.test_connection(a1, key)
    assert not ok and "needs a token or password credential" in reason


def test_commands_refused_on_api_protocols(app, api, session):
    from server.runs import protocols

    add_host(api, "api-x", "192.0.2.60", "https")
    add_host(api, "ssh-x", "192.0.2.61", "ssh")
    add_host(api, "tn-x", "192.0.2.62", "telnet")
    hosts, _ = rows(session, ["api-x", "ssh-x", "tn-x"], None)
    assert protocols.commands_problem(hosts[1:]) is None
    assert protocols.commands_problem(hosts) == (
        "command lines cannot run on api-x: their protocol is an API or service check (https, ldaps, rdp, vnc); "
        "use a playbook task for them")


def protolab_key() -> str:
    from tests.resource_factories import ed25519_key

    return ed25519_key()


def test_prompt_answers_match_the_prompt_ansible_prints(app, api, session):
    from server.runs import protocols

    add_credential(api, "tok2", "token", "s3cret-token")
    (_, cred) = rows(session, [], "tok2")
    answers = protocols.prompt_answers(cred)
    assert answers == {protocols.SECRET_PROMPT_RE: "s3cret-token"}
    # What ansible's do_var_prompt prints for the shipped plays' vars_prompt.
    assert re.search(protocols.SECRET_PROMPT_RE, "\r\nTask Manager credential secret: ", re.M)
    assert re.search(protocols.SECRET_PROMPT_RE, "eyJ1dWlk\x1b[64D\x1b[K\x1b[Ke30=\x1b[4D\x1b[KTask Manager credential secret: ", re.M)
    # Task output quoting the prompt text does not trigger it.
    assert not re.search(protocols.SECRET_PROMPT_RE, '    "msg": "Task Manager credential secret: ', re.M)
    assert protocols.prompt_answers(None) == {protocols.SECRET_PROMPT_RE: ""}
    for play in ("https/api_request.yml", "ldap/search.yml", "ldap/unlock_account.yml", "ldap/modify_entry.yml",
                 "remote_desktop/vnc_check.yml"):
        assert f"prompt: {protocols.SECRET_PROMPT}\n" in (PLAYBOOKS / play).read_text()


# --------------------------------------------------------------------------- telnet


def test_telnet_connection_test_logs_in_and_reports_failures(app, api, session, telnetd):
    add_credential(api, "tn", "password", protolab.PROTO_PASSWORD, username=protolab.PROTO_USER)
    add_credential(api, "tn-bad", "password", "wrong-password", username=protolab.PROTO_USER)
    hid = add_host(api, "dev-telnet", telnetd.addr, "telnet")
    res = connection_test(api, hid, "tn")
    assert res["ok"], res
    assert res["reason"].startswith("logged in over telnet: Linux") and protolab.PROTO_USER in res["reason"]
    bad = connection_test(api, hid, "tn-bad")
    assert not bad["ok"] and bad["reason"] == f"login rejected by {telnetd.addr}:23: Login incorrect"
    assert "wrong-password" not in json.dumps(bad)


def test_telnet_commands_task_through_the_real_runner(app, api, session, telnetd):
    """A `commands` task on a telnet host: prepare.py's --ask-pass answer reaches the telnet
    connection plugin, each command's output and exit status are recorded."""
    add_credential(api, "tn-run", "password", protolab.PROTO_PASSWORD, username=protolab.PROTO_USER)
    add_host(api, "tn-host", telnetd.addr, "telnet")
    ex = run_execution(api, {"name": "telnet-cmds", "kind": "commands", "hosts": ["tn-host"], "credential": "tn-run",
                             "commands": ["echo hello-from-$(id -un)", "printf 'two\\nlines\\n'; echo oops >&2; exit 3"]})
    op = ex["operations"][0]
    assert ex["status"] == "failed" and op["status"] == "failed", ex
    steps = op["steps"]
    assert steps[0]["status"] == "succeeded" and steps[0]["stdout"].strip() == f"hello-from-{protolab.PROTO_USER}"
    assert steps[1]["status"] == "failed" and steps[1]["rc"] == 3
    assert steps[1]["stdout"].strip() == "two\nlines" and "oops" in steps[1]["stderr"]


@PLAYBOOK_RUN
def test_telnet_playbook_runs_modules(app, api, session, tmp_path, telnetd):
    """posix mode: not only raw, also modules (file transfer over the telnet session)."""
    add_credential(api, "tn-pb", "password", protolab.PROTO_PASSWORD, username=protolab.PROTO_USER)
    add_host(api, "tn-pb-host", telnetd.addr, "telnet")
    hosts, cred = rows(session, ["tn-pb-host"], "tn-pb")
    r = run_playbook(app, tmp_path, "telnet/run_commands.yml", hosts, cred,
                     extravars={"device_commands": ["uname -s", "echo marker-42"]})
    assert r.status == "successful", r.stdout
    res = r.results("Run")["tn-pb-host"]["results"]
    assert [x["stdout"].strip() for x in res] == ["Linux", "marker-42"]
    # A module run (AnsiballZ payload uploaded over telnet), with the host's Python.
    play = tmp_path / "module.yml"
    play.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: stat\n      ansible.builtin.stat: {path: /etc/hostname}\n      register: st\n"
        "    - name: assert\n      ansible.builtin.assert: {that: [st.stat.exists]}\n")
    import ansible_runner  # noqa: F401  (same mechanism, a playbook outside the shipped dir)
    r2 = run_playbook(app, tmp_path, str(play), hosts, cred)
    assert r2.status == "successful", r2.stdout
    assert "Proto-Pass" not in r.everything() + r2.everything()


def test_telnet_unreachable_is_clean(app, api, session):
    addr = protolab.free_address(23)
    hid = add_host(api, "tn-dead", addr, "telnet")
    res = connection_test(api, hid)
    assert not res["ok"] and res["reason"] == f"connection refused by {addr}:23 (nothing listens there)"


# --------------------------------------------------------------------------- HTTPS


def test_https_connection_test_verifies_tls_and_auth(app, api, session, api_server, pki, other_pki):
    add_credential(api, "api-token", "token", api_server.token)
    add_credential(api, "api-wrong", "token", "not-the-token")
    add_credential(api, "api-basic", "password", api_server.password, username=api_server.user)
    trusted = add_host(api, "api", api_server.addr, "https", api_server.port, ca_bundle=str(pki.ca_file),
                       https_test_path="/api/status")
    untrusted = add_host(api, "api-untrusted", api_server.addr, "https", api_server.port, https_test_path="/api/status")
    wrong_ca = add_host(api, "api-wrong-ca", api_server.addr, "https", api_server.port, ca_bundle=str(other_pki.ca_file),
                        https_test_path="/api/status")
    optout = add_host(api, "api-optout", api_server.addr, "https", api_server.port, tls_verify=False,
                      https_test_path="/api/status")
    res = connection_test(api, trusted, "api-token")
    assert res["ok"] and res["reason"].startswith("HTTPS 200 OK on /api/status, TLSv1.3, certificate verified"), res
    assert res["details"]["certificate"]["issuer"] == "CN=Task Manager Test CA"
    assert api_server.requests[-1]["authorization"] == f"Bearer {api_server.token}"
    assert connection_test(api, trusted, "api-basic")["ok"]
    bad = connection_test(api, trusted, "api-wrong")
    assert not bad["ok"] and bad["reason"] == "the API refused the credential: HTTP 401 Unauthorized on /api/status"
    for hid in (untrusted, wrong_ca):
        res = connection_test(api, hid, "api-token")
        assert not res["ok"]
        assert res["reason"].startswith(f"TLS certificate of {api_server.addr}:{api_server.port} not trusted: "
                                        "unable to get local issuer certificate")
    assert "set the host variable ca_bundle" in connection_test(api, untrusted)["reason"]
    res = connection_test(api, optout, "api-token")
    assert res["ok"] and "certificate NOT verified (tls_verify: false)" in res["reason"]


@PLAYBOOK_RUN
def test_https_playbook_bearer_basic_and_failures(app, api, session, tmp_path, api_server, pki):
    add_credential(api, "pb-token", "token", api_server.token)
    add_credential(api, "pb-basic", "password", api_server.password, username=api_server.user)
    add_credential(api, "pb-wrong", "token", "wrong-" + api_server.token)
    add_host(api, "api-a", api_server.addr, "https", api_server.port, ca_bundle=str(pki.ca_file))
    add_host(api, "api-b", api_server.addr, "https", api_server.port)  # no CA: untrusted
    hosts, tok = rows(session, ["api-a", "api-b"], "pb-token")
    seen = len(api_server.requests)
    r = run_playbook(app, tmp_path, "https/api_request.yml", hosts, tok,
                     extravars={"api_path": "/api/items", "api_method": "POST", "api_body": {"name": "disk"},
                                "api_status": [201]})
    assert r.status == "failed"  # api-b fails, api-a succeeds
    assert r.host_failed("api-a") is None, r.stdout
    assert r.results("Response")["api-a"]["msg"]["json"] == {"created": {"name": "disk"}}
    reason = r.host_failed("api-b")
    assert reason.startswith(f"POST https://{api_server.addr}:{api_server.port}/api/items failed: HTTP -1 - ")
    assert "CERTIFICATE_VERIFY_FAILED" in reason
    new = api_server.requests[seen:]
    assert [(q["method"], q["authorization"]) for q in new] == [("POST", f"Bearer {api_server.token}")]
    assert api_server.token not in r.everything()

    (_, basic) = rows(session, [], "pb-basic")
    r = run_playbook(app, tmp_path, "https/api_request.yml", hosts[:1], basic, extravars={"api_path": "/api/status"})
    assert r.status == "successful", r.stdout
    assert r.results("Response")["api-a"]["msg"]["json"]["status"] == "green"
    assert api_server.password not in r.everything()

    (_, wrong) = rows(session, [], "pb-wrong")
    r = run_playbook(app, tmp_path, "https/api_request.yml", hosts[:1], wrong, extravars={"api_path": "/api/status"})
    assert r.host_failed("api-a") == (f"GET https://{api_server.addr}:{api_server.port}/api/status failed: HTTP 401 - "
                                      "Status code was 401 and not [200]: HTTP Error 401: Unauthorized")
    assert "wrong-" + api_server.token not in r.everything()


@PLAYBOOK_RUN
def test_https_check_mode_sends_no_writes(app, api, session, tmp_path, api_server, pki):
    add_credential(api, "chk-token", "token", api_server.token)
    add_host(api, "api-chk", api_server.addr, "https", api_server.port, ca_bundle=str(pki.ca_file))
    hosts, tok = rows(session, ["api-chk"], "chk-token")
    seen = len(api_server.requests)
    r = run_playbook(app, tmp_path, "https/api_request.yml", hosts, tok, check=True,
                     extravars={"api_path": "/api/items", "api_method": "DELETE"})
    assert r.status == "successful", r.stdout
    assert api_server.requests[seen:] == []


# --------------------------------------------------------------------------- LDAPS


def test_ldaps_connection_test(app, api, session, slapd, other_pki):
    add_credential(api, "ldap-op", "password", slapd.ROOT_PW, username=slapd.ROOT_DN)
    add_credential(api, "ldap-bad", "password", "nope", username=slapd.ROOT_DN)
    ok_host = add_host(api, "dir", slapd.addr, "ldaps", ca_bundle=str(slapd.ca_file))
    untrusted = add_host(api, "dir-untrusted", slapd.addr, "ldaps", ca_bundle=str(other_pki.ca_file))
    res = connection_test(api, ok_host, "ldap-op")
    assert res["ok"] and res["reason"] == f"bound over LDAPS as dn:{slapd.ROOT_DN}", res
    bad = connection_test(api, ok_host, "ldap-bad")
    assert not bad["ok"] and bad["reason"] == f"bind as {slapd.ROOT_DN!r} refused: invalidCredentials"
    res = connection_test(api, untrusted, "ldap-op")
    assert not res["ok"] and res["reason"].startswith(f"TLS certificate of {slapd.addr}:636 not trusted")


@PLAYBOOK_RUN
def test_ldap_unlock_search_and_modify_playbooks(app, api, session, tmp_path, slapd):
    add_credential(api, "ldap-admin", "password", slapd.ROOT_PW, username=slapd.ROOT_DN)
    add_host(api, "dir-pb", slapd.addr, "ldaps", ca_bundle=str(slapd.ca_file), ldap_base_dn=slapd.SUFFIX)
    hosts, cred = rows(session, ["dir-pb"], "ldap-admin")
    slapd.lock("alice")
    assert not slapd.can_bind("alice") and slapd.can_bind("bob")

    r = run_playbook(app, tmp_path, "ldap/unlock_account.yml", hosts, cred, extravars={"ldap_account": "alice"}, check=True)
    assert r.status == "successful", r.stdout
    assert r.results("Report")["dir-pb"]["msg"] == \
        f"uid=alice,ou=people,{slapd.SUFFIX}: was locked (pwdAccountLockedTime), would be unlocked"
    assert not slapd.can_bind("alice")  # check mode changed nothing

    r = run_playbook(app, tmp_path, "ldap/unlock_account.yml", hosts, cred, extravars={"ldap_account": "alice"})
    assert r.status == "successful", r.stdout
    assert r.results("Unlock")["dir-pb"]["changed"] is True
    assert slapd.can_bind("alice")
    assert slapd.ROOT_PW not in r.everything()

    r = run_playbook(app, tmp_path, "ldap/search.yml", hosts, cred,
                     extravars={"ldap_filter": "(objectClass=inetOrgPerson)", "ldap_attributes": ["uid", "mail"]})
    assert r.status == "successful", r.stdout
    entries = r.results("Search")["dir-pb"]["entries"]
    assert sorted((e["attributes"].get("mail") or [""])[0] for e in entries) == \
        ["", "alice@example.org", "bob@example.org", "carol@example.org"]

    r = run_playbook(app, tmp_path, "ldap/modify_entry.yml", hosts, cred,
                     extravars={"ldap_account": "carol", "ldap_changes": {"telephoneNumber": "+1 555 0100",
                                                                          "description": {"add": ["on call"]}}})
    assert r.status == "successful", r.stdout
    assert r.results("Modify")["dir-pb"]["modified"] == ["description", "telephoneNumber"]
    conn = slapd.connection()
    conn.bind()
    conn.search(f"uid=carol,ou=people,{slapd.SUFFIX}", "(objectClass=*)", attributes=["telephoneNumber", "description"])
    assert conn.entries[0].telephoneNumber.value == "+1 555 0100" and conn.entries[0].description.value == "on call"
    conn.unbind()


# --------------------------------------------------------------------------- RDP and VNC


@PLAYBOOK_RUN
def test_rdp_negotiation(app, api, session, tmp_path, xrdp):
    hid = add_host(api, "desk-rdp", xrdp.addr, "rdp")
    res = connection_test(api, hid)
    assert res["ok"], res
    assert res["reason"].startswith("RDP negotiation done: the server selected TLS, TLSv1")
    assert res["details"]["x224"] == "Connection Confirm" and res["details"]["certificate"]["subject"]
    hosts, _ = rows(session, ["desk-rdp"], None)
    r = run_playbook(app, tmp_path, "remote_desktop/rdp_check.yml", hosts, None)
    assert r.status == "successful", r.stdout
    assert r.results("Negotiate")["desk-rdp"]["rdp"]["selected_protocol"] == "TLS"
    r = run_playbook(app, tmp_path, "remote_desktop/rdp_check.yml", hosts, None, extravars={"rdp_require_nla": True})
    assert r.host_failed("desk-rdp") == f"{xrdp.addr}:3389: Network Level Authentication is not enforced (selected TLS)"
    # Something that is not RDP answers: a clear reason, not a crash.
    other = add_host(api, "not-rdp", "127.0.0.1", "rdp", _closed_port())
    assert connection_test(api, other)["reason"].startswith("connection refused by 127.0.0.1:")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends


@PLAYBOOK_RUN
def test_vnc_version_security_types_and_login(app, api, session, tmp_path, vnc):
    add_credential(api, "vnc-pw", "password", vnc.password)
    add_credential(api, "vnc-bad", "password", "wrong-pw")
    hid = add_host(api, "desk-vnc", vnc.addr, "vnc")
    anon = connection_test(api, hid)
    assert anon["ok"] and anon["reason"] == \
        "VNC 003.008 answers, security types: VNC Authentication; no password given"
    res = connection_test(api, hid, "vnc-pw")
    assert res["ok"] and res["reason"] == \
        "VNC 003.008 (VNC Authentication): logged in, desktop 'tm-test-desktop' 1024x768"
    bad = connection_test(api, hid, "vnc-bad")
    assert not bad["ok"] and bad["reason"].startswith("VNC authentication failed")
    hosts, cred = rows(session, ["desk-vnc"], "vnc-pw")
    r = run_playbook(app, tmp_path, "remote_desktop/vnc_check.yml", hosts, cred)
    assert r.status == "successful", r.stdout
    assert r.results("Connect")["desk-vnc"]["vnc"]["desktop_name"] == "tm-test-desktop"
    assert vnc.password not in r.everything()


# --------------------------------------------------------------------------- SSH and X11


def test_ssh_and_x11_connection_tests(app, api, session, sshd):
    x11lab, plain = sshd
    add_credential(api, "lab-key", "ssh_key", x11lab.private_key, username=x11lab.user)
    add_credential(api, "plain-key", "ssh_key", plain.private_key, username=plain.user)
    add_credential(api, "lab-pw", "password", x11lab.password, username=x11lab.user)
    add_credential(api, "lab-pw-bad", "password", "wrong", username=x11lab.user)
    xs, ps = x11lab.servers[0], plain.servers[0]
    ssh_host = add_host(api, "ssh-1", ps.address, "ssh")
    x_host = add_host(api, "x-1", xs.address, "x11")
    x_plain = add_host(api, "x-plain", ps.address, "x11")
    res = connection_test(api, ssh_host, "plain-key")
    assert res["ok"] and res["reason"].startswith(f"logged in as {plain.user}: Linux"), res
    assert connection_test(api, add_host(api, "ssh-2", xs.address, "ssh"), "lab-pw")["ok"]
    bad = connection_test(api, ssh_host, "lab-pw-bad")
    assert not bad["ok"] and bad["reason"].startswith("login refused")
    res = connection_test(api, x_host, "lab-key")
    assert res["ok"], res
    assert re.match(r"X11 forwarding works: DISPLAY=localhost:\d+\.0 on the target, X clients: xdpyinfo, xset", res["reason"])
    res = connection_test(api, x_plain, "plain-key")
    assert not res["ok"] and res["reason"].startswith("logged in, but the server did not grant X11 forwarding")
    assert connection_test(api, ssh_host)["reason"].startswith("SSH server answers (SSH-2.0-OpenSSH")


@PLAYBOOK_RUN
def test_x11_playbook_runs_an_x_client_through_forwarding(app, api, session, tmp_path, sshd, xvfb):
    x11lab, plain = sshd
    add_credential(api, "x-key", "ssh_key", x11lab.private_key, username=x11lab.user)
    add_host(api, "x-pb", x11lab.servers[0].address, "x11")
    add_host(api, "x-pb-plain", plain.servers[0].address, "x11")
    hosts, cred = rows(session, ["x-pb"], "x-key")
    r = run_playbook(app, tmp_path, "x11/display_info.yml", hosts, cred, display=xvfb.display)
    assert r.status == "successful", r.stdout
    lines = r.results("Output")["x-pb"]["msg"]
    assert re.match(r"DISPLAY=localhost:\d+\.0$", lines[0])
    # xdpyinfo on the target talked to the controller's Xvfb through the tunnel.
    assert any(line.startswith("vendor string:") for line in lines) and any("Keyboard Control:" in line for line in lines)
    hosts, _ = rows(session, ["x-pb-plain"], None)
    add_credential(api, "x-plain-key", "ssh_key", plain.private_key, username=plain.user)
    (_, pcred) = rows(session, [], "x-plain-key")
    r = run_playbook(app, tmp_path, "x11/display_info.yml", hosts, pcred, display=xvfb.display)
    assert r.host_failed("x-pb-plain").startswith("no X11 display on x-pb-plain: the SSH server did not grant X11 forwarding")


# --------------------------------------------------------------------------- WinRM (no Windows here)


def test_winrm_unreachable_through_the_real_runner(app, api, session):
    port = _closed_port()
    add_credential(api, "win-pw", "password", "Win-Pass-1", username="Administrator")
    hid = add_host(api, "win-dead", "127.0.0.1", "winrm", port)
    res = connection_test(api, hid, "win-pw")
    assert not res["ok"] and res["reason"] == f"connection refused by 127.0.0.1:{port} (nothing listens there)"
    ex = run_execution(api, {"name": "win-cmd", "kind": "commands", "hosts": ["win-dead"], "credential": "win-pw",
                             "commands": ["Get-Service Spooler"]})
    op = ex["operations"][0]
    assert ex["status"] == "failed" and op["status"] == "unreachable", ex
    assert re.search(rf"ntlm: HTTPSConnectionPool\(host='127.0.0.1', port={port}\).*/wsman.*Connection refused",
                     op["message"]), op
    assert "Win-Pass-1" not in json.dumps(ex)


@PLAYBOOK_RUN
def test_winrm_playbooks_unreachable_cleanly(app, api, session, tmp_path):
    port = _closed_port()
    add_credential(api, "win-pw2", "password", "Win-Pass-2", username="Administrator")
    add_host(api, "win-dead2", "127.0.0.1", "winrm", port, winrm_scheme="http")
    hosts, cred = rows(session, ["win-dead2"], "win-pw2")
    r = run_playbook(app, tmp_path, "windows/wmi_query.yml", hosts, cred, extravars={"wmi_class": "Win32_OperatingSystem"})
    assert r.status == "failed"
    unreachable = [e for e in r.events if e.get("event") == "runner_on_unreachable"]
    msg = unreachable[0]["event_data"]["res"]["msg"]
    assert re.search(rf"ntlm: HTTPConnectionPool\(host='127.0.0.1', port={port}\).*/wsman.*Connection refused", msg)
    assert "Win-Pass-2" not in r.everything()


# --------------------------------------------------------------------------- API and page


def test_connection_test_access_and_audit(app, api, api_as, session, telnetd):
    add_credential(api, "tn-acl", "password", protolab.PROTO_PASSWORD, username=protolab.PROTO_USER)
    hid = add_host(api, "tn-acl-host", telnetd.addr, "telnet")
    auditor = api_as("olga", "auditor")
    status, body = auditor.post(f"/api/v1/hosts/{hid}/test", {})
    assert status == 200 and body["ok"], body
    assert body["reason"] == "telnet server answers with a login prompt; no credential, login not tested"
    # Logging in with a credential needs hosts.edit; operators see only their tasks' hosts.
    status, body = auditor.post(f"/api/v1/hosts/{hid}/test", {"credential": "tn-acl"})
    assert status == 403 and body["error"] == {"code": "forbidden", "message": "role 'auditor' may not hosts edit"}
    status, body = api_as("oscar", "operator").post(f"/api/v1/hosts/{hid}/test", {})
    assert status == 403 and body["error"]["message"] == "you may not view host 'tn-acl-host'"
    status, body = api.post("/api/v1/hosts/999999/test", {})
    assert status == 404
    status, body = api.post(f"/api/v1/hosts/{hid}/test", {"credential": "nope"})
    assert status == 404 and "credential 'nope' does not exist" in body["error"]["message"]
    status, body = api.post(f"/api/v1/hosts/{hid}/test", {"credential": 5})
    assert status == 422
    status, audit = api.get("/api/v1/audit?action=host.test_connection")
    assert status == 200, audit
    items = audit["items"] if isinstance(audit, dict) else audit
    tests = [i for i in items if i.get("action") == "host.test_connection"]
    assert {(i["actor"], i["outcome"]) for i in tests} == {("olga", "ok")}


def test_connection_test_page(app, session, telnetd, admin_user):
    from tests.conftest import ADMIN_PASSWORD
    from tests.resource_factories import csrf_token

    client = app.test_client()
    page = client.get("/login")
    resp = client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD,
                                       "csrf_token": csrf_token(page.get_data(as_text=True))})
    assert resp.status_code in (302, 303)
    from server.catalog.hosts import create_host

    host = create_host(session, {"name": "page-host", "address": telnetd.addr, "protocol": "telnet"}, actor="test")
    session.commit()
    listing = client.get("/hosts").get_data(as_text=True)
    assert f'href="/hosts/{host.id}/test"' in listing  # the button on the hosts page
    page = client.get(f"/hosts/{host.id}/test")
    assert page.status_code == 200 and "Test connection to page-host" in page.get_data(as_text=True)
    resp = client.post(f"/hosts/{host.id}/test", data={"csrf_token": csrf_token(page.get_data(as_text=True))})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and 'id="connection-result"' in html
    assert "OK" in html and "telnet server answers with a login prompt; no credential, login not tested" in html
