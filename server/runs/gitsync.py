"""Git for playbook projects: a bare mirror per project, fetched with real ``git``.

Nothing here runs code from the repository. The mirror is bare (no work tree: no checkout,
no smudge/clean filters, no ``core.fsmonitor``), hooks point at ``/dev/null``, the system
and global git configuration are not read (so no filter driver or credential helper of
this machine applies), only the ``file``, ``ssh`` and ``https`` transports are allowed
(``ext::`` would run a command) and git never prompts. A run gets the files of one commit
written into its private directory (``checkout``): the exact commit, so a sync during a
run changes nothing.

Secrets for git stay in memory: a deploy key is loaded into a private ``ssh-agent`` (its
socket in a 0700 directory removed afterwards) through ``ssh-add -``'s standard input; an
https token or password goes to git through ``GIT_ASKPASS``, a helper that reads it from an
inherited pipe. Neither is in the URL, the command line, the environment, ``.git/config``
or any file. SSH host keys of git servers follow the policy of ``hostkeys.py``: learnt on
first contact (``accept-new``) into the project's own known-hosts file, a changed key refused.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from server.catalog import playbooks

TIMEOUT_S = 300
TARGET_REF = "refs/tm/target"  # what the last fetch brought: the branch, tag or remote HEAD
KEPT_PREFIX = "refs/tm/kept/"  # every synced commit stays (approved runs of it can still run)
ASKPASS = Path(__file__).resolve().parent / "git_askpass.py"
# Safety settings on every git command line (see the module docstring).
SAFE_CONFIG = (
    "core.hooksPath=/dev/null", "core.fsmonitor=false", "protocol.allow=never", "protocol.file.allow=always",
    "protocol.ssh.allow=always", "protocol.https.allow=always", "protocol.ext.allow=never",
    "credential.helper=", "submodule.recurse=false", "fetch.recurseSubmodules=false", "http.followRedirects=false",
    "gc.auto=0", "core.askPass=",
)
# Directories whose YAML files are never playbooks (task lists, variables, role parts...).
NOT_PLAYBOOK_DIRS = {"roles", "tasks", "handlers", "vars", "defaults", "meta", "group_vars", "host_vars",
                     "collections", "templates", "files", "library", "filter_plugins", "module_utils",
                     "molecule", "tests"}
PLAYBOOK_SUFFIXES = (".yml", ".yaml")
MAX_PLAYBOOK_BYTES = 1 << 20


class GitError(RuntimeError):
    """A git operation failed; ``str()`` is a message a person can act on."""


@dataclass
class Auth:
    """How git authenticates: a deploy key, or a username and an https token/password."""

    kind: str | None = None  # "ssh_key", "token", "password" or None
    secret: str | None = None
    username: str | None = None


CA_BUNDLE_ENV = "TASKMANAGER_GIT_CA_BUNDLE"  # a CA file for https git servers (private CAs)


def _base_env(home: Path) -> dict[str, str]:
    ca = os.environ.get(CA_BUNDLE_ENV)
    return {**({"GIT_SSL_CAINFO": ca} if ca else {}),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_SSH_VARIANT": "ssh",
        "GIT_PROTOCOL_FROM_USER": "0",
    }


def _git_argv(git_dir: Path | None, *args: str) -> list[str]:
    argv = ["git"]
    for item in SAFE_CONFIG:
        argv += ["-c", item]
    if git_dir is not None:
        argv.append(f"--git-dir={git_dir}")
    return argv + list(args)


def ssh_command(known_hosts: Path) -> str:
    """The ssh git uses: no user config, no worker keys, only the agent's deploy key."""
    return (f"ssh -F none -o IdentityFile=none -o BatchMode=yes -o StrictHostKeyChecking=accept-new "
            f"-o UserKnownHostsFile={known_hosts} -o LogLevel=ERROR -o ConnectTimeout=15")


