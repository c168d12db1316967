"""Building a run before it starts: everything ansible-playbook will see, and nothing more.

``prepare(private_dir, ex, task, hosts, settings)`` fills the run's private directory
(inventory, extra-vars file, a commands task's playbook, an empty ansible.cfg) and returns a
``Prepared``: the command line, the environment, the prompt answers, the ssh key and what the
sandbox must show. ``runner_config(...)`` turns it into ansible-runner's ``RunnerConfig``, with the
environment filtered down to what ansible-playbook may see. runner.py runs it.

Secrets reach Ansible only two ways, both in memory: an SSH private key through
ansible-runner's ssh-agent fifo (``ssh_key=``), and passwords typed into Ansible's own
prompts (``--ask-pass``/``--ask-become-pass`` answered by ``passwords=``). They are never
in the environment, extra vars, files, the command line or the ``artifacts/*/command``
file. Ansible then hands the login password to ssh through its own ssh_askpass helper
(a 0600 POSIX shared-memory segment that exists only while ssh asks); sshpass is not
used because it mistakes remote exit codes 1-6 for its own errors. User variables and
command lines are written as ``!unsafe`` YAML so Jinja never evaluates them.

Speed: ssh ControlMaster connections persist (per credential version) between runs in a
connection holder outside the run's sandbox (mux.py), a
``commands`` task runs all its lines in one ``tm_commands`` task per host (each line still
its own shell and step, without Ansible's per-task CPU for every line), with the
``tm_threads`` strategy (each host on a thread of ansible-playbook rather than a forked
process), pipelining is on, only the YAML inventory plugin is enabled, and runs
without WinRM hosts skip importing pywinrm.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ansible_runner.config.runner import RunnerConfig

from server.catalog import launch, playbooks
from server.core import ca_bundles
from server.core.config import Settings
from server.core.errors import ValidationError
from server.core.models import Credential, Execution, Host, Task
from server.core.vault import vault
from server.executions.approvals import DRY_RUN_TRIGGER
from server.executions.fingerprint import git_project
from server.runs import hostkeys, inventory, mux, project_checkout, protocols

CONTROL_PERSIST_S = mux.CONTROL_PERSIST_S
STUBS_DIR = Path(__file__).resolve().parent / "ansible_stubs"
IDENT = "run"  # ansible-runner's ident, the same for every run: a warm run's sandbox shows its event directories
ENV_KEEP_PREFIXES = ("ANSIBLE_", "AWX_", "RUNNER_", "ORIGINAL_STDOUT_CALLBACK")
# Ansible's prompts, anchored to a whole line so command output can never trigger them.
SSH_PASS_PROMPT = r"^SSH password:\s*$"
BECOME_PASS_PROMPT = r"^BECOME password(\[defaults to SSH password\])?:\s*$"
SECRET_PROMPT_TEXT = "Task Manager launch value"


def venv_bin() -> Path:
    return Path(sys.executable).parent


@dataclass
class Prepared:
    private_dir: Path
    playbook: str
    project_dir: str
    cmdline: list[str]
    envvars: dict[str, str]
    passwords: dict[str, str]
    ssh_key: str | None
    readonly: list[Path]  # what the sandbox sees read-only besides the system and Python
    sockets: list[Path]  # the X11 display socket, for x11 hosts
    forks: int
    names: dict[str, str]
    commands: list[str] | None  # a commands task's lines (steps come from tm_commands)
    progress: str | None  # prefix of tm_commands' progress lines
    launch_play: str | None = None  # this run's name of the play setting secret launch values
    overlays: list[tuple[Path, Path]] = field(default_factory=list)  # (the run's copy of a playbook, its path)


def _secrets(credential: Credential | None) -> tuple[str | None, str | None, str | None]:
    """(ssh key, login password, become password), decrypted only in memory."""
    if credential is None:
        return None, None, None
    box = vault()
    secret = box.decrypt(credential.secret_enc)
    become = box.decrypt(credential.become_password_enc)
    if credential.kind == "ssh_key":
        return secret, None, become
    if credential.kind == "password":
        return None, secret, become or secret  # sudo asks for the login password by default
    return None, None, become


def _prompt_defaults(playbook: Path, run_vars: dict, env_dir: Path) -> list[str]:
    """``-e @file`` with the defaults of the playbook's ``vars_prompt`` that nothing else sets.

    Ansible does not prompt for a variable given as an extra var, so the run never waits for
    an answer nobody gives; a prompt without a default was refused when the task was saved.
    """
    defaults = {p["name"]: p["default"] for p in playbooks.prompts(playbook.read_text(errors="replace"))
                if p["has_default"] and p["name"] not in run_vars}
    values = inventory.user_vars(defaults)
    if not values:
        return []
    path = env_dir / "prompt_defaults.yml"
    path.write_text(inventory.dump(values))
    return ["-e", f"@{path}"]


def vault_answer(credential: Credential) -> tuple[list[str], str, str]:
    """(ansible-playbook arguments, prompt, password) for a ``vault_password`` credential.

    The password is typed into Ansible's own prompt (never a file or ``--vault-password-file``);
    the credential's ``username`` is its vault id when set (``--vault-id ID@prompt``).
    """
    secret = vault().decrypt(credential.secret_enc) or ""
    vault_id = (credential.username or "").strip()
    if vault_id:
        return ["--vault-id", f"{vault_id}@prompt"], rf"^Vault password \({re.escape(vault_id)}\):\s*$", secret
    return ["--ask-vault-pass"], r"^Vault password:\s*$", secret


def ssh_args(settings: Settings, credential: Credential | None, known_hosts: Path | None = None) -> str:
    known_hosts = known_hosts or hostkeys.known_hosts_path(settings.instance_dir)
    args = [
        "-F none",  # no ~/.ssh/config: how we connect is decided here, per host and credential
        "-o IdentityFile=none",  # never the worker's own keys: only the credential's
        "-o ControlMaster=auto",
        f"-o ControlPersist={CONTROL_PERSIST_S}s",
        "-o StrictHostKeyChecking=accept-new",
        f"-o UserKnownHostsFile={known_hosts}",
        "-o LogLevel=ERROR",
        "-o ServerAliveInterval=15",
        "-o ServerAliveCountMax=4",
    ]
    if credential is not None and credential.kind == "password":
        args.append("-o PubkeyAuthentication=no")
    return " ".join(args)


def prepare(private_dir: Path, ex: Execution, task: Task, hosts: list[Host], settings: Settings) -> Prepared:
    credential = task.credential
    if task.kind == "commands":
        problem = protocols.commands_problem(hosts)  # API-protocol hosts run on this machine: no raw lines
        if problem:
            raise ValidationError(problem, field="commands")
    key, password, become_password = _secrets(credential)
    preview = ex.check_mode and ex.trigger == DRY_RUN_TRIGGER
    if preview:  # before approval: nothing a playbook could read, only the key inside ssh-agent
        password = become_password = None
    inv = inventory.build_inventory(hosts, credential)
    held = mux.attach(inv, mux.held(credential, hosts, settings), private_dir / "cp")  # connections kept from earlier runs
    (private_dir / "inventory").mkdir(mode=0o700)
    (private_dir / "inventory" / "hosts.yml").write_text(inventory.dump_inventory(inv))
    env_dir = private_dir / "env"
    env_dir.mkdir(mode=0o700)
    hidden = _secret_values(ex, task)
    if preview:
        hidden = dict.fromkeys(hidden, "")  # an approver's preview runs without them
    run_vars = {k: v for k, v in {**(task.vars or {}), **(ex.vars or {})}.items() if k not in hidden}
    cmdline: list[str] = []
    user_vars = inventory.user_vars(run_vars)
    if user_vars:
        vars_file = env_dir / "vars.yml"
        vars_file.write_text(inventory.dump(user_vars))
        cmdline += ["-e", f"@{vars_file}"]
    project = private_dir / "project"
    project.mkdir(mode=0o700)
    roles_path = [str(settings.playbook_dir / "roles"), str(settings.playbook_dir.parent / "roles")]
    commands: list[str] | None = None
    progress: str | None = None
    launch_play: str | None = None
    overlays: list[tuple[Path, Path]] = []
    collections: str | None = None
    if task.kind == "commands":
        commands = list(task.commands or [])
        progress = f"tm-progress-{secrets.token_hex(8)}"  # only this run's plugin writes such lines
        play = playbooks.commands_play([inventory.Unsafe(c) for c in commands], become=bool(task.become),
                                       progress=progress)
        declared = {d["name"] for d in task.variables or []}
        words = {k: inventory.Unsafe(launch.quoted(v)) for k, v in inventory.user_vars(ex.vars or {}).items()
                 if k in declared and k not in hidden}
        play[0]["tasks"][0]["tm_commands"].update(values=words, secrets=list(hidden))
        if hidden:
            play[0]["vars_prompt"] = secret_prompts(list(hidden))
        for p in play:
            p["strategy"] = "tm_threads"  # each host on a thread (plugins/strategy/tm_threads.py)
            rolling(p, task)
        playbook = project / "commands.yml"
        playbook.write_text(inventory.dump(play))
        project_dir = str(project)
    else:
        if (source := git_project(task)) is not None:
            checkout = project_checkout.materialise(source, ex, project, settings)
            resolved = playbooks.resolve(checkout.root, task.playbook or "")
            project_dir = str(checkout.root)
            roles_path = project_checkout.roles_path(checkout, resolved)  # the project's, not ours
            collections = project_checkout.collections_path(checkout)
        else:
            resolved = playbooks.resolve(settings.playbook_dir, task.playbook or "")
            project_dir = str(resolved.parent)
            roles_path.insert(0, str(resolved.parent / "roles"))
        playbook = resolved
        if task.serial or task.max_fail_percentage is not None or hidden:
            # The sandbox shows a copy at the playbook's own path, so that its group_vars/,
            # host_vars/, playbook_dir and relative includes stay those of the original: with
            # the task's rolling settings in each play and, first, a play that asks for the
            # secret values (prompts answered from memory) and sets them on every host.
            copy = private_dir / "playbook.yml"
            # a name no playbook can take in advance: the recorder leaves out this play's events
            launch_play = f"{playbooks.LAUNCH_VALUES_PLAY} {secrets.token_hex(8)}" if hidden else None
            copy.write_text(playbooks.for_run(resolved.read_text(), task.serial, task.max_fail_percentage,
                                              [secret_play(list(hidden), launch_play)] if launch_play else None))
            overlays.append((copy, resolved))
        cmdline += [a for key in ("tags", "skip_tags") if getattr(ex, key)
                    for a in (f"--{key.replace('_', '-')}", ",".join(getattr(ex, key)))]
    if ex.check_mode:
        cmdline += ["--check", "--diff"]  # a dry run shows the approver what would change
    if task.kind == "playbook" and task.become:
        cmdline.append("--become")
    passwords: dict[str, str] = {secret_prompt(name): Once(value) for name, value in hidden.items()}
    if password:
        cmdline.append("--ask-pass")
        passwords[SSH_PASS_PROMPT] = Once(password)
    if become_password and (task.become or task.kind == "playbook"):
        cmdline.append("--ask-become-pass")
        passwords[BECOME_PASS_PROMPT] = Once(become_password)
    if task.kind == "playbook":  # vars_prompt: the default, as plain ansible-playbook would take it
        cmdline += _prompt_defaults(Path(playbook), run_vars, env_dir)
    if task.kind == "playbook" and task.vault_credential is not None and not preview:
        vault_args, vault_prompt, vault_secret = vault_answer(task.vault_credential)
        cmdline += vault_args
        passwords[vault_prompt] = Once(vault_secret)
    if task.kind == "playbook":
        # the protocol playbooks' vars_prompt (API secrets): answered like Ansible's own prompts,
        # with the secret only when a protocol of the run needs it (an ssh key stays with ssh-agent)
        passwords.update(protocols.prompt_answers(None if preview else credential, hosts))
    forks = max(1, min(len(hosts), settings.max_forks))
    known_hosts = private_dir / "ssh" / "known_hosts"
    hostkeys.seed(settings.instance_dir, hosts, known_hosts)
    cfg_file = private_dir / "ansible.cfg"
    cfg_file.write_text("# empty: every setting comes from the environment below\n")
    if git_project(task) is not None:  # the project's ansible.cfg, without what our settings decide
        cfg_file = project_checkout.merged_config(Path(project_dir))
    envvars = {
        "PATH": f"{venv_bin()}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(private_dir / "home"),
        "TMPDIR": "/tmp",  # the sandbox's own tmpfs (ssh-agent's socket lives there)
        "USER": "nobody",
        "LOGNAME": "nobody",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "ANSIBLE_CONFIG": str(cfg_file),
        "ANSIBLE_LOCAL_TEMP": str(private_dir / "tmp"),
        "ANSIBLE_INVENTORY_ENABLED": "yaml",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_HOST_KEY_CHECKING": "True",  # with accept-new: new hosts are learnt, changed keys refused
        "ANSIBLE_SSH_ARGS": ssh_args(settings, credential, known_hosts),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(private_dir / "cp"),
        # ssh_askpass, not sshpass: sshpass mistakes remote exit codes 1-6 for its own errors.
        "ANSIBLE_SSH_PASSWORD_MECHANISM": "ssh_askpass",
        "ANSIBLE_SSH_USETTY": "False",  # keep stderr apart from stdout
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_TIMEOUT": "10",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_FORCE_COLOR": "False",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        "ANSIBLE_TRANSFORM_INVALID_GROUP_CHARS": "ignore",
        "ANSIBLE_GATHER_TIMEOUT": "30",
        "ANSIBLE_ROLES_PATH": ":".join(roles_path),
    }
    if commands is not None:
        # no facts in a commands play: without this Ansible cleans each host's (empty) facts for
        # injection, listing the connection plugin directories once per host
        envvars["ANSIBLE_INJECT_FACT_VARS"] = "False"
    if not any((h.protocol or "ssh") == "winrm" for h in hosts):
        # no pywinrm import at ansible-playbook start-up (see ansible_stubs/winrm)
        envvars["PYTHONPATH"] = str(STUBS_DIR)
    # shipped modules, module_utils, connection plugins and roles (non-secret)
    extra = dict(protocols.ansible_env(Path(project_dir) if task.kind == "playbook" else settings.playbook_dir,
                                       hosts))
    more_roles = [r for r in str(extra.pop("ANSIBLE_ROLES_PATH", "")).split(os.pathsep) if r]
    if git_project(task) is not None:
        more_roles = []  # a git project's roles are its own (and what its requirements installed)
    envvars["ANSIBLE_ROLES_PATH"] = os.pathsep.join(dict.fromkeys(roles_path + more_roles))
    for k, v in extra.items():
        envvars.setdefault(k, str(v))
    if collections:
        envvars["ANSIBLE_COLLECTIONS_PATH"] = collections
    readonly = [Path(project_dir), settings.playbook_dir, STUBS_DIR, *ca_bundles.ca_dirs()]
    readonly += [Path(p) for k in ("ANSIBLE_ROLES_PATH", "ANSIBLE_LIBRARY", "ANSIBLE_MODULE_UTILS",
                                   "ANSIBLE_CONNECTION_PLUGINS", "ANSIBLE_ACTION_PLUGINS", "ANSIBLE_STRATEGY_PLUGINS",
                                   "ANSIBLE_COLLECTIONS_PATH")
                 for p in envvars.get(k, "").split(os.pathsep) if p]
    return Prepared(
        private_dir=private_dir,
        playbook=str(playbook),
        project_dir=project_dir,
        cmdline=cmdline,
        envvars=envvars,
        passwords=passwords,
        ssh_key=key,
        readonly=[p for p in dict.fromkeys(readonly) if p.exists()],
        sockets=held + (_x11_sockets(envvars.get("DISPLAY")) if any(h.protocol == "x11" for h in hosts) else []),
        forks=forks,
        names=inv["_meta"]["names"],
        commands=commands,
        progress=progress,
        launch_play=launch_play,
        overlays=overlays,
    )


def _secret_values(ex: Execution, task: Task) -> dict[str, str]:
    """The run's secret launch values, decrypted in memory only ("" for one that is gone, e.g.
    in an approver's preview): they reach Ansible only as answers to its own prompts."""
    names = launch.secret_names(task.variables)
    stored = json.loads(vault().decrypt(ex.secret_vars_enc) or "{}") if ex.secret_vars_enc else {}
    return {name: str(stored.get(name, "")) for name in names
            if name in stored or name in (ex.vars or {})}


