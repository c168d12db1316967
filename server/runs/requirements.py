"""A project's role and collection requirements, installed at sync time, inside the sandbox.

``roles/requirements.yml``, ``collections/requirements.yml`` and a top-level
``requirements.yml`` are installed with ``ansible-galaxy`` into the project's cache for that
commit (``instance/projects/<id>/cache/<commit>/{roles,collections}``), never at run time.
Sources are what the machine can reach: paths inside the project (a role tarball or
directory), git URLs, or the Galaxy server the admin names in ``TASKMANAGER_GALAXY_SERVER``.
ansible-galaxy reads user-controlled files (and ``git clone``s user-chosen URLs), so it runs
in the run sandbox (sandbox.py) as ``nobody``, seeing the checkout read-only and writing only
its output directory. A run then sees the cache read-only (prepare.py).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from server.runs import gitsync, sandbox

FILES = (("roles/requirements.yml", ("role",)), ("collections/requirements.yml", ("collection",)),
         ("requirements.yml", ("role", "collection")))
TIMEOUT_S = 600
GALAXY_ENV = "TASKMANAGER_GALAXY_SERVER"


def cache_dir(project_dir: Path, commit: str) -> Path:
    return project_dir / "cache" / commit


def _wanted(path: Path, kinds: tuple[str, ...]) -> list[str]:
    """The kinds ``path`` lists something for (a plain list is roles, as ansible-galaxy reads it)."""
    try:
        doc = yaml.safe_load(path.read_text(errors="replace"))
    except yaml.YAMLError:
        return list(kinds)  # ansible-galaxy will say what is wrong with it
    if isinstance(doc, list):
        return ["role"] if doc and "role" in kinds else []
    if isinstance(doc, dict):
        return [k for k in kinds if doc.get("roles" if k == "role" else "collections")]
    return []


def _galaxy_argv(kind: str, requirements: Path, out: Path) -> list[str]:
    galaxy = str(Path(sys.executable).parent / "ansible-galaxy")
    dest = out / ("roles" if kind == "role" else "collections")
    return [galaxy, kind, "install", "-r", str(requirements), "-p", str(dest), "--force"]


def install(project_dir: Path, commit: str) -> Path:
    """Install the requirements of ``commit`` once; the cache directory. Raises GitError with
    ansible-galaxy's reason (the sync then fails with it)."""
    target = cache_dir(project_dir, commit)
    if target.is_dir():
        return target
    listed = gitsync.run_git(gitsync.mirror_of(project_dir), "ls-tree", "--name-only", commit, "--",
                             *(rel for rel, _ in FILES))
    if not listed.strip():  # nothing to install: no checkout, no sandbox
        target.mkdir(parents=True)
        return target
    private = sandbox.new_private_dir()
    try:
        checkout = private / "project"
        checkout.mkdir(mode=0o755)
        gitsync.checkout(project_dir, commit, checkout)
        out = private / "home" / "out"
        sandbox.make_writable(out)
        sandbox.open_up(private)
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(private / "home"),
               "TMPDIR": "/tmp", "LANG": "C.UTF-8", "ANSIBLE_LOCAL_TEMP": str(private / "tmp"),
               "ANSIBLE_NOCOLOR": "True", "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"}
        if os.environ.get(GALAXY_ENV):
            env["ANSIBLE_GALAXY_SERVER"] = os.environ[GALAXY_ENV]
        layout = sandbox.Layout(private, checkout)
        for rel, kinds in FILES:
            path = checkout / rel
            if not path.is_file() or path.is_symlink():
                continue
            for kind in _wanted(path, kinds):
                proc = subprocess.run(sandbox.argv(layout, _galaxy_argv(kind, path, out)), cwd=checkout, env=env,
                                      capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
                if proc.returncode != 0:
                    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
                    raise gitsync.GitError(f"installing {rel} failed: {(lines or ['no output'])[-1][:300]}")
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(out, staging, symlinks=True)
        staging.rename(target)
        return target
    except (OSError, subprocess.TimeoutExpired, sandbox.SandboxError) as exc:
        raise gitsync.GitError(f"installing the project's requirements failed: {exc}") from None
    finally:
        shutil.rmtree(private, ignore_errors=True)