@contextlib.contextmanager
def session(auth: Auth, known_hosts: Path) -> Iterator[tuple[dict[str, str], tuple[int, ...]]]:
    """(environment, inherited fds) for git commands that talk to the remote.

    Everything lives in a 0700 directory removed afterwards; an ssh-agent started here is
    stopped here.
    """
    work = Path(tempfile.mkdtemp(prefix="tm-git-"))
    os.chmod(work, 0o700)
    env = _base_env(work)
    env["GIT_SSH_COMMAND"] = ssh_command(known_hosts)
    fds: tuple[int, ...] = ()
    agent: subprocess.Popen | None = None
    read_fd = None
    try:
        if auth.kind == "ssh_key" and auth.secret:
            sock = work / "agent.sock"
            agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env={"PATH": env["PATH"]}, start_new_session=True)
            deadline = time.monotonic() + 5
            while not sock.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            env["SSH_AUTH_SOCK"] = str(sock)
            added = subprocess.run(["ssh-add", "-q", "-"], input=auth.secret.encode() + b"\n", capture_output=True,
                                   env={"PATH": env["PATH"], "SSH_AUTH_SOCK": str(sock)}, timeout=10, check=False)
            if added.returncode != 0:
                raise GitError("the deploy key could not be loaded into ssh-agent: is it an unencrypted private key?")
        elif auth.kind in ("token", "password") and auth.secret:
            read_fd, write_fd = os.pipe()
            os.write(write_fd, auth.secret.encode())  # far below a pipe's buffer
            os.close(write_fd)
            helper = work / "askpass"
            helper.write_text(f"#!/bin/sh\nexec {sys.executable} -I {ASKPASS} \"$@\"\n")
            helper.chmod(0o700)
            env.update({"GIT_ASKPASS": str(helper), "TM_ASKPASS_FD": str(read_fd),
                        "TM_ASKPASS_USER": auth.username or "git"})
            fds = (read_fd,)
        yield env, fds
    finally:
        if read_fd is not None:
            os.close(read_fd)
        if agent is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(timeout=5)
        shutil.rmtree(work, ignore_errors=True)


def run_git(git_dir: Path | None, *args: str, env: dict[str, str] | None = None, fds: tuple[int, ...] = (),
            timeout: float = TIMEOUT_S) -> str:
    """Run one git command; its stdout, or GitError with git's own last words."""
    if env is None:
        env = _base_env(Path(tempfile.gettempdir()))
    try:
        proc = subprocess.run(_git_argv(git_dir, *args), capture_output=True, text=True, env=env, pass_fds=fds,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} took longer than {int(timeout)} s; is the server reachable?") from None
    if proc.returncode != 0:
        raise GitError(explain(proc.stderr))
    return proc.stdout


# (pattern in git's stderr, message a person can act on)
_REASONS = (
    (r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED",
     "the git server's SSH host key changed since it was first seen. If the server was rebuilt, "
     "forget the project's pinned host key (DELETE /api/v1/projects/<id>/host-keys or the project page); "
     "otherwise someone may be intercepting the connection"),
    (r"Permission denied \(|Authentication failed|could not read (Username|Password)|"
     r"terminal prompts disabled|HTTP Basic: Access denied|\b401\b|\b403\b",
     "authentication refused by the git server: check the project's credential (deploy key or token) "
     "and that it has read access to the repository"),
    (r"couldn't find remote ref|Couldn't find remote ref|invalid refspec",
     "the branch or tag does not exist in the repository: check the project's branch"),
    (r"Could not resolve host|Name or service not known|Temporary failure in name resolution",
     "the git server's name does not resolve: check the project's URL"),
    (r"Connection refused|Connection timed out|No route to host|Failed to connect|Network is unreachable",
     "the git server cannot be reached: check the project's URL (host and port) and the network"),
    (r"SSL certificate problem|server certificate verification failed|certificate verify failed",
     "the git server's TLS certificate is not trusted by this machine: check the URL or install its CA"),
    (r"does not appear to be a git repository|not found|Repository not found|No such file or directory|"
     r"not a git repository",
     "no git repository at this URL: check the project's URL"),
    (r"transport '.*' not allowed", "this kind of URL is not allowed: use ssh://, user@host:path, https:// or file://"),
)


def explain(stderr: str) -> str:
    """A message for git's ``stderr`` (which never holds our secrets: none is on its argv or env)."""
    for pattern, message in _REASONS:
        if re.search(pattern, stderr or ""):
            return message
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
    shown = (fatal or lines or [""])[0].removeprefix("fatal: ").removeprefix("error: ")
    return f"git failed: {shown[:300]}" if shown else "git failed without a message"


# --------------------------------------------------------------------------- mirror