def secret_prompt(name: str) -> str:
    """The prompt regex of a secret variable's ``vars_prompt`` (a whole line, as Ansible prints it)."""
    return rf"(?:^|\x1b\[K){SECRET_PROMPT_TEXT} {name}:\s*$"


def secret_prompts(names: list[str]) -> list[dict[str, object]]:
    return [{"name": launch_var(n), "prompt": f"{SECRET_PROMPT_TEXT} {n}", "private": True, "unsafe": True}
            for n in names]


def launch_var(name: str) -> str:
    return f"tm_secret__{name}"


def secret_play(names: list[str], name: str) -> dict[str, object]:
    """The play a playbook task with secret variables starts with: it asks for them (prompts
    answered from memory) and sets each, unsafe and without logging, on every host."""
    return {"name": name, "hosts": "all", "gather_facts": False, "vars_prompt": secret_prompts(names),
            "tasks": [{"name": "secret launch values", "ansible.builtin.set_fact": {
                n: "{{ " + launch_var(n) + " }}" for n in names}, "no_log": True,  # the prompt's value is unsafe
                "check_mode": False, "tags": ["always"]}]}


def rolling(play: dict[str, object], task: Task) -> None:
    """A rolling run: hosts in batches (``serial``), stopping once a batch fails beyond
    ``max_fail_percentage``; the hosts never reached are recorded ``skipped``."""
    if task.serial:
        play["serial"] = task.serial
        play["strategy"] = "linear"  # batches and the failure threshold are the linear strategy's
    if task.max_fail_percentage is not None:
        play["max_fail_percentage"] = task.max_fail_percentage