@contextlib.contextmanager
def locked(project_dir: Path) -> Iterator[None]:
    """One sync of a project at a time on this machine (a blocking file lock)."""
    project_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(project_dir / "sync.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def mirror_of(project_dir: Path) -> Path:
    return project_dir / "mirror.git"


def fetch(project_dir: Path, url: str, branch: str, auth: Auth) -> str:
    """Fetch ``branch`` (empty: the remote's HEAD) into the mirror; the commit it points at.

    A forced push is followed (``+``); every commit a sync brought stays referenced.
    """
    mirror = mirror_of(project_dir)
    if not (mirror / "HEAD").exists():
        shutil.rmtree(mirror, ignore_errors=True)
        run_git(None, "init", "--bare", "-q", str(mirror))
    with session(auth, project_dir / "known_hosts") as (env, fds):
        run_git(mirror, "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-auto-gc", url,
                f"+{branch or 'HEAD'}:{TARGET_REF}", env=env, fds=fds)
    commit = run_git(mirror, "rev-parse", "--verify", "--quiet", f"{TARGET_REF}^{{commit}}").strip()
    if not re.fullmatch(r"[0-9a-f]{40,64}", commit):
        raise GitError(f"'{branch}' does not name a commit in the repository: check the project's branch")
    run_git(mirror, "update-ref", KEPT_PREFIX + commit, commit)
    return commit


def has_commit(project_dir: Path, commit: str) -> bool:
    try:
        run_git(mirror_of(project_dir), "cat-file", "-e", f"{commit}^{{commit}}")
    except GitError:
        return False
    return True


def checkout(project_dir: Path, commit: str, dest: Path) -> None:
    """Write exactly ``commit``'s files into ``dest`` with a throw-away index.

    ``read-tree`` + ``checkout-index``: git's own fast checkout, without a work tree attached
    to the mirror. No filter or hook can run (module docstring); symlinks are written as
    links, which the sandbox confines (only the checkout and the system are visible), and
    ``playbooks.resolve`` refuses a playbook that leaves the checkout.
    """
    fd, index = tempfile.mkstemp(prefix=".tm-index-", dir=dest.parent)
    os.close(fd)
    os.unlink(index)
    env = {**_base_env(dest), "GIT_INDEX_FILE": index}
    try:
        run_git(mirror_of(project_dir), f"--work-tree={dest}", "read-tree", f"{commit}^{{tree}}", env=env)
        run_git(mirror_of(project_dir), f"--work-tree={dest}", "checkout-index", "--all", "--force", env=env)
    except GitError as err:
        raise GitError(f"commit {commit[:12]} could not be checked out: {err}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(index)


# --------------------------------------------------------------------------- playbooks at a commit

def _is_playbook_path(path: str) -> bool:
    parts = path.split("/")
    return (path.endswith(PLAYBOOK_SUFFIXES) and not any(p.startswith(".") for p in parts)
            and not any(p in NOT_PLAYBOOK_DIRS for p in parts[:-1])
            and parts[-1] not in ("requirements.yml", "requirements.yaml", "galaxy.yml"))


def _holding_plays(mirror: Path, blobs: list[tuple[str, str]]) -> list[str]:
    """The paths among ``(path, object name)`` whose content holds plays (one ``cat-file --batch``)."""
    if not blobs:
        return []
    request = "".join(f"{name}\n" for _, name in blobs).encode()
    proc = subprocess.run(_git_argv(mirror, "cat-file", "--batch"), input=request, capture_output=True,
                          env=_base_env(mirror), timeout=TIMEOUT_S, check=False)
    out, pos, found = proc.stdout, 0, []
    for path, _name in blobs:
        header_end = out.index(b"\n", pos)
        header = out[pos:header_end].split()
        if len(header) < 3 or header[1] != b"blob":  # "<name> missing" or not a file
            pos = header_end + 1
            continue
        size = int(header[2])
        body = out[header_end + 1: header_end + 1 + size]
        pos = header_end + 1 + size + 1
        if size <= MAX_PLAYBOOK_BYTES and playbooks.holds_plays(body.decode("utf-8", errors="replace")):
            found.append(path)
    return found


def playbooks_at(project_dir: Path, commit: str, previous: str | None = None,
                 known: list[str] | None = None) -> list[str]:
    """The files of ``commit`` that hold plays (the playbook picker's list).

    With the ``previous`` commit's list (``known``), only the files that changed are read again.
    """
    mirror = mirror_of(project_dir)
    if previous and known is not None and has_commit(project_dir, previous):
        changes = run_git(mirror, "diff-tree", "-r", "-z", "--no-renames", "--name-status", previous, commit)
        fields = [f for f in changes.split("\0") if f]
        changed = {fields[i + 1]: fields[i] for i in range(0, len(fields) - 1, 2)}
        kept = [p for p in known if p not in changed]
        candidates = [(p, f"{commit}:{p}") for p, status in changed.items()
                      if status != "D" and _is_playbook_path(p) and "\n" not in p]
        return sorted(kept + _holding_plays(mirror, candidates))
    listing = run_git(mirror, "ls-tree", "-r", "-z", "--long", commit)
    blobs = []
    for entry in listing.split("\0"):
        if not entry:
            continue
        meta, path = entry.split("\t", 1)
        mode, kind, sha, size = meta.split()
        if kind == "blob" and mode in ("100644", "100755") and _is_playbook_path(path) \
                and size.isdigit() and int(size) <= MAX_PLAYBOOK_BYTES:
            blobs.append((path, sha))
    return sorted(_holding_plays(mirror, blobs))