def _x11_sockets(display: str | None) -> list[Path]:
    """The local X server's socket for ``DISPLAY=:N`` (a TCP display needs nothing)."""
    if display and display.startswith(":"):
        return [Path("/tmp/.X11-unix") / f"X{display[1:].split('.')[0]}"]
    return []


def runner_config(prep: Prepared, ex: Execution, timeout_s: int) -> RunnerConfig:
    """ansible-runner's configuration for ``prep``, prepared, its environment filtered."""
    # Non-secret runner settings go in env/settings: ansible-runner 2.4.3 drops a
    # ``settings=`` dict when that file is missing (BaseConfig.prepare_env).
    (prep.private_dir / "env" / "settings").write_text(json.dumps({
        "job_timeout": timeout_s,
        "idle_timeout": timeout_s,
        "pexpect_timeout": 0.2,
        "pexpect_use_poll": True,
        "suppress_ansible_output": True,
        "suppress_output_file": True,
    }))
    rc = RunnerConfig(
        private_data_dir=str(prep.private_dir),
        playbook=prep.playbook,
        inventory=str(prep.private_dir / "inventory" / "hosts.yml"),
        project_dir=prep.project_dir,
        cmdline=" ".join(shlex.quote(a) for a in prep.cmdline),
        envvars=prep.envvars,
        passwords=dict(prep.passwords),
        settings={},
        forks=prep.forks,
        ident=IDENT,
        suppress_env_files=True,
        suppress_ansible_output=True,
        suppress_output_file=True,
        quiet=True,
        fact_cache_type="jsonfile",
    )
    rc.prepare()
    rc.env = _filter_env(rc.env, keep=prep.envvars)
    return rc


def _filter_env(env: dict[str, str], keep: dict[str, str]) -> dict[str, str]:
    """What ansible-playbook may see: our own variables and what ansible-runner added.

    Nothing of the worker's own environment (which may hold the vault key, database and
    Redis URLs) passes: a variable the worker has with the same value is dropped.
    """
    return {k: v for k, v in env.items()
            if k in keep or (k.startswith(ENV_KEEP_PREFIXES) and os.environ.get(k) != v)}


class Once(str):
    """A prompt answer ansible-runner can send once: later matches get an empty line.

    Ansible asks for the login and become passwords once, at start-up; a playbook that
    prints the prompt again (e.g. through its parent's terminal) must not be answered.
    pexpect sends ``answer + linesep``, which is where the secret is handed out.
    """

    _secret: str

    def __new__(cls, secret: str) -> Once:
        obj = super().__new__(cls, "")
        obj._secret = secret
        return obj

    def __add__(self, other: str) -> str:
        secret, self._secret = self._secret, ""
        return secret + other

